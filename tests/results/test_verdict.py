"""The verdict: the paper study's answer per stage count S, and no verdict for a partial study."""

from __future__ import annotations

import dataclasses
import json

from stagetune.results import compute_matched
from stagetune.results.loading import TrialResult
from stagetune.results.naming import TAG_SPACE
from stagetune.results.verdict import (
    PAPER_SPACE,
    PARTIAL_STUDY,
    paper_verdict,
    study_verdict,
    verdict,
)
from tests.results.helpers import BASE0, study, trial


def paper_trial(
    tid: str, stages: int, multiple: float, flops: list[float], loss: list[float],
    space: str = PAPER_SPACE,
) -> TrialResult:  # fmt: skip
    t = trial(tid, f"S{stages}x{multiple:g}", "0", flops, loss)
    params = {
        "schedule_key": t.schedule_key,
        "num_stages": str(stages),
        "continual_multiple": str(multiple),
    }
    return dataclasses.replace(t, params=params, tags={TAG_SPACE: space})


def test_paper_verdict_quotes_the_equal_compute_delta() -> None:
    # S=2: its 1x schedule ends at 99.5 (budget matching floors to whole steps); quoted as the
    # first within 1 % of the baseline's compute, before the 1.5x one that got all the way.
    # S=4: every schedule ends well short; the furthest, 0.5x at 80, is quoted there.
    trials = [
        BASE0,
        paper_trial("a", 2, 0.0, [20, 40, 50], [4.4, 3.9, 3.7]),
        paper_trial("b", 2, 1.0, [20, 40, 60, 80, 99.5], [4.4, 3.9, 3.5, 3.3, 3.1]),
        paper_trial("e", 2, 1.5, [20, 40, 60, 80, 100, 120], [4.4, 3.9, 3.5, 3.3, 3.1, 3.05]),
        paper_trial("c", 4, 0.0, [20, 40], [4.5, 4.0]),
        paper_trial("d", 4, 0.5, [20, 40, 60, 80], [4.5, 4.0, 3.6, 3.2]),
    ]
    s = study(*trials)
    text = paper_verdict(s, compute_matched(s))
    assert text is not None
    # S=2 at 99.5: 3.1 - (3.2 - 0.2 * 24.5/25) = +0.096.
    assert (
        "at equal compute, 99.5% of the reference's (where it ended), its eval loss was +0.0960 "
        "vs the reference's" in text
    )
    # S=4 at 80: 3.2 - (3.2 - 0.2 * 5/25) = +0.04; before, S=4 had no such comparison at all.
    assert (
        "S=4 did not reach it within 0.80× the reference's compute; its stages alone cost 0.40×, "
        "and at equal compute, 80% of the reference's (where it ended), its eval loss was +0.0400 "
        "vs the reference's" in text
    )


def test_the_paper_study_is_known_by_the_space_tag_of_its_trials() -> None:
    """The space a trial was sampled from is read from its tag, not parsed out of the schedule
    JSON's provenance: a schedule that says "paper" in its JSON is not enough."""
    paper = [BASE0, paper_trial("a", 2, 0.0, [20, 40, 50], [4.4, 3.9, 3.7])]
    s = study(*paper)
    assert paper_verdict(s, compute_matched(s)) is not None
    wide = paper_trial("a", 2, 0.0, [20, 40, 50], [4.4, 3.9, 3.7], space="wide")
    wide = dataclasses.replace(
        wide, params={**wide.params, "schedule_json": json.dumps({"meta": {"space": "paper"}})}
    )
    s = study(BASE0, wide)
    assert paper_verdict(s, compute_matched(s)) is None
    # One trial of another space among the paper's: not a paper study.
    s = study(*paper, paper_trial("b", 4, 0.0, [20, 40], [4.5, 4.0], space="wide"))
    assert paper_verdict(s, compute_matched(s)) is None


def test_a_study_that_is_not_over_gets_no_verdict() -> None:
    reached = trial("r", "r", "0", [20, 40, 60, 80], [3.9, 3.4, 3.1, 2.9])
    over = study(BASE0, reached, parent_status="finished")
    outcomes = compute_matched(over)
    assert study_verdict(over, outcomes, convention="standard") == verdict(outcomes)
    assert verdict(outcomes).startswith(
        "Against the reference (the configured baseline, the best of the full-depth lr sweep), "
        "over 1 seed: schedule R reached the reference's eval loss"
    )
    stopped = study(BASE0, reached, parent_status="interrupted")
    assert study_verdict(stopped, outcomes, convention="standard") == PARTIAL_STUDY.format(
        status="interrupted"
    )
