"""The verdict: what a study's compute-matched outcomes answer, in a paragraph.

:func:`judge` (:class:`Verdict`; :func:`verdict` is its text) measures the best schedule against
the study's reference (the best full-depth lr, :mod:`stagetune.results.reference`) and claims a
gain only when its 95 % interval over seeds excludes no gain; it names the study's regime
(:mod:`stagetune.results.regime`) and says when the answer cannot carry to longer training.
:func:`paper_verdict` answers the paper's question per stage count for a study of the paper's
shape; :func:`study_verdict` is the report's text: both, or no verdict at all while the study is
not over (a verdict from some of its trials would favour whatever happened to finish first).

One cohesive module (over 400 lines): every sentence a verdict may say, beside the rule that allows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from stagetune.results.formatting import AT_BASELINE, num, pct, ratio
from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import (
    SAME_COMPUTE_RTOL,
    Outcome,
    compute_matched,
    is_full_depth,
)
from stagetune.results.naming import TAG_SPACE
from stagetune.results.regime import Regime
from stagetune.results.stats import Stat

__all__ = [
    "NO_SCHEDULE_RAN",
    "NO_SIGNIFICANT_GAIN",
    "PAPER_SPACE",
    "PAPER_STUDY",
    "PARTIAL_STUDY",
    "Verdict",
    "judge",
    "paper_verdict",
    "study_verdict",
    "verdict",
]

NO_SCHEDULE_RAN: Final = "No incremental schedule was compared with the reference."
NO_SIGNIFICANT_GAIN: Final = "No significant gain"
PARTIAL_STUDY: Final = (
    "No verdict: the study is not over (its status is {status}), and a verdict from some of its "
    "trials could mislead. Continue it with 'stagetune run --resume'."
)
PAPER_STUDY: Final = (
    "Paper study (the shape of arXiv 2411.18700: full depth and S uniform stages of L/S "
    "layers, each phase T/(2S) steps, random growth, the paper's freeze policy, continual "
    "training up to {max_multiple} the budget-matched length)"
)
PAPER_SPACE: Final = "paper"
"""The search space of the paper's shape (tag :data:`~stagetune.results.naming.TAG_SPACE`)."""
_PARAM_STAGES: Final = "num_stages"
_PARAM_MULTIPLE: Final = "continual_multiple"
_PAPER_T: Final = "T"
"""The paper space's choice of a continual phase of T steps (:data:`stagetune.search_spaces.paper.PAPER_T`;
results read it as a tag value, importing no search space)."""


def _other(convention: str) -> str:
    """The other FLOPs convention, quoted beside each of the paper study's ratios."""
    return "paper" if convention == "standard" else "standard"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What a study's outcomes answer (:func:`judge`): the text and the figures it quotes."""

    text: str
    """The paragraph the report, the CLI and MLflow show."""
    schedule: str | None
    """The label of the schedule it names (``None``: no incremental schedule ran)."""
    reference: str | None
    """The label of the reference it measured against."""
    significant: bool
    """A gain whose 95 % interval over seeds excludes no gain (in compute to the reference's
    loss, or in eval loss at equal compute); never from a single seed."""
    n_seeds: int
    """Seeds behind the named schedule's figures."""
    compute_fraction: Stat | None = None
    """Its compute to the reference's final eval loss over the reference's compute."""
    matched_delta: Stat | None = None
    """Its eval loss minus the reference's at equal compute (negative: better)."""
    regime: Regime | None = None


def _ci(st: Stat, *, scale: float = 1.0, spec: str = ".1f", unit: str = "") -> str:
    if st.low is None or st.high is None:
        return "no CI from a single seed"
    return f"95% CI {st.low * scale:{spec}}{unit} to {st.high * scale:{spec}}{unit}"


def _gains(o: Outcome) -> tuple[bool, bool]:
    """(significant saving of compute, significant loss gain at equal compute): each 95 %
    interval entirely on the side of a gain, over every seed."""
    cf, md = o.compute_fraction, o.matched_delta
    compute = o.reached and cf.high is not None and cf.high < 1.0
    loss = md.high is not None and md.high < 0.0 and md.n == o.n_seeds
    return compute, loss


def _gain_rank(o: Outcome) -> tuple[float, float]:
    """Least compute to the reference's loss (where significant), then lowest delta."""
    cf, md = o.compute_fraction.mean, o.matched_delta.mean
    return (
        cf if _gains(o)[0] and cf is not None else math.inf,
        md if md is not None else math.inf,
    )


