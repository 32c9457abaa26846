"""Compute-matched outcomes of a study, read back from MLflow alone (no Ray).

Every schedule is judged against the full-depth baseline of the same seed on the compute axis:

* **loss at the baseline's compute**: its eval loss, linearly interpolated, at the FLOPs the
  baseline spent in total (``None`` if the trial stopped short of that);
* **compute to the baseline's loss**: the FLOPs at which its eval loss first reaches the
  baseline's final eval loss (interpolated inside the crossing interval), or "not reached";
* **speedup** = baseline compute / that compute;
* **delta at equal compute**: at ``min(trial's last eval compute, baseline's last eval compute)``
  both curves are interpolated and compared (trial minus baseline, negative: better). The loss
  at the baseline's compute needs the trial to get there, and most do not: budget-matched
  schedules end a step or so short (budget matching floors to whole steps) and shorter continual
  lengths end well short, while the baseline's curve is always available below its end. So every
  trial whose curve overlaps the baseline's on the compute axis gets this comparison, at the
  baseline's compute when it got there and where it stopped otherwise (the live progress line,
  ``TrialLedger.best_matched``, compares the same way).

Trials of one schedule (param ``schedule_key``) are pooled across seeds: mean and 95 % Student-t
confidence interval of each quantity; the baseline's own seed spread comes out the same way.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from stagetune.errors import ConfigError, StagetuneError, suggest
from stagetune.metrics import FLOPS, FLOPS_PAPER, STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED
from stagetune.registry import CONVENTIONS
from stagetune.results.naming import (
    PARAM_SCHEDULE_KEY,
    PARAM_SCHEDULE_LABEL,
    ROLE_PARENT,
    ROLE_TRIAL,
    STATUS_RUNNING,
    TAG_IS_BASELINE,
    TAG_LABEL,
    TAG_ROLE,
    TAG_SCHEDULE_KEY,
    TAG_SEED,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from stagetune.results.store import error_reason, is_http, make_client

__all__ = [
    "Curve",
    "Outcome",
    "Stat",
    "StudyResults",
    "TrialOutcome",
    "TrialResult",
    "at_equal_compute",
    "compute_matched",
    "load_study",
    "pareto_front",
    "t_quantile_975",
]

_log = logging.getLogger(__name__)

CURVE_METRICS: Final = ("tokens", FLOPS, FLOPS_PAPER, "eval_loss", "train_loss", "stage")
_MLFLOW_MAX_FLOAT: Final = 1.7976931348623157e308  # how MLflow's SQL store saves +inf
_MLFLOW_STATUS_NAMES: Final = {
    "RUNNING": STATUS_RUNNING,
    "SCHEDULED": STATUS_RUNNING,
    "FINISHED": "finished",
    "KILLED": "stopped",
    "FAILED": "failed",
}

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


# -- what MLflow holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """A trial's metrics aligned on MLflow's step axis (cumulative tokens); NaN where absent."""

    tokens: np.ndarray
    flops: np.ndarray
    flops_paper: np.ndarray
    eval_loss: np.ndarray
    train_loss: np.ndarray
    stage: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def compute(self, convention: str = "standard") -> np.ndarray:
        """Cumulative FLOPs in the given convention (``standard`` or ``paper``)."""
        return self.flops_paper if convention == "paper" else self.flops

    def eval_points(self, convention: str = "standard") -> tuple[np.ndarray, np.ndarray]:
        """(compute, eval loss) at the points that have both, in training order."""
        c = self.compute(convention)
        keep = ~np.isnan(c) & ~np.isnan(self.eval_loss)
        return c[keep], self.eval_loss[keep]

    def total_compute(self, convention: str = "standard") -> float | None:
        """The last cumulative FLOPs the trial reported."""
        c = self.compute(convention)
        c = c[~np.isnan(c)]
        return float(c.max()) if len(c) else None

    def stage_boundaries(self, convention: str = "standard") -> list[tuple[float, int]]:
        """(compute, new stage) at each point where the reported ``stage`` changes."""
        c = self.compute(convention)
        out: list[tuple[float, int]] = []
        prev: float | None = None
        for ci, st in zip(c, self.stage):
            if np.isnan(st):
                continue
            if prev is not None and st != prev and not np.isnan(ci):
                out.append((float(ci), int(st)))
            prev = float(st)
        return out


@dataclass(frozen=True)
class TrialResult:
    """One trial (child run) as MLflow holds it."""

    trial_id: str
    run_id: str
    status: str
    """``running`` or one of :data:`stagetune.metrics.STATUSES`."""
    is_baseline: bool
    seed: str | None
    schedule_key: str
    label: str
    params: dict[str, str]
    tags: dict[str, str]
    curve: Curve


@dataclass(frozen=True)
class StudyResults:
    """A study read back from MLflow."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    study_name: str
    parent_run_id: str | None
    trials: tuple[TrialResult, ...]
    parent_status: str | None = None
    """The parent run's ``stagetune.status``: ``finished`` once the whole study is over."""

    @property
    def partial(self) -> bool:
        """The study has not finished (it runs, or was interrupted): no verdict yet."""
        return self.parent_status not in (None, STATUS_FINISHED)

    @property
    def baselines(self) -> list[TrialResult]:
        return [t for t in self.trials if t.is_baseline]

    def trial(self, trial_id: str) -> TrialResult:
        """The trial with this id (KeyError if absent)."""
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise KeyError(trial_id)


