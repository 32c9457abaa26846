"""Rendering a study's outcomes: the outcome table (terminal, Markdown, HTML), its JSON rows, and
the report's Markdown and HTML documents.

Everything here turns numbers into text and writes no file; :mod:`stagetune.results.report`
writes the documents and logs them to MLflow. A table cell says what a reader needs to trust the
number: how many seeds it rests on, and where a schedule was compared when it ended short of the
baseline's compute.

One cohesive module (over 400 lines): the table's cells and the documents that hold them share their wording.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stagetune.results.formatting import (
    AT_BASELINE,
    MISSING,
    flops_si,
    num,
    pct,
    signed,
    stat_text,
)
from stagetune.results.loading import StudyResults
from stagetune.results.matched import Outcome, pareto_front
from stagetune.results.plots import PLOT_NAMES, PLOT_TITLES, plotly_figures
from stagetune.results.stats import Stat

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "LABEL_LEGEND",
    "TABLE_COLUMNS",
    "TERMINAL_COLUMNS",
    "format_table",
    "html_document",
    "json_safe",
    "markdown_document",
    "outcome_rows",
    "outcome_table",
]

TABLE_COLUMNS: Final = (
    "Schedule",
    "Seeds",
    "Final eval loss",
    "Loss @ baseline compute",
    "Δ loss at equal compute",
    "Compute to baseline loss",
    "Speedup",
    "Total compute",
    "Status",
)
_LEFT_COLUMNS: Final = frozenset({"Schedule", "Status"})
TERMINAL_COLUMNS: Final = (
    "Schedule",
    "Seeds",
    "Final loss",
    "Δ loss at equal compute",
    "To ref. loss",
    "Speedup",
    "Compute",
    "Status",
)
"""The terminal's table: what fits 120 columns; the report has every column."""
TERMINAL_WIDTH: Final = 120
_LABEL_WIDTH: Final = 36
LABEL_LEGEND: Final = (
    "Labels: S<stages>[<layers added per stage>] <growth>/<freeze policy> +<continual steps>c "
    "lr=<peak lr>; baseline: the configured full-depth run; Δ < 0: better than it."
)
"""One line under the table that explains the schedule labels."""


# -- table cells ---------------------------------------------------------------------------------