def _pick(scheds: Sequence[Outcome]) -> tuple[Outcome, bool]:
    """The schedule a verdict names, and whether its gain is significant.

    Only the schedules with the most seeds are considered (after a confirmation round: the
    confirmed ones), so an unconfirmed single-seed result can never be the headline. Among
    them a significant gain wins (least compute fraction, then lowest delta); otherwise the
    best in :func:`compute_matched`'s order (the order of ``scheds``).
    """
    most = max(o.n_seeds for o in scheds)
    pool = [o for o in scheds if o.n_seeds == most]
    if most >= 2:
        sig = [o for o in pool if any(_gains(o))]
        if sig:
            return min(sig, key=_gain_rank), True
    return pool[0], False


def judge(outcomes: Sequence[Outcome], *, regime: Regime | None = None) -> Verdict:
    """The verdict on ``outcomes`` (from :func:`compute_matched`, the reference first).

    It names one schedule (see :func:`_pick`), quotes the 95 % intervals over seeds of its
    compute to the reference's final eval loss (as a fraction of the reference's compute) and
    of its eval-loss difference at equal compute, and claims a gain only when an interval
    excludes no gain ("no significant gain" otherwise). Beside it: the same schedule against
    the configured baseline when the reference is another lr, and the ``regime``'s line and
    warnings.
    """
    ref = next((o for o in outcomes if o.is_reference), None)
    scheds = [o for o in outcomes if not o.is_reference and not o.is_full_depth]
    ref_label = None if ref is None else ref.label
    tail = _regime_text(regime)
    if not scheds or ref is None:
        return Verdict(
            text=NO_SCHEDULE_RAN + tail, schedule=None, reference=ref_label,
            significant=False, n_seeds=0, regime=regime,
        )  # fmt: skip
    best, significant = _pick(scheds)
    cf, md = best.compute_fraction, best.matched_delta
    who = (
        "the reference (the configured baseline, the best of the full-depth lr sweep)"
        if ref.is_baseline
        else f"the reference ({ref.label}, the best of the full-depth lr sweep)"
    )
    if best.reached and cf.mean is not None:
        reach = (
            f"reached the reference's eval loss with {cf.mean * 100:.1f}% of its compute "
            f"({_ci(cf, scale=100, unit='%')}"
        )
        if best.speedup.mean is not None:
            reach += f"; speedup {best.speedup.mean:.2f}×"
        reach += ")"
    elif best.n_reached:
        reach = (
            f"reached the reference's eval loss in {best.n_reached} of {best.n_seeds} seeds only"
        )
    else:
        reach = "did not reach the reference's eval loss within its compute"
    text = f"Against {who}, over {_seeds(best.n_seeds)}: schedule {best.label} {reach}"
    if md.mean is not None:
        mf = best.matched_fraction.mean
        where = (
            f" ({pct(mf)} of the reference's compute, where it ended)"
            if mf is not None and mf < AT_BASELINE
            else ""
        )
        text += (
            f"; at equal compute{where} its eval loss was {md.mean:+.4f} vs the reference's "
            f"({_ci(md, spec='+.4f')})"
        )
    text += "."
    if best.n_seeds < 2:
        text += (
            " One seed gives no interval, so no gain can be claimed (search.seeds >= 2 runs "
            "the confirmation round)."
        )
    elif significant:
        compute, loss = _gains(best)
        which = " and ".join(
            w for w, ok in (("in compute", compute), ("in eval loss at equal compute", loss)) if ok
        )
        text += f" Significant gain {which}: the 95% interval excludes no gain."
    else:
        text += f" {NO_SIGNIFICANT_GAIN}: the 95% intervals include no gain."
    if cf.mean is not None and best.reached and cf.mean > 1:
        text += " It needed more compute than the reference: no schedule saved compute."
    vb = best.vs_baseline
    if vb is not None and not ref.is_baseline:
        part = (
            f"{vb.compute_fraction.mean * 100:.1f}% of its compute to its loss"
            if vb.reached and vb.compute_fraction.mean is not None
            else "not reaching its loss"
        )
        if vb.matched_delta.mean is not None:
            part += f", {vb.matched_delta.mean:+.4f} eval loss at equal compute"
        text += (
            f" Against the configured baseline instead ({_seeds(vb.n_seeds)}): {part}; the "
            "difference from the figures above is lr tuning alone."
        )
    return Verdict(
        text=text + tail,
        schedule=best.label,
        reference=ref_label,
        significant=significant,
        n_seeds=best.n_seeds,
        compute_fraction=cf,
        matched_delta=md,
        regime=regime,
    )


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _regime_text(regime: Regime | None) -> str:
    if regime is None:
        return ""
    return "\n\n" + " ".join([regime.line(), *regime.warnings()])


