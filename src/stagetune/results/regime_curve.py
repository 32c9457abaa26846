"""The regime curve: how an outcome of incremental training moves with training length.

Pure maths (numpy), no MLflow. Input: at each training length ``x`` (tokens per non-embedding
parameter, :mod:`stagetune.results.regime`), one value per seed of a compute-matched outcome of the best
incremental schedule (the compute fraction to the reference's loss, or the Δ loss at equal
compute). Output:

* each length's mean and 95 % Student-t interval over seeds (:class:`~.stats.Stat`);
* the **trend**, a straight line in log10 of the length, ``y = a + b · log10(x)``, fitted by
  least squares to every seed's value. Its uncertainty is the least-squares line's own: (a, b)
  drawn :data:`TREND_DRAWS` times (a fixed generator) from the bivariate Student-t
  with the fit's covariance ``s² (XᵀX)⁻¹`` and ``N − 2`` degrees of freedom (``s²``: the
  residual variance over all N seed values, which holds both the seed noise and the line's
  lack of fit). A percentile bootstrap over seeds, resampled within each length, was used
  before: with 2–3 seeds a length has 3–10 distinct resamples and no t-quantile, and its
  band came out several times narrower than the per-length intervals it summarises;
* the **crossover**: the length where the trend crosses ``level`` (1 for the compute fraction:
  the schedule stops reaching the reference's loss with less compute; 0 for Δ loss), reported
  only when the fitted line crosses it *inside* the measured range. Its interval is the
  draws'; a drawn line that does not cross inside the range counts as "below" or
  "beyond" it, so an interval can be open-ended (``None`` bound) rather than extrapolated.
  Otherwise the answer is "no crossover in the measured range", never an extrapolation;
* a **prediction** at a planned length (``--target-params`` / ``--target-tokens``): the
  trend's value with its interval, marked extrapolated outside the measured range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from stagetune.results.stats import Stat

__all__ = [
    "INTERVAL_METHOD",
    "TREND_DRAWS",
    "TREND_MODEL",
    "Crossover",
    "CurvePoint",
    "Prediction",
    "RegimeCurve",
    "fit_regime_curve",
]

TREND_DRAWS: Final = 2000
"""Lines drawn for the trend's, the crossover's and a prediction's intervals."""
TREND_MODEL: Final = "y = a + b · log10(tokens per non-embedding parameter), least squares"
INTERVAL_METHOD: Final = (
    "least-squares line's Student-t interval (residual variance over every seed's value, "
    "N − 2 degrees of freedom)"
)
UNDETERMINED: Final = "undetermined"
_FLAT: Final = 1e-12
"""Slopes and distances to the level this small are rounding of equal values: zero."""
_SEED: Final = 0
"""The draws' generator seed: the same data give the same interval."""


@dataclass(frozen=True)
class CurvePoint:
    """One training length: the per-seed values there."""

    x: float
    """Tokens per non-embedding parameter."""
    values: tuple[float, ...]

    @property
    def stat(self) -> Stat:
        return Stat.of(self.values)


@dataclass(frozen=True)
class Crossover:
    """Where the trend crosses the level, or why it does not (inside the measured range)."""

    x: float | None
    """The crossover length; ``None``: no crossover in the measured range."""
    low: float | None
    """The interval's lower bound; ``None``: at or below the measured range's start."""
    high: float | None
    """The interval's upper bound; ``None``: beyond the measured range."""
    side: str
    """Without a crossover: ``below`` (the trend stays below the level over the whole range)
    or ``above``; with one: the side the trend is on at the range's end."""

    def describe(self, unit: str = "tokens per parameter") -> str:
        if self.x is None and self.side == UNDETERMINED:
            return "no trend: fewer than two training lengths with values"
        if self.x is None:
            where = "at or above" if self.side == "above" else "below"
            return f"no crossover in the measured range (the trend stays {where} the level)"
        lo = "≤ range start" if self.low is None else f"{self.low:.3g}"
        hi = "beyond the measured range" if self.high is None else f"{self.high:.3g}"
        return f"crossover at ≈ {self.x:.3g} {unit} (95 % interval {lo} … {hi})"


@dataclass(frozen=True)
class Prediction:
    """The trend's value at a planned training length."""

    x: float
    value: float
    low: float
    high: float
    extrapolated: bool

    def describe(self) -> str:
        how = "EXTRAPOLATED beyond the measured range" if self.extrapolated else "interpolated"
        return f"{self.value:.3g} (95 % interval {self.low:.3g} … {self.high:.3g}; {how})"


