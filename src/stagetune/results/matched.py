"""Compute-matched outcomes of a study: pure maths on its curves (numpy), no MLflow.

Every schedule is judged against a full-depth comparator of the same seed on the compute axis:
by default the study's **reference**, the best full-depth recipe of its lr sweep
(:mod:`stagetune.results.reference`), and beside it (:attr:`Outcome.vs_baseline`) the
configured **baseline**, so a reader sees how much of a gap was lr tuning alone. The fields
named ``baseline_*`` below hold the comparator's numbers (the reference's, unless
``against="baseline"``); the names predate the reference and are kept for callers.

* **loss at the baseline's compute**: its eval loss, linearly interpolated, at the FLOPs the
  baseline spent in total (``None`` if the trial stopped short of that);
* **compute to the baseline's loss**: the FLOPs at which its eval loss first reaches the
  baseline's final eval loss (interpolated inside the crossing interval), or "not reached";
* **speedup** = baseline compute / that compute;
* **delta at equal compute**: at ``min(trial's last eval compute, baseline's last eval compute)``
  both curves are interpolated and compared (trial minus baseline, negative: better). The loss
  at the baseline's compute needs the trial to get there, and most do not: budget-matched
  schedules end a step or so short (budget matching floors to whole steps) and shorter continual
  lengths end well short, while the baseline's curve is always available below its end. So every
  trial whose curve overlaps the baseline's on the compute axis gets this comparison, at the
  baseline's compute when it got there and where it stopped otherwise (the live progress line,
  ``TrialLedger.best_matched``, compares the same way).

Trials of one schedule (param ``schedule_key``) are pooled across seeds: mean and 95 % Student-t
confidence interval of each quantity; the baseline's own seed spread comes out the same way.
The study itself is read from MLflow by :mod:`stagetune.results.loading`.

One cohesive module (over 400 lines): the compute-matched maths, one definition per quantity.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple

import numpy as np

from stagetune.errors import ConfigError, StagetuneError, suggest
from stagetune.metrics import STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED
from stagetune.registry import CONVENTIONS
from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.naming import BASELINE_LABEL, TAG_FULL_DEPTH, TAG_PHASE
from stagetune.results.reference import ReferenceCandidate, choose_reference
from stagetune.results.stats import Stat
from stagetune.trial import PHASE_CONFIRMATION

__all__ = [
    "AGAINST_BASELINE",
    "AGAINST_REFERENCE",
    "SAME_COMPUTE_RTOL",
    "EqualCompute",
    "Outcome",
    "TrialOutcome",
    "at_equal_compute",
    "compute_matched",
    "first_crossing",
    "pareto_front",
    "reference_key",
]

AGAINST_REFERENCE: Final = "reference"
"""Compare with the study's best full-depth recipe (the default)."""
AGAINST_BASELINE: Final = "baseline"
"""Compare with the configured full-depth baseline."""

_log = logging.getLogger(__name__)

SAME_COMPUTE_RTOL: Final = 1e-9
"""Two FLOPs counts this close (relative) are the same compute: they differ only by how float
sums of step FLOPs round, so a comparison "at the baseline's compute" must not hinge on it."""


@dataclass(frozen=True)
class TrialOutcome:
    """One trial against the baseline of its seed."""

    trial_id: str
    schedule_key: str
    seed: str | None
    status: str
    is_baseline: bool
    baseline_trial_id: str
    baseline_compute: float
    """The baseline's compute at its final evaluation."""
    baseline_final_loss: float
    final_eval_loss: float | None
    total_compute: float | None
    loss_at_baseline_compute: float | None
    """``None``: the trial stopped before the baseline's compute."""
    loss_delta: float | None
    """``loss_at_baseline_compute - baseline_final_loss`` (negative: better)."""
    compute_to_baseline_loss: float | None
    """``None``: never reached the baseline's final eval loss."""
    compute_fraction: float | None
    """``compute_to_baseline_loss / baseline_compute``."""
    speedup: float | None
    """``baseline_compute / compute_to_baseline_loss``."""
    final_eval_compute: float | None
    """The compute at the trial's last evaluation (``None``: no eval point)."""
    matched_compute: float | None
    """Where the trial is compared with the baseline at equal compute: the lesser of the two
    curves' last eval compute. ``None``: the curves do not overlap on the compute axis (that
    point lies before the first eval point of either)."""
    loss_at_matched: float | None
    """The trial's eval loss at ``matched_compute`` (interpolated)."""
    baseline_loss_at_matched: float | None
    """The baseline's eval loss at ``matched_compute`` (interpolated)."""
    matched_delta: float | None
    """``loss_at_matched - baseline_loss_at_matched`` (negative: better at equal compute)."""
    matched_fraction: float | None
    """``matched_compute / baseline_compute``: 1 when the trial got to the baseline's compute."""

    @property
    def reached(self) -> bool:
        return self.compute_to_baseline_loss is not None

    @property
    def stopped_short(self) -> bool:
        """Its last evaluation came before the baseline's compute (or it has none)."""
        return self.final_eval_compute is None or self.final_eval_compute < self.baseline_compute


