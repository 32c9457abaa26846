"""The staged training loop, in-process: phases, resume, divergence, the CLI's train command."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from stagetune.cli import main
from stagetune.data import prepare_data
from stagetune.schedule import build_schedule
from stagetune.trainables.loop import StagedTrainer, growth_seed
from stagetune.trainables.lr import lr_at
from stagetune.trainables.session import LocalSession, Session
from stagetune.trial import TrialDescription


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A trial of the configured schedule (what ``stagetune train`` runs), and its study."""

    trial: TrialDescription
    config: Any
    vocab_size: int

    @property
    def schedule(self) -> Any:
        return self.trial.schedule

    def trainer(self, session: Session) -> StagedTrainer:
        return StagedTrainer(self.trial, session, config=self.config, vocab_size=self.vocab_size)


def _spec(cfg: Any, *, lr: float | None = None) -> _Spec:
    vocab = prepare_data(cfg.data).vocab_size
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    return _Spec(dataclasses.replace(trial, lr=lr) if lr else trial, cfg, vocab)


class _Interrupt(Exception):
    pass


class _DyingSession(LocalSession):
    """Stops the run (like a killed process) after ``n`` reports."""

    def __init__(self, out: Path, n: int) -> None:
        super().__init__(out)
        self.n = n

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if len(self.records) >= self.n:
            raise _Interrupt


def test_resume_mid_stage_gives_identical_losses(fast_config, tmp_path: Path) -> None:
    """Bit for bit, with dropout: the checkpoint carries the generators' states."""
    torch.set_num_threads(1)
    cfg = fast_config(
        "schedule.increments=[2, 2]",
        "model.n_layer=4",
        "model.dropout=0.1",
        "schedule.growth=random",  # draws its own randomness at the stage boundary
        "train.checkpoint_every=5",
        "schedule.optimizer_policy=carry",
    )
    spec = _spec(cfg)
    full = LocalSession(tmp_path / "full")
    spec.trainer(full).run()

    dying = _DyingSession(tmp_path / "cut", n=4)
    with pytest.raises(_Interrupt):
        spec.trainer(dying).run()
    cut_step = dying.records[-1]["step"]
    # The run died after its 4th report; resume from the latest checkpoint in the same dir.
    resumed = LocalSession(tmp_path / "cut")
    trainer = spec.trainer(resumed)
    result = trainer.run()
    assert trainer.resumed_from_step is not None and 0 < trainer.resumed_from_step <= cut_step
    # Mid-stage: the checkpoint we resumed from is not on a phase boundary.
    boundaries = {ph.end_step for ph in spec.schedule.phases()}
    assert any(r["step"] not in boundaries for r in resumed.records)
    by_step = {r["step"]: r for r in full.records}
    assert resumed.records, "the resumed run reported nothing"
    for rec in resumed.records:
        ref = by_step[rec["step"]]
        for key in ("eval_loss", "train_loss", "lr", "flops", "tokens"):
            assert rec[key] == ref[key], (key, rec["step"], rec[key], ref[key])
    assert result.final_eval_loss == full.records[-1]["eval_loss"]


def test_divergence_stops_the_run_with_status(fast_config, tmp_path: Path) -> None:
    cfg = fast_config("train.grad_clip=0", "schedule.baseline_steps=40")
    spec = _spec(cfg, lr=1e6)
    session = LocalSession(tmp_path / "div")
    result = spec.trainer(session).run()
    assert result.status == "diverged"
    assert result.steps < spec.schedule.total_steps
    last = session.records[-1]
    assert last["status"] == "diverged" and not math.isfinite(last["train_loss"])