def _experiment_or_error(client: Any, tracking_uri: str, experiment: str) -> Any:
    try:
        exp = client.get_experiment_by_name(experiment)
        names = [] if exp is not None else [e.name for e in client.search_experiments()]
    except Exception as exc:  # connection refused, DNS, timeouts: say so in one line
        fix = "start the MLflow server or pass the right tracking URI"
        raise ConfigError(
            "tracking_uri", tracking_uri, f"MLflow is unreachable ({error_reason(exc)}); {fix}"
        ) from exc
    if exp is None or exp.lifecycle_stage == "deleted":
        existing = ", ".join(sorted(n for n in names if n != "Default")) or "none"
        raise ConfigError(
            "experiment",
            experiment,
            f"no such MLflow experiment at {tracking_uri} (existing: {existing}); "
            "pass one of those or the right tracking URI",
        )
    return exp


def _search_all(client: Any, exp_id: str, filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _load_curve(client: Any, run_id: str) -> Curve:
    series: dict[str, dict[int, tuple[int, float]]] = {}
    for key in CURVE_METRICS:
        by_step: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, key):
            v = float(m.value)
            if abs(v) >= _MLFLOW_MAX_FLOAT:
                v = math.copysign(math.inf, v)
            # The latest timestamp wins should a step appear twice.
            old = by_step.get(int(m.step))
            if old is None or m.timestamp >= old[0]:
                by_step[int(m.step)] = (int(m.timestamp), v)
        series[key] = by_step
    steps = sorted(set().union(*(s.keys() for s in series.values())))

    def col(key: str) -> np.ndarray:
        return np.array([series[key].get(s, (0, math.nan))[1] for s in steps], dtype=float)

    tokens = col("tokens")
    tokens = np.where(np.isnan(tokens), np.array(steps, dtype=float), tokens)
    return Curve(
        tokens=tokens,
        flops=col(FLOPS),
        flops_paper=col(FLOPS_PAPER),
        eval_loss=col("eval_loss"),
        train_loss=col("train_loss"),
        stage=col("stage"),
    )