@dataclass(frozen=True)
class Outcome:
    """One schedule (all its seeds) against the baselines of the same seeds."""

    schedule_key: str
    label: str
    is_baseline: bool
    params: dict[str, str]
    trials: tuple[TrialOutcome, ...]
    final_eval_loss: Stat
    total_compute: Stat
    loss_at_baseline_compute: Stat
    loss_delta: Stat
    compute_to_baseline_loss: Stat
    compute_fraction: Stat
    speedup: Stat
    baseline_final_loss: Stat
    """The baselines' final eval losses over the same seeds: their seed spread."""
    baseline_compute: Stat
    matched_compute: Stat
    """Where each seed was compared at equal compute (see :class:`TrialOutcome`)."""
    loss_at_matched: Stat
    baseline_loss_at_matched: Stat
    matched_delta: Stat
    """Eval loss minus the baseline's at equal compute (negative: better)."""
    matched_fraction: Stat
    """``matched_compute / baseline_compute`` per seed (1: compared at the baseline's compute)."""
    notes: tuple[str, ...] = field(default=())
    is_reference: bool = False
    """This row is the comparator every row is measured against (the reference, or the
    baseline when ``against`` is ``baseline``)."""
    is_full_depth: bool = False
    """A one-stage full-depth recipe (the baseline, a reference-sweep lr, a sampled one): a
    candidate for the reference, not a schedule the verdict may name."""
    against: str = AGAINST_REFERENCE
    """What the ``baseline_*`` numbers are: :data:`AGAINST_REFERENCE` or
    :data:`AGAINST_BASELINE`."""
    vs_baseline: Outcome | None = None
    """The same recipe measured against the configured baseline (on the seeds the baseline
    ran); ``None`` when the reference is the baseline or this row is measured against it."""

    @property
    def vs_reference(self) -> Outcome:
        """This row measured against the reference (itself, unless ``against`` is
        ``baseline``; kept for symmetry with :attr:`vs_baseline`)."""
        return self

    @property
    def n_seeds(self) -> int:
        return len(self.trials)

    @property
    def n_reached(self) -> int:
        return sum(t.reached for t in self.trials)

    @property
    def reached(self) -> bool:
        """Every seed reached the baseline's final eval loss."""
        return bool(self.trials) and self.n_reached == len(self.trials)

    @property
    def complete(self) -> bool:
        """Every seed trained to its end: none was stopped early, diverged or failed (its
        final loss and compute are then where it ended, not what the schedule costs)."""
        return bool(self.trials) and all(t.status == STATUS_FINISHED for t in self.trials)


def _interp_at(c: np.ndarray, loss: np.ndarray, x: float, rel_tol: float) -> float | None:
    """Loss at compute ``x`` by linear interpolation; ``None`` if the curve does not span it."""
    if len(c) == 0:
        return None
    if x > c[-1]:
        # Budget matching floors to whole steps, so a matched schedule may end a hair short.
        # Within rel_tol its last loss stands in: conservative, as loss falls with compute.
        return float(loss[-1]) if x <= c[-1] * (1 + rel_tol) else None
    if x < c[0]:
        return None
    return float(np.interp(x, c, loss))