def _where(fraction: Stat) -> str:
    """Where the seeds were compared at equal compute, when below the baseline's compute."""
    vals = fraction.values
    if not vals or min(vals) >= AT_BASELINE:
        return ""
    lo, hi = pct(min(vals)), pct(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def _equal_compute_text(o: Outcome) -> str:
    """Signed eval-loss delta at equal compute (± CI), "@ NN%" when short of the baseline's."""
    if o.is_reference:
        return "0 (reference)"
    st = o.matched_delta
    if st.mean is None:
        return (
            "no overlap"
            if o.trials and all(t.final_eval_compute is not None for t in o.trials)
            else MISSING
        )
    text = signed(st)
    where = _where(o.matched_fraction)
    if where:
        text += f" @ {where}"
    if st.n < o.n_seeds:
        text += f" ({st.n}/{o.n_seeds} seeds)"
    return text


def _status_text(o: Outcome) -> str:
    counts: dict[str, int] = {}
    for t in o.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{s}×{n}" if n > 1 else s for s, n in counts.items())


def _to_loss_cells(o: Outcome) -> tuple[str, str]:
    """(compute to the reference's loss, speedup)."""
    n = o.n_seeds
    if o.is_reference:
        return "100% (reference)", "1.00×"
    if o.n_reached == 0:
        return "not reached", MISSING
    to_loss = stat_text(o.compute_fraction, ".1f", scale=100, suffix="%")
    speed = stat_text(o.speedup, ".2f", suffix="×")
    if o.n_reached < n:
        to_loss += f" ({o.n_reached}/{n} seeds; rest not reached)"
    return to_loss, speed


def _terminal_cells(o: Outcome) -> list[str]:
    to_loss, speed = _to_loss_cells(o)
    return [
        o.label,
        str(o.n_seeds),
        stat_text(o.final_eval_loss, ".4f"),
        _equal_compute_text(o),
        to_loss,
        speed,
        flops_si(o.total_compute.mean),
        _status_text(o),
    ]


def _cells(o: Outcome) -> list[str]:
    n = o.n_seeds
    seeds = str(n)
    loss_at = stat_text(o.loss_at_baseline_compute, ".4f")
    got_there = o.loss_at_baseline_compute.n
    short = sum(t.stopped_short for t in o.trials)
    if 0 < got_there < n:
        # The other seeds did not get to the baseline's compute (most stopped short of it).
        loss_at += f" ({got_there}/{n} seeds)"
    elif got_there == 0:
        # The equal-compute column still compares these, where they stopped.
        where = _where(o.matched_fraction)
        ended = f"ended at {where}" if where else "stopped short"
        loss_at = (
            ended if short == n
            else f"{ended} ({short}/{n} seeds)" if short
            else MISSING
        )  # fmt: skip
    to_loss, speed = _to_loss_cells(o)
    return [
        o.label,
        seeds,
        stat_text(o.final_eval_loss, ".4f"),
        loss_at,
        _equal_compute_text(o),
        to_loss,
        speed,
        flops_si(o.total_compute.mean),
        _status_text(o),
    ]


# -- rows, table, JSON --------------------------------------------------------------------------


def json_safe(v: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN/Infinity)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def _stat_dict(st: Stat) -> dict[str, Any]:
    return {"mean": st.mean, "ci95_low": st.low, "ci95_high": st.high, "n": st.n,
            "values": list(st.values)}  # fmt: skip


def outcome_rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """JSON-ready rows, one per schedule, with per-seed details."""
    on_front = {o.schedule_key for o in pareto_front(outcomes)}
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {
            "schedule": o.label,
            "schedule_key": o.schedule_key,
            "is_baseline": o.is_baseline,
            "is_reference": o.is_reference,
            "is_full_depth": o.is_full_depth,
            "seeds": [t.seed for t in o.trials],
            "n_reached": o.n_reached,
            "reached": o.reached,
            "pareto": o.schedule_key in on_front,
            "notes": list(o.notes),
        }
        for f in (
            "final_eval_loss",
            "total_compute",
            "loss_at_baseline_compute",
            "loss_delta",
            "compute_to_baseline_loss",
            "compute_fraction",
            "speedup",
            "baseline_final_loss",
            "baseline_compute",
            "matched_compute",
            "loss_at_matched",
            "baseline_loss_at_matched",
            "matched_delta",
            "matched_fraction",
        ):
            row[f] = _stat_dict(getattr(o, f))
        vb = o.vs_baseline
        row["vs_baseline"] = (
            None
            if vb is None
            else {
                f: _stat_dict(getattr(vb, f))
                for f in ("compute_fraction", "speedup", "matched_delta", "matched_fraction")
            }
        )
        row["params"] = dict(o.params)
        row["trials"] = [dataclasses.asdict(t) for t in o.trials]
        rows.append(json_safe(row))
    return rows


def outcome_table(outcomes: Sequence[Outcome]) -> Table:
    """The terminal's outcome table as a rich Table (:data:`TERMINAL_COLUMNS`)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, caption=LABEL_LEGEND, caption_justify="left")
    for col in TERMINAL_COLUMNS:
        table.add_column(
            col,
            justify="left" if col in _LEFT_COLUMNS else "right",
            overflow="fold",
            # A long label wraps rather than pushing the numbers off the screen.
            max_width=_LABEL_WIDTH if col == "Schedule" else None,
        )
    for o in outcomes:
        table.add_row(*_terminal_cells(o), style="bold" if o.is_reference else None)
    return table


def format_table(outcomes: Sequence[Outcome], *, width: int = TERMINAL_WIDTH) -> str:
    """The outcome table as plain text for the terminal, at most ``width`` columns wide, with
    the one-line legend of schedule labels under it."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(
        outcome_table(outcomes)
    )
    return buf.getvalue()


# -- the documents -------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" if c in _LEFT_COLUMNS else "---:" for c in TABLE_COLUMNS) + "|",
    ]
    for o in outcomes:
        cells = [_md_escape(c) for c in _cells(o)]
        if o.is_reference:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline_line(outcomes: Sequence[Outcome], convention: str) -> str:
    base = next((o for o in outcomes if o.is_reference), None)
    if base is None:
        return ""
    st = base.final_eval_loss
    spread = f"{num(st.mean, '.4f')}"
    if st.low is not None and st.high is not None:
        spread += f" (95% CI {st.low:.4f}–{st.high:.4f}, seed spread)"
    who = "Reference" if base.is_baseline else f"Reference ({base.label}, the best full-depth lr)"
    return (
        f"{who}: final eval loss {spread} over {base.n_seeds} seed(s), at "
        f"{num(base.baseline_compute.mean, '.3e')} {convention} FLOPs."
    )


