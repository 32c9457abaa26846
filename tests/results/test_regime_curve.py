"""The regime curve's trend, interval and crossover on synthetic curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagetune.results.regime_curve import fit_regime_curve

LENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0)


def _curve(a: float, b: float, *, noise: float, seeds: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [
        (x, [a + b * math.log10(x) + noise * rng.standard_normal() for _ in range(seeds)])
        for x in LENGTHS
    ]


def test_exact_line_recovers_trend_and_crossover() -> None:
    # fraction = 0.8 + 0.2·log10(x) reaches 1 at x = 10, inside the range.
    curve = fit_regime_curve(_curve(0.8, 0.2, noise=0.0), level=1.0)
    assert curve.slope == pytest.approx(0.2)
    assert curve.intercept == pytest.approx(0.8)
    assert curve.crossover.x == pytest.approx(10.0)
    # No noise: every resample is the same line, the interval collapses onto the estimate.
    assert curve.crossover.low == pytest.approx(10.0)
    assert curve.crossover.high == pytest.approx(10.0)
    assert curve.crossover.side == "above"
    assert "crossover at" in curve.crossover.describe()


def test_no_crossover_in_range_is_said_not_extrapolated() -> None:
    # Rising but still well below 1 at 30 tokens/param: it would cross at 10**2.5 ≈ 316.
    curve = fit_regime_curve(_curve(0.5, 0.2, noise=0.01), level=1.0)
    assert curve.crossover.x is None
    assert curve.crossover.side == "below"
    assert curve.crossover.describe().startswith("no crossover in the measured range")
    # A planned run at 300 tokens/param is placed on the curve, labelled extrapolated.
    pred = curve.predict(300.0)
    assert pred is not None and pred.extrapolated
    assert pred.value == pytest.approx(0.5 + 0.2 * math.log10(300), abs=0.05)
    assert pred.low <= pred.value <= pred.high
    assert "EXTRAPOLATED" in pred.describe()
    inside = curve.predict(3.0)
    assert inside is not None and not inside.extrapolated


def test_noisy_curve_gives_a_wide_interval() -> None:
    clean = fit_regime_curve(_curve(0.8, 0.2, noise=0.01), level=1.0)
    noisy = fit_regime_curve(_curve(0.8, 0.2, noise=0.4), level=1.0)
    assert clean.crossover.x is not None and clean.crossover.low and clean.crossover.high
    assert clean.crossover.high / clean.crossover.low < 2
    # With seed noise twice the trend's whole rise, the interval must not look precise:
    # open at one end at least, or spanning more than a decade.
    c = noisy.crossover
    if c.x is not None:
        assert c.low is None or c.high is None or c.high / c.low > 10
    assert noisy.slope_low is not None and noisy.slope_high is not None
    assert noisy.slope_high - noisy.slope_low > 5 * (clean.slope_high - clean.slope_low)


def test_delta_loss_level_zero_and_missing_values() -> None:
    # Δ loss = -0.1 + 0.1·log10(x): crosses 0 at x = 10; a not-reached seed (None) is dropped.
    pts = [(x, [-0.1 + 0.1 * math.log10(x)] * 3) for x in LENGTHS]
    pts[0] = (0.3, [pts[0][1][0], None, float("nan")])
    curve = fit_regime_curve(pts, level=0.0)
    assert curve.crossover.x == pytest.approx(10.0)
    assert curve.points[0].stat.n == 1


def test_one_length_has_no_trend() -> None:
    curve = fit_regime_curve([(3.0, [0.5, 0.6])], level=1.0)
    assert curve.slope is None and curve.crossover.x is None
    assert curve.predict(10.0) is None
    assert "no trend" in curve.crossover.describe()
    assert curve.to_dict()["points"][0]["n"] == 2


def test_flat_at_the_level_is_no_crossover() -> None:
    # Every seed at every length failed to reach the reference: counted at 1, the level.
    curve = fit_regime_curve([(x, [1.0, 1.0, 1.0]) for x in LENGTHS], level=1.0)
    assert curve.crossover.x is None
    assert "stays at or above the level" in curve.crossover.describe()


def test_few_seeds_interval_is_as_wide_as_the_points_say() -> None:
    # Two seeds a length, seed spread ±0.05 around a line: the trend's band at a measured
    # length must be about as wide as that length's own interval of the mean would be from
    # the same spread, not several times narrower (the old percentile bootstrap over 2 seeds).
    pts = [(x, [0.8 + 0.1 * math.log10(x) - 0.05, 0.8 + 0.1 * math.log10(x) + 0.05]) for x in LENGTHS]
    curve = fit_regime_curve(pts, level=1.0)
    band = curve.band(3.0)
    assert band is not None
    width = band[1] - band[0]
    # s = 0.0559 (8 residual dof); SE of the line at the centre ≈ s/√10; t(8) 97.5 % = 2.31.
    assert width == pytest.approx(2 * 2.306 * 0.0559 / math.sqrt(10), rel=0.15)


def test_two_values_give_a_line_without_an_interval() -> None:
    curve = fit_regime_curve([(0.3, [0.5]), (30.0, [1.5])], level=1.0)
    assert curve.crossover.x == pytest.approx(3.0)
    # No residual degree of freedom: the interval is open at both ends, never invented.
    assert curve.crossover.low is None and curve.crossover.high is None
    assert curve.slope_low is None and curve.band(3.0) is None