def first_crossing(c: np.ndarray, loss: np.ndarray, target: float) -> float | None:
    """Compute at which ``loss`` first falls to ``target`` (interpolated), else ``None``."""
    hits = np.nonzero(loss <= target)[0]
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(c[0])
    c0, c1, l0, l1 = float(c[i - 1]), float(c[i]), float(loss[i - 1]), float(loss[i])
    if not math.isfinite(l0):
        return c1
    return c0 + (l0 - target) / (l0 - l1) * (c1 - c0)


class EqualCompute(NamedTuple):
    """A trial and the baseline compared at one compute (see :func:`at_equal_compute`)."""

    compute: float
    loss: float
    """The trial's eval loss there (interpolated)."""
    baseline_loss: float
    """The baseline's eval loss there (interpolated)."""


def at_equal_compute(
    c: np.ndarray, loss: np.ndarray, bc: np.ndarray, bl: np.ndarray
) -> EqualCompute | None:
    """The trial (``c``, ``loss``) and the baseline (``bc``, ``bl``) at the lesser of the two
    curves' ends.

    Both losses are interpolated there. ``None`` when the curves do not overlap on the compute
    axis: one ends before the other's first eval point.
    """
    if not len(c) or not len(bc):
        return None
    at = min(float(c[-1]), float(bc[-1]))
    if at < max(float(c[0]), float(bc[0])):
        return None
    mine, base = float(np.interp(at, c, loss)), float(np.interp(at, bc, bl))
    if math.isnan(mine) or math.isnan(base):
        return None
    return EqualCompute(at, mine, base)


def _pick_baselines(
    trials: Sequence[TrialResult], convention: str
) -> dict[str | None, TrialResult]:
    """One comparator trial per seed among ``trials``: a finished one if any, then the one
    that got furthest."""
    by_seed: dict[str | None, TrialResult] = {}
    for t in trials:
        c, _ = t.curve.eval_points(convention)
        if not len(c):
            continue
        cur = by_seed.get(t.seed)
        rank = (t.status == STATUS_FINISHED, float(c[-1]))
        if cur is None:
            by_seed[t.seed] = t
            continue
        cc, _ = cur.curve.eval_points(convention)
        if rank > (cur.status == STATUS_FINISHED, float(cc[-1])):
            by_seed[t.seed] = t
    return by_seed


def _group_key(t: TrialResult) -> str:
    """The row a trial belongs to: every baseline trial pools under :data:`BASELINE_LABEL`."""
    return BASELINE_LABEL if t.is_baseline else t.schedule_key


def is_full_depth(t: TrialResult) -> bool:
    """A one-stage full-depth trial (tag ``stagetune.full_depth``; a baseline always is)."""
    if t.is_baseline:
        return True
    tag = t.tags.get(TAG_FULL_DEPTH)
    if tag is not None:
        return tag.lower() == "true"
    return t.params.get("num_stages") == "1"


def reference_key(study: StudyResults) -> str:
    """The row of the study's reference (:func:`stagetune.results.reference.choose_reference`
    over its full-depth trials on the study's own seed, the confirmation round's left out);
    :data:`BASELINE_LABEL` when the baseline is the reference or nothing else qualifies."""
    own = [t for t in study.trials if t.tags.get(TAG_PHASE) != PHASE_CONFIRMATION]
    seeds = sorted({t.seed for t in own if t.is_baseline}, key=_seed_order)
    if not seeds:
        return BASELINE_LABEL
    candidates = [
        ReferenceCandidate(
            key=_group_key(t),
            final_eval_loss=_final_loss(t),
            finished=t.status == STATUS_FINISHED,
            is_baseline=t.is_baseline,
        )
        for t in own
        if t.seed == seeds[0] and is_full_depth(t)
    ]
    return choose_reference(candidates) or BASELINE_LABEL


def _final_loss(t: TrialResult) -> float | None:
    _, loss = t.curve.eval_points()
    return float(loss[-1]) if len(loss) else None


