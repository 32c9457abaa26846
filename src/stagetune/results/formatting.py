"""Numbers as the report writes them, so that its table and its verdict read alike.

A missing value is a dash, infinities are ``∞``, a share of the baseline's compute never rounds
a point below it up to 100 %, and a statistic over seeds carries its 95 % half-width.
"""

from __future__ import annotations

import math
from typing import Final

from stagetune.results.matched import SAME_COMPUTE_RTOL
from stagetune.results.stats import Stat

__all__ = ["AT_BASELINE", "MISSING", "flops_si", "num", "pct", "ratio", "signed", "stat_text"]

MISSING: Final = "—"
"""What a cell or a sentence shows for a number it does not have."""
AT_BASELINE: Final = 1 - SAME_COMPUTE_RTOL
"""A share of the baseline's compute at least this is the baseline's own compute."""


def num(v: float | None, spec: str) -> str:
    """``v`` in the format ``spec``; a dash for ``None``, ``∞`` for infinities."""
    if v is None:
        return MISSING
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, spec)


_SI_PREFIXES: Final = ("", "k", "M", "G", "T", "P", "E", "Z", "Y")


def flops_si(v: float | None, unit: str = "FLOPs") -> str:
    """A compute with an SI prefix and three significant digits: ``1.30 TFLOPs``, ``812 GFLOPs``
    (a dash for ``None``)."""
    if v is None:
        return MISSING
    if not math.isfinite(v):
        return f"{num(v, '')} {unit}"
    k = 0 if v == 0 else min(max(math.floor(math.log10(abs(v)) / 3), 0), 8)
    x = v / 1000**k
    if abs(float(f"{x:.3g}")) >= 1000 and k < 8:  # 999.7 G rounds to 1.00 T
        k, x = k + 1, x / 1000
    return f"{f'{x:#.3g}'.rstrip('.')} {_SI_PREFIXES[k]}{unit}"


def stat_text(st: Stat, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    """The mean, and ``± half-width`` when the seeds differ (``scale`` applies to both)."""
    if st.mean is None:
        return MISSING
    text = num(st.mean * scale, spec) + suffix
    hw = st.half_width
    if hw is not None and math.isfinite(hw) and hw > 0:  # all seeds equal: no ± 0 noise
        text += f" ± {num(hw * scale, spec)}{suffix}"
    return text


def signed(st: Stat) -> str:
    """A signed mean difference (``+0.0150``), and ``± half-width`` when the seeds differ."""
    if st.mean is None:
        return MISSING
    text = f"{st.mean:+.4f}"
    if st.half_width is not None and st.half_width > 0:
        text += f" ± {st.half_width:.4f}"
    return text


def pct(fraction: float) -> str:
    """A share of the baseline's compute; never rounds a point below it up to 100%."""
    if fraction >= AT_BASELINE:
        return "100%"
    text = f"{fraction * 100:.0f}%"
    if text == "100%":
        text = f"{fraction * 100:.1f}%"
    return ">99.9%" if text == "100.0%" else text


def ratio(x: float | None) -> str:
    """A multiple of the baseline's compute (``0.80×``); a dash for ``None``."""
    return MISSING if x is None else f"{x:.2f}×"
