"""Compute-matched analysis on in-memory curves: interpolation, crossings, CIs, Pareto front."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagetune.errors import ConfigError
from stagetune.results.analysis import (
    Curve,
    Stat,
    StudyResults,
    TrialResult,
    compute_matched,
    pareto_front,
    t_quantile_975,
)

NAN = math.nan


def trial(
    tid: str,
    key: str,
    seed: str,
    flops: list[float],
    loss: list[float],
    *,
    baseline: bool = False,
    stage: list[float] | None = None,
    status: str = "finished",
    label: str | None = None,
) -> TrialResult:
    n = len(flops)
    curve = Curve(
        tokens=np.arange(1, n + 1, dtype=float) * 1000,
        flops=np.array(flops, dtype=float),
        flops_paper=np.array(flops, dtype=float) * 0.5,
        eval_loss=np.array(loss, dtype=float),
        train_loss=np.full(n, NAN),
        stage=np.array(stage if stage is not None else [1.0] * n),
    )
    return TrialResult(
        trial_id=tid,
        run_id=f"run-{tid}",
        status=status,
        is_baseline=baseline,
        seed=seed,
        schedule_key=key,
        label=label or key.upper(),
        params={"schedule_key": key},
        tags={},
        curve=curve,
    )


def study(*trials: TrialResult) -> StudyResults:
    return StudyResults(
        tracking_uri="sqlite:///unused.db",
        experiment="e",
        experiment_id="1",
        study_name="s",
        parent_run_id=None,
        trials=trials,
    )


BASE0 = trial("b0", "base", "0", [25, 50, 75, 100], [4.0, 3.5, 3.2, 3.0], baseline=True)
BASE1 = trial("b1", "base", "1", [25, 50, 75, 100], [4.1, 3.6, 3.3, 3.1], baseline=True)


def test_t_quantiles() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062047, abs=1e-6)
    assert t_quantile_975(10) == pytest.approx(2.2281389, abs=1e-6)
    assert t_quantile_975(60) == pytest.approx(2.0002978, abs=1e-5)
    assert t_quantile_975(10_000) == pytest.approx(1.96020, abs=1e-4)


def test_stat_mean_and_student_t_ci() -> None:
    st = Stat.of([0.7, 0.75, None])
    assert st.n == 2 and st.mean == pytest.approx(0.725)
    # sd = 0.05/sqrt(2); se = sd/sqrt(2) = 0.025; t(0.975, 1) = 12.7062
    assert st.half_width == pytest.approx(12.7062047 * 0.025)
    assert st.low == pytest.approx(0.725 - 0.3176551)
    one = Stat.of([3.0])
    assert one.mean == 3.0 and one.low is None and one.half_width is None
    assert Stat.of([None]).mean is None


def test_interpolation_crossing_speedup_and_groups() -> None:
    a0 = trial("a0", "a", "0", [20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8])
    a1 = trial("a1", "a", "1", [20, 40, 60, 80, 100], [4.0, 3.5, 3.25, 3.05, 2.95])
    b1 = trial("b1x", "b", "1", [30, 60, 90, 120], [4.3, 3.9, 3.6, 3.3])
    outs = compute_matched(study(BASE0, BASE1, a0, a1, b1))
    assert [o.schedule_key for o in outs] == ["baseline", "a", "b"]
    base, a, b = outs

    assert base.is_baseline and base.speedup.mean == 1.0
    assert base.final_eval_loss.mean == pytest.approx(3.05)  # the baseline's seed spread
    assert base.final_eval_loss.half_width == pytest.approx(12.7062047 * 0.05)

    t0, t1 = a.trials
    # Seed 0: baseline ends at (100, 3.0); crossing 3.0 between (60, 3.1) and (80, 2.9) -> 70.
    assert t0.loss_at_baseline_compute == pytest.approx(2.8)
    assert t0.loss_delta == pytest.approx(-0.2)
    assert t0.compute_to_baseline_loss == pytest.approx(70)
    assert t0.speedup == pytest.approx(100 / 70)
    # Seed 1: target 3.1 between (60, 3.25) and (80, 3.05) -> 60 + 0.15/0.2*20 = 75.
    assert t1.compute_to_baseline_loss == pytest.approx(75)
    assert a.reached and a.n_reached == 2
    assert a.compute_fraction.mean == pytest.approx(0.725)
    assert a.compute_fraction.low == pytest.approx(0.725 - 0.3176551, abs=1e-6)
    assert a.speedup.mean == pytest.approx((100 / 70 + 100 / 75) / 2)
    assert a.loss_delta.mean == pytest.approx(-0.175)
    assert a.baseline_final_loss.mean == pytest.approx(3.05)

    # Seed 1 only: loss at 100 interpolated between (90, 3.6) and (120, 3.3) = 3.5.
    (tb,) = b.trials
    assert tb.loss_at_baseline_compute == pytest.approx(3.5)
    assert tb.loss_delta == pytest.approx(0.4)
    assert tb.compute_to_baseline_loss is None and tb.speedup is None
    assert not b.reached and b.compute_fraction.mean is None


def test_short_trial_gets_none_unless_within_tolerance() -> None:
    short = trial("s", "s", "0", [30, 60, 90], [4.2, 3.8, 3.5], status="stopped")
    nearly = trial("n", "n", "0", [33, 66, 99.5], [4.0, 3.6, 3.2])
    outs = {o.schedule_key: o for o in compute_matched(study(BASE0, short, nearly))}
    assert outs["s"].trials[0].loss_at_baseline_compute is None
    assert outs["s"].trials[0].loss_delta is None
    # 99.5 is within 1% of 100: its last loss stands in.
    assert outs["n"].trials[0].loss_at_baseline_compute == pytest.approx(3.2)
    strict = {o.schedule_key: o for o in compute_matched(study(BASE0, nearly), rel_tol=0.0)}
    assert strict["n"].trials[0].loss_at_baseline_compute is None


def test_crossing_at_first_point_and_paper_axis() -> None:
    early = trial("e", "e", "0", [10, 20], [2.9, 2.5])
    outs = {o.schedule_key: o for o in compute_matched(study(BASE0, early))}
    assert outs["e"].trials[0].compute_to_baseline_loss == pytest.approx(10)
    paper = {o.schedule_key: o for o in compute_matched(study(BASE0, early), convention="paper")}
    assert paper["e"].trials[0].compute_to_baseline_loss == pytest.approx(5)
    assert paper["baseline"].trials[0].baseline_compute == pytest.approx(50)
    with pytest.raises(ConfigError, match="convention"):
        compute_matched(study(BASE0), convention="papr")


def test_trial_without_same_seed_baseline_is_left_out() -> None:
    other = trial("o", "o", "7", [10, 20], [3.5, 3.0])
    keys = [o.schedule_key for o in compute_matched(study(BASE0, other))]
    assert keys == ["baseline"]


def test_stage_boundaries() -> None:
    t = trial("a", "a", "0", [20, 40, 60, 80], [4, 3.5, 3.2, 3.0], stage=[1, 1, 2, 3])
    assert t.curve.stage_boundaries() == [(60.0, 2), (80.0, 3)]


def test_pareto_front() -> None:
    a0 = trial("a0", "a", "0", [20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8])
    b0 = trial("b0x", "b", "0", [30, 60, 90, 105], [4.2, 3.8, 3.5, 3.4])
    c0 = trial("c0", "c", "0", [20, 40], [3.95, 3.7], status="diverged")
    outs = compute_matched(study(BASE0, a0, b0, c0))
    # baseline (100, 3.0) and b (105, 3.4) are dominated by a (100, 2.8); c is cheapest.
    assert [o.schedule_key for o in pareto_front(outs)] == ["c", "a"]


def test_rows_with_the_same_label_stay_apart() -> None:
    x = trial("x", "key-x-123456789", "0", [50, 100], [3.4, 2.9], label="S2[2-2]")
    y = trial("y", "key-y-987654321", "0", [50, 100], [3.5, 3.1], label="S2[2-2]")
    labels = [o.label for o in compute_matched(study(BASE0, x, y))]
    assert labels == ["baseline", "S2[2-2] [key-x-12]", "S2[2-2] [key-y-98]"]
