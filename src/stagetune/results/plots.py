"""The study's figures, as static PNGs (matplotlib, Agg) and interactive HTML (plotly).

Three views of the compute-matched comparison:

* ``loss_vs_compute``: eval loss against training FLOPs for every trial, the baseline drawn
  heavy, stage boundaries marked where the reported ``stage`` changes;
* ``compute_to_baseline_loss``: per schedule, the share of the baseline's compute it needed to
  reach the baseline's final eval loss (95 % CI bars; "not reached" shown as such);
* ``pareto``: mean final eval loss against mean total compute, with the non-dominated front.

HTML files embed plotly.js: reports are opened where there may be no network. One cohesive
thing over 400 lines: the same three figures in both libraries, sharing their data helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from stagetune.results.loading import StudyResults, TrialResult
from stagetune.results.matched import Outcome, pareto_front
from stagetune.results.naming import BASELINE_LABEL

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

__all__ = ["PLOT_NAMES", "PlotFiles", "matplotlib_figures", "plotly_figures", "write_plots"]

PLOT_NAMES: Final = ("loss_vs_compute", "compute_to_baseline_loss", "pareto")
PLOT_TITLES: Final = {
    "loss_vs_compute": "Eval loss vs training compute",
    "compute_to_baseline_loss": "Compute to reach the baseline's final eval loss",
    "pareto": "Final eval loss vs total compute (Pareto front)",
}
_BASELINE_COLOR: Final = "#000000"
_PALETTE: Final = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_DASHES_MPL: Final = ("-", "--", ":", "-.")
_DASHES_PLOTLY: Final = ("solid", "dash", "dot", "dashdot")


@dataclass(frozen=True)
class PlotFiles:
    """Written figures by name (see :data:`PLOT_NAMES`)."""

    png: dict[str, Path]
    html: dict[str, Path]

    def all(self) -> list[Path]:
        return [*self.png.values(), *self.html.values()]


def _pareto_points(outcomes: Sequence[Outcome]) -> list[tuple[Outcome, float, float]]:
    """(outcome, mean total compute, mean final eval loss) of the outcomes that have both."""
    return [
        (o, o.total_compute.mean, o.final_eval_loss.mean)
        for o in outcomes
        if o.total_compute.mean is not None and o.final_eval_loss.mean is not None
    ]


def _axis_label(convention: str) -> str:
    return f"training compute (FLOPs, {convention} convention)"


def _flops_axis(axis: Any) -> None:
    """Tick labels as engineering numbers (``1.5G``) instead of an offset ``1e9`` corner."""
    from matplotlib.ticker import EngFormatter

    axis.set_major_formatter(EngFormatter(sep=""))


def _colors(outcomes: Sequence[Outcome]) -> dict[str, str]:
    colors: dict[str, str] = {}
    i = 0
    for o in outcomes:
        if o.is_reference:
            colors[o.schedule_key] = _BASELINE_COLOR
        else:
            colors[o.schedule_key] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return colors


def _group_key(t: TrialResult) -> str:
    # compute_matched files every baseline under "baseline", whatever its schedule_key.
    return BASELINE_LABEL if t.is_baseline else t.schedule_key


def _trial_groups(
    study: StudyResults, outcomes: Sequence[Outcome]
) -> list[tuple[Outcome, list[TrialResult]]]:
    """Outcomes with their trials in drawing order: longest runs first, the baseline last.

    Schedules that differ only in their continual length share their curve up to where the
    shorter one ends; drawn longest first, each one's own end stays visible, and the
    baseline goes on top of everything.
    """
    ids = {o.schedule_key: {t.trial_id for t in o.trials} for o in outcomes}
    groups = [
        (
            o,
            [
                t
                for t in study.trials
                if _group_key(t) == o.schedule_key and t.trial_id in ids[o.schedule_key]
            ],
        )
        for o in outcomes
    ]
    return sorted(groups, key=lambda g: (g[0].is_reference, -(g[0].total_compute.mean or 0.0)))


def _stage_starts(t: TrialResult, convention: str) -> list[tuple[float, int]]:
    """(compute, new stage) where each stage after the first (and continual training) began.

    The training loop reports at the end of every phase, so a stage's last record is where
    the next one starts: the growth step, right before the new blocks' loss jump.
    (:meth:`Curve.stage_boundaries` gives the first record *in* the new stage instead.)
    """
    c, st = t.curve.compute(convention), t.curve.stage
    out: list[tuple[float, int]] = []
    prev: tuple[float, float] | None = None  # (compute, stage) of the last usable record
    for ci, si in zip(c, st):
        if np.isnan(ci) or np.isnan(si):
            continue
        if prev is not None and si != prev[1]:
            out.append((prev[0], int(si)))
        prev = (float(ci), float(si))
    return out


def _boundary_points(t: TrialResult, convention: str) -> list[tuple[float, float, int]]:
    """(compute, interpolated eval loss, new stage) at each stage start on the eval curve."""
    c, loss = t.curve.eval_points(convention)
    if len(c) < 1:
        return []
    return [
        (x, float(np.interp(x, c, loss)), stage)
        for x, stage in _stage_starts(t, convention)
        if c[0] <= x <= c[-1]
    ]


def _baseline_refs(outcomes: Sequence[Outcome]) -> tuple[float | None, float | None]:
    base = next((o for o in outcomes if o.is_reference), None)
    if base is None:
        return None, None
    return base.baseline_compute.mean, base.baseline_final_loss.mean


def _bar_data(
    outcomes: Sequence[Outcome],
) -> tuple[list[Outcome], list[float], list[float], list[float], list[str], float]:
    """Per schedule: height (% of baseline compute), CI below/above, annotation; 'not reached' y."""
    scheds = [o for o in outcomes if not o.is_reference]
    reached = [o.compute_fraction.mean * 100 for o in scheds if o.compute_fraction.mean is not None]
    not_reached_y = max([120.0, *(1.1 * r for r in reached)])
    heights, lo, hi, notes = [], [], [], []
    for o in scheds:
        st = o.compute_fraction
        if st.mean is None:
            heights.append(not_reached_y)
            lo.append(0.0)
            hi.append(0.0)
            notes.append("not reached")
            continue
        heights.append(st.mean * 100)
        lo.append((st.mean - st.low) * 100 if st.low is not None else 0.0)
        hi.append((st.high - st.mean) * 100 if st.high is not None else 0.0)
        text = f"{st.mean * 100:.1f}%"
        if not o.reached:
            text += f" ({o.n_reached}/{o.n_seeds} seeds; rest not reached)"
        notes.append(text)
    return scheds, heights, lo, hi, notes, not_reached_y


def _front_xy(front: Sequence[Outcome]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for o in front:  # pareto_front only returns outcomes with both means
        if o.total_compute.mean is not None and o.final_eval_loss.mean is not None:
            xs.append(o.total_compute.mean)
            ys.append(o.final_eval_loss.mean)
    return xs, ys


# -- matplotlib ----------------------------------------------------------------------------------


def matplotlib_figures(
    study: StudyResults, outcomes: Sequence[Outcome], *, convention: str = "standard"
) -> dict[str, Figure]:
    """The three figures as matplotlib Figures (Agg canvas; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = _colors(outcomes)
    figs: dict[str, Figure] = {}

    # Eval loss vs compute.
    fig = Figure(figsize=(11, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles: dict[str, Any] = {}
    marker = None
    for o, trials in _trial_groups(study, outcomes):
        for i, t in enumerate(trials):
            c, loss = t.curve.eval_points(convention)
            (line,) = ax.plot(
                c, loss,
                color=colors[o.schedule_key],
                linestyle=_DASHES_MPL[i % len(_DASHES_MPL)],
                linewidth=3.0 if o.is_reference else 1.3,
                marker="o" if o.is_reference else None, markersize=4,
                zorder=5 if o.is_reference else 2,
            )  # fmt: skip
            handles.setdefault(o.schedule_key, line)
            pts = _boundary_points(t, convention)
            if pts:
                marker = ax.scatter(
                    [p[0] for p in pts], [p[1] for p in pts],
                    marker="D", s=30, facecolors="white",
                    edgecolors=colors[o.schedule_key], linewidths=1.2, zorder=6,
                )  # fmt: skip
    c_b, l_b = _baseline_refs(outcomes)
    extra: list[tuple[Any, str]] = []
    if marker is not None:
        extra.append((marker, "stage boundary"))
    if c_b is not None:
        extra.append(
            (ax.axvline(c_b, color="grey", linestyle="--", linewidth=0.9), "baseline compute")
        )
    if l_b is not None:
        extra.append(
            (ax.axhline(l_b, color="grey", linestyle=":", linewidth=0.9), "baseline final loss")
        )
    # Legend in table order (baseline first), outside the axes so no curve hides under it.
    legend = [(handles[o.schedule_key], o.label) for o in outcomes if o.schedule_key in handles]
    legend += extra
    if legend:
        ax.legend(
            [h for h, _ in legend], [lab for _, lab in legend],
            loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
        )  # fmt: skip
    ax.set_xlabel(_axis_label(convention))
    _flops_axis(ax.xaxis)
    ax.set_ylabel("eval loss")
    ax.set_title(PLOT_TITLES["loss_vs_compute"])
    ax.grid(alpha=0.3)
    figs["loss_vs_compute"] = fig

    # Compute needed to reach the baseline's loss: horizontal bars, so long labels stay legible.
    scheds, heights, lo, hi, notes, not_reached_x = _bar_data(outcomes)
    fig = Figure(figsize=(10, 1.6 + 0.42 * max(len(scheds), 2)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if scheds:
        y = np.arange(len(scheds))
        for j, o in enumerate(scheds):
            missing = o.compute_fraction.mean is None
            has_ci = lo[j] > 0 or hi[j] > 0
            ax.barh(
                y[j], heights[j], height=0.65,
                color="#eeeeee" if missing else colors[o.schedule_key],
                hatch="//" if missing or not o.reached else None,
                edgecolor="grey",
                xerr=[[lo[j]], [hi[j]]] if has_ci and not missing else None,
                capsize=3,
            )  # fmt: skip
            ax.annotate(notes[j], (heights[j] + hi[j], y[j]), ha="left", va="center",
                        fontsize="small", xytext=(4, 0), textcoords="offset points")  # fmt: skip
        ax.set_yticks(y, [o.label for o in scheds], fontsize="small")
        ax.invert_yaxis()  # best (table order) on top
        ax.axvline(100, color="black", linestyle="--", linewidth=1.2, label="baseline (100%)")
        ax.set_xlim(0, max(not_reached_x, *(h + e for h, e in zip(heights, hi))) * 1.18)
        ax.legend(fontsize="small", loc="lower right")
    else:
        ax.text(0.5, 0.5, "no schedules besides the baseline", ha="center", transform=ax.transAxes)
    ax.set_xlabel(f"% of the baseline's compute ({convention} FLOPs)")
    ax.set_title(PLOT_TITLES["compute_to_baseline_loss"])
    ax.grid(axis="x", alpha=0.3)
    figs["compute_to_baseline_loss"] = fig

    # Pareto front.
    fig = Figure(figsize=(11, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = pareto_front(outcomes)
    on_front = {o.schedule_key for o in front}
    for o, xv, yv in _pareto_points(outcomes):
        ax.scatter(
            [xv], [yv],
            color=colors[o.schedule_key],
            marker="*" if o.is_reference else "o",
            s=260 if o.is_reference else 60,
            edgecolors="black" if o.schedule_key in on_front else "none",
            zorder=5 if o.is_reference else 4,
            label=o.label + (" (on the front)" if o.schedule_key in on_front else ""),
        )  # fmt: skip
    if front:
        fx, fy = _front_xy(front)
        ax.plot(
            fx, fy,
            color="tab:red", linewidth=1.2, drawstyle="steps-post", label="Pareto front",
            zorder=3,
        )  # fmt: skip
    if ax.has_data():
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.set_xlabel(f"total {_axis_label(convention)}")
    _flops_axis(ax.xaxis)
    ax.set_ylabel("final eval loss (mean over seeds)")
    ax.set_title(PLOT_TITLES["pareto"])
    ax.grid(alpha=0.3)
    figs["pareto"] = fig
    return figs


# -- plotly --------------------------------------------------------------------------------------


def plotly_figures(
    study: StudyResults, outcomes: Sequence[Outcome], *, convention: str = "standard"
) -> dict[str, go.Figure]:
    """The three figures as plotly Figures."""
    import plotly.graph_objects as go

    colors = _colors(outcomes)
    figs: dict[str, go.Figure] = {}
    xlabel = _axis_label(convention)

    # Legend in table order (baseline first), whatever the drawing order.
    rank = {o.schedule_key: i + 1 for i, o in enumerate(outcomes)}
    fig = go.Figure()
    marked = False
    for o, trials in _trial_groups(study, outcomes):
        for i, t in enumerate(trials):
            c, loss = t.curve.eval_points(convention)
            fig.add_trace(go.Scatter(
                x=c, y=loss, mode="lines+markers",
                name=o.label, legendgroup=o.schedule_key, showlegend=i == 0,
                legendrank=rank[o.schedule_key],
                line={"color": colors[o.schedule_key], "width": 4 if o.is_reference else 1.5,
                      "dash": _DASHES_PLOTLY[i % len(_DASHES_PLOTLY)]},
                marker={"size": 4},
                hovertemplate=f"{o.label}<br>trial {t.trial_id} seed {t.seed}"
                "<br>FLOPs %{x:.3e}<br>eval loss %{y:.4f}<extra></extra>",
            ))  # fmt: skip
            pts = _boundary_points(t, convention)
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers",
                    name="stage boundary", legendgroup="stage", showlegend=not marked,
                    marker={"symbol": "diamond-open", "size": 9,
                            "color": colors[o.schedule_key]},
                    text=[f"stage {p[2]}" for p in pts],
                    hovertemplate="%{text}<br>FLOPs %{x:.3e}<extra></extra>",
                ))  # fmt: skip
                marked = True
    c_b, l_b = _baseline_refs(outcomes)
    if c_b is not None:
        fig.add_vline(x=c_b, line_dash="dash", line_color="grey",
                      annotation_text="baseline compute")  # fmt: skip
    if l_b is not None:
        fig.add_hline(y=l_b, line_dash="dot", line_color="grey",
                      annotation_text="baseline final loss")  # fmt: skip
    fig.update_layout(title=PLOT_TITLES["loss_vs_compute"], xaxis_title=xlabel,
                      yaxis_title="eval loss", template="plotly_white")  # fmt: skip
    figs["loss_vs_compute"] = fig

    fig = go.Figure()
    scheds, heights, lo, hi, notes, _ = _bar_data(outcomes)
    for j, o in enumerate(scheds):
        missing = o.compute_fraction.mean is None
        fig.add_trace(go.Bar(
            y=[o.label], x=[heights[j]], name=o.label, text=[notes[j]], orientation="h",
            textposition="outside", cliponaxis=False,
            marker={"color": "#eeeeee" if missing else colors[o.schedule_key],
                    "pattern": {"shape": "/" if missing or not o.reached else ""}},
            error_x=None if missing or not (lo[j] or hi[j]) else {
                "type": "data", "symmetric": False, "array": [hi[j]], "arrayminus": [lo[j]]},
            showlegend=False,
        ))  # fmt: skip
    if scheds:
        fig.add_vline(x=100, line_dash="dash", annotation_text="baseline (100%)")
    # Room right of the longest bar for its note ("not reached"): never clipped.
    right = max([100.0, *(h + (e or 0.0) for h, e in zip(heights, hi))])
    fig.update_layout(title=PLOT_TITLES["compute_to_baseline_loss"],
                      xaxis={"title": f"% of the baseline's compute ({convention} FLOPs)",
                             "range": [0, right * 1.45]},
                      yaxis={"autorange": "reversed"}, template="plotly_white",
                      margin={"r": 40}, height=220 + 34 * max(len(scheds), 2))  # fmt: skip
    figs["compute_to_baseline_loss"] = fig

    fig = go.Figure()
    front = pareto_front(outcomes)
    on_front = {o.schedule_key for o in front}
    for o, xv, yv in _pareto_points(outcomes):
        fig.add_trace(go.Scatter(
            x=[xv], y=[yv], mode="markers", name=o.label, legendrank=rank[o.schedule_key],
            hovertemplate=f"{o.label}{'' if o.complete else ' (stopped early)'}<br>total "
            "FLOPs %{x:.3e}<br>final eval loss %{y:.4f}<extra></extra>",
            marker={"color": colors[o.schedule_key], "size": 18 if o.is_reference else 11,
                    "symbol": "star" if o.is_reference else "circle" if o.complete else "x",
                    "line": {"color": "black",
                             "width": 1.5 if o.schedule_key in on_front else 0}},
        ))  # fmt: skip
    if front:
        fx, fy = _front_xy(front)
        fig.add_trace(go.Scatter(
            x=fx, y=fy,
            mode="lines", line={"shape": "hv", "color": "red"}, name="Pareto front",
        ))  # fmt: skip
    fig.update_layout(title=PLOT_TITLES["pareto"], xaxis_title=f"total {xlabel}",
                      yaxis_title="final eval loss (mean over seeds)",
                      template="plotly_white")  # fmt: skip
    figs["pareto"] = fig
    return figs


def write_plots(
    study: StudyResults,
    outcomes: Sequence[Outcome],
    out_dir: Path,
    *,
    convention: str = "standard",
    html: bool = False,
) -> PlotFiles:
    """Write ``<name>.png`` (and, with ``html``, self-contained ``<name>.html``: plotly.js
    inline in each, a few MB apiece) for each plot into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png: dict[str, Path] = {}
    for name, fig in matplotlib_figures(study, outcomes, convention=convention).items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        png[name] = path
    html_files: dict[str, Path] = {}
    if html:
        for name, pfig in plotly_figures(study, outcomes, convention=convention).items():
            path = out_dir / f"{name}.html"
            pfig.write_html(path, include_plotlyjs=True, full_html=True)
            html_files[name] = path
    return PlotFiles(png=png, html=html_files)
