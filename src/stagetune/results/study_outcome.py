"""One study's answer as a sweep reads it: the best incremental schedule against the reference,
per seed. The only place a sweep turns a study into the two numbers of its regime curve.

* **Reference**: the study's own (:mod:`stagetune.results.reference`: the full-depth trial of
  its reference lr sweep with the lowest final eval loss on the study's seed, the one its report
  and verdict use). ``reference=KEY`` names another.
* Every trial is then compared with the reference trial **of the same seed**, with
  :func:`~stagetune.results.matched.compute_matched` (the reference stands where the baseline
  stood): compute fraction to the reference's final eval loss, and Δ eval loss at equal compute.
* **Best incremental schedule**: among the schedules of more than one stage measured on the
  most seeds (those the confirmation round repeated), the first in ``compute_matched``'s order
  (reached the reference's loss in every seed, by mean compute fraction; then by mean Δ loss
  at equal compute). It is chosen on the same seeds that measure
  it, which flatters it slightly; the interval over seeds is what the sweep reports.
* A seed that never reached the reference's loss has no compute fraction; for the regime curve
  (:attr:`StudyOutcome.curve_fractions`) it counts as 1, or the compute it spent over the
  reference's if that is more: it did not reach the reference's loss with less compute, and
  any finite value is only a lower bound of what it would need. (Counting the compute it spent
  alone would put budget-matched schedules, which end a step short of the reference, just
  below 1 and fake a trend toward 1 as lengths grow.) A trend through such values understates
  the fraction; a crossover estimated with it comes, if anything, late — never early.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from stagetune.errors import StagetuneError
from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import (
    AGAINST_BASELINE,
    Outcome,
    compute_matched,
    is_full_depth,
    reference_key,
)
from stagetune.results.naming import BASELINE_LABEL

__all__ = ["CENSORED_FLOOR", "StudyOutcome", "full_depth", "read_study_outcome"]

CENSORED_FLOOR: Final = 1.0
"""The least compute fraction a seed that never reached the reference's loss counts as."""


@dataclass(frozen=True)
class StudyOutcome:
    """The best incremental schedule of one study against its reference (per seed)."""

    study: str
    reference_key: str
    reference_label: str
    reference_lr: str | None
    schedule_key: str | None
    """``None``: the study has no incremental schedule with a comparable point."""
    schedule_label: str | None
    seeds: tuple[str | None, ...]
    compute_fractions: tuple[float | None, ...]
    """Compute to the reference's final eval loss over the reference's compute (``None``: not
    reached)."""
    curve_fractions: tuple[float | None, ...]
    """As :attr:`compute_fractions`, a seed that did not reach counted as at least 1."""
    matched_deltas: tuple[float | None, ...]
    """Eval loss minus the reference's at equal compute (negative: incremental better)."""
    reference_final_loss: float | None
    outcome: Outcome | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "reference": self.reference_label,
            "reference_key": self.reference_key,
            "reference_lr": self.reference_lr,
            "schedule": self.schedule_label,
            "schedule_key": self.schedule_key,
            "seeds": list(self.seeds),
            "compute_fractions": list(self.compute_fractions),
            "curve_fractions": list(self.curve_fractions),
            "matched_deltas": list(self.matched_deltas),
            "reference_final_loss": self.reference_final_loss,
        }


def full_depth(t: TrialResult) -> bool:
    """A one-stage (full-depth) trial: the baseline or an lr variant of it."""
    return is_full_depth(t)


def read_study_outcome(
    study: StudyResults, *, reference: str | None = None, convention: str = "standard"
) -> StudyOutcome:
    """The study's best incremental schedule against its reference (see the module docstring).

    Args:
        study: from :func:`~stagetune.results.loading.load_study`.
        reference: the reference's schedule key; ``None``: the study's own reference (the
            rule of :mod:`stagetune.results.reference`, the one its report uses).
        convention: the compute axis (``standard`` or ``paper``).
    """
    if reference is None:
        ref_key = reference_key(study)
        outcomes = compute_matched(study, convention=convention)
        ref_trials = [
            t
            for t in study.trials
            if (t.is_baseline if ref_key == BASELINE_LABEL else t.schedule_key == ref_key)
        ]
    else:
        # The named reference stands where the configured baseline stood.
        named = tuple(replace(t, is_baseline=t.schedule_key == reference) for t in study.trials)
        ref_trials = [t for t in named if t.is_baseline]
        if not ref_trials:
            raise StagetuneError(f"study {study.study_name!r}: no trial of reference {reference!r}")
        outcomes = compute_matched(
            replace(study, trials=named), convention=convention, against=AGAINST_BASELINE
        )
    ref_key = ref_trials[0].schedule_key
    ref = outcomes[0]
    keys = {t.schedule_key for t in study.trials if not full_depth(t)}
    candidates = [o for o in outcomes[1:] if o.schedule_key in keys]
    # Among the schedules measured on the most seeds (the confirmation round's): a point tried
    # on the study's seed only would be chosen on that seed's luck, with no interval.
    def n_seeds(o: Outcome) -> int:
        return len({t.seed for t in o.trials})

    most = max(map(n_seeds, candidates), default=0)
    best = next((o for o in candidates if n_seeds(o) == most), None)
    ts = best.trials if best is not None else ()

    def lower_bound(o: Any) -> float | None:
        if o.compute_fraction is not None:
            return float(o.compute_fraction)
        if o.total_compute is None:
            return None
        return max(CENSORED_FLOOR, float(o.total_compute) / float(o.baseline_compute))

    return StudyOutcome(
        study=study.study_name,
        reference_key=ref_key,
        reference_label=ref_trials[0].label,
        reference_lr=ref_trials[0].params.get("lr"),
        schedule_key=best.schedule_key if best else None,
        schedule_label=best.label if best else None,
        seeds=tuple(t.seed for t in ts),
        compute_fractions=tuple(t.compute_fraction for t in ts),
        curve_fractions=tuple(lower_bound(t) for t in ts),
        matched_deltas=tuple(t.matched_delta for t in ts),
        reference_final_loss=ref.final_eval_loss.mean,
        outcome=best,
    )