def _trial_outcome(
    t: TrialResult, base: TrialResult, convention: str, rel_tol: float
) -> TrialOutcome:
    bc, bl = base.curve.eval_points(convention)
    c_b, l_b = float(bc[-1]), float(bl[-1])
    c, loss = t.curve.eval_points(convention)
    loss_at: float | None
    to: float | None
    matched: EqualCompute | None
    if t.run_id == base.run_id:
        # The reference itself: by definition it reaches its own loss at its own compute.
        loss_at, to, matched = l_b, c_b, EqualCompute(c_b, l_b, l_b)
    else:
        loss_at = _interp_at(c, loss, c_b, rel_tol)
        to = first_crossing(c, loss, l_b)
        matched = at_equal_compute(c, loss, bc, bl)
    at, mine, theirs = matched if matched is not None else (None, None, None)
    return TrialOutcome(
        trial_id=t.trial_id,
        schedule_key=t.schedule_key,
        seed=t.seed,
        status=t.status,
        is_baseline=t.is_baseline,
        baseline_trial_id=base.trial_id,
        baseline_compute=c_b,
        baseline_final_loss=l_b,
        final_eval_loss=float(loss[-1]) if len(loss) else None,
        total_compute=t.curve.total_compute(convention),
        loss_at_baseline_compute=loss_at,
        loss_delta=None if loss_at is None else loss_at - l_b,
        compute_to_baseline_loss=to,
        compute_fraction=None if to is None else to / c_b,
        speedup=None if not to else c_b / to,
        final_eval_compute=float(c[-1]) if len(c) else None,
        matched_compute=at,
        loss_at_matched=mine,
        baseline_loss_at_matched=theirs,
        matched_delta=None if mine is None or theirs is None else mine - theirs,
        matched_fraction=None if at is None else at / c_b,
    )


def _group(
    key: str, label: str, first: TrialResult, outs: list[TrialOutcome], *, against: str, ref: str
) -> Outcome:
    def stat(attr: str) -> Stat:
        return Stat.of([getattr(o, attr) for o in outs])

    notes = []
    if any(o.loss_at_baseline_compute is None and o.stopped_short for o in outs):
        notes.append(f"stopped before the {against}'s compute in some seeds")
    if any(o.matched_compute is None for o in outs):
        notes.append(f"no eval point overlapping the {against}'s curve in some seeds")
    return Outcome(
        schedule_key=key,
        label=label,
        is_baseline=first.is_baseline,
        params=first.params,
        trials=tuple(outs),
        final_eval_loss=stat("final_eval_loss"),
        total_compute=stat("total_compute"),
        loss_at_baseline_compute=stat("loss_at_baseline_compute"),
        loss_delta=stat("loss_delta"),
        compute_to_baseline_loss=stat("compute_to_baseline_loss"),
        compute_fraction=stat("compute_fraction"),
        speedup=stat("speedup"),
        baseline_final_loss=stat("baseline_final_loss"),
        baseline_compute=stat("baseline_compute"),
        matched_compute=stat("matched_compute"),
        loss_at_matched=stat("loss_at_matched"),
        baseline_loss_at_matched=stat("baseline_loss_at_matched"),
        matched_delta=stat("matched_delta"),
        matched_fraction=stat("matched_fraction"),
        notes=tuple(notes),
        is_reference=key == ref,
        is_full_depth=is_full_depth(first),
        against=against,
    )


