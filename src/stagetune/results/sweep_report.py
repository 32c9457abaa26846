"""The sweep's report: the regime curve of each model size, as a table, a plot, Markdown, HTML
and JSON, logged to the sweep's MLflow run.

Each study is read back from MLflow (:func:`~stagetune.results.loading.load_study`) and reduced
to its best incremental schedule against its reference by
:func:`~stagetune.results.study_outcome.read_study_outcome`; the curves are
:func:`~stagetune.results.regime_curve.fit_regime_curve`'s.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stagetune.results.loading import load_study
from stagetune.results.regime import COMPUTE_OPTIMAL_TOKENS_PER_PARAM, PAPER_TOKENS_PER_PARAM
from stagetune.results.regime_curve import (
    INTERVAL_METHOD,
    TREND_MODEL,
    RegimeCurve,
    fit_regime_curve,
)
from stagetune.results.render import json_safe
from stagetune.results.study_outcome import StudyOutcome, read_study_outcome

__all__ = ["FRACTION_LEVEL", "SweepPoint", "SweepReport", "build_sweep_report"]

FRACTION_LEVEL: Final = 1.0
"""Compute fraction 1: the incremental schedule needs the reference's compute for its loss."""
DELTA_LEVEL: Final = 0.0
_FILES: Final = ("sweep_report.md", "sweep_report.html", "sweep_report.json", "regime_curve.png")


@dataclass(frozen=True)
class SweepPoint:
    """A study of the sweep, as the report places it."""

    study: str
    size: str
    tokens_per_param: float
    non_embedding_params: int


@dataclass
class SizeCurves:
    size: str
    non_embedding_params: int
    outcomes: list[tuple[float, StudyOutcome]]
    fraction: RegimeCurve
    delta: RegimeCurve
    target: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepReport:
    sizes: list[SizeCurves]
    text: str
    paths: dict[str, Path]
    data: dict[str, Any]


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _stat_text(values: Sequence[float | None], spec: str = ".3f") -> str:
    from stagetune.results.stats import Stat

    st = Stat.of(values)
    if st.mean is None:
        return "—"
    ci = f" [{_fmt(st.low, spec)}, {_fmt(st.high, spec)}]" if st.low is not None else ""
    return f"{_fmt(st.mean, spec)}{ci} (n={st.n})"


def _size_markdown(sc: SizeCurves) -> list[str]:
    lines = [
        f"### {sc.size} ({sc.non_embedding_params:,} non-embedding parameters)",
        "",
        "| tokens/param | reference | best incremental | compute fraction (95 % CI) | "
        "reached | Δ loss at equal compute (95 % CI) |",
        "|---:|---|---|---|---:|---|",
    ]
    for x, o in sc.outcomes:
        reached = sum(f is not None for f in o.compute_fractions)
        # A seed that did not reach counts as a lower bound: the mean is one too.
        bound = "≥ " if reached < len(o.seeds) else ""
        lines.append(
            f"| {x:.3g} | {o.reference_label} | {o.schedule_label or '—'} "
            f"| {bound}{_stat_text(o.curve_fractions)} | {reached}/{len(o.seeds)} "
            f"| {_stat_text(o.matched_deltas, '+.4f')} |"
        )
    for name, curve in (("compute fraction", sc.fraction), ("Δ loss", sc.delta)):
        slope = (
            f"{_fmt(curve.slope, '+.3f')} per decade (95 % interval "
            f"[{_fmt(curve.slope_low, '+.3f')}, {_fmt(curve.slope_high, '+.3f')}])"
        )
        lines += ["", f"- **{name}** trend: {slope}; {curve.crossover.describe()}."]
    if sc.target:
        t = sc.target
        lines.append(
            f"- **planned run** ({t['params']:.4g} params, {t['tokens']:.4g} tokens = "
            f"{t['tokens_per_param']:.3g} tokens/param): compute fraction {t['fraction']}; "
            f"Δ loss {t['delta']}."
        )
    return lines


def _markdown(sizes: list[SizeCurves]) -> str:
    out = [
        "# Regime sweep: where does incremental training stop paying?",
        "",
        f"Trend model: {TREND_MODEL}, fitted to every seed's value; 95 % intervals: Student-t "
        f"over seeds at each length; for the trend and the crossover the {INTERVAL_METHOD}. "
        "A seed that never reached the reference's loss counts at its lower bound "
        "(1, or the compute it spent over the reference's if more; such rows are marked ≥, "
        "and a trend through them understates the fraction). Crossover: where the compute-fraction "
        "trend reaches 1 (Δ loss: 0) inside the measured range; outside it, none is claimed. "
        f"Reference points: compute-optimal ≈ {COMPUTE_OPTIMAL_TOKENS_PER_PARAM:g}, the "
        f"paper ≈ {PAPER_TOKENS_PER_PARAM:g} tokens per non-embedding parameter.",
        "",
    ]
    for sc in sizes:
        out += [*_size_markdown(sc), ""]
    out.append("![regime curve](regime_curve.png)")
    return "\n".join(out) + "\n"


