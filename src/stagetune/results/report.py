"""The study report: outcome table, verdict and plots as Markdown, HTML and JSON.

``build_report`` reads everything from MLflow (so it works after the fact, from any machine
that reaches the tracking store), writes ``report.md`` / ``report.html`` / ``report.json`` and
the plots to a directory, and logs them to the study's parent run.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stagetune.errors import ConfigError
from stagetune.results.analysis import (
    Outcome,
    Stat,
    StudyResults,
    TrialResult,
    compute_matched,
    load_study,
    pareto_front,
)
from stagetune.results.plots import PLOT_NAMES, PLOT_TITLES, plotly_figures, write_plots
from stagetune.results.store import make_client

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "TABLE_COLUMNS",
    "Report",
    "build_report",
    "format_table",
    "outcome_rows",
    "outcome_table",
    "paper_verdict",
    "to_json",
    "verdict",
]

_log = logging.getLogger(__name__)

NO_SCHEDULE_REACHED: Final = "No schedule reached the baseline's eval loss within the budget."
PARTIAL_STUDY: Final = (
    "No verdict: the study is not over (its status is {status}), and a verdict from some of its "
    "trials could mislead. Continue it with 'stagetune run --resume'."
)
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
REPORT_ARTIFACT_DIR: Final = "report"
_LEFT_COLUMNS: Final = frozenset({"Schedule", "Seeds", "Status"})
_AT_BASELINE: Final = 1 - 1e-9
"""A matched fraction at least this is the baseline's own compute (no "@ NN%" marker)."""


@dataclass(frozen=True)
class Report:
    """A built report: its rows (JSON-ready), verdict and the files written."""

    study: StudyResults
    outcomes: list[Outcome]
    rows: list[dict[str, Any]]
    verdict: str
    paths: dict[str, Path]
    """``report_md``, ``report_html``, ``report_json``, then ``<plot>_png`` / ``<plot>_html``."""
    convention: str


# -- numbers to text ----------------------------------------------------------------------------


def _num(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, spec)


