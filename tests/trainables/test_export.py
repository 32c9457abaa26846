"""Checkpoints a user can pick up: ``stagetune train`` exports its final model with its tokenizer
to a directory ``transformers`` loads directly, logs the run to MLflow like a study's trial, and
compares it with an earlier run given as ``--baseline``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from tests.conftest import FAST

SENTENCE = "def add(a, b):\n    return a + b  # stagetune\n"


def _train(out: Path, work: Path, *extra: str) -> list[str]:
    args = ["train", "--out", str(out), "--workdir", str(work), "--set", "name=exp"]
    for o in [*FAST, "model.n_layer=4", *extra]:
        args += ["--set", o]
    return args


def test_train_exports_a_loadable_model_and_compares_with_a_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = tmp_path / "work"
    base, grown = tmp_path / "base", tmp_path / "grown"
    assert main(_train(base, work, "schedule.num_stages=1")) == 0
    printed = capsys.readouterr().out
    final = base / "final"
    assert f"model and tokenizer: {final}" in printed
    assert "MLflow: experiment 'exp-train'" in printed

    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok(SENTENCE)["input_ids"]
    assert len(ids) > 5 and tok.decode(ids) == SENTENCE
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert model.config.num_hidden_layers == 4
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()

    code = main([*_train(grown, work, "schedule.increments=[2, 2]"), "--baseline", str(base),
                 "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_dir"] == str(grown / "final")
    cmp = summary["baseline"]
    assert cmp["dir"] == str(base) and cmp["delta"] == pytest.approx(
        cmp["eval_loss"] - cmp["baseline_eval_loss"]
    )
    # Both runs in the work directory's MLflow, named by schedule, on the compute step.
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("exp-train")
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(["baseline (base)", f"{summary['label']} (grown)"])
    assert summary["label"].startswith("S2[2-2]")
    assert all(r.data.tags["stagetune.status"] == "finished" for r in runs)
    assert all("eval_loss" in r.data.metrics and "tokens" in r.data.metrics for r in runs)


def test_baseline_that_is_no_train_run_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [*_train(out, tmp_path / "work"), "--baseline", str(tmp_path / "nothing")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--baseline" in err and "stagetune train" in err
    assert not out.exists()
