"""One study read as a sweep reads it: best full-depth reference, best incremental schedule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stagetune.results.study_outcome import read_study_outcome
from tests.results.helpers import study, trial

FLOPS = [25.0, 50.0, 75.0, 100.0]


def _full(tid: str, key: str, seed: str, loss: list[float], *, baseline: bool = False):  # type: ignore[no-untyped-def]
    t = trial(tid, key, seed, FLOPS, loss, baseline=baseline)
    return replace(t, params={**t.params, "num_stages": "1"})


def _staged(tid: str, key: str, seed: str, loss: list[float]):  # type: ignore[no-untyped-def]
    t = trial(tid, key, seed, FLOPS, loss)
    return replace(t, params={**t.params, "num_stages": "2"})


def _study():  # type: ignore[no-untyped-def]
    return study(
        # the configured baseline, and an lr variant that ends lower: the reference
        _full("b0", "base", "0", [4.0, 3.5, 3.2, 3.0], baseline=True),
        _full("b1", "base", "1", [4.1, 3.6, 3.3, 3.1], baseline=True),
        _full("l0", "lr2", "0", [3.8, 3.3, 3.0, 2.8]),
        _full("l1", "lr2", "1", [3.9, 3.4, 3.1, 2.9]),
        # S2 beats the baseline everywhere, reaches the lr-tuned reference at 75 % (seed 0)
        _staged("s0", "s2", "0", [3.5, 3.1, 2.8, 2.7]),
        _staged("s1", "s2", "1", [3.6, 3.2, 3.0, 2.95]),
        # S4 never reaches it
        _staged("f0", "s4", "0", [3.9, 3.6, 3.3, 3.1]),
        _staged("f1", "s4", "1", [4.0, 3.7, 3.4, 3.2]),
    )


def test_reference_is_the_best_full_depth_schedule() -> None:
    out = read_study_outcome(_study())
    assert out.reference_key == "lr2"
    assert out.schedule_key == "s2"
    assert out.seeds == ("0", "1")
    assert out.compute_fractions[0] == pytest.approx(0.75)
    # seed 1 ends at 2.95, above the reference's 2.9: not reached ...
    assert out.compute_fractions[1] is None
    # ... and counted at its lower bound for the curve: the compute it spent over the ref's
    assert out.curve_fractions[1] == pytest.approx(1.0)
    assert out.matched_deltas[0] == pytest.approx(2.7 - 2.8)
    assert out.matched_deltas[1] == pytest.approx(2.95 - 2.9)


def test_named_reference_is_used() -> None:
    out = read_study_outcome(_study(), reference="base")
    assert out.reference_key == "base"
    # against the untuned baseline S2 reaches 3.0 at 50 + 25/3 of 100 FLOPs in seed 0
    assert out.compute_fractions[0] == pytest.approx(7 / 12)
    assert out.to_dict()["reference_key"] == "base"


def test_a_point_tried_on_one_seed_is_not_the_answer() -> None:
    # S2 at another lr, tried on the study's seed only (not confirmed), reaches the reference
    # sooner than anything on that seed: chosen on one seed's luck, it must not be the best.
    lucky = _staged("x0", "s2-lr2", "0", [3.0, 2.7, 2.6, 2.5])
    out = read_study_outcome(replace(_study(), trials=(*_study().trials, lucky)))
    assert out.schedule_key == "s2"
    assert out.seeds == ("0", "1")
