"""The same loop on several Ray Train workers (DDP, FSDP2 on gloo) matches one worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagetune.cli import main
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
