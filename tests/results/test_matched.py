"""Compute-matched outcomes on in-memory curves: interpolation, crossings, groups over seeds,
the equal-compute comparison, order, Pareto front; and on a study read back from MLflow.

Equal-compute comparison: every trial against the baseline at min(its end, the baseline's end).
The baseline (seed 0) evaluates at (25, 4.0) (50, 3.5) (75, 3.2) (100, 3.0); seed 1 at the same
FLOPs with 4.1 3.6 3.3 3.1 (``BASE0`` / ``BASE1`` of :mod:`tests.results.helpers`). Between 75
and 100 its seed-0 loss falls 0.2 per 25 FLOPs, so at 95 it is 3.2 - 0.2 * 20/25 = 3.04 and at
90 it is 3.2 - 0.2 * 15/25 = 3.08; seed 1 is 0.1 higher.
"""

from __future__ import annotations

import math

import pytest

from stagetune.errors import ConfigError
from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import Outcome, compute_matched, pareto_front
from tests.results.helpers import BASE0, BASE1, E12, study, trial

NAN = math.nan


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


def test_pareto_front() -> None:
    a0 = trial("a0", "a", "0", [20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8])
    b0 = trial("b0x", "b", "0", [30, 60, 90, 105], [4.2, 3.8, 3.5, 3.4])
    c0 = trial("c0", "c", "0", [20, 40], [3.95, 3.7], status="diverged")
    outs = compute_matched(study(BASE0, a0, b0, c0))
    # baseline (100, 3.0) and b (105, 3.4) are dominated by a (100, 2.8); c is cheapest but
    # diverged: it ended cheap for what it did not train, so it is off the front.
    assert [o.schedule_key for o in pareto_front(outs)] == ["a"]


def test_rows_with_the_same_label_stay_apart() -> None:
    x = trial("x", "key-x-123456789", "0", [50, 100], [3.4, 2.9], label="S2[2-2]")
    y = trial("y", "key-y-987654321", "0", [50, 100], [3.5, 3.1], label="S2[2-2]")
    labels = [o.label for o in compute_matched(study(BASE0, x, y))]
    assert labels == ["baseline", "S2[2-2] [key-x-12]", "S2[2-2] [key-y-98]"]


def test_compute_matched_from_mlflow(results: StudyResults) -> None:
    outs = compute_matched(results)
    assert [o.label for o in outs] == ["baseline", "S2 fast", "S4 slow", "S3 diverged"]
    base, fast, slow, div = outs
    assert base.final_eval_loss.mean == pytest.approx(3.05)
    assert [(t.compute_to_baseline_loss or 0) / E12 for t in fast.trials] == pytest.approx([70, 75])
    assert fast.compute_fraction.mean == pytest.approx(0.725)
    assert fast.compute_fraction.half_width == pytest.approx(12.7062047 * 0.025)
    assert fast.speedup.mean == pytest.approx((100 / 70 + 100 / 75) / 2)
    assert [t.loss_at_baseline_compute for t in slow.trials] == [None, pytest.approx(3.5)]
    assert slow.n_reached == 0 and slow.loss_delta.mean == pytest.approx(0.4)
    assert div.trials[0].loss_at_baseline_compute is None
    assert [o.label for o in pareto_front(outs)] == ["S2 fast"]  # a diverged one is off it


def by_key(*trials: TrialResult) -> dict[str, Outcome]:
    return {o.schedule_key: o for o in compute_matched(study(*trials))}


def test_schedule_ending_short_is_compared_where_it_ended() -> None:
    # Ends 5 % short of the baseline's 100: no loss at the baseline's compute (beyond rel_tol),
    # but at 95 it beats the baseline's interpolated 3.04 by 0.02.
    short = trial("s", "s", "0", [19, 38, 57, 76, 95], [3.9, 3.5, 3.3, 3.15, 3.02])
    (t,) = by_key(BASE0, short)["s"].trials
    assert t.loss_at_baseline_compute is None and t.loss_delta is None
    assert t.final_eval_compute == pytest.approx(95)
    assert t.matched_compute == pytest.approx(95)
    assert t.matched_fraction == pytest.approx(0.95)
    assert t.loss_at_matched == pytest.approx(3.02)
    assert t.baseline_loss_at_matched == pytest.approx(3.04)  # not 3.0, its final loss
    assert t.matched_delta == pytest.approx(-0.02)  # negative: better at equal compute
    assert t.stopped_short

    worse = trial("w", "w", "0", [30, 60, 90], [4.2, 3.6, 3.3])
    (tw,) = by_key(BASE0, worse)["w"].trials
    assert tw.matched_compute == pytest.approx(90)
    assert tw.baseline_loss_at_matched == pytest.approx(3.08)
    assert tw.matched_delta == pytest.approx(0.22)


def test_within_tolerance_loss_at_baseline_compute_and_matched_differ() -> None:
    # 99.5 is within rel_tol: the documented loss at the baseline's compute takes its last loss
    # against the baseline's final 3.0, the equal-compute one the baseline at 99.5 (3.004).
    nearly = trial("n", "n", "0", [33, 66, 99.5], [4.0, 3.6, 3.2])
    (t,) = by_key(BASE0, nearly)["n"].trials
    assert t.loss_delta == pytest.approx(0.2)
    assert t.baseline_loss_at_matched == pytest.approx(3.2 - 0.2 * 24.5 / 25)
    assert t.matched_delta == pytest.approx(0.196)
    assert t.matched_fraction == pytest.approx(0.995)


