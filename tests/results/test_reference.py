"""The reference (the best full-depth lr), the verdict's intervals over seeds, and the regime.

In-memory studies (FLOPs in units of 1): ``BASE0`` / ``BASE1`` are the configured baseline on
seeds 0 and 1; a full-depth trial at another lr ("lr2") that ends lower than the baseline must
become the reference every schedule is measured against.
"""

from __future__ import annotations

import dataclasses

import pytest

from stagetune.results import compute_matched
from stagetune.results.loading import TrialResult
from stagetune.results.matched import AGAINST_BASELINE, reference_key
from stagetune.results.naming import BASELINE_LABEL, TAG_FULL_DEPTH, TAG_PHASE
from stagetune.results.reference import ReferenceCandidate, choose_reference
from stagetune.results.regime import Regime
from stagetune.results.verdict import NO_SIGNIFICANT_GAIN, judge, study_verdict
from stagetune.trial import PHASE_CONFIRMATION, PHASE_REFERENCE
from tests.results.helpers import BASE0, BASE1, study, trial

FLOPS = [25.0, 50.0, 75.0, 100.0]


def full_depth(tid: str, key: str, seed: str, loss: list[float], *, phase: str) -> TrialResult:
    t = trial(tid, key, seed, FLOPS, loss, label=f"full-depth {key}")
    tags = {TAG_FULL_DEPTH: "true", TAG_PHASE: phase}
    return dataclasses.replace(t, tags=tags, params={**t.params, "num_stages": "1"})


def sched(
    tid: str, key: str, seed: str, loss: list[float], *, phase: str = "search"
) -> TrialResult:
    t = trial(tid, key, seed, FLOPS, loss)
    return dataclasses.replace(t, tags={TAG_FULL_DEPTH: "false", TAG_PHASE: phase})


# The lr-tuned full-depth trial: 2.8 at the end, the baseline 3.0.
LR2 = [3.8, 3.3, 3.0, 2.8]


def test_choose_reference_lowest_final_loss_baseline_wins_ties() -> None:
    c = ReferenceCandidate
    assert choose_reference([]) is None
    assert (
        choose_reference(
            [
                c(key="b", final_eval_loss=3.0, finished=True, is_baseline=True),
                c(key="x", final_eval_loss=2.0, finished=False),  # stopped: no candidate
                c(key="y", final_eval_loss=float("nan"), finished=True),
                c(key="z", final_eval_loss=2.9, finished=True),
            ]
        )
        == "z"
    )
    tie = [c(key="a", final_eval_loss=3.0, finished=True),
           c(key="b", final_eval_loss=3.0, finished=True, is_baseline=True)]  # fmt: skip
    assert choose_reference(tie) == "b"


def test_an_lr_tuned_full_depth_trial_becomes_the_reference() -> None:
    """The schedule beats the configured baseline, but not the lr-tuned reference: outcomes
    and the verdict are measured against the reference; vs_baseline keeps the old figure."""
    lr2 = full_depth("r0", "lr2", "0", LR2, phase=PHASE_REFERENCE)
    s = sched("s0", "sched", "0", [3.9, 3.4, 3.05, 2.9])
    st = study(BASE0, lr2, s, parent_status="finished")
    assert reference_key(st) == "lr2"
    outcomes = compute_matched(st)
    ref = outcomes[0]
    assert ref.is_reference and ref.schedule_key == "lr2" and not ref.is_baseline
    row = next(o for o in outcomes if o.schedule_key == "sched")
    # Against the reference: 2.9 vs 2.8 at equal compute, never reaches 2.8.
    assert row.matched_delta.mean == pytest.approx(0.1)
    assert not row.reached
    # Against the configured baseline: reaches 3.0 (between 75 -> 3.05 and 100 -> 2.9).
    assert row.vs_baseline is not None
    assert row.vs_baseline.reached
    assert row.vs_baseline.compute_fraction.mean == pytest.approx((75 + 25 / 3) / 100)
    base_row = next(o for o in outcomes if o.is_baseline)
    assert base_row.is_full_depth and not base_row.is_reference
    v = judge(outcomes)
    assert v.reference == "full-depth lr2" and v.schedule == "SCHED"
    assert "Against the reference (full-depth lr2, the best of the full-depth lr sweep)" in v.text
    assert "did not reach the reference's eval loss" in v.text
    assert "Against the configured baseline instead (1 seed): 83.3% of its compute" in v.text
    assert not v.significant
    # The comparison with the baseline alone is still available.
    vs_base = compute_matched(st, against=AGAINST_BASELINE)
    assert vs_base[0].is_baseline and vs_base[0].is_reference


def test_the_reference_is_chosen_on_the_study_seed_without_the_confirmation_round() -> None:
    """Only the study's own seed counts: the confirmation round's seeds of one recipe must not
    make another recipe the reference by luck."""
    lr2 = full_depth("r0", "lr2", "0", [3.8, 3.3, 3.0, 2.95], phase=PHASE_REFERENCE)
    # On seed 1 the baseline would win, but seed 1 is the confirmation round's.
    lr2_1 = full_depth("r1", "lr2", "1", [4.0, 3.6, 3.4, 3.2], phase=PHASE_CONFIRMATION)
    st = study(BASE0, BASE1, lr2, lr2_1)
    assert reference_key(st) == "lr2"
    assert reference_key(study(BASE0, dataclasses.replace(lr2, status="stopped"))) == BASELINE_LABEL


