"""Statistics over seeds: the mean and two-sided 95 % Student-t interval of a quantity.

Pure Python (no SciPy): the t quantiles come from a table and, past 30 degrees of freedom, a
Cornish-Fisher expansion.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["Stat", "t_quantile_975"]

# Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..30.
_T975: Final = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.068657610, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (no SciPy needed).

    Exact table up to 30, then the Cornish-Fisher expansion around the normal quantile
    (error < 1e-5 for df > 30).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


@dataclass(frozen=True)
class Stat:
    """Mean and two-sided 95 % Student-t confidence interval over seeds."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        """Summary of the non-``None`` values (CI needs at least two)."""
        vals = tuple(float(v) for v in values if v is not None and not math.isnan(v))
        n = len(vals)
        if n == 0:
            return cls(None, None, None, 0, ())
        mean = statistics.fmean(vals)
        if n == 1:
            return cls(mean, None, None, 1, vals)
        half = t_quantile_975(n - 1) * statistics.stdev(vals) / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n, vals)

    @property
    def half_width(self) -> float | None:
        if self.low is None or self.high is None or self.mean is None:
            return None
        return (self.high - self.low) / 2
