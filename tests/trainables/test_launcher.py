"""The one launcher: the Ray Train workers, resources and backend ``train`` and ``run`` ask for;
the same loop on several workers (DDP, FSDP2 on gloo) matches one worker, and resumes exactly
after the workers are restarted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from stagetune.cli import main
from stagetune.config import config_to_dict
from stagetune.data import prepare_data
from stagetune.schedule import baseline_schedule, build_schedule
from stagetune.trainables.checkpoint import MANIFEST, STATE
from stagetune.trainables.launcher import TRAIN_CHECKPOINTS_KEPT, TrainRun, torch_trainer
from stagetune.trainables.loop import StagedTrainer
from stagetune.trainables.rng_state import RNG_FILE
from stagetune.trainables.session import LocalSession
from stagetune.trial import TrialDescription
from tests.conftest import FAST


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("command", ["train", "run"])
def test_workers_get_their_gpus_and_the_backend_that_fits(
    fast_config: Any, tmp_path: Path, command: str, gpus: int, workers: int
) -> None:
    """``train --workers N`` and a study's trials build one TorchTrainer: GPU workers ask for
    their GPUs and talk NCCL, CPU workers ask for CPUs only and talk gloo. (``train`` used to
    build its own: gloo and CPU-only workers even with ``resources.gpus_per_worker=1``.) One
    worker too: the GPU check drives a one-GPU Ray Train run through this same trainer."""
    cfg = fast_config(
        f"resources.workers_per_trial={workers}",
        "resources.cpus_per_worker=2",
        f"resources.gpus_per_worker={gpus}",
    )
    trial = TrialDescription.from_config(cfg, schedule=baseline_schedule(4, 24))
    if command == "train":  # what `stagetune train --out OUT` launches
        run = TrainRun.for_directory(tmp_path / "out")
    else:  # what each trial of `stagetune run` launches
        run = TrainRun.for_study_trial(str(tmp_path / "train"), "trial_1")
    trainer = torch_trainer(trial, config=cfg, vocab_size=512, run=run)  # built, not started

    scaling = trainer.scaling_config
    assert scaling.num_workers == workers
    assert scaling.use_gpu is (gpus > 0)
    assert scaling.placement_strategy == "PACK"  # resources.placement_strategy's default
    assert scaling.resources_per_worker == ({"CPU": 2, "GPU": 1} if gpus else {"CPU": 2})
    assert trainer.backend_config.backend == ("nccl" if gpus else "gloo")
    kept = trainer.run_config.checkpoint_config.num_to_keep
    if command == "train":
        assert trainer.run_config.storage_path == str(tmp_path / "out" / "ray")
        assert kept is None and not run.report_to_tune
    else:
        # Tune hears rank 0 (TuneReportCallback, added where a Tune session runs).
        assert trainer.run_config.name == "train_trial_1"
        assert kept == TRAIN_CHECKPOINTS_KEPT and run.report_to_tune
    loop = trainer.train_loop_config or {}
    assert TrialDescription.from_dict(loop["trial"]) == trial


def _train(out: Path, *extra: str) -> dict:
    args = ["train", "--out", str(out), "--workdir", str(out.parent / "work"), "--json"]
    for o in [
        *FAST,
        "schedule.increments=[2, 2]",
        "model.n_layer=4",
        "schedule.continual_steps=4",
        *extra,
    ]:
        args += ["--set", o]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_match_one_worker(ray_local: None, tmp_path: Path, strategy: str) -> None:
    one = _train(tmp_path / "one")
    two = _train(
        tmp_path / "two", "resources.workers_per_trial=2", f"resources.strategy={strategy}"
    )
    assert two["status"] == "finished"
    # Same global batch (the data stream shards it by rank), so the same training up to
    # floating-point reduction order.
    assert two["flops"] == one["flops"] and two["tokens"] == one["tokens"]
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=2e-3)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 3


def _ddp_run(
    trial: TrialDescription,
    cfg: Any,
    vocab: int,
    out: Path,
    *,
    die_after_checkpoints: int,
    storage: Path,
) -> list[dict[str, Any]]:
    """Train ``trial`` on two Ray Train workers (DDP); rank 0 appends each record to a file.

    With ``die_after_checkpoints``, the first attempt's workers fail right after that many
    checkpoints and Ray Train restarts them (``FailureConfig``) from its newest checkpoint.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def loop(config: dict[str, Any]) -> None:
        # Defined here so Ray ships it by value to the workers.
        import ray.train
        import torch

        from stagetune.config import config_from_dict
        from stagetune.trainables.loop import StagedTrainer
        from stagetune.trainables.session import TrainWorkerSession
        from stagetune.trial import TrialDescription

        torch.set_num_threads(1)
        first_attempt = ray.train.get_checkpoint() is None
        log = Path(config["log"])

        class Recording(TrainWorkerSession):
            checkpoints = 0

            def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
                super().report(metrics, checkpoint_dir)
                if self.rank == 0:
                    with log.open("a") as f:
                        f.write(json.dumps({**metrics, "first_attempt": first_attempt}) + "\n")
                self.checkpoints += checkpoint_dir is not None
                if first_attempt and self.checkpoints == config["die_after"] > 0:
                    raise RuntimeError("injected worker failure")

        trainer = StagedTrainer(
            TrialDescription.from_dict(config["trial"]),
            Recording(Path(config["local_root"])),
            config=config_from_dict(config["config"], check_names=False),
            vocab_size=config["vocab_size"],
        )
        trainer.run()
        if trainer.rank == 0:
            with log.open("a") as f:
                f.write(json.dumps({"resumed_from_step": trainer.resumed_from_step}) + "\n")

    log = out / "records.jsonl"
    out.mkdir(parents=True)
    TorchTrainer(
        loop,
        train_loop_config={
            "trial": trial.to_dict(),
            "config": config_to_dict(cfg),
            "vocab_size": vocab,
            "local_root": str(out / "workers"),
            "log": str(log),
            "die_after": die_after_checkpoints,
        },
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=out.name, storage_path=str(storage), failure_config=FailureConfig(max_failures=1)
        ),
    ).fit()
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_ddp_resume_with_dropout_is_exact(
    ray_local: None, fast_config: Any, tmp_path: Path
) -> None:
    """Per-rank generator states: two DDP workers restarted from a checkpoint train on to the
    same losses, bit for bit, as two that never stopped (dropout 0.1)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # Train registers promptly
    cfg = fast_config(
        "model.dropout=0.1",
        "schedule.increments=[2, 2]",
        "schedule.continual_steps=4",
        "train.checkpoint_every=4",
        "resources.workers_per_trial=2",
    )
    vocab = prepare_data(cfg.data).vocab_size
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    storage = tmp_path / "ray"
    ref = _ddp_run(trial, cfg, vocab, tmp_path / "ref", die_after_checkpoints=0, storage=storage)
    cut = _ddp_run(trial, cfg, vocab, tmp_path / "cut", die_after_checkpoints=3, storage=storage)

    assert ref[-1]["resumed_from_step"] is None
    resumed_from = cut[-1]["resumed_from_step"]
    first = [r for r in cut[:-1] if r["first_attempt"]]
    after = [r for r in cut[:-1] if not r["first_attempt"]]
    assert first and after and resumed_from, "the workers were restarted from a checkpoint"
    assert 0 < resumed_from <= first[-1]["step"] and after[0]["step"] > resumed_from
    by_step = {r["step"]: r for r in ref[:-1]}
    assert after[-1]["step"] == trial.schedule.total_steps == ref[-2]["step"]
    for rec in first + after:
        want = by_step[rec["step"]]
        for key in ("eval_loss", "train_loss", "lr", "flops"):
            assert rec[key] == want[key], (key, rec["step"], rec[key], want[key])
    # Every rank's generators travel with the checkpoint.
    ckpt = next((tmp_path / "cut" / "workers" / "rank0").glob("step_*"))
    assert sorted(load_file(str(ckpt / RNG_FILE))) == ["rank0.cpu", "rank1.cpu"]


def _train_checkpoints(storage: Path, run: str) -> dict[int, Path]:
    """Step -> a Ray Train run's stored checkpoint (every rank's files merged)."""
    out = {}
    for d in (storage / run).glob("checkpoint_*/"):
        out[json.loads((d / STATE).read_text())["step"]] = d
    return out


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_resume_at_two_and_one_workers(
    ray_local: None, fast_config: Any, tmp_path: Path
) -> None:
    """FSDP2 checkpoints hold each rank's shards (torch.distributed.checkpoint), not a full
    state gathered on rank 0; the manifest covers every rank's files (an altered shard sends
    the resume to the previous good checkpoint); two restarted workers
    train on to the uninterrupted run's losses bit for bit, one process resharded from the
    same checkpoints to the same losses (up to reduction order); the final checkpoint holds
    the model in Hugging Face format."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    cfg = fast_config(
        "schedule.increments=[2, 2]",
        "schedule.continual_steps=4",
        "train.checkpoint_every=4",
        "resources.workers_per_trial=2",
        "resources.strategy=fsdp",
    )
    vocab = prepare_data(cfg.data).vocab_size
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    storage = tmp_path / "ray"
    ref = _ddp_run(trial, cfg, vocab, tmp_path / "ref", die_after_checkpoints=0, storage=storage)
    cut = _ddp_run(trial, cfg, vocab, tmp_path / "cut", die_after_checkpoints=2, storage=storage)
    total = trial.schedule.total_steps
    by_step = {r["step"]: r for r in ref[:-1]}
    assert ref[-2]["step"] == total

    # Stored checkpoints: each rank's shards, all of them in the manifest; HF only at the end.
    ckpts = _train_checkpoints(storage, "ref")
    assert len(ckpts) >= 3 and max(ckpts) == total, sorted(ckpts)
    for step, d in ckpts.items():
        manifest = json.loads((d / MANIFEST).read_text())
        shards = sorted(k for k in manifest if k.startswith("dcp/"))
        assert shards == ["dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"], shards
        assert not (d / "optimizer.pt").exists()
        assert (d / "hf" / "model.safetensors").is_file() is (step == total), step

    # World size 2: restarted workers resume from a sharded checkpoint, exactly.
    resumed_from = cut[-1]["resumed_from_step"]
    after = [r for r in cut[:-1] if not r["first_attempt"]]
    assert resumed_from and after and after[-1]["step"] == total
    for rec in after:
        want = by_step[rec["step"]]
        for key in ("eval_loss", "train_loss", "lr", "flops"):
            assert rec[key] == want[key], (key, rec["step"], rec[key], want[key])

    # World size 1: one process reshards the two ranks' checkpoint and trains on. A newer
    # checkpoint whose rank-1 shard was altered fails its checksum and is skipped.
    mid, newer = sorted(s for s in ckpts if 0 < s < total)[:2]
    one = tmp_path / "one"
    shutil.copytree(ckpts[mid], one / "checkpoints" / f"step_{mid:08d}")
    bad = one / "checkpoints" / f"step_{newer:08d}"
    shutil.copytree(ckpts[newer], bad)
    shard = bad / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    session = LocalSession(one)
    result = StagedTrainer(trial, session, config=cfg, vocab_size=vocab).run()
    assert result.resumed_from_step == mid and result.steps == total
    assert [r["step"] for r in session.records] == [s for s in sorted(by_step) if s > mid]
    # Right after the resume the model and the optimizer are the two ranks' to float
    # precision; further on one process drifts from two by reduction order, as much as an
    # uninterrupted one-process run does (test_two_workers_match_one_worker's tolerance).
    first = session.records[0]
    assert first["eval_loss"] == pytest.approx(by_step[first["step"]]["eval_loss"], rel=1e-5)
    assert first["train_loss"] == pytest.approx(by_step[first["step"]]["train_loss"], rel=1e-5)
    for rec in session.records:
        want = by_step[rec["step"]]
        assert rec["eval_loss"] == pytest.approx(want["eval_loss"], abs=2e-3), rec["step"]
        assert rec["flops"] == want["flops"]
