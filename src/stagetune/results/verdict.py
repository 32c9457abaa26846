"""The verdict: what a study's compute-matched outcomes answer, in a paragraph.

:func:`verdict` names the best schedule that reached the baseline's eval loss in every seed;
:func:`paper_verdict` answers the paper's question per stage count for a study of the paper's
shape; :func:`study_verdict` is the report's text: both, or no verdict at all while the study is
not over (a verdict from some of its trials would favour whatever happened to finish first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from stagetune.results.formatting import AT_BASELINE, num, pct, ratio
from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import SAME_COMPUTE_RTOL, Outcome, compute_matched
from stagetune.results.naming import TAG_SPACE

__all__ = [
    "NO_SCHEDULE_REACHED",
    "PAPER_SPACE",
    "PAPER_STUDY",
    "PARTIAL_STUDY",
    "paper_verdict",
    "study_verdict",
    "verdict",
]

NO_SCHEDULE_REACHED: Final = "No schedule reached the baseline's eval loss within the budget."
PARTIAL_STUDY: Final = (
    "No verdict: the study is not over (its status is {status}), and a verdict from some of its "
    "trials could mislead. Continue it with 'stagetune run --resume'."
)
PAPER_STUDY: Final = (
    "Paper study (the shape of arXiv 2411.18700: the baseline and S uniform stages of L/S "
    "layers, each phase T/(2S) steps, random growth, the paper's freeze policy, continual "
    "training up to {max_multiple} the budget-matched length)"
)
PAPER_SPACE: Final = "paper"
"""The search space of the paper's shape (tag :data:`~stagetune.results.naming.TAG_SPACE`)."""
_PARAM_STAGES: Final = "num_stages"
_PARAM_MULTIPLE: Final = "continual_multiple"


def _other(convention: str) -> str:
    """The other FLOPs convention, quoted beside each of the paper study's ratios."""
    return "paper" if convention == "standard" else "standard"


def verdict(outcomes: Sequence[Outcome]) -> str:
    """One paragraph: the best schedule that reached the baseline's loss in every seed."""
    scheds = [o for o in outcomes if not o.is_baseline]
    winners = [o for o in scheds if o.reached and o.compute_fraction.mean is not None]
    if not winners:
        text = NO_SCHEDULE_REACHED
        partial = [o for o in scheds if o.n_reached > 0]
        if partial:
            best = max(partial, key=lambda o: o.n_reached / o.n_seeds)
            text += (
                f" Schedule {best.label} reached it in {best.n_reached} of {best.n_seeds} seeds."
            )
        return text
    best = min(winners, key=lambda o: o.compute_fraction.mean or math.inf)
    st = best.compute_fraction
    assert st.mean is not None
    if st.low is not None and st.high is not None:
        ci = f"95% CI {st.low * 100:.1f}–{st.high * 100:.1f}%"
    else:
        ci = "no CI from a single seed"
    seeds = f"{best.n_seeds} seed" + ("s" if best.n_seeds != 1 else "")
    text = (
        f"Schedule {best.label} reached the baseline's eval loss with {st.mean * 100:.1f}% "
        f"of its compute ({ci}, {seeds}"
    )
    if best.speedup.mean is not None:
        text += f"; speedup {best.speedup.mean:.2f}×"
    text += ")."
    if st.mean > 1:
        text += " That is more compute than the baseline needed: no schedule saved compute."
    return text


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
        if o.is_baseline:
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

    Whether the incremental schedules reached the baseline's final eval loss, and at what
    compute ratio (compute to reach it / the baseline's compute); per S the least such ratio
    over its continual lengths, what the stages alone cost, and the furthest compute tried.
    ``other``: the same outcomes on the other FLOPs convention, quoted beside each ratio.
    """
    staged = [t for t in study.trials if not t.is_baseline]
    if not staged or any(_space_of(t) != PAPER_SPACE for t in staged):
        return None
    groups = _by_stages(outcomes)
    if not groups:
        return None
    other_conv = _other(convention)
    other_by_key = {o.schedule_key: o for o in (other or [])}
    base = next((o for o in outcomes if o.is_baseline), None)
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
            text = f"S={s} reached it at {ratio(st.mean)} the baseline's compute"
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
        else:
            furthest = f"{ratio(max(spent))} the baseline's compute" if spent else "its budget"
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
                "at the baseline's compute" if f >= AT_BASELINE
                else f"at equal compute, {pct(f)} of the baseline's (where it ended),"
            )  # fmt: skip
            details.append(f"{where} its eval loss was {d:+.4f} vs the baseline's")
        if details:
            text += "; " + ", and ".join(details)
        per_s.append(text)

    intro = PAPER_STUDY.format(max_multiple=max_m) + f", compute in {convention} FLOPs: "
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
            f"yes, the incremental schedules reached the baseline's final eval loss{target} "
            f"({who}); the earliest, S={s0}, with {ratio(r)} the baseline's compute, "
        )
        answer += (
            "less than the baseline spent, unlike the paper (where incremental training "
            "needed more total compute to reach the baseline's loss). "
            if r < 1
            else "more than the baseline spent, as in the paper. "
        )
    else:
        answer = (
            f"no, no incremental schedule reached the baseline's final eval loss{target} "
            "within the compute tried, as in the paper for short continual training. "
        )
    return intro + answer + " ".join(f"{t}." for t in per_s)


def study_verdict(study: StudyResults, outcomes: Sequence[Outcome], *, convention: str) -> str:
    """The report's verdict: :func:`verdict`, then :func:`paper_verdict` for a paper study;
    :data:`PARTIAL_STUDY` instead while the study is not over."""
    if study.partial:
        return PARTIAL_STUDY.format(status=study.parent_status)
    text = verdict(outcomes)
    other = compute_matched(study, convention=_other(convention))
    study_text = paper_verdict(study, outcomes, convention=convention, other=other)
    if study_text:
        text += "\n\n" + study_text
    return text
