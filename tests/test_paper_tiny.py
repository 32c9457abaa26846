"""The paper's study at small scale: `stagetune run --preset paper-tiny`, end to end.

arXiv 2411.18700's shape on the embedded default (L = 4): the baseline, S ∈ {2, 4} uniform stages
with each phase T/(2S) steps, random growth, the paper's freeze policy, and continual training
of {0, 0.5, 1, 1.5, 2} × the budget-matched length or the paper's T steps: exactly 1 + 2 × 6
trials, each once. The report must say whether, and at what compute ratio, the incremental
schedules reached the reference's loss.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from stagetune.config import load_config
from tests.conftest import FAST

MULTIPLES: tuple[float | str, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, "T")
EXPECTED_POINTS = {(1, None)} | {(s, m) for s in (2, 4) for m in MULTIPLES}
T = 16  # baseline steps: 2S divides T for S = 2 and 4, so every phase is exactly T/(2S)


def _multiple(value: str) -> float | str:
    return value if value == "T" else float(value)


def test_preset_enumerates_the_papers_grid() -> None:
    """The preset's sampler walks the whole grid once, baseline first (no Ray, no training)."""
    from stagetune.orchestration.samplers import make_sampler
    from stagetune.search_spaces import SpaceContext, get_search_space

    cfg = load_config(preset="paper-tiny")
    assert cfg.model.n_layer == 4 and cfg.search.space == "paper"
    assert cfg.search.num_trials == len(EXPECTED_POINTS) == 13
    assert cfg.search.sampler == "bruteforce" and not cfg.search.early_stopping
    assert cfg.search.seeds == 3 and cfg.train.recipe == "paper"
    assert (cfg.schedule.growth, cfg.schedule.freeze_policy) == ("random", "paper")
    assert cfg.train.lr_schedule == "constant"
    space = get_search_space(cfg.search.space)
    ctx = SpaceContext.from_config(cfg, vocab_size=cfg.data.vocab_size)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # As run_study drives it: the baseline enqueued, then the define-by-run space.
    study = optuna.create_study(sampler=make_sampler(cfg, space))
    study.enqueue_trial(space.baseline_point(ctx))
    points: list[tuple[int, float | str | None]] = []

    def objective(trial: optuna.Trial) -> float:
        params = space.define(trial, ctx) or {}
        points.append((params["num_stages"], params.get("continual_multiple")))
        assert space.build(params, ctx).is_baseline == (params["num_stages"] == 1)
        return 0.0

    # One more than the grid: the sampler itself stops the study once the grid is done.
    study.optimize(objective, n_trials=cfg.search.num_trials + 1)
    assert len(points) == cfg.search.num_trials
    assert points[0] == (1, None)
    assert len(set(points)) == len(points) and set(points) == EXPECTED_POINTS


@pytest.mark.slow
def test_paper_tiny_study(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    overrides = [o for o in FAST if not o.startswith(("schedule.baseline_steps", "train.eval"))]
    overrides += [f"schedule.baseline_steps={T}", "train.eval_points=4", "data.eval_batches=1"]
    # Four trials side by side on the two test CPUs: a trial is mostly start-up, not training.
    overrides += ["resources.cpus_per_worker=0.5"]
    args = ["run", "--preset", "paper-tiny", "--workdir", str(workdir), "--json", "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)

    # Optuna enumerated the paper's grid: every point exactly once, the baseline first.
    study = optuna.load_study(
        study_name="stagetune-paper-tiny", storage=f"sqlite:///{workdir / 'optuna.db'}"
    )
    points = [(t.params["num_stages"], t.params.get("continual_multiple")) for t in study.trials]
    assert points[0] == (1, None)
    assert len(points) == len(set(points)) and set(points) == EXPECTED_POINTS

    # MLflow: one child run per point, all finished, with the paper's recipe.
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stagetune-paper-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`stagetune.role` = 'trial'")
    assert len(runs) == 13
    assert {r.data.tags["stagetune.status"] for r in runs} == {"finished"}
    baselines = [r for r in runs if r.data.tags["stagetune.is_baseline"] == "true"]
    assert len(baselines) == 1
    seen = set()
    for r in runs:
        p = r.data.params
        s = int(p["num_stages"])
        if s == 1:
            continue
        seen.add((s, _multiple(p["continual_multiple"])))
        assert (p["growth"], p["freeze_policy"]) == ("random", "paper")
        assert p["increments"] == "-".join([str(4 // s)] * s)
        half = T // (2 * s)  # each phase T/(2S); the first stage has no older blocks to freeze
        assert p["phase1_steps"] == "-".join(["0"] + [str(half)] * (s - 1))
        assert p["phase2_steps"] == "-".join([str(2 * half)] + [str(half)] * (s - 1))
    assert seen == EXPECTED_POINTS - {(1, None)}
    # Continual length grows with the multiple, from none (the stages alone) upwards.
    for s in (2, 4):
        steps = sorted(
            (float(r.data.params["continual_multiple"]), int(r.data.params["continual_steps"]))
            for r in runs
            if r.data.params["num_stages"] == str(s) and r.data.params["continual_multiple"] != "T"
        )
        assert steps[0] == (0.0, 0) and steps[-1][1] > 0
        (paper_t,) = (
            r for r in runs
            if r.data.params["num_stages"] == str(s) and r.data.params["continual_multiple"] == "T"
        )  # fmt: skip
        assert int(paper_t.data.params["continual_steps"]) == T
        assert all(b[1] >= a[1] for a, b in itertools.pairwise(steps))

    # The report answers the paper's question in its terms, for each S.
    verdict = report["verdict"]
    paper = verdict.split("\n\n")[-1]
    assert paper.startswith("Paper study (the shape of arXiv 2411.18700")
    assert (
        "continual training up to 2× the budget-matched length, and T steps as in the paper"
        in paper
    )
    answer = re.search(
        r": (yes, the incremental schedules reached the reference's final eval loss of [\d.]+ "
        r"\([^)]*\); the earliest, S=[24], with (?P<ratio>[\d.]+)× the reference's compute"
        r"|no, no incremental schedule reached the reference's final eval loss of [\d.]+)",
        paper,
    )
    assert answer, paper
    for s in (2, 4):
        assert re.search(
            rf"S={s} (reached it at [\d.]+× the reference's compute"
            rf"|did not reach it within [\d.]+× the reference's compute)",
            paper,
        ), paper
    rows = {r["schedule"]: r for r in report["outcomes"]}
    if answer.group("ratio"):
        best = min(
            r["compute_fraction"]["mean"]
            for r in rows.values()
            if not r["is_baseline"] and r["reached"]
        )
        assert float(answer.group("ratio")) == pytest.approx(best, abs=0.006)
    else:
        assert not any(r["reached"] for r in rows.values() if not r["is_baseline"])
    md = (workdir / "report" / "report.md").read_text()
    assert paper in md
