"""The driver's callbacks: live progress (the best trial relative to the baseline at equal
compute) and MLflow tracking of each trial's end."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagetune.orchestration.callbacks import TrialLedger


def _feed(
    ledger: TrialLedger, trial: str, points: list[tuple[float, float]], **extra: object
) -> None:
    for flops, loss in points:
        ledger.add(trial, {"flops": flops, "eval_loss": loss, **extra})


def test_best_is_compared_at_equal_compute() -> None:
    ledger = TrialLedger()
    _feed(ledger, "staged", [(10.0, 5.0), (20.0, 4.0), (29.0, 3.5)])
    assert ledger.best_matched() is None  # no finished baseline yet
    _feed(ledger, "base", [(10.0, 5.5), (20.0, 4.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    # The staged trial ended at 29 FLOPs, just short of the baseline's 30: compared there.
    _feed(ledger, "worse", [(10.0, 6.0), (20.0, 5.5)])
    trial, mine, base, at = ledger.best_matched()  # type: ignore[misc]
    assert trial == "staged" and at == 29.0
    assert mine == pytest.approx(3.5) and base == pytest.approx(4.05)


def test_only_the_baseline_reports_itself() -> None:
    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    assert ledger.best_matched() == ("base", 4.0, 4.0, 30.0)


def test_the_live_line_compares_with_the_best_full_depth_trial() -> None:
    """An lr-tuned full-depth trial that ends lower than the baseline is the live reference;
    full-depth trials of the confirmation round (other seeds) are not candidates."""
    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (30.0, 4.0)], is_baseline=True, full_depth=True)
    _feed(ledger, "lr2", [(10.0, 5.0), (30.0, 3.6)], full_depth=True)
    _feed(ledger, "lucky", [(10.0, 4.0), (30.0, 3.0)], full_depth=True, confirmation=True)
    _feed(ledger, "staged", [(10.0, 5.2), (30.0, 3.8)])
    for t in ("base", "lr2", "lucky", "staged"):
        ledger.status[t] = "finished"
    assert ledger.reference_id() == "lr2"
    trial, mine, ref, at = ledger.best_matched()  # type: ignore[misc]
    # Against the baseline "staged" would lead by 0.2; against the reference it trails by
    # 0.2. Full-depth trials are candidates for the reference, never the best schedule.
    assert (trial, at) == ("staged", 30.0)
    assert mine == pytest.approx(3.8) and ref == pytest.approx(3.6)
    del ledger.status["lr2"]  # not finished yet: the baseline is the reference so far
    assert ledger.reference_id() == "base"


def test_a_stopped_trial_is_tagged_with_the_rung_asha_read(tmp_path: Path) -> None:
    """ASHA places its rungs on the matching convention's FLOPs (``flops_paper`` for a
    ``paper`` study): a stopped trial's ``stagetune.asha_rung`` is that value (it used to be
    the standard ``flops``, a number on no rung). The progress line names trials by label."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from stagetune.metrics import FLOPS_PAPER
    from stagetune.orchestration.callbacks import MlflowCallback, ProgressCallback
    from stagetune.results import MlflowTracker
    from stagetune.results.naming import TAG_ASHA_RUNG, TAG_LABEL, TAG_TRIAL_ID

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "rungs", spool_dir=tmp_path / "spool")
    tracker.start_study(study_name="rungs", params={}, tags={})
    labels = {"base": "baseline", "staged": "S2[2-2] zero/new_only +5c lr=0.001"}

    def describe(params: dict, trial_id: str) -> dict:
        return {"params": dict(params), "tags": {TAG_LABEL: labels[trial_id]}}

    ledger = TrialLedger()
    mlflow_cb = MlflowCallback(tracker, ledger, describe=describe, rung_metric=FLOPS_PAPER)
    base = Trial("train_trial", config={"num_stages": 1}, trial_id="base", stub=True)
    staged = Trial("train_trial", config={"num_stages": 2}, trial_id="staged", stub=True)
    for trial in (base, staged):
        mlflow_cb.on_trial_start(0, [base, staged], trial)
    for flops, loss in [(10.0, 5.5), (20.0, 4.5), (30.0, 4.0)]:
        record = {"flops": flops, FLOPS_PAPER: flops / 2, "eval_loss": loss, "tokens": flops}
        if flops == 30.0:
            record["status"] = "finished"
        mlflow_cb.on_trial_result(0, [base, staged], base, {**record, "is_baseline": True})
    mlflow_cb.on_trial_complete(0, [base, staged], base)
    record = {"flops": 12.0, FLOPS_PAPER: 7.0, "eval_loss": 5.0, "tokens": 12}
    mlflow_cb.on_trial_result(0, [base, staged], staged, record)
    mlflow_cb.on_trial_complete(0, [base, staged], staged)  # no final status: ASHA stopped it

    assert ledger.status == {"base": "finished", "staged": "stopped"}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rungs")
    (run,) = client.search_runs([exp.experiment_id], f"tags.`{TAG_TRIAL_ID}` = 'staged'")
    assert run.data.tags[TAG_ASHA_RUNG] == "7"
    line = ProgressCallback(ledger, planned_flops=60.0, total_trials=2).line([base, staged])
    # Stopped at 12 of the baseline's 30 FLOPs: never the best at the reference's compute.
    assert "best: the reference, 4.0000" in line