@dataclass(frozen=True)
class RegimeCurve:
    """A fitted regime curve of one outcome (see the module docstring)."""

    points: tuple[CurvePoint, ...]
    level: float
    intercept: float | None
    slope: float | None
    """Change of the outcome per decade of training length; ``None``: fewer than two lengths."""
    slope_low: float | None
    slope_high: float | None
    crossover: Crossover
    drawn: np.ndarray
    """(draws, 2) (intercept, slope) pairs drawn around the fit; empty without a fit or
    without residual degrees of freedom (two values in all)."""

    @property
    def x_range(self) -> tuple[float, float]:
        xs = [p.x for p in self.points]
        return min(xs), max(xs)

    def value(self, x: float) -> float | None:
        if self.intercept is None or self.slope is None:
            return None
        return self.intercept + self.slope * math.log10(x)

    def band(self, x: float) -> tuple[float, float] | None:
        """The trend's 95 % interval at ``x``."""
        if not len(self.drawn):
            return None
        ys = self.drawn[:, 0] + self.drawn[:, 1] * math.log10(x)
        return float(np.percentile(ys, 2.5)), float(np.percentile(ys, 97.5))

    def predict(self, x: float) -> Prediction | None:
        """The trend at ``x`` with its interval; extrapolated outside the measured range."""
        value, band = self.value(x), self.band(x)
        if value is None or band is None:
            return None
        lo, hi = self.x_range
        return Prediction(x, value, band[0], band[1], extrapolated=not lo <= x <= hi)

    def to_dict(self) -> dict[str, Any]:
        c = self.crossover
        return {
            "model": TREND_MODEL,
            "level": self.level,
            "intercept": self.intercept,
            "slope_per_decade": self.slope,
            "slope_interval": [self.slope_low, self.slope_high],
            "crossover": {
                "x": c.x,
                "low": c.low,
                "high": c.high,
                "side": c.side,
                "text": c.describe(),
            },
            "points": [
                {
                    "tokens_per_param": p.x,
                    "values": list(p.values),
                    "mean": p.stat.mean,
                    "low": p.stat.low,
                    "high": p.stat.high,
                    "n": p.stat.n,
                }
                for p in self.points
            ],
        }


def _fit(logx: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares (intercept, slope); ``None`` when the xs do not vary."""
    if len(np.unique(logx)) < 2:
        return None
    slope, intercept = np.polyfit(logx, y, 1)
    return float(intercept), float(slope)


def _crossing(a: float, b: float, level: float, lo: float, hi: float) -> float:
    """log10 x where ``a + b·log10 x = level``, clipped to ±inf outside [lo, hi] (log10)."""
    if abs(b) < _FLAT:
        return math.inf if a < level - _FLAT else -math.inf
    t = (level - a) / b
    if t < lo:
        return -math.inf
    if t > hi:
        return math.inf
    return t


def _draws(logx: np.ndarray, y: np.ndarray, fit: tuple[float, float], n: int) -> np.ndarray:
    """``n`` (intercept, slope) pairs from the least-squares line's bivariate Student-t;
    empty when no residual degree of freedom is left (N ≤ 2)."""
    dof = len(y) - 2
    if dof < 1:
        return np.empty((0, 2))
    a, b = fit
    design = np.column_stack([np.ones_like(logx), logx])
    resid = y - (a + b * logx)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(design.T @ design)
    rng = np.random.default_rng(_SEED)
    # eigh, not Cholesky: a noiseless fit has a zero covariance.
    z = rng.multivariate_normal(np.zeros(2), cov, size=n, method="eigh")
    # A common χ² scale per draw makes the pair bivariate-t, not two independent t's.
    scale = np.sqrt(dof / rng.chisquare(dof, size=n))
    return np.array([a, b]) + z * scale[:, None]


def _crossover(
    a: float, b: float, lines: np.ndarray, level: float, lo: float, hi: float
) -> Crossover:
    t = _crossing(a, b, level, lo, hi)
    end_side = "below" if a + b * hi < level - _FLAT else "above"
    if not math.isfinite(t):
        # No crossing inside: the whole fitted segment is on one side.
        side = "below" if a + b * lo < level - _FLAT else "above"
        return Crossover(None, None, None, side)
    if not len(lines):  # nothing to draw from: no interval either way
        return Crossover(float(10**t), None, None, end_side)
    ts = np.array([_crossing(float(ai), float(bi), level, lo, hi) for ai, bi in lines])
    # ±inf draws sort to the ends: a percentile that lands on one is an open bound.
    t_lo = np.percentile(ts, 2.5, method="lower")
    t_hi = np.percentile(ts, 97.5, method="higher")
    low = None if not math.isfinite(t_lo) or t_lo <= lo else float(10**t_lo)
    high = None if not math.isfinite(t_hi) else float(10**t_hi)
    return Crossover(float(10**t), low, high, end_side)


def fit_regime_curve(
    points: Sequence[tuple[float, Sequence[float | None]]],
    *,
    level: float,
    draws: int = TREND_DRAWS,
) -> RegimeCurve:
    """Fit the trend and find the crossover of ``level`` (see the module docstring).

    Args:
        points: ``(tokens per parameter, per-seed values)``; ``None`` / NaN values are
            dropped, and a length left without values is left out.
        level: the outcome's break-even value (1 for a compute fraction, 0 for a Δ loss).
    """
    kept = []
    for x, vals in points:
        clean = tuple(float(v) for v in vals if v is not None and not math.isnan(float(v)))
        if x <= 0:
            raise ValueError(f"tokens per parameter must be positive, got {x}")
        if clean:
            kept.append(CurvePoint(float(x), clean))
    kept.sort(key=lambda p: p.x)
    logx = np.array([math.log10(p.x) for p in kept for _ in p.values])
    y = np.array([v for p in kept for v in p.values])
    fit = _fit(logx, y) if len(kept) >= 2 else None
    if fit is None:
        return RegimeCurve(
            tuple(kept),
            level,
            None,
            None,
            None,
            None,
            Crossover(None, None, None, UNDETERMINED),
            np.empty((0, 2)),
        )
    a, b = fit
    lines = _draws(logx, y, fit, draws)
    lo, hi = math.log10(kept[0].x), math.log10(kept[-1].x)
    return RegimeCurve(
        points=tuple(kept),
        level=level,
        intercept=a,
        slope=b,
        slope_low=float(np.percentile(lines[:, 1], 2.5)) if len(lines) else None,
        slope_high=float(np.percentile(lines[:, 1], 97.5)) if len(lines) else None,
        crossover=_crossover(a, b, lines, level, lo, hi),
        drawn=lines,
    )