def verdict(outcomes: Sequence[Outcome], *, regime: Regime | None = None) -> str:
    """:func:`judge`'s text."""
    return judge(outcomes, regime=regime).text


def _space_of(t: TrialResult) -> str | None:
    """The search space a trial was sampled from (tag :data:`TAG_SPACE`, set as it starts)."""
    return t.tags.get(TAG_SPACE) or None


def _multiple(o: Outcome) -> float | None:
    try:
        return float(o.params[_PARAM_MULTIPLE])
    except (KeyError, ValueError):
        return None


def _by_stages(outcomes: Sequence[Outcome]) -> dict[int, list[Outcome]]:
    groups: dict[int, list[Outcome]] = {}
    for o in outcomes:
        if o.is_reference or o.is_full_depth:
            continue
        try:
            s = int(o.params[_PARAM_STAGES])
        except (KeyError, ValueError):
            continue
        groups.setdefault(s, []).append(o)
    return dict(sorted(groups.items()))


def _stages_compute(group: Sequence[Outcome]) -> float | None:
    """Compute at the end of the stages: the total of the group's no-continual schedule."""
    only = next((o for o in group if _multiple(o) == 0.0), None)
    return None if only is None else only.total_compute.mean


def _first_reach(group: Sequence[Outcome]) -> Outcome | None:
    """The schedule of a group that reached the baseline's loss (every seed) at least compute."""
    reached = [o for o in group if o.reached and o.compute_fraction.mean is not None]
    return min(reached, key=lambda o: o.compute_fraction.mean or math.inf) if reached else None


def _equal_compute_pick(group: Sequence[Outcome]) -> Outcome | None:
    """The schedule of a group (in its order) quoted at equal compute.

    The first one compared at (within 1 % of) the baseline's compute; else, as budget-matched
    and shorter continual lengths end short of it, the one compared furthest along.
    """
    have = [
        o for o in group
        if o.matched_delta.mean is not None and o.matched_fraction.mean is not None
    ]  # fmt: skip
    near = [o for o in have if (o.matched_fraction.mean or 0.0) >= 0.99]
    if near:
        return near[0]
    return max(have, key=lambda o: o.matched_fraction.mean or 0.0) if have else None


