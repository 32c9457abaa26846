"""The study's figures, as static PNGs (matplotlib, Agg) and interactive HTML (plotly).

Three views of the compute-matched comparison:

* ``loss_vs_compute``: eval loss against training FLOPs for every trial, the baseline drawn
  heavy, stage boundaries marked where the reported ``stage`` changes;
* ``compute_to_baseline_loss``: per schedule, the share of the baseline's compute it needed to
  reach the baseline's final eval loss (95 % CI bars; "not reached" shown as such);
* ``pareto``: mean final eval loss against mean total compute, with the non-dominated front.

HTML files embed plotly.js: reports are opened where there may be no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from stagetune.results.analysis import Outcome, StudyResults, TrialResult, pareto_front

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


def _axis_label(convention: str) -> str:
    return "training FLOPs (paper convention)" if convention == "paper" else "training FLOPs"


def _colors(outcomes: Sequence[Outcome]) -> dict[str, str]:
    colors: dict[str, str] = {}
    i = 0
    for o in outcomes:
        if o.is_baseline:
            colors[o.schedule_key] = _BASELINE_COLOR
        else:
            colors[o.schedule_key] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return colors


def _group_key(t: TrialResult) -> str:
    # compute_matched files every baseline under "baseline", whatever its schedule_key.
    return "baseline" if t.is_baseline else t.schedule_key


def _trial_groups(
    study: StudyResults, outcomes: Sequence[Outcome]
) -> list[tuple[Outcome, list[TrialResult]]]:
    """Outcomes with their trials, baseline last so it is drawn on top."""
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
    return sorted(groups, key=lambda g: g[0].is_baseline)


def _boundary_points(t: TrialResult, convention: str) -> list[tuple[float, float, int]]:
    """(compute, interpolated eval loss, new stage) at each stage change on the eval curve."""
    c, loss = t.curve.eval_points(convention)
    if len(c) < 1:
        return []
    return [
        (x, float(np.interp(x, c, loss)), stage)
        for x, stage in t.curve.stage_boundaries(convention)
        if c[0] <= x <= c[-1]
    ]


def _baseline_refs(outcomes: Sequence[Outcome]) -> tuple[float | None, float | None]:
    base = next((o for o in outcomes if o.is_baseline), None)
    if base is None:
        return None, None
    return base.baseline_compute.mean, base.baseline_final_loss.mean


def _bar_data(
    outcomes: Sequence[Outcome],
) -> tuple[list[Outcome], list[float], list[float], list[float], list[str], float]:
    """Per schedule: height (% of baseline compute), CI below/above, annotation; 'not reached' y."""
    scheds = [o for o in outcomes if not o.is_baseline]
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
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    marked = False
    for o, trials in _trial_groups(study, outcomes):
        for i, t in enumerate(trials):
            c, loss = t.curve.eval_points(convention)
            ax.plot(
                c, loss,
                color=colors[o.schedule_key],
                linestyle=_DASHES_MPL[i % len(_DASHES_MPL)],
                linewidth=2.8 if o.is_baseline else 1.3,
                zorder=5 if o.is_baseline else 2,
                label=o.label if i == 0 else None,
            )  # fmt: skip
            pts = _boundary_points(t, convention)
            if pts:
                ax.scatter(
                    [p[0] for p in pts], [p[1] for p in pts],
                    marker="D", s=28, facecolors="white",
                    edgecolors=colors[o.schedule_key], zorder=6,
                    label=None if marked else "stage boundary",
                )  # fmt: skip
                marked = True
    c_b, l_b = _baseline_refs(outcomes)
    if c_b is not None:
        ax.axvline(c_b, color="grey", linestyle="--", linewidth=0.9, label="baseline compute")
    if l_b is not None:
        ax.axhline(l_b, color="grey", linestyle=":", linewidth=0.9, label="baseline final loss")
    ax.set_xlabel(_axis_label(convention))
    ax.set_ylabel("eval loss")
    ax.set_title(PLOT_TITLES["loss_vs_compute"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figs["loss_vs_compute"] = fig

    # Compute needed to reach the baseline's loss.
    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scheds, heights, lo, hi, notes, _ = _bar_data(outcomes)
    if scheds:
        x = np.arange(len(scheds))
        for j, o in enumerate(scheds):
            missing = o.compute_fraction.mean is None
            ax.bar(
                x[j], heights[j],
                color="#dddddd" if missing else colors[o.schedule_key],
                hatch="//" if missing or not o.reached else None,
                edgecolor="grey",
                yerr=[[lo[j]], [hi[j]]] if not missing else None,
                capsize=4,
            )  # fmt: skip
            ax.annotate(notes[j], (x[j], heights[j]), ha="center", va="bottom", fontsize="small",
                        xytext=(0, 3), textcoords="offset points")  # fmt: skip
        ax.set_xticks(x, [o.label for o in scheds], rotation=20, ha="right", fontsize="small")
        ax.axhline(100, color="black", linestyle="--", linewidth=1, label="baseline (100%)")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no schedules besides the baseline", ha="center", transform=ax.transAxes)
    ax.set_ylabel("% of baseline compute")
    ax.set_title(PLOT_TITLES["compute_to_baseline_loss"])
    ax.grid(axis="y", alpha=0.3)
    figs["compute_to_baseline_loss"] = fig

    # Pareto front.
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = pareto_front(outcomes)
    for o in outcomes:
        xv, yv = o.total_compute.mean, o.final_eval_loss.mean
        if xv is None or yv is None:
            continue
        ax.scatter(
            [xv], [yv],
            color=colors[o.schedule_key],
            marker="*" if o.is_baseline else "o",
            s=180 if o.is_baseline else 50,
            zorder=4,
        )  # fmt: skip
        ax.annotate(o.label, (xv, yv), xytext=(5, 5), textcoords="offset points",
                    fontsize="small")  # fmt: skip
    if front:
        fx, fy = _front_xy(front)
        ax.plot(
            fx, fy,
            color="tab:red", linewidth=1.2, drawstyle="steps-post", label="Pareto front",
            zorder=3,
        )  # fmt: skip
        ax.legend(fontsize="small")
    ax.set_xlabel(f"total {_axis_label(convention)}")
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

    fig = go.Figure()
    marked = False
    for o, trials in _trial_groups(study, outcomes):
        for i, t in enumerate(trials):
            c, loss = t.curve.eval_points(convention)
            fig.add_trace(go.Scatter(
                x=c, y=loss, mode="lines+markers",
                name=o.label, legendgroup=o.schedule_key, showlegend=i == 0,
                line={"color": colors[o.schedule_key], "width": 4 if o.is_baseline else 1.5,
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
            x=[o.label], y=[heights[j]], name=o.label, text=[notes[j]],
            textposition="outside",
            marker={"color": "#dddddd" if missing else colors[o.schedule_key],
                    "pattern": {"shape": "/" if missing or not o.reached else ""}},
            error_y=None if missing else {"type": "data", "symmetric": False,
                                          "array": [hi[j]], "arrayminus": [lo[j]]},
            showlegend=False,
        ))  # fmt: skip
    if scheds:
        fig.add_hline(y=100, line_dash="dash", annotation_text="baseline (100%)")
    fig.update_layout(title=PLOT_TITLES["compute_to_baseline_loss"],
                      yaxis_title="% of baseline compute", template="plotly_white")  # fmt: skip
    figs["compute_to_baseline_loss"] = fig

    fig = go.Figure()
    front = pareto_front(outcomes)
    for o in outcomes:
        xv, yv = o.total_compute.mean, o.final_eval_loss.mean
        if xv is None or yv is None:
            continue
        fig.add_trace(go.Scatter(
            x=[xv], y=[yv], mode="markers+text", name=o.label, text=[o.label],
            textposition="top center",
            marker={"color": colors[o.schedule_key], "size": 16 if o.is_baseline else 10,
                    "symbol": "star" if o.is_baseline else "circle"},
            showlegend=False,
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
    html: bool = True,
) -> PlotFiles:
    """Write ``<name>.png`` (and self-contained ``<name>.html``) for each plot into ``out_dir``."""
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