def test_longer_trial_is_compared_at_the_baselines_compute() -> None:
    longer = trial("l", "l", "0", [30, 60, 90, 120], [4.3, 3.9, 3.6, 3.3])
    (t,) = by_key(BASE0, longer)["l"].trials
    assert t.matched_compute == pytest.approx(100) and t.matched_fraction == pytest.approx(1.0)
    # 3.6 + (3.3 - 3.6) * 10/30 = 3.5 against the baseline's final 3.0: the same as loss_delta.
    assert t.loss_at_matched == pytest.approx(3.5)
    assert t.matched_delta == pytest.approx(0.5) == t.loss_delta
    assert not t.stopped_short


def test_baseline_is_its_own_reference() -> None:
    base = compute_matched(study(BASE0, BASE1))[0]
    assert base.is_baseline
    for t, final in zip(base.trials, (3.0, 3.1)):
        assert t.matched_compute == 100 and t.matched_fraction == 1.0
        assert t.loss_at_matched == t.baseline_loss_at_matched == pytest.approx(final)
        assert t.matched_delta == 0.0
    assert base.matched_delta.mean == 0.0 and base.matched_delta.n == 2
    assert base.matched_fraction.mean == 1.0


@pytest.mark.parametrize(
    ("flops", "loss"),
    [
        ([120, 140], [3.5, 3.4]),  # first eval after the baseline's end
        ([5, 10, 20], [4.6, 4.4, 4.2]),  # ends before the baseline's first eval (25)
        ([30, 60], [NAN, NAN]),  # no eval point at all
    ],
)
def test_no_overlap_on_the_compute_axis_gives_none(flops: list[float], loss: list[float]) -> None:
    o = by_key(BASE0, trial("x", "x", "0", flops, loss))["x"]
    (t,) = o.trials
    assert t.matched_compute is None and t.loss_at_matched is None
    assert t.baseline_loss_at_matched is None
    assert t.matched_delta is None and t.matched_fraction is None
    assert o.matched_delta.mean is None and o.matched_delta.n == 0
    assert "no eval point overlapping the reference's curve in some seeds" in o.notes


def test_touching_the_baselines_first_eval_point_overlaps() -> None:
    (t,) = by_key(BASE0, trial("x", "x", "0", [10, 25], [4.5, 3.9]))["x"].trials
    assert t.matched_compute == pytest.approx(25)
    assert t.matched_delta == pytest.approx(-0.1)  # 3.9 against the baseline's 4.0 at 25


def test_seeds_pool_into_stats() -> None:
    # Seed 0 ends at 95 (baseline 3.04), seed 1 at 90 (baseline seed 1: 3.18).
    s0 = trial("p0", "p", "0", [19, 38, 57, 76, 95], [3.9, 3.5, 3.3, 3.15, 3.02])
    s1 = trial("p1", "p", "1", [30, 60, 90], [4.2, 3.6, 3.20])
    o = by_key(BASE0, BASE1, s0, s1)["p"]
    assert [t.matched_delta for t in o.trials] == [pytest.approx(-0.02), pytest.approx(0.02)]
    assert o.matched_delta.mean == pytest.approx(0.0)
    assert o.matched_delta.half_width == pytest.approx(12.7062047 * 0.02)
    assert o.matched_fraction.values == pytest.approx((0.95, 0.90))
    assert o.matched_compute.mean == pytest.approx(92.5)
    assert o.loss_at_matched.mean == pytest.approx(3.11)
    assert o.baseline_loss_at_matched.mean == pytest.approx(3.11)
    assert o.loss_at_baseline_compute.n == 0


def test_order_reached_then_equal_compute_delta_then_nothing_comparable() -> None:
    # Labels chosen so that ordering by label alone would put them the other way round.
    reached = trial("r", "r", "0", [20, 40, 60, 80, 100], [3.9, 3.4, 3.1, 2.9, 2.8], label="Z-r")
    better = trial("g", "g", "0", [19, 38, 57, 76, 95], [3.9, 3.5, 3.3, 3.15, 3.02], label="Y-g")
    worse = trial("w", "w", "0", [30, 60, 90], [4.2, 3.6, 3.3], label="B-w")
    none = trial("n", "n", "0", [120, 140], [3.5, 3.4], label="A-n")
    outs = compute_matched(study(none, worse, BASE0, better, reached))
    assert [o.schedule_key for o in outs] == ["baseline", "r", "g", "w", "n"]
    # Neither g nor w reached the baseline's loss or got to its compute: only the
    # equal-compute delta tells them apart.
    g, w = outs[2], outs[3]
    assert not g.reached and not w.reached
    assert g.loss_delta.mean is None and w.loss_delta.mean is None
    assert g.matched_delta.mean is not None and w.matched_delta.mean is not None
    assert g.matched_delta.mean < 0 < w.matched_delta.mean


def test_paper_axis_uses_its_own_compute() -> None:
    short = trial("s", "s", "0", [19, 38, 57, 76, 95], [3.9, 3.5, 3.3, 3.15, 3.02])
    outs = {o.schedule_key: o for o in compute_matched(study(BASE0, short), convention="paper")}
    (t,) = outs["s"].trials
    assert t.matched_compute == pytest.approx(47.5)  # paper FLOPs are half in these curves
    assert t.matched_fraction == pytest.approx(0.95)
    assert t.matched_delta == pytest.approx(-0.02)
