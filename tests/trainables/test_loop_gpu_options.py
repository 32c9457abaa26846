"""What a GPU user expects of the loop, checked on CPU: ``train.compile``, the AdamW kernel per
device, divergence caught between the sparse loss reads a GPU makes, FSDP2 at world size 1."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from stagetune.data import prepare_data
from stagetune.schedule import build_schedule
from stagetune.trainables.loop import DIVERGENCE_CHECK_STEPS, StagedTrainer, adamw_kernel
from stagetune.trainables.session import LocalSession
from stagetune.trial import TrialDescription

STAGED = ["schedule.increments=[2, 2]", "model.n_layer=4", "schedule.continual_steps=4"]


def _trainer(cfg: Any, out: Path, **trial_kw: Any) -> StagedTrainer:
    vocab = prepare_data(cfg.data).vocab_size
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    if trial_kw:
        import dataclasses

        trial = dataclasses.replace(trial, **trial_kw)
    return StagedTrainer(trial, LocalSession(out), config=cfg, vocab_size=vocab)


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere(fast_config: Any, tmp_path: Path) -> None:
    assert adamw_kernel(torch.device("cuda", 0)) == {"fused": True}
    assert adamw_kernel(torch.device("cpu")) == {"foreach": True}
    opt = _trainer(fast_config(), tmp_path).optimizer
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


def test_divergence_between_sparse_loss_reads_is_caught_at_the_next_check(
    fast_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the loss reaches the host only every DIVERGENCE_CHECK_STEPS steps (and at log
    points): a non-finite step in between still stops the run, marked diverged."""
    due: list[int] = []

    def gpu_rule(self: StagedTrainer) -> bool:
        due.append(self.step)
        return self.step % DIVERGENCE_CHECK_STEPS == 0

    monkeypatch.setattr(StagedTrainer, "_check_due", gpu_rule)
    cfg = fast_config("train.grad_clip=0", "schedule.baseline_steps=40")
    trainer = _trainer(cfg, tmp_path, lr=1e6)
    result = trainer.run()
    assert due, "the loop asks whether a check is due after each step"
    assert result.status == "diverged" and result.steps < trainer.total_steps
    last = trainer.session.records[-1]  # type: ignore[attr-defined]
    assert last["status"] == "diverged" and not math.isfinite(last["train_loss"])
    assert last["seconds"] > 0  # the steps' time is settled into the record


@pytest.mark.slow
def test_compile_trains_the_same_schedule_with_the_same_compute(
    fast_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.compile``: each phase compiles its own module (depth and frozen prefix change at
    growth), training matches eager, the FLOPs accounting is unchanged.

    Dynamo captures the real graphs here, but they run on its ``eager`` backend: inductor's
    C++ code generation for every phase takes minutes on a shared 2-core machine (the GPU
    check's ``compile`` section and its dry run use inductor)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, **{**kw, "backend": "eager"}))
    torch.set_num_threads(1)
    eager = _trainer(fast_config(*STAGED), tmp_path / "eager")
    eager.run()
    compiled = _trainer(fast_config(*STAGED, "train.compile=true"), tmp_path / "compiled")
    seen: list[Any] = []
    enter = compiled._enter_phase

    def watch(index: int, *, fresh: bool) -> None:
        enter(index, fresh=fresh)
        seen.append(compiled._compiled)

    compiled._enter_phase = watch  # type: ignore[method-assign]
    result = compiled.run()
    assert result.status == "finished"
    assert len(seen) == len(compiled.phases) and len({id(m) for m in seen}) == len(seen)
    a = eager.session.records  # type: ignore[attr-defined]
    b = compiled.session.records  # type: ignore[attr-defined]
    assert [r["flops"] for r in b] == [r["flops"] for r in a]
    assert [r["flops_paper"] for r in b] == [r["flops_paper"] for r in a]
    for ra, rb in zip(a, b):
        assert rb["eval_loss"] == pytest.approx(ra["eval_loss"], abs=2e-3)


@pytest.fixture
def world_of_one() -> Iterator[None]:
    """A gloo process group of one rank (what a one-worker Ray Train run sets up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_shards_a_world_of_one(fast_config: Any, tmp_path: Path, world_of_one: None) -> None:
    """``resources.strategy=fsdp`` under a process group of one rank runs FSDP2 (the path a
    one-GPU check exercises), and trains like the unsharded loop."""
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    cfg = fast_config(*STAGED, "resources.strategy=fsdp")
    sharded = _trainer(cfg, tmp_path / "fsdp")
    assert sharded._fsdp
    assert all(isinstance(p, DTensor) for p in sharded.model.parameters())
    result = sharded.run()
    plain = _trainer(fast_config(*STAGED), tmp_path / "plain").run()
    assert result.status == "finished" and result.flops == plain.flops
    assert result.final_eval_loss == pytest.approx(plain.final_eval_loss, abs=2e-3)