def _trial_from_run(client: Any, run: Any) -> TrialResult:
    tags = dict(run.data.tags)
    params = dict(run.data.params)
    status = tags.get(TAG_STATUS) or _MLFLOW_STATUS_NAMES.get(run.info.status, "failed")
    trial_id = tags.get(TAG_TRIAL_ID, run.info.run_id)
    # Without a schedule key a trial cannot be pooled with other seeds: it stands alone.
    key = params.get(PARAM_SCHEDULE_KEY) or tags.get(TAG_SCHEDULE_KEY) or f"trial:{trial_id}"
    is_baseline = tags.get(TAG_IS_BASELINE, "false").lower() == "true"
    label = (
        params.get(PARAM_SCHEDULE_LABEL)
        or tags.get(TAG_LABEL)
        or ("baseline" if is_baseline else key)
    )
    return TrialResult(
        trial_id=trial_id,
        run_id=run.info.run_id,
        status=status,
        is_baseline=is_baseline,
        seed=tags.get(TAG_SEED),
        schedule_key=key,
        label=label,
        params=params,
        tags=tags,
        curve=_load_curve(client, run.info.run_id),
    )


def load_study(tracking_uri: str, experiment: str, *, study: str | None = None) -> StudyResults:
    """Read a study's trials and curves from MLflow.

    Args:
        tracking_uri: the MLflow store the study logged to.
        experiment: the MLflow experiment name.
        study: the study name (tag ``stagetune.study``); may be left out when the experiment
            holds a single study.

    Raises:
        StagetuneError: unreachable store, unknown experiment (the message lists the existing
            ones), unknown or ambiguous study, or a study without a baseline run.
    """
    client = make_client(tracking_uri, must_exist=not is_http(tracking_uri))
    exp = _experiment_or_error(client, tracking_uri, experiment)
    exp_id = exp.experiment_id
    trial_runs = _search_all(client, exp_id, f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'")
    parent_runs = _search_all(client, exp_id, f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'")
    studies = sorted({r.data.tags.get(TAG_STUDY, "") for r in [*trial_runs, *parent_runs]} - {""})
    if not studies:
        raise ConfigError("experiment", experiment, "holds no stagetune runs; run a study first")
    if study is None:
        if len(studies) > 1:
            raise ConfigError(
                "study",
                None,
                f"experiment {experiment!r} holds several studies: {', '.join(studies)}; name one",
            )
        study = studies[0]
    elif study not in studies:
        raise ConfigError("study", study, suggest(study, studies))
    parents = [r for r in parent_runs if r.data.tags.get(TAG_STUDY) == study]
    parents.sort(key=lambda r: r.info.start_time or 0)
    trials = tuple(
        sorted(
            (_trial_from_run(client, r) for r in trial_runs if r.data.tags.get(TAG_STUDY) == study),
            key=lambda t: t.trial_id,
        )
    )
    if not any(t.is_baseline for t in trials):
        raise StagetuneError(
            f"study {study!r} in experiment {experiment!r} has no baseline run "
            f"(tag {TAG_IS_BASELINE}=true): run the baseline schedule before comparing"
        )
    return StudyResults(
        tracking_uri=tracking_uri,
        experiment=experiment,
        experiment_id=exp_id,
        study_name=study,
        parent_run_id=parents[0].info.run_id if parents else None,
        trials=trials,
        parent_status=parents[0].data.tags.get(TAG_STATUS) if parents else None,
    )


# -- compute-matched outcomes -------------------------------------------------------------------


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


@dataclass(frozen=True)
class TrialOutcome:
    """One trial against the baseline of its seed."""

    trial_id: str
    schedule_key: str
    seed: str | None
    status: str
    is_baseline: bool
    baseline_trial_id: str
    baseline_compute: float
    """The baseline's compute at its final evaluation."""
    baseline_final_loss: float
    final_eval_loss: float | None
    total_compute: float | None
    loss_at_baseline_compute: float | None
    """``None``: the trial stopped before the baseline's compute."""
    loss_delta: float | None
    """``loss_at_baseline_compute - baseline_final_loss`` (negative: better)."""
    compute_to_baseline_loss: float | None
    """``None``: never reached the baseline's final eval loss."""
    compute_fraction: float | None
    """``compute_to_baseline_loss / baseline_compute``."""
    speedup: float | None
    """``baseline_compute / compute_to_baseline_loss``."""
    final_eval_compute: float | None
    """The compute at the trial's last evaluation (``None``: no eval point)."""
    matched_compute: float | None
    """Where the trial is compared with the baseline at equal compute: the lesser of the two
    curves' last eval compute. ``None``: the curves do not overlap on the compute axis (that
    point lies before the first eval point of either)."""
    loss_at_matched: float | None
    """The trial's eval loss at ``matched_compute`` (interpolated)."""
    baseline_loss_at_matched: float | None
    """The baseline's eval loss at ``matched_compute`` (interpolated)."""
    matched_delta: float | None
    """``loss_at_matched - baseline_loss_at_matched`` (negative: better at equal compute)."""
    matched_fraction: float | None
    """``matched_compute / baseline_compute``: 1 when the trial got to the baseline's compute."""

    @property
    def reached(self) -> bool:
        return self.compute_to_baseline_loss is not None

    @property
    def stopped_short(self) -> bool:
        """Its last evaluation came before the baseline's compute (or it has none)."""
        return self.final_eval_compute is None or self.final_eval_compute < self.baseline_compute


@dataclass(frozen=True)
class Outcome:
    """One schedule (all its seeds) against the baselines of the same seeds."""

    schedule_key: str
    label: str
    is_baseline: bool
    params: dict[str, str]
    trials: tuple[TrialOutcome, ...]
    final_eval_loss: Stat
    total_compute: Stat
    loss_at_baseline_compute: Stat
    loss_delta: Stat
    compute_to_baseline_loss: Stat
    compute_fraction: Stat
    speedup: Stat
    baseline_final_loss: Stat
    """The baselines' final eval losses over the same seeds: their seed spread."""
    baseline_compute: Stat
    matched_compute: Stat
    """Where each seed was compared at equal compute (see :class:`TrialOutcome`)."""
    loss_at_matched: Stat
    baseline_loss_at_matched: Stat
    matched_delta: Stat
    """Eval loss minus the baseline's at equal compute (negative: better)."""
    matched_fraction: Stat
    """``matched_compute / baseline_compute`` per seed (1: compared at the baseline's compute)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def n_seeds(self) -> int:
        return len(self.trials)

    @property
    def n_reached(self) -> int:
        return sum(t.reached for t in self.trials)

    @property
    def reached(self) -> bool:
        """Every seed reached the baseline's final eval loss."""
        return bool(self.trials) and self.n_reached == len(self.trials)


def _interp_at(c: np.ndarray, loss: np.ndarray, x: float, rel_tol: float) -> float | None:
    """Loss at compute ``x`` by linear interpolation; ``None`` if the curve does not span it."""
    if len(c) == 0:
        return None
    if x > c[-1]:
        # Budget matching floors to whole steps, so a matched schedule may end a hair short.
        # Within rel_tol its last loss stands in: conservative, as loss falls with compute.
        return float(loss[-1]) if x <= c[-1] * (1 + rel_tol) else None
    if x < c[0]:
        return None
    return float(np.interp(x, c, loss))


def _first_crossing(c: np.ndarray, loss: np.ndarray, target: float) -> float | None:
    """Compute at which ``loss`` first falls to ``target`` (interpolated), else ``None``."""
    hits = np.nonzero(loss <= target)[0]
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(c[0])
    c0, c1, l0, l1 = float(c[i - 1]), float(c[i]), float(loss[i - 1]), float(loss[i])
    if not math.isfinite(l0):
        return c1
    return c0 + (l0 - target) / (l0 - l1) * (c1 - c0)


def at_equal_compute(
    c: np.ndarray, loss: np.ndarray, bc: np.ndarray, bl: np.ndarray
) -> tuple[float, float, float] | None:
    """(compute, trial's loss, baseline's loss) at the lesser of the two curves' ends.

    Both losses are interpolated there. ``None`` when the curves do not overlap on the compute
    axis: one ends before the other's first eval point.
    """
    if not len(c) or not len(bc):
        return None
    at = min(float(c[-1]), float(bc[-1]))
    if at < max(float(c[0]), float(bc[0])):
        return None
    mine, base = float(np.interp(at, c, loss)), float(np.interp(at, bc, bl))
    if math.isnan(mine) or math.isnan(base):
        return None
    return at, mine, base


def _pick_baselines(study: StudyResults, convention: str) -> dict[str | None, TrialResult]:
    """One baseline per seed: a finished one if any, then the one that got furthest."""
    by_seed: dict[str | None, TrialResult] = {}
    for t in study.baselines:
        c, _ = t.curve.eval_points(convention)
        if not len(c):
            continue
        cur = by_seed.get(t.seed)
        rank = (t.status == "finished", float(c[-1]))
        if cur is None:
            by_seed[t.seed] = t
            continue
        cc, _ = cur.curve.eval_points(convention)
        if rank > (cur.status == "finished", float(cc[-1])):
            by_seed[t.seed] = t
    return by_seed


def _trial_outcome(
    t: TrialResult, base: TrialResult, convention: str, rel_tol: float
) -> TrialOutcome:
    bc, bl = base.curve.eval_points(convention)
    c_b, l_b = float(bc[-1]), float(bl[-1])
    c, loss = t.curve.eval_points(convention)
    loss_at: float | None
    to: float | None
    matched: tuple[float, float, float] | None
    if t.run_id == base.run_id:
        # The reference itself: by definition it reaches its own loss at its own compute.
        loss_at, to, matched = l_b, c_b, (c_b, l_b, l_b)
    else:
        loss_at = _interp_at(c, loss, c_b, rel_tol)
        to = _first_crossing(c, loss, l_b)
        matched = at_equal_compute(c, loss, bc, bl)
    at, mine, theirs = matched if matched is not None else (None, None, None)
    return TrialOutcome(
        trial_id=t.trial_id,
        schedule_key=t.schedule_key,
        seed=t.seed,
        status=t.status,
        is_baseline=t.is_baseline,
        baseline_trial_id=base.trial_id,
        baseline_compute=c_b,
        baseline_final_loss=l_b,
        final_eval_loss=float(loss[-1]) if len(loss) else None,
        total_compute=t.curve.total_compute(convention),
        loss_at_baseline_compute=loss_at,
        loss_delta=None if loss_at is None else loss_at - l_b,
        compute_to_baseline_loss=to,
        compute_fraction=None if to is None else to / c_b,
        speedup=None if not to else c_b / to,
        final_eval_compute=float(c[-1]) if len(c) else None,
        matched_compute=at,
        loss_at_matched=mine,
        baseline_loss_at_matched=theirs,
        matched_delta=None if mine is None or theirs is None else mine - theirs,
        matched_fraction=None if at is None else at / c_b,
    )


def _group(key: str, label: str, first: TrialResult, outs: list[TrialOutcome]) -> Outcome:
    def stat(attr: str) -> Stat:
        return Stat.of([getattr(o, attr) for o in outs])

    notes = []
    if any(o.loss_at_baseline_compute is None and o.stopped_short for o in outs):
        notes.append("stopped before the baseline's compute in some seeds")
    if any(o.matched_compute is None for o in outs):
        notes.append("no eval point overlapping the baseline's curve in some seeds")
    return Outcome(
        schedule_key=key,
        label=label,
        is_baseline=first.is_baseline,
        params=first.params,
        trials=tuple(outs),
        final_eval_loss=stat("final_eval_loss"),
        total_compute=stat("total_compute"),
        loss_at_baseline_compute=stat("loss_at_baseline_compute"),
        loss_delta=stat("loss_delta"),
        compute_to_baseline_loss=stat("compute_to_baseline_loss"),
        compute_fraction=stat("compute_fraction"),
        speedup=stat("speedup"),
        baseline_final_loss=stat("baseline_final_loss"),
        baseline_compute=stat("baseline_compute"),
        matched_compute=stat("matched_compute"),
        loss_at_matched=stat("loss_at_matched"),
        baseline_loss_at_matched=stat("baseline_loss_at_matched"),
        matched_delta=stat("matched_delta"),
        matched_fraction=stat("matched_fraction"),
        notes=tuple(notes),
    )


def _seed_order(seed: str | None) -> tuple[int, float, str]:
    if seed is None:
        return (2, 0.0, "")
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def compute_matched(
    study: StudyResults, *, convention: str = "standard", rel_tol: float = 0.01
) -> list[Outcome]:
    """Compute-matched outcomes per schedule, baseline first, then best to worst.

    Order: the baseline; the schedules that reached the baseline's final eval loss in every
    seed, by mean compute fraction; the rest by mean eval-loss delta at equal compute
    (``matched_delta``, lowest first): ranking them by the loss at the baseline's compute would
    leave out every schedule that ended short of it (most: budget matching floors to whole
    steps, shorter continual lengths end well short), whereas the baseline's curve is available
    below its end; last, those without any comparable point.

    Args:
        study: from :func:`load_study`.
        convention: the compute axis: ``standard`` (``flops``) or ``paper`` (``flops_paper``).
        rel_tol: a trial that ended within this fraction short of the baseline's compute counts
            as having got there (budget matching floors to whole steps); its last eval loss is
            used, which can only flatter the baseline. Only for ``loss_at_baseline_compute`` /
            ``loss_delta``; the equal-compute comparison needs no tolerance.

    Trials whose seed has no baseline are left out (logged as a warning).
    """
    if convention not in CONVENTIONS:
        raise ConfigError("convention", convention, suggest(convention, CONVENTIONS))
    baselines = _pick_baselines(study, convention)
    if not baselines:
        raise StagetuneError(
            f"study {study.study_name!r}: no baseline run has eval points on the "
            f"{convention} compute axis; let the baseline run to its first evaluation"
        )
    groups: dict[str, list[TrialOutcome]] = defaultdict(list)
    firsts: dict[str, TrialResult] = {}
    for t in study.trials:
        base = baselines.get(t.seed)
        if base is None:
            _log.warning(
                "trial %s (seed %s): no baseline with that seed; left out", t.trial_id, t.seed
            )
            continue
        key = "baseline" if t.is_baseline else t.schedule_key
        firsts.setdefault(key, t)
        groups[key].append(_trial_outcome(t, base, convention, rel_tol))
    labels = [firsts[k].label for k in groups if not firsts[k].is_baseline]
    outcomes = []
    for key, outs in groups.items():
        outs.sort(key=lambda o: _seed_order(o.seed))
        first = firsts[key]
        label = "baseline" if first.is_baseline else first.label
        if not first.is_baseline and (labels.count(label) > 1 or label == "baseline"):
            # Two recipes may share a schedule label (e.g. differ only in lr): keep rows apart.
            label = f"{label} [{key[:8]}]"
        outcomes.append(_group(key, label, first, outs))

    def order(o: Outcome) -> tuple[int, float, str]:
        if o.is_baseline:
            return (0, 0.0, o.label)
        if o.reached and o.compute_fraction.mean is not None:
            return (1, o.compute_fraction.mean, o.label)
        # A schedule that diverged or failed in any seed ranks after every one that trained
        # cleanly, however good it looked at the point it was compared.
        broken = any(t.status in (STATUS_DIVERGED, STATUS_FAILED) for t in o.trials)
        delta = o.matched_delta.mean
        group = 2 + (2 if broken else 0) + (1 if delta is None else 0)
        return (group, delta if delta is not None else 0.0, o.label)

    return sorted(outcomes, key=order)


def pareto_front(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Schedules no other beats on both mean final eval loss and mean total compute.

    Sorted by compute; outcomes lacking either number are ignored.
    """
    pts = [
        (o, o.final_eval_loss.mean, o.total_compute.mean)
        for o in outcomes
        if o.final_eval_loss.mean is not None and o.total_compute.mean is not None
    ]
    front = []
    for o, loss, comp in pts:
        dominated = any(
            (l2 <= loss and c2 <= comp) and (l2 < loss or c2 < comp)  # type: ignore[operator]
            for o2, l2, c2 in pts
            if o2 is not o
        )
        if not dominated:
            front.append((comp, loss, o))
    front.sort(key=lambda x: (x[0], x[1]))
    return [o for _, _, o in front]