def test_phase_boundaries_grow_and_account_compute(fast_config, tmp_path: Path) -> None:
    cfg = fast_config("schedule.increments=[1, 3]", "model.n_layer=4", "schedule.continual_steps=4")
    spec = _spec(cfg)
    session = LocalSession(tmp_path / "run")
    trainer = spec.trainer(session)
    trainer.run()
    # Blocks added by growth are in the optimizer and actually took optimizer steps.
    for p in trainer.model.blocks[3].parameters():
        assert trainer.optimizer.state[p]["step"] > 0
    depths = [r["active_depth"] for r in session.records]
    assert depths[0] == 1 and depths[-1] == 4 and depths == sorted(depths)
    # Cumulative FLOPs equal the schedule's analytic total, in both conventions.
    total = spec.schedule.flops(trainer.dims, tokens_per_step=trainer.tokens_per_step)
    paper = spec.schedule.flops(
        trainer.dims, tokens_per_step=trainer.tokens_per_step, convention="paper"
    )
    assert session.records[-1]["flops"] == pytest.approx(total, rel=1e-12)
    assert session.records[-1]["flops_paper"] == pytest.approx(paper, rel=1e-12)
    # Evaluations sit at the study's fixed compute intervals (plus phase boundaries).
    interval = trainer.eval_interval_flops
    step_flops = max(b["flops"] - a["flops"] for a, b in zip(session.records, session.records[1:]))
    for k in range(1, int(total // interval) + 1):
        assert any(0 <= r["flops"] - k * interval < step_flops + 1 for r in session.records)


@pytest.mark.parametrize("lr_schedule", ["cosine", "wsd"])
def test_logged_lr_is_the_rate_the_step_trained_with(
    fast_config, tmp_path: Path, lr_schedule: str
) -> None:
    cfg = fast_config(
        f"train.lr_schedule={lr_schedule}",
        "train.warmup_steps=3",
        "schedule.baseline_steps=12",
        "train.eval_points=12",  # a record after every step
    )
    spec = _spec(cfg)
    session = LocalSession(tmp_path / "run")
    trainer = spec.trainer(session)
    used: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"])
    )
    trainer.run()
    t = cfg.train
    assert [r["step"] for r in session.records] == list(range(1, 13))
    for rec in session.records:
        step_lr = lr_at(
            rec["step"] - 1,
            peak=spec.trial.lr,
            total_steps=spec.schedule.total_steps,
            schedule=lr_schedule,
            warmup_steps=spec.trial.warmup_steps,
            min_lr_ratio=t.min_lr_ratio,
            decay_fraction=t.decay_fraction,
        )
        assert rec["lr"] == step_lr == used[rec["step"] - 1], rec["step"]
    assert len(set(used)) > 3, "the schedule must vary the rate for this test to mean anything"


def test_lr_schedules() -> None:
    assert lr_at(0, peak=1.0, total_steps=10) == 1.0
    assert lr_at(0, peak=1.0, total_steps=10, warmup_steps=4) == pytest.approx(0.25)
    cos = [
        lr_at(s, peak=1.0, total_steps=100, schedule="cosine", min_lr_ratio=0.1) for s in range(100)
    ]
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(cos))
    wsd = [
        lr_at(s, peak=1.0, total_steps=100, schedule="wsd", decay_fraction=0.2) for s in range(100)
    ]
    assert wsd[50] == 1.0 and wsd[99] < 0.2


def test_train_command_writes_metrics_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import FAST

    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--json", "--set", "schedule.num_stages=2"]
    for o in FAST:
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["flops"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval_loss"] == pytest.approx(summary["final_eval_loss"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["final_eval_loss"] == summary["final_eval_loss"]
    # The final checkpoint loads with from_pretrained at full depth.
    from transformers import AutoModelForCausalLM

    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1] / "hf"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.n_layer == 4


def test_growth_seed_is_distinct_per_trial_seed_and_stage() -> None:
    seeds = {growth_seed(seed, stage) for seed in range(50) for stage in range(1, 13)}
    assert len(seeds) == 50 * 12
    assert growth_seed(3, 2) == growth_seed(3, 2)  # the same on every rank and every resume


def test_a_trial_memory_maps_the_data_the_driver_prepared(fast_config: Any, tmp_path: Path) -> None:
    """Handed the driver's PreparedData (as a study's trials and Ray Train workers are), the
    loop prepares nothing itself: an empty cache stays empty and the tokens are the driver's."""
    spec = _spec(fast_config())
    data = prepare_data(spec.config.data)
    empty = tmp_path / "empty-cache"
    cfg = fast_config(f"data.cache_dir={empty}")
    trainer = StagedTrainer(
        spec.trial,
        LocalSession(tmp_path / "run"),
        config=cfg,
        vocab_size=spec.vocab_size,
        data=data,
    )
    assert trainer.data is data
    assert not empty.exists()


def test_prepared_data_elsewhere_is_not_used(fast_config: Any, tmp_path: Path) -> None:
    """A worker on a machine without the driver's token file (or with a truncated one) prepares
    its own."""
    data = prepare_data(fast_config().data)
    assert data.on_this_machine()
    missing = dataclasses.replace(
        data,
        segments=tuple(dataclasses.replace(s, path=tmp_path / "gone.bin") for s in data.segments),
    )
    assert not missing.on_this_machine()
    short = tmp_path / "short.bin"
    short.write_bytes(data.segments[0].path.read_bytes()[:10])
    truncated = dataclasses.replace(
        data, segments=(dataclasses.replace(data.segments[0], path=short),)
    )
    assert not truncated.on_this_machine()
