"""The same loop on several Ray Train workers (DDP, FSDP2 on gloo) matches one worker, and
resumes exactly after the workers are restarted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from stagetune.cli import main
from stagetune.data import prepare_data
from stagetune.schedule import build_schedule
from stagetune.trainables.rng_state import RNG_FILE
from stagetune.trainables.spec import TrialSpec
from tests.conftest import FAST


def _train(out: Path, *extra: str) -> dict:
    args = ["train", "--out", str(out), "--json"]
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
    spec: TrialSpec, out: Path, *, die_after_checkpoints: int, storage: Path
) -> list[dict[str, Any]]:
    """Train ``spec`` on two Ray Train workers (DDP); rank 0 appends each record to a file.

    With ``die_after_checkpoints``, the first attempt's workers fail right after that many
    checkpoints and Ray Train restarts them (``FailureConfig``) from its newest checkpoint.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def loop(config: dict[str, Any]) -> None:
        # Defined here so Ray ships it by value to the workers.
        import ray.train
        import torch

        from stagetune.trainables.loop import StagedTrainer
        from stagetune.trainables.session import TrainWorkerSession

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

        spec = TrialSpec.from_dict(config["spec"])
        trainer = StagedTrainer(spec, Recording(Path(config["local_root"])))
        trainer.run()
        if trainer.rank == 0:
            with log.open("a") as f:
                f.write(json.dumps({"resumed_from_step": trainer.resumed_from_step}) + "\n")

    log = out / "records.jsonl"
    out.mkdir(parents=True)
    TorchTrainer(
        loop,
        train_loop_config={
            "spec": spec.to_dict(),
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
    spec = TrialSpec.from_config(
        cfg, schedule=build_schedule(cfg, vocab_size=vocab), vocab_size=vocab
    )
    storage = tmp_path / "ray"
    ref = _ddp_run(spec, tmp_path / "ref", die_after_checkpoints=0, storage=storage)
    cut = _ddp_run(spec, tmp_path / "cut", die_after_checkpoints=3, storage=storage)

    assert ref[-1]["resumed_from_step"] is None
    resumed_from = cut[-1]["resumed_from_step"]
    first = [r for r in cut[:-1] if r["first_attempt"]]
    after = [r for r in cut[:-1] if not r["first_attempt"]]
    assert first and after and resumed_from, "the workers were restarted from a checkpoint"
    assert 0 < resumed_from <= first[-1]["step"] and after[0]["step"] > resumed_from
    by_step = {r["step"]: r for r in ref[:-1]}
    assert after[-1]["step"] == spec.schedule.total_steps == ref[-2]["step"]
    for rec in first + after:
        want = by_step[rec["step"]]
        for key in ("eval_loss", "train_loss", "lr", "flops"):
            assert rec[key] == want[key], (key, rec["step"], rec[key], want[key])
    # Every rank's generators travel with the checkpoint.
    ckpt = next((tmp_path / "cut" / "workers" / "rank0").glob("step_*"))
    assert sorted(load_file(str(ckpt / RNG_FILE))) == ["rank0.cpu", "rank1.cpu"]