def _stat_text(st: Stat, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    if st.mean is None:
        return "—"
    text = _num(st.mean * scale, spec) + suffix
    hw = st.half_width
    if hw is not None and math.isfinite(hw) and hw > 0:  # all seeds equal: no ± 0 noise
        text += f" ± {_num(hw * scale, spec)}{suffix}"
    return text


def _signed(st: Stat) -> str:
    if st.mean is None:
        return "—"
    text = f"{st.mean:+.4f}"
    if st.half_width is not None and st.half_width > 0:
        text += f" ± {st.half_width:.4f}"
    return text


def _pct(fraction: float) -> str:
    """A share of the baseline's compute; never rounds a point below it up to 100%."""
    if fraction >= _AT_BASELINE:
        return "100%"
    text = f"{fraction * 100:.0f}%"
    if text == "100%":
        text = f"{fraction * 100:.1f}%"
    return ">99.9%" if text == "100.0%" else text


def _where(fraction: Stat) -> str:
    """Where the seeds were compared at equal compute, when below the baseline's compute."""
    vals = fraction.values
    if not vals or min(vals) >= _AT_BASELINE:
        return ""
    lo, hi = _pct(min(vals)), _pct(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def _equal_compute_text(o: Outcome) -> str:
    """Signed eval-loss delta at equal compute (± CI), "@ NN%" when short of the baseline's."""
    if o.is_baseline:
        return "0 (reference)"
    st = o.matched_delta
    if st.mean is None:
        return (
            "no overlap"
            if o.trials and all(t.final_eval_compute is not None for t in o.trials)
            else "—"
        )
    text = _signed(st)
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


def _cells(o: Outcome) -> list[str]:
    n = o.n_seeds
    seeds = ", ".join(str(t.seed) for t in o.trials)
    loss_at = _stat_text(o.loss_at_baseline_compute, ".4f")
    got_there = o.loss_at_baseline_compute.n
    short = sum(t.stopped_short for t in o.trials)
    if 0 < got_there < n:
        # The other seeds did not get to the baseline's compute (most stopped short of it).
        loss_at += f" ({got_there}/{n} seeds)"
    elif got_there == 0:
        # The equal-compute column still compares these, where they stopped.
        loss_at = (
            "stopped short" if short == n
            else f"stopped short ({short}/{n} seeds)" if short
            else "—"
        )  # fmt: skip
    if o.is_baseline:
        to_loss, speed = "100% (reference)", "1.00×"
    elif o.n_reached == 0:
        to_loss, speed = "not reached", "—"
    else:
        to_loss = _stat_text(o.compute_fraction, ".1f", scale=100, suffix="%")
        speed = _stat_text(o.speedup, ".2f", suffix="×")
        if o.n_reached < n:
            to_loss += f" ({o.n_reached}/{n} seeds; rest not reached)"
    return [
        o.label,
        seeds,
        _stat_text(o.final_eval_loss, ".4f"),
        loss_at,
        _equal_compute_text(o),
        to_loss,
        speed,
        _stat_text(o.total_compute, ".3e"),
        _status_text(o),
    ]


def verdict(outcomes: Sequence[Outcome]) -> str:
    """One paragraph: the best schedule that reached the baseline's loss in every seed."""
    scheds = [o for o in outcomes if not o.is_baseline]
    winners = [o for o in scheds if o.reached and o.compute_fraction.mean is not None]
    if not winners:
        text = NO_SCHEDULE_REACHED
        partial = [o for o in scheds if o.n_reached > 0]
        if partial:
            best = max(partial, key=lambda o: o.n_reached / o.n_seeds)
            text += (
                f" Schedule {best.label} reached it in {best.n_reached} of {best.n_seeds} seeds."
            )
        return text
    best = min(winners, key=lambda o: o.compute_fraction.mean or math.inf)
    st = best.compute_fraction
    assert st.mean is not None
    if st.low is not None and st.high is not None:
        ci = f"95% CI {st.low * 100:.1f}–{st.high * 100:.1f}%"
    else:
        ci = "no CI from a single seed"
    seeds = f"{best.n_seeds} seed" + ("s" if best.n_seeds != 1 else "")
    text = (
        f"Schedule {best.label} reached the baseline's eval loss with {st.mean * 100:.1f}% "
        f"of its compute ({ci}, {seeds}"
    )
    if best.speedup.mean is not None:
        text += f"; speedup {best.speedup.mean:.2f}×"
    text += ")."
    if st.mean > 1:
        text += " That is more compute than the baseline needed: no schedule saved compute."
    return text


PAPER_STUDY: Final = (
    "Paper study (the shape of arXiv 2411.18700: the baseline and S uniform stages of L/S "
    "layers, each phase T/(2S) steps, random growth, the paper's freeze policy, continual "
    "training up to {max_multiple} the budget-matched length)"
)


def _space_of(t: TrialResult) -> str | None:
    """The search space a trial was sampled from (recorded in its schedule's provenance)."""
    raw = t.params.get("schedule_json")
    if not raw:
        return None
    try:
        meta = json.loads(raw).get("meta") or {}
    except (ValueError, AttributeError):
        return None
    space = meta.get("space") if isinstance(meta, dict) else None
    return str(space) if space else None


def _multiple(o: Outcome) -> float | None:
    try:
        return float(o.params["continual_multiple"])
    except (KeyError, ValueError):
        return None


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _by_stages(outcomes: Sequence[Outcome]) -> dict[int, list[Outcome]]:
    groups: dict[int, list[Outcome]] = {}
    for o in outcomes:
        if o.is_baseline:
            continue
        try:
            s = int(o.params["num_stages"])
        except (KeyError, ValueError):
            continue
        groups.setdefault(s, []).append(o)
    return dict(sorted(groups.items()))


def _stages_compute(group: Sequence[Outcome]) -> float | None:
    """Compute at the end of the stages: the total of the group's no-continual schedule."""
    only = next((o for o in group if _multiple(o) == 0.0), None)
    return None if only is None else only.total_compute.mean


def _first_reach(group: Sequence[Outcome]) -> Outcome | None:
    """The schedule of a group that reached the baseline's loss (every seed) at least compute."""
    reached = [o for o in group if o.reached and o.compute_fraction.mean is not None]
    return min(reached, key=lambda o: o.compute_fraction.mean or math.inf) if reached else None


def _equal_compute_pick(group: Sequence[Outcome]) -> Outcome | None:
    """The schedule of a group (in its order) quoted at equal compute.

    The first one compared at (within 1 % of) the baseline's compute; else, as budget-matched
    and shorter continual lengths end short of it, the one compared furthest along.
    """
    have = [
        o for o in group
        if o.matched_delta.mean is not None and o.matched_fraction.mean is not None
    ]  # fmt: skip
    near = [o for o in have if (o.matched_fraction.mean or 0.0) >= 0.99]
    if near:
        return near[0]
    return max(have, key=lambda o: o.matched_fraction.mean or 0.0) if have else None


def paper_verdict(
    study: StudyResults,
    outcomes: Sequence[Outcome],
    *,
    convention: str = "standard",
    other: Sequence[Outcome] | None = None,
) -> str | None:
    """The paper study's answer, per stage count S; ``None`` unless it is a paper-space study.

    Whether the incremental schedules reached the baseline's final eval loss, and at what
    compute ratio (compute to reach it / the baseline's compute); per S the least such ratio
    over its continual lengths, what the stages alone cost, and the furthest compute tried.
    ``other``: the same outcomes on the other FLOPs convention, quoted beside each ratio.
    """
    staged = [t for t in study.trials if not t.is_baseline]
    if not staged or any(_space_of(t) != "paper" for t in staged):
        return None
    groups = _by_stages(outcomes)
    if not groups:
        return None
    other_conv = "paper" if convention == "standard" else "standard"
    other_by_key = {o.schedule_key: o for o in (other or [])}
    base = next((o for o in outcomes if o.is_baseline), None)
    base_loss = base.final_eval_loss.mean if base is not None else None
    multiples = [m for gr in groups.values() for o in gr if (m := _multiple(o)) is not None]
    max_m = f"{max(multiples):g}×" if multiples else "a multiple of"

    def other_ratio(o: Outcome) -> str:
        twin = other_by_key.get(o.schedule_key)
        if twin is None or not twin.reached or twin.compute_fraction.mean is None:
            return ""
        return f" ({_ratio(twin.compute_fraction.mean)} in {other_conv} FLOPs)"

    per_s: list[str] = []
    firsts: list[tuple[int, Outcome]] = []
    for s, group in groups.items():
        group = sorted(group, key=lambda o: (_multiple(o) is None, _multiple(o) or 0.0))
        spent = [o.total_compute.mean / o.baseline_compute.mean for o in group
                 if o.total_compute.mean and o.baseline_compute.mean]  # fmt: skip
        best = _first_reach(group)
        if best is not None:
            st = best.compute_fraction
            assert st.mean is not None
            firsts.append((s, best))
            text = f"S={s} reached it at {_ratio(st.mean)} the baseline's compute"
            if st.low is not None and st.high is not None:
                text += f" (95% CI {_ratio(st.low)}–{_ratio(st.high)})"
            text += other_ratio(best)
            stages_end = _stages_compute(group)
            to = best.compute_to_baseline_loss.mean
            m = _multiple(best)
            if stages_end is not None and to is not None and to <= stages_end * (1 + 1e-9):
                text += " already during its stages, before any continual training"
            elif m is not None:
                text += f" in continual training, with {m:g}× the matched length"
        else:
            furthest = f"{_ratio(max(spent))} the baseline's compute" if spent else "its budget"
            text = f"S={s} did not reach it within {furthest}"
            partial = [o for o in group if o.n_reached > 0]
            if partial:
                p = max(partial, key=lambda o: o.n_reached / o.n_seeds)
                text += f" in every seed ({p.n_reached} of {p.n_seeds} seeds for {p.label})"
        details = []
        stages_end = _stages_compute(group)
        ref = group[0].baseline_compute.mean
        if stages_end is not None and ref:
            details.append(f"its stages alone cost {_ratio(stages_end / ref)}")
        at_equal = _equal_compute_pick(group)
        if at_equal is not None:
            d, f = at_equal.matched_delta.mean, at_equal.matched_fraction.mean
            assert d is not None and f is not None
            where = (
                "at the baseline's compute" if f >= _AT_BASELINE
                else f"at equal compute, {_pct(f)} of the baseline's (where it ended),"
            )  # fmt: skip
            details.append(f"{where} its eval loss was {d:+.4f} vs the baseline's")
        if details:
            text += "; " + ", and ".join(details)
        per_s.append(text)

    intro = PAPER_STUDY.format(max_multiple=max_m) + f", compute in {convention} FLOPs: "
    target = f" of {_num(base_loss, '.4f')}" if base_loss is not None else ""
    if firsts:
        s0, best = min(firsts, key=lambda x: x[1].compute_fraction.mean or math.inf)
        r = best.compute_fraction.mean
        assert r is not None
        who = (
            "every S"
            if len(firsts) == len(groups)
            else " and ".join(f"S={s}" for s, _ in firsts) + " only"
        )
        answer = (
            f"yes, the incremental schedules reached the baseline's final eval loss{target} "
            f"({who}); the earliest, S={s0}, with {_ratio(r)} the baseline's compute, "
        )
        answer += (
            "less than the baseline spent, unlike the paper (where incremental training "
            "needed more total compute to reach the baseline's loss). "
            if r < 1
            else "more than the baseline spent, as in the paper. "
        )
    else:
        answer = (
            f"no, no incremental schedule reached the baseline's final eval loss{target} "
            "within the compute tried, as in the paper for short continual training. "
        )
    return intro + answer + " ".join(f"{t}." for t in per_s)


# -- rows, table, JSON --------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN/Infinity)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
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
        row["params"] = dict(o.params)
        row["trials"] = [dataclasses.asdict(t) for t in o.trials]
        rows.append(_clean(row))
    return rows


def outcome_table(outcomes: Sequence[Outcome]) -> Table:
    """The outcome table as a rich Table (for coloured terminal output)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in _LEFT_COLUMNS else "right")
    for o in outcomes:
        table.add_row(*_cells(o), style="bold" if o.is_baseline else None)
    return table


def format_table(outcomes: Sequence[Outcome], *, width: int = 200) -> str:
    """The outcome table as plain text for the terminal."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(
        outcome_table(outcomes)
    )
    return buf.getvalue()


def to_json(obj: Report | Sequence[Outcome]) -> str:
    """JSON for ``--json``: a whole report, or just rows for a list of outcomes."""
    if isinstance(obj, Report):
        data: Any = {
            "study": obj.study.study_name,
            "experiment": obj.study.experiment,
            "experiment_id": obj.study.experiment_id,
            "tracking_uri": obj.study.tracking_uri,
            "parent_run_id": obj.study.parent_run_id,
            "convention": obj.convention,
            "verdict": obj.verdict,
            "rows": obj.rows,
            "paths": {k: str(v) for k, v in obj.paths.items()},
        }
    else:
        data = {"rows": outcome_rows(obj), "verdict": verdict(obj)}
    return json.dumps(_clean(data), indent=2, sort_keys=False)


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
        if o.is_baseline:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline_line(outcomes: Sequence[Outcome], convention: str) -> str:
    base = next((o for o in outcomes if o.is_baseline), None)
    if base is None:
        return ""
    st = base.final_eval_loss
    spread = f"{_num(st.mean, '.4f')}"
    if st.low is not None and st.high is not None:
        spread += f" (95% CI {st.low:.4f}–{st.high:.4f}, seed spread)"
    return (
        f"Baseline: final eval loss {spread} over {base.n_seeds} seed(s), at "
        f"{_num(base.baseline_compute.mean, '.3e')} {convention} FLOPs."
    )


_COLUMN_NOTES: Final = (
    "Every schedule is compared with the full-depth baseline of the same seed on the compute "
    "axis. *Loss @ baseline compute*: eval loss (interpolated) at the FLOPs the baseline spent "
    "(*stopped short*: the schedule's last evaluation came before that). *Δ loss at equal "
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


def _write_markdown(
    path: Path, study: StudyResults, outcomes: Sequence[Outcome], text: str,
    plots: dict[str, Path], convention: str,
) -> None:  # fmt: skip
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
            parts += [f"![{PLOT_TITLES[name]}]({png.relative_to(path.parent).as_posix()})", ""]
    links = [
        f"[{name}]({p.relative_to(path.parent).as_posix()})"
        for name in PLOT_NAMES
        if (p := plots.get(f"{name}_html")) is not None
    ]
    if links:
        parts += ["Interactive: " + " · ".join(links), ""]
    path.write_text("\n".join(parts), encoding="utf-8")


_CSS: Final = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em}th,td{padding:4px 8px;border-bottom:1px solid #ddd}
th{text-align:left;background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.baseline td{font-weight:bold}.verdict{font-size:1.1em;padding:0.8em;background:#f0f6ff}
.notes{color:#555;font-size:0.9em}
"""


def _write_html(
    path: Path, study: StudyResults, outcomes: Sequence[Outcome], text: str, convention: str
) -> None:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS)
    body = []
    for o in outcomes:
        cells = _cells(o)
        tds = "".join(
            f"<td{'' if col in _LEFT_COLUMNS else ' class=num'}>{esc(c)}</td>"
            for col, c in zip(TABLE_COLUMNS, cells)
        )
        body.append(f"<tr{' class=baseline' if o.is_baseline else ''}>{tds}</tr>")
    figs = plotly_figures(study, outcomes, convention=convention)
    # plotly.js once, inline: the page must render without network access.
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
    path.write_text(page, encoding="utf-8")


def _log_to_parent(report: Report) -> None:
    run_id = report.study.parent_run_id
    if run_id is None:
        _log.warning("study %s has no parent run; report not logged to MLflow",
                     report.study.study_name)  # fmt: skip
        return
    client = make_client(report.study.tracking_uri)
    try:
        for key in ("report_md", "report_html", "report_json"):
            client.log_artifact(run_id, str(report.paths[key]), artifact_path=REPORT_ARTIFACT_DIR)
        plots_dir = report.paths["report_md"].parent / "plots"
        if plots_dir.is_dir():
            client.log_artifacts(
                run_id, str(plots_dir), artifact_path=f"{REPORT_ARTIFACT_DIR}/plots"
            )
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(
            "tracking_uri",
            report.study.tracking_uri,
            f"could not log the report to run {run_id} ({reason}); the files are in "
            f"{report.paths['report_md'].parent}; rerun with log_to_mlflow off or fix MLflow",
        ) from exc


def build_report(
    tracking_uri: str,
    experiment: str,
    output_dir: Path,
    *,
    log_to_mlflow: bool = True,
    study: str | None = None,
    convention: str = "standard",
    html_plots: bool = True,
) -> Report:
    """Load the study from MLflow, compare at equal compute, write and log the report.

    Writes ``report.md``, ``report.html`` (plots interactive, plotly.js inline),
    ``report.json`` and ``plots/*.png`` (+ ``plots/*.html`` when ``html_plots``) under
    ``output_dir``; with ``log_to_mlflow`` they go to the parent run under ``report/``.

    Raises:
        StagetuneError: see :func:`~stagetune.results.analysis.load_study`.
    """
    out = Path(output_dir)
    results = load_study(tracking_uri, experiment, study=study)
    outcomes = compute_matched(results, convention=convention)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to report
    plot_files = write_plots(results, outcomes, out / "plots", convention=convention,
                             html=html_plots)  # fmt: skip
    paths: dict[str, Path] = {
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        "report_json": out / "report.json",
    }
    for name, p in plot_files.png.items():
        paths[f"{name}_png"] = p
    for name, p in plot_files.html.items():
        paths[f"{name}_html"] = p
    text = PARTIAL_STUDY.format(status=results.parent_status) if results.partial else None
    if text is None:
        text = verdict(outcomes)
        other = "paper" if convention == "standard" else "standard"
        study_text = paper_verdict(
            results, outcomes, convention=convention,
            other=compute_matched(results, convention=other),
        )  # fmt: skip
        if study_text:
            text += "\n\n" + study_text
    report = Report(
        study=results,
        outcomes=outcomes,
        rows=outcome_rows(outcomes),
        verdict=text,
        paths=paths,
        convention=convention,
    )
    _write_markdown(paths["report_md"], results, outcomes, text, paths, convention)
    _write_html(paths["report_html"], results, outcomes, text, convention)
    paths["report_json"].write_text(to_json(report), encoding="utf-8")
    if log_to_mlflow:
        _log_to_parent(report)
    return report