def _confirmed(key: str, deltas: list[float], ref: list[list[float]]) -> list[TrialResult]:
    """A schedule on three seeds whose final loss is the reference's plus ``deltas``."""
    out = []
    for seed, (d, curve) in enumerate(zip(deltas, ref)):
        out.append(sched(f"{key}{seed}", key, str(seed), [*curve[:3], curve[3] + d],
                         phase="search" if seed == 0 else PHASE_CONFIRMATION))  # fmt: skip
    return out


REF_CURVES = [[4.0, 3.5, 3.2, 3.0], [4.1, 3.6, 3.3, 3.1], [3.9, 3.45, 3.15, 2.95]]


def _ref_trials() -> list[TrialResult]:
    return [
        dataclasses.replace(
            trial(f"b{s}", "base", str(s), FLOPS, c, baseline=True),
            tags={TAG_PHASE: "search" if s == 0 else PHASE_CONFIRMATION},
        )
        for s, c in enumerate(REF_CURVES)
    ]


def test_a_schedule_equal_to_the_reference_is_no_significant_gain() -> None:
    """A schedule that is the reference's curve on every seed: Δ = 0 with a zero-width
    interval that includes no gain, and a compute fraction of exactly 1."""
    st = study(*_ref_trials(), *_confirmed("same", [0.0, 0.0, 0.0], REF_CURVES))
    outcomes = compute_matched(st)
    v = judge(outcomes)
    assert v.n_seeds == 3 and not v.significant and v.schedule == "SAME"
    assert v.matched_delta is not None and v.matched_delta.mean == pytest.approx(0.0)
    assert f"{NO_SIGNIFICANT_GAIN}: the 95% intervals include no gain." in v.text
    assert "over 3 seeds" in v.text and "95% CI" in v.text


def test_a_noisy_gain_is_no_significant_gain_a_consistent_one_is() -> None:
    noisy = _confirmed("noisy", [-0.2, 0.15, -0.05], REF_CURVES)
    v = judge(compute_matched(study(*_ref_trials(), *noisy)))
    assert not v.significant
    assert v.matched_delta is not None and v.matched_delta.low is not None
    assert v.matched_delta.low < 0 < (v.matched_delta.high or 0)
    assert NO_SIGNIFICANT_GAIN in v.text
    steady = _confirmed("steady", [-0.1, -0.12, -0.11], REF_CURVES)
    v = judge(compute_matched(study(*_ref_trials(), *steady)))
    assert v.significant and v.schedule == "STEADY"
    assert "Significant gain in compute and in eval loss at equal compute" in v.text


def test_an_unconfirmed_single_seed_schedule_is_never_the_headline() -> None:
    """After a confirmation round, only the confirmed schedules are named, however good a
    single-seed one looked."""
    lucky = sched("l0", "lucky", "0", [3.0, 2.5, 2.2, 2.0])
    st = study(*_ref_trials(), *_confirmed("same", [0.0, 0.0, 0.0], REF_CURVES), lucky)
    v = judge(compute_matched(st))
    assert v.schedule == "SAME" and v.n_seeds == 3
    one = judge(compute_matched(study(BASE0, lucky)))
    assert one.schedule == "LUCKY" and not one.significant
    assert "One seed gives no interval, so no gain can be claimed" in one.text


REGIME = Regime(
    params_total=1_000_000, params_non_embedding=800_000, tokens_trained=160_000,
    train_tokens=100_000,
)  # fmt: skip


def test_regime_figures_and_sentences() -> None:
    assert REGIME.tokens_per_param == pytest.approx(0.2)
    assert REGIME.epochs == pytest.approx(1.6)
    assert REGIME.far_below_optimal and REGIME.repeats_data
    line = REGIME.line()
    assert "1,000,000 parameters (800,000 non-embedding)" in line
    assert "0.2 tokens per non-embedding parameter (the paper ≈60, compute-optimal ≈20)" in line
    assert "1.6 epochs" in line
    far, repeats = REGIME.warnings()
    assert "shallower-first schedules are favoured" in far and "stagetune sweep" in far
    assert "does not carry to longer training" in far
    assert "repeats its training data: 1.6 epochs" in repeats
    assert Regime.from_params(REGIME.to_params()) == REGIME
    assert Regime.from_params({}) is None
    fine = dataclasses.replace(REGIME, tokens_trained=16_000_000, train_tokens=10**9)
    assert fine.tokens_per_param == pytest.approx(20) and fine.warnings() == []
    # The boundary: exactly 10x below compute-optimal is not "more than 10x below".
    edge = dataclasses.replace(fine, tokens_trained=1_600_000)
    assert not edge.far_below_optimal


def test_the_study_verdict_names_the_regime_from_the_parent_run() -> None:
    st = dataclasses.replace(
        study(BASE0, sched("s0", "s", "0", [3.9, 3.4, 3.1, 2.9]), parent_status="finished"),
        parent_params=REGIME.to_params(),
    )
    text = study_verdict(st, compute_matched(st), convention="standard")
    assert REGIME.line() in text and "shallower-first schedules are favoured" in text


def test_the_verdict_says_where_a_short_schedule_was_compared() -> None:
    """A schedule that ends at 75 % of the reference's compute is compared there, and the
    verdict says so: a gain at 75 % is not a gain at the reference's compute."""
    curves = [[3.9, 3.3, 3.0], [4.0, 3.4, 3.1], [3.8, 3.2, 2.95]]
    short = [
        dataclasses.replace(
            trial(f"s{seed}", "short", str(seed), FLOPS[:3], c),
            tags={TAG_PHASE: "search" if seed == 0 else PHASE_CONFIRMATION},
        )
        for seed, c in enumerate(curves)
    ]
    v = judge(compute_matched(study(*_ref_trials(), *short)))
    assert "at equal compute (75% of the reference's compute, where it ended) its eval" in v.text