_COLUMN_NOTES: Final = (
    "Every schedule is compared with the full-depth baseline of the same seed on the compute "
    "axis. *Loss @ baseline compute*: eval loss (interpolated) at the FLOPs the baseline spent "
    "(*ended at NN%*: the schedule's last evaluation came before that, at NN % of it). *Δ loss at equal "
    "compute*: its eval loss minus the baseline's, both interpolated at the lesser of the two "
    "final computes (negative: better); *@ NN%* marks a comparison below the baseline's "
    "compute, where the schedule ended: budget-matched schedules end a step or so short and "
    "shorter continual training well short, while the baseline's curve is known below its end. "
    "*Compute to baseline loss*: share of the baseline's FLOPs needed to first reach its final "
    "eval loss. *Speedup*: baseline FLOPs / that compute. ± is the half-width of a 95% "
    "Student-t interval over seeds."
)


def _title(study: StudyResults) -> str:
    partial = " (partial)" if study.partial else ""
    return f"stagetune report{partial}: {study.study_name}"


def _intro(study: StudyResults, convention: str) -> str:
    seeds = sorted({str(t.seed) for t in study.trials})
    return (
        f"Experiment `{study.experiment}` · study `{study.study_name}` · "
        f"{len(study.trials)} trials · seeds {', '.join(seeds)} · compute axis: {convention} FLOPs"
    )


def markdown_document(
    study: StudyResults, outcomes: Sequence[Outcome], text: str, *,
    plots: dict[str, Path], convention: str, base: Path,
) -> str:  # fmt: skip
    """``report.md``: title, verdict ``text``, table, notes, and the plots (paths relative to
    ``base``, the directory the document is written to)."""
    parts = [
        f"# {_title(study)}",
        "",
        _intro(study, convention),
        "",
        "## Verdict",
        "",
        text,
        "",
        _baseline_line(outcomes, convention),
        "",
        "## Outcomes at equal compute",
        "",
        _markdown_table(outcomes),
        "",
        _COLUMN_NOTES,
        "",
        "## Plots",
        "",
    ]
    for name in PLOT_NAMES:
        png = plots.get(f"{name}_png")
        if png is not None:
            parts += [f"![{PLOT_TITLES[name]}]({png.relative_to(base).as_posix()})", ""]
    links = [
        f"[{name}]({p.relative_to(base).as_posix()})"
        for name in PLOT_NAMES
        if (p := plots.get(f"{name}_html")) is not None
    ]
    links = links or ["[report.html](report.html)"]
    parts += ["Interactive: " + " · ".join(links), ""]
    return "\n".join(parts)


_CSS: Final = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em}th,td{padding:4px 8px;border-bottom:1px solid #ddd}
th{text-align:left;background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{font-weight:bold}.verdict{font-size:1.1em;padding:0.8em;background:#f0f6ff}
.notes{color:#555;font-size:0.9em}
"""


def html_document(
    study: StudyResults, outcomes: Sequence[Outcome], text: str, *, convention: str
) -> str:
    """``report.html``: what ``report.md`` says, with the plots interactive and plotly.js
    inline once (the page must render without network access)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS)
    body = []
    for o in outcomes:
        cells = _cells(o)
        tds = "".join(
            f"<td{'' if col in _LEFT_COLUMNS else ' class=num'}>{esc(c)}</td>"
            for col, c in zip(TABLE_COLUMNS, cells)
        )
        body.append(f"<tr{' class=baseline' if o.is_reference else ''}>{tds}</tr>")
    figs = plotly_figures(study, outcomes, convention=convention)
    divs = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        for i, fig in enumerate(figs[name] for name in PLOT_NAMES)
    ]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(_title(study))}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(_title(study))}</h1>
<p>{esc(_intro(study, convention)).replace("`", "")}</p>
<h2>Verdict</h2>
{"".join(f'<p class="verdict">{esc(par)}</p>' for par in text.split(chr(10) * 2))}
<p>{esc(_baseline_line(outcomes, convention))}</p>
<h2>Outcomes at equal compute</h2>
<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<p class="notes">{esc(_COLUMN_NOTES).replace("*", "")}</p>
<h2>Plots</h2>
{"".join(f"<div>{d}</div>" for d in divs)}
</body></html>
"""
    return page