def test_live_best_stays_at_the_baselines_compute() -> None:
    """The best is measured at one compute point, the baseline's final one: a trial that is
    ahead early (at 10 FLOPs) does not displace one measured there."""
    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (20.0, 4.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    _feed(ledger, "good", [(10.0, 5.4), (20.0, 4.4), (30.0, 3.9)])
    _feed(ledger, "early", [(10.0, 4.0)])  # far better, but only at 10 FLOPs
    best = ledger.best_matched()
    assert best is not None and best.trial_id == "good" and best.compute == 30.0


def test_progress_lines_say_elapsed_eta_running_and_best(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from stagetune.orchestration.callbacks import ProgressCallback

    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (30.0, 4.0)], is_baseline=True)
    ledger.status["base"] = "finished"
    _feed(ledger, "s2", [(15e12, 5.0)])
    ledger.labels.update({"base": "baseline", "s2": "S2[2-2] zero/new_only +5c lr=0.001"})
    trials = [SimpleNamespace(trial_id="base", status="TERMINATED"),
              SimpleNamespace(trial_id="s2", status="RUNNING")]  # fmt: skip
    cb = ProgressCallback(ledger, planned_flops=60e12, total_trials=4, live=False)
    head, running, best = cb.lines(trials)
    assert "trials 1 done, 1 running" in head and "of 4" in head
    assert "compute 15.0 TFLOPs of 60.0 TFLOPs (25%)" in head
    assert "elapsed 0s" in head and "ETA ~" in head
    assert running == "running: S2[2-2] zero/new_only +5c lr=0.001"
    assert best.startswith("best: the reference")
    # Piped: plain lines, at most one per interval plus one per finished trial.
    for _ in range(50):
        cb.on_step_end(0, trials)
    cb.on_trial_complete(0, trials, trials[0])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("[stagetune] trials") for line in out)


def test_live_display_redraws_in_place_and_ends_with_the_last_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a terminal the display is a rich live panel: redrawn, then left as it ended."""
    from types import SimpleNamespace

    from stagetune.orchestration.callbacks import ProgressCallback

    ledger = TrialLedger()
    _feed(ledger, "base", [(10.0, 5.5), (30.0, 4.0)], is_baseline=True)
    trials = [SimpleNamespace(trial_id="base", status="RUNNING")]
    cb = ProgressCallback(ledger, planned_flops=60.0, total_trials=2, live=True)
    for _ in range(5):
        cb.on_step_end(0, trials)
    ledger.status["base"] = "finished"
    cb.on_experiment_end(trials)
    out = capsys.readouterr().out
    assert "trials 1 done" in out and "running: base" in out
    assert cb._panel is None  # stopped: the terminal is the user's again
    import pickle

    assert pickle.loads(pickle.dumps(cb)).ledger.status == {"base": "finished"}