def paper_verdict(
    study: StudyResults,
    outcomes: Sequence[Outcome],
    *,
    convention: str = "standard",
    other: Sequence[Outcome] | None = None,
) -> str | None:
    """The paper study's answer, per stage count S; ``None`` unless it is a paper-space study.

    Whether the incremental schedules reached the reference's final eval loss, and at what
    compute ratio (compute to reach it / the reference's compute); per S the least such ratio
    over its continual lengths, what the stages alone cost, and the furthest compute tried.
    ``other``: the same outcomes on the other FLOPs convention, quoted beside each ratio.
    """
    staged = [t for t in study.trials if not is_full_depth(t)]
    if not staged or any(_space_of(t) != PAPER_SPACE for t in staged):
        return None
    groups = _by_stages(outcomes)
    if not groups:
        return None
    other_conv = _other(convention)
    other_by_key = {o.schedule_key: o for o in (other or [])}
    base = next((o for o in outcomes if o.is_reference), None)
    base_loss = base.final_eval_loss.mean if base is not None else None
    multiples = [m for gr in groups.values() for o in gr if (m := _multiple(o)) is not None]
    max_m = f"{max(multiples):g}×" if multiples else "a multiple of"

    def other_ratio(o: Outcome) -> str:
        twin = other_by_key.get(o.schedule_key)
        if twin is None or not twin.reached or twin.compute_fraction.mean is None:
            return ""
        return f" ({ratio(twin.compute_fraction.mean)} in {other_conv} FLOPs)"

    per_s: list[str] = []
    firsts: list[tuple[int, Outcome]] = []
    for s, group in groups.items():
        group = sorted(group, key=lambda o: (_multiple(o) is None, _multiple(o) or 0.0))
        spent = [o.total_compute.mean / o.baseline_compute.mean for o in group
                 if o.total_compute.mean and o.baseline_compute.mean]  # fmt: skip
        best = _first_reach(group)
        if best is not None:
            st = best.compute_fraction
            assert st.mean is not None
            firsts.append((s, best))
            text = f"S={s} reached it at {ratio(st.mean)} the reference's compute"
            if st.low is not None and st.high is not None:
                text += f" (95% CI {ratio(st.low)}–{ratio(st.high)})"
            text += other_ratio(best)
            stages_end = _stages_compute(group)
            to = best.compute_to_baseline_loss.mean
            m = _multiple(best)
            reached_in_stages = (
                stages_end is not None and to is not None
                and to <= stages_end * (1 + SAME_COMPUTE_RTOL)
            )  # fmt: skip
            if reached_in_stages:
                text += " already during its stages, before any continual training"
            elif m is not None:
                text += f" in continual training, with {m:g}× the matched length"
            elif best.params.get(_PARAM_MULTIPLE) == _PAPER_T:
                text += " in continual training of T steps (the paper's length)"
        else:
            furthest = f"{ratio(max(spent))} the reference's compute" if spent else "its budget"
            text = f"S={s} did not reach it within {furthest}"
            partial = [o for o in group if o.n_reached > 0]
            if partial:
                p = max(partial, key=lambda o: o.n_reached / o.n_seeds)
                text += f" in every seed ({p.n_reached} of {p.n_seeds} seeds for {p.label})"
        details = []
        stages_end = _stages_compute(group)
        ref = group[0].baseline_compute.mean
        if stages_end is not None and ref:
            details.append(f"its stages alone cost {ratio(stages_end / ref)}")
        at_equal = _equal_compute_pick(group)
        if at_equal is not None:
            d, f = at_equal.matched_delta.mean, at_equal.matched_fraction.mean
            assert d is not None and f is not None
            where = (
                "at the reference's compute" if f >= AT_BASELINE
                else f"at equal compute, {pct(f)} of the reference's (where it ended),"
            )  # fmt: skip
            details.append(f"{where} its eval loss was {d:+.4f} vs the reference's")
        if details:
            text += "; " + ", and ".join(details)
        per_s.append(text)

    intro = PAPER_STUDY.format(max_multiple=max_m)
    if any(o.params.get(_PARAM_MULTIPLE) == _PAPER_T for gr in groups.values() for o in gr):
        intro = intro[:-1] + ", and T steps as in the paper)"
    intro += f", compute in {convention} FLOPs: "
    target = f" of {num(base_loss, '.4f')}" if base_loss is not None else ""
    if firsts:
        s0, best = min(firsts, key=lambda x: x[1].compute_fraction.mean or math.inf)
        r = best.compute_fraction.mean
        assert r is not None
        who = (
            "every S"
            if len(firsts) == len(groups)
            else " and ".join(f"S={s}" for s, _ in firsts) + " only"
        )
        answer = (
            f"yes, the incremental schedules reached the reference's final eval loss{target} "
            f"({who}); the earliest, S={s0}, with {ratio(r)} the reference's compute, "
        )
        answer += (
            "less than the reference spent, unlike the paper (where incremental training "
            "needed more total compute to reach the reference's loss). "
            if r < 1
            else "more than the reference spent, as in the paper. "
        )
    else:
        answer = (
            f"no, no incremental schedule reached the reference's final eval loss{target} "
            "within the compute tried, as in the paper for short continual training. "
        )
    return intro + answer + " ".join(f"{t}." for t in per_s)


def study_verdict(study: StudyResults, outcomes: Sequence[Outcome], *, convention: str) -> str:
    """The report's verdict: :func:`verdict` (with the study's regime, from its parent run),
    then :func:`paper_verdict` for a paper study; :data:`PARTIAL_STUDY` instead while the
    study is not over."""
    if study.partial:
        return PARTIAL_STUDY.format(status=study.parent_status)
    text = verdict(outcomes, regime=Regime.from_params(study.parent_params))
    other = compute_matched(study, convention=_other(convention))
    study_text = paper_verdict(study, outcomes, convention=convention, other=other)
    if study_text:
        text += "\n\n" + study_text
    return text