def _plot(sizes: list[SizeCurves], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, attr, level, ylabel in (
        (axes[0], "fraction", FRACTION_LEVEL, "compute to the reference's loss (fraction)"),
        (axes[1], "delta", DELTA_LEVEL, "Δ eval loss at equal compute"),
    ):
        for sc in sizes:
            curve: RegimeCurve = getattr(sc, attr)
            xs = [p.x for p in curve.points]
            # Every kept point has at least one value, so a mean.
            means = [float(p.stat.mean or 0.0) for p in curve.points]
            err = [
                [
                    m - (p.stat.low if p.stat.low is not None else m)
                    for p, m in zip(curve.points, means)
                ],
                [
                    (p.stat.high if p.stat.high is not None else m) - m
                    for p, m in zip(curve.points, means)
                ],
            ]
            line = ax.errorbar(xs, means, yerr=err, fmt="o", capsize=3, label=sc.size)
            if curve.slope is not None and xs:
                grid = np.logspace(math.log10(min(xs)), math.log10(max(xs)), 40)
                bands = [curve.band(float(g)) for g in grid]
                ax.plot(grid, [curve.value(float(g)) for g in grid], color=line[0].get_color())
                ax.fill_between(
                    grid,
                    [b[0] for b in bands if b],
                    [b[1] for b in bands if b],
                    color=line[0].get_color(),
                    alpha=0.15,
                )
            if curve.crossover.x is not None:
                ax.axvline(curve.crossover.x, color=line[0].get_color(), ls=":")
        ax.axhline(level, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per non-embedding parameter")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle("Best incremental schedule vs the tuned full-depth reference (95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_sweep_report(
    tracking_uri: str,
    experiment: str,
    points: Sequence[SweepPoint],
    output: Path,
    *,
    target: tuple[float, float] | None = None,
    reference: str | None = None,
) -> SweepReport:
    """Read every study of the sweep, fit the curves, write the files into ``output``.

    Args:
        target: a planned run (non-embedding parameters, training tokens) to place on each
            size's curve (labelled extrapolated outside the measured range).
        reference: passed to :func:`read_study_outcome` (``None``: each study's best
            full-depth schedule).
    """
    by_size: dict[str, list[SweepPoint]] = {}
    for p in points:
        by_size.setdefault(p.size, []).append(p)
    sizes = []
    for size, pts in by_size.items():
        outs = [
            (
                p.tokens_per_param,
                read_study_outcome(
                    load_study(tracking_uri, experiment, study=p.study), reference=reference
                ),
            )
            for p in sorted(pts, key=lambda p: p.tokens_per_param)
        ]
        frac = fit_regime_curve([(x, o.curve_fractions) for x, o in outs], level=FRACTION_LEVEL)
        delta = fit_regime_curve([(x, o.matched_deltas) for x, o in outs], level=DELTA_LEVEL)
        sc = SizeCurves(size, pts[0].non_embedding_params, outs, frac, delta)
        if target is not None:
            tpp = target[1] / target[0]
            pf, pd = frac.predict(tpp), delta.predict(tpp)
            sc.target = {
                "params": target[0],
                "tokens": target[1],
                "tokens_per_param": tpp,
                "fraction": pf.describe() if pf else "no trend",
                "delta": pd.describe() if pd else "no trend",
                "extrapolated": bool(pf and pf.extrapolated),
            }
        sizes.append(sc)
    output.mkdir(parents=True, exist_ok=True)
    paths = {name: output / name for name in _FILES}
    text = _markdown(sizes)
    data = json_safe(
        {
            "trend_model": TREND_MODEL,
            "sizes": [
                {
                    "size": sc.size,
                    "non_embedding_params": sc.non_embedding_params,
                    "studies": [{"tokens_per_param": x, **o.to_dict()} for x, o in sc.outcomes],
                    "compute_fraction": sc.fraction.to_dict(),
                    "delta_loss": sc.delta.to_dict(),
                    "target": sc.target,
                }
                for sc in sizes
            ],
        }
    )
    _plot(sizes, paths["regime_curve.png"])
    paths["sweep_report.md"].write_text(text, encoding="utf-8")
    paths["sweep_report.json"].write_text(json.dumps(data, indent=1), encoding="utf-8")
    png = base64.b64encode(paths["regime_curve.png"].read_bytes()).decode()
    body = html.escape(text.replace("![regime curve](regime_curve.png)", ""))
    paths["sweep_report.html"].write_text(
        f"<!doctype html><meta charset=utf-8><title>regime sweep</title><pre>{body}</pre>"
        f'<img alt="regime curve" src="data:image/png;base64,{png}">',
        encoding="utf-8",
    )
    return SweepReport(sizes=sizes, text=text, paths=paths, data=data)


def sweep_metrics(report: SweepReport) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and tags of the sweep's MLflow run."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for sc in report.sizes:
        for name, curve in (("fraction", sc.fraction), ("delta", sc.delta)):
            pre = f"{sc.size}.{name}"
            for key, v in (
                ("slope", curve.slope),
                ("crossover", curve.crossover.x),
                ("crossover_low", curve.crossover.low),
                ("crossover_high", curve.crossover.high),
            ):
                if v is not None:
                    metrics[f"{pre}.{key}"] = v
            tags[f"stagetune.{pre}.crossover"] = curve.crossover.describe()
            for p in curve.points:
                if p.stat.mean is not None:
                    metrics[f"{pre}.tpp{p.x:.3g}.mean"] = p.stat.mean
        if sc.target:
            tags[f"stagetune.{sc.size}.target"] = f"fraction {sc.target['fraction']}"
    return metrics, tags