def _seed_order(seed: str | None) -> tuple[int, float, str]:
    if seed is None:
        return (2, 0.0, "")
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def compute_matched(
    study: StudyResults,
    *,
    convention: str = "standard",
    rel_tol: float = 0.01,
    against: str = AGAINST_REFERENCE,
) -> list[Outcome]:
    """Compute-matched outcomes per recipe, the comparator first, then best to worst.

    Order: the comparator (the reference, or the baseline with ``against="baseline"``); the
    recipes that reached its final eval loss in every seed, by mean compute fraction; the rest
    by mean eval-loss delta at equal compute (``matched_delta``, lowest first): ranking them by
    the loss at the comparator's compute would leave out every schedule that ended short of it
    (most: budget matching floors to whole steps, shorter continual lengths end well short),
    whereas the comparator's curve is available below its end; last, those without any
    comparable point.

    Args:
        study: from :func:`load_study`.
        convention: the compute axis: ``standard`` (``flops``) or ``paper`` (``flops_paper``).
        rel_tol: a trial that ended within this fraction short of the comparator's compute
            counts as having got there (budget matching floors to whole steps); its last eval
            loss is used, which can only flatter the comparator. Only for
            ``loss_at_baseline_compute`` / ``loss_delta``; the equal-compute comparison needs
            no tolerance.
        against: :data:`AGAINST_REFERENCE` (each row then also carries
            :attr:`Outcome.vs_baseline` when the reference is not the baseline) or
            :data:`AGAINST_BASELINE`.

    Trials whose seed has no comparator run are left out (logged as a warning when comparing
    with the reference: the baseline runs on the study's own seed only).
    """
    if convention not in CONVENTIONS:
        raise ConfigError("convention", convention, suggest(convention, CONVENTIONS))
    _choice_of(against)
    ref = reference_key(study) if against == AGAINST_REFERENCE else BASELINE_LABEL
    baselines = _pick_baselines([t for t in study.trials if _group_key(t) == ref], convention)
    if not baselines:
        raise StagetuneError(
            f"study {study.study_name!r}: no {against} run has eval points on the "
            f"{convention} compute axis; let it run to its first evaluation"
        )
    groups: dict[str, list[TrialOutcome]] = defaultdict(list)
    firsts: dict[str, TrialResult] = {}
    for t in study.trials:
        base = baselines.get(t.seed)
        if base is None:
            if against == AGAINST_REFERENCE:
                _log.warning(
                    "trial %s (seed %s): no reference with that seed; left out",
                    t.trial_id,
                    t.seed,
                )
            continue
        key = _group_key(t)
        firsts.setdefault(key, t)
        groups[key].append(_trial_outcome(t, base, convention, rel_tol))
    labels = [firsts[k].label for k in groups if not firsts[k].is_baseline]
    outcomes = []
    for key, outs in groups.items():
        outs.sort(key=lambda o: _seed_order(o.seed))
        first = firsts[key]
        label = BASELINE_LABEL if first.is_baseline else first.label
        if not first.is_baseline and (labels.count(label) > 1 or label == BASELINE_LABEL):
            # Two recipes may share a schedule label (e.g. differ only in lr): keep rows apart.
            label = f"{label} [{key[:8]}]"
        outcomes.append(_group(key, label, first, outs, against=against, ref=ref))
    if against == AGAINST_REFERENCE and ref != BASELINE_LABEL:
        vs_base = {
            o.schedule_key: o
            for o in compute_matched(
                study, convention=convention, rel_tol=rel_tol, against=AGAINST_BASELINE
            )
        }
        outcomes = [replace(o, vs_baseline=vs_base.get(o.schedule_key)) for o in outcomes]

    def order(o: Outcome) -> tuple[int, float, str]:
        if o.is_reference:
            return (0, 0.0, o.label)
        if o.reached and o.compute_fraction.mean is not None:
            return (1, o.compute_fraction.mean, o.label)
        # A schedule that diverged or failed in any seed ranks after every one that trained
        # cleanly, however good it looked at the point it was compared.
        broken = any(t.status in (STATUS_DIVERGED, STATUS_FAILED) for t in o.trials)
        delta = o.matched_delta.mean
        group = 2 + (2 if broken else 0) + (1 if delta is None else 0)
        return (group, delta if delta is not None else 0.0, o.label)

    return sorted(outcomes, key=order)


def _choice_of(against: str) -> None:
    if against not in (AGAINST_REFERENCE, AGAINST_BASELINE):
        choices = (AGAINST_REFERENCE, AGAINST_BASELINE)
        raise ConfigError("against", against, suggest(against, choices))


def pareto_front(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Schedules no other beats on both mean final eval loss and mean total compute.

    Sorted by compute; outcomes lacking either number are ignored, and so are those not
    :attr:`~Outcome.complete` (a trial stopped early ends cheap but unfinished: it would sit
    on the front for what it did not train).
    """
    pts = [
        (o, o.final_eval_loss.mean, o.total_compute.mean)
        for o in outcomes
        if o.complete and o.final_eval_loss.mean is not None and o.total_compute.mean is not None
    ]
    front = []
    for o, loss, comp in pts:
        dominated = any(
            (l2 <= loss and c2 <= comp) and (l2 < loss or c2 < comp)  # type: ignore[operator]
            for o2, l2, c2 in pts
            if o2 is not o
        )
        if not dominated:
            front.append((comp, loss, o))
    front.sort(key=lambda x: (x[0], x[1]))
    return [o for _, _, o in front]
