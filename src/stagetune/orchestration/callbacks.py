"""Driver-side Tune callbacks: MLflow tracking (one child run per trial), live progress, and the
graceful stop (signals, full disk).

They run in the driver process only, so workers never talk to MLflow and a trial's metrics are
logged exactly once, from the rank-0 record Tune received.

One cohesive module (over 400 lines): the driver's view of the trials (the ledger) and the callbacks that read it.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from ray.tune import Callback

from stagetune.metrics import (
    FLOPS,
    METRIC_KEYS,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_STOPPED,
    STATUSES,
)
from stagetune.orchestration.interrupt import StudyStopper
from stagetune.results import MlflowTracker
from stagetune.results.formatting import flops_si
from stagetune.results.matched import at_equal_compute
from stagetune.results.naming import TAG_ASHA_RUNG, TAG_LABEL
from stagetune.trainables.session import TRIAL_HISTORY_DIR

__all__ = [
    "BestMatched",
    "CheckpointRetention",
    "MlflowCallback",
    "ProgressCallback",
    "StopCallback",
    "TrialLedger",
]

DISK_CHECK_S = 0.5
"""How often (at most) a running study asks its file systems for their free space."""
LIVE_EVERY_S = 0.5
"""How often (at most) the live display redraws on a terminal."""
PLAIN_EVERY_S = 30.0
"""How often (at most) a progress line is printed when stdout is not a terminal."""
REACH_RTOL = 0.05
"""A trial whose curve ends this close (relative) below the baseline's final compute counts as
having got there, for the live best (budget matching floors to whole steps)."""


def _trial_params(trial: Any) -> dict[str, Any]:
    return dict(trial.config.get("point", trial.config))


class BestMatched(NamedTuple):
    """The trial doing best against the reference at equal compute (see
    :meth:`TrialLedger.best_matched`)."""

    trial_id: str
    loss: float
    """Its eval loss at ``compute``."""
    baseline_loss: float
    """The reference's eval loss at ``compute`` (the name is kept for callers)."""
    compute: float
    """The FLOPs they were compared at."""


class TrialLedger:
    """What the driver knows of every trial: its curve, status and label."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.baseline_ids: set[str] = set()
        self.full_depth_ids: set[str] = set()
        """Full-depth trials: the reference's candidates (on the study's seed), no schedules."""
        self.confirmation_ids: set[str] = set()
        self.labels: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def add(self, trial_id: str, result: dict[str, Any]) -> None:
        with self.lock:
            self.last[trial_id] = result
            if result.get("is_baseline"):
                self.baseline_ids.add(trial_id)
            if result.get("full_depth") or result.get("is_baseline"):
                self.full_depth_ids.add(trial_id)
            if result.get("confirmation"):
                self.confirmation_ids.add(trial_id)
            ev = result.get("eval_loss")
            if ev is not None and math.isfinite(float(ev)):
                self.curves.setdefault(trial_id, []).append((float(result[FLOPS]), float(ev)))

    def final_status(self, trial_id: str, *, errored: bool = False) -> str:
        last = self.last.get(trial_id, {})
        if last.get("replayed") and last.get("status") in STATUSES:
            # It ended before the driver died: the status Optuna recorded then stands.
            return str(last["status"])
        if last.get("status") == STATUS_DIVERGED:
            return STATUS_DIVERGED
        if errored:
            return STATUS_FAILED
        if last.get("status") == STATUS_FINISHED:
            return STATUS_FINISHED
        return STATUS_STOPPED

    def reference_id(self) -> str | None:
        """The reference so far: the finished full-depth trial (on the study's seed) with the
        lowest final eval loss (the rule of :mod:`stagetune.results.reference`)."""
        with self.lock:
            done = [
                (self.curves[t][-1][1], t not in self.baseline_ids, t)
                for t in self.full_depth_ids - self.confirmation_ids
                if self.status.get(t) == STATUS_FINISHED and self.curves.get(t)
            ]
        return min(done)[2] if done else None

    def best_matched(self) -> BestMatched | None:
        """The trial with the lowest loss relative to the reference at the reference's compute.

        Always the same compute point, the reference's final one, so the best does not jump
        between compute points as trials progress: a trial counts once its curve gets there
        (within :data:`REACH_RTOL`: budget-matched schedules end a step or so short; such a
        trial is compared where it ended). None until a full-depth trial has finished; the
        reference itself while no other trial got that far.
        """
        b = self.reference_id()
        if b is None:
            return None
        with self.lock:
            bx = np.array([c[0] for c in self.curves[b]])
            by = np.array([c[1] for c in self.curves[b]])
            best: BestMatched | None = None
            for t, curve in self.curves.items():
                if t in self.full_depth_ids or not curve or curve[-1][0] < bx[-1] * (1 - REACH_RTOL):
                    continue
                xs = np.array([c[0] for c in curve])
                ys = np.array([c[1] for c in curve])
                matched = at_equal_compute(xs, ys, bx, by)
                if matched is None:
                    continue
                if best is None or matched.loss - matched.baseline_loss < (
                    best.loss - best.baseline_loss
                ):
                    best = BestMatched(t, matched.loss, matched.baseline_loss, matched.compute)
            if best is None:
                return BestMatched(b, float(by[-1]), float(by[-1]), float(bx[-1]))
            return best


class MlflowCallback(Callback):
    """Logs every trial as an MLflow child run of the study's parent run.

    ``describe`` gives a trial's MLflow params and tags from its params and id; ``rung_metric``
    is the metric ASHA places its rungs on, whose last value a stopped trial is tagged with.
    """

    def __init__(
        self,
        tracker: MlflowTracker,
        ledger: TrialLedger,
        *,
        describe: Callable[[dict[str, Any], str], dict[str, Any]],
        rung_metric: str = FLOPS,
        on_complete: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.ledger = ledger
        self._describe = describe
        # ASHA's time_attr: where a stopped trial's rung is (stagetune.asha_rung).
        self.rung_metric = rung_metric
        self._on_complete = on_complete
        self._started: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (with the callbacks) into the experiment directory; live
        # clients and closures stay behind, and --resume installs fresh callbacks.
        return {
            "tracker": self.tracker,
            "ledger": self.ledger,
            "_describe": None,
            "rung_metric": self.rung_metric,
            "_on_complete": None,
            "_started": set(),
        }

    def _ensure_started(self, trial: Any) -> None:
        if trial.trial_id in self._started:
            return
        info = self._describe(_trial_params(trial), trial.trial_id)
        with self.ledger.lock:
            self.ledger.labels[trial.trial_id] = str(info["tags"][TAG_LABEL])
        self.tracker.start_trial(trial_id=trial.trial_id, params=info["params"], tags=info["tags"])
        self._started.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._ensure_started(trial)
        self.ledger.add(trial.trial_id, result)
        record = {k: result[k] for k in METRIC_KEYS if k in result and result[k] is not None}
        self.tracker.log_report(trial.trial_id, record)

    def _finish(self, trial: Any, *, errored: bool) -> None:
        self._ensure_started(trial)
        status = self.ledger.final_status(trial.trial_id, errored=errored)
        with self.ledger.lock:
            self.ledger.status[trial.trial_id] = status
        last = self.ledger.last.get(trial.trial_id, {})
        tags = {}
        if status == STATUS_STOPPED and self.rung_metric in last:
            tags[TAG_ASHA_RUNG] = f"{float(last[self.rung_metric]):.6g}"
        self.tracker.end_trial(trial.trial_id, status, tags=tags)
        if self._on_complete is not None:
            self._on_complete(trial.trial_id, status, last)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)


class ProgressCallback(Callback):
    """The live progress display: trials by state, compute spent vs planned, elapsed time and an
    ETA from that ratio, the running trials by label, and the best trial against the baseline
    at the baseline's compute (:meth:`TrialLedger.best_matched`).

    On a terminal it is a rich live panel redrawn in place; piped, a plain line every
    :data:`PLAIN_EVERY_S` seconds and at each trial's end. ``live`` forces either (``None``:
    whether stdout is a terminal).
    """

    def __init__(
        self,
        ledger: TrialLedger,
        *,
        planned_flops: float,
        total_trials: int,
        quiet: bool = False,
        live: bool | None = None,
    ) -> None:
        self.ledger = ledger
        self.planned = planned_flops
        self.total = total_trials
        self.quiet = quiet
        self.live = live
        self._t0: float | None = None
        self._last_print = 0.0
        self._panel: Any = None  # rich.live.Live while shown

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig with the callbacks: the terminal stays behind.
        return {**self.__dict__, "_panel": None}

    def _elapsed(self) -> float:
        if self._t0 is None:
            self._t0 = time.monotonic()
        return time.monotonic() - self._t0

    def lines(self, trials: list[Any]) -> list[str]:
        """What the display shows: counts and compute, running trials, the best so far."""
        elapsed = self._elapsed()
        with self.ledger.lock:
            statuses = list(self.ledger.status.values())
            spent = sum(float(r.get(FLOPS, 0.0)) for r in self.ledger.last.values())
            running = [
                self.ledger.labels.get(t.trial_id, t.trial_id)
                for t in trials
                if t.status == "RUNNING"
            ]
        done = statuses.count(STATUS_FINISHED)
        stopped = statuses.count(STATUS_STOPPED)
        bad = statuses.count(STATUS_DIVERGED) + statuses.count(STATUS_FAILED)
        frac = spent / self.planned if self.planned else 0.0
        eta = f"ETA ~{_duration(elapsed * (1 - frac) / frac)}" if 0.02 < frac < 1 else "ETA —"
        head = (
            f"trials {done} done, {len(running)} running, {stopped} stopped, {bad} failed of "
            f"{self.total} | compute {flops_si(spent)} of {flops_si(self.planned)} "
            f"({frac:.0%}) | elapsed {_duration(elapsed)} | {eta}"
        )
        return [head, f"running: {', '.join(running) or '—'}", self._best_text()]

    def _best_text(self) -> str:
        best = self.ledger.best_matched()
        if best is None:
            return "best: waiting for a full-depth reference to finish"
        with self.ledger.lock:
            label = self.ledger.labels.get(best.trial_id, best.trial_id)
        if best.loss == best.baseline_loss and best.trial_id in self.ledger.full_depth_ids:
            return (
                f"best: the reference, {best.loss:.4f} at {flops_si(best.compute)} "
                "(no schedule has got that far yet)"
            )
        gap = best.loss - best.baseline_loss
        return (
            f"best at the reference's compute ({flops_si(best.compute)}): {label} "
            f"{best.loss:.4f} vs reference {best.baseline_loss:.4f} ({gap:+.4f})"
        )

    def line(self, trials: list[Any]) -> str:
        """The display as one plain line (piped output)."""
        return "[stagetune] " + " | ".join(self.lines(trials))

    def _is_live(self) -> bool:
        return sys.stdout.isatty() if self.live is None else self.live

    def _show(self, trials: list[Any], *, force: bool) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self._is_live():
            if force or now - self._last_print >= LIVE_EVERY_S:
                self._last_print = now
                self._render(trials)
        elif force or now - self._last_print >= PLAIN_EVERY_S:
            self._last_print = now
            print(self.line(trials), flush=True)

    def _render(self, trials: list[Any]) -> None:
        from rich.live import Live
        from rich.text import Text

        text = Text("\n".join(self.lines(trials)))
        if self._panel is None:
            self._panel = Live(text, auto_refresh=False, transient=False)
            self._panel.start()
        self._panel.update(text, refresh=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials, force=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials, force=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._show(trials, force=True)
        if self._panel is not None:
            self._panel.stop()
            self._panel = None


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class CheckpointRetention(Callback):
    """Keeps a finished study's ``ray_results`` small: when a trial ends (finished, stopped,
    diverged, failed), its own checkpoint history (:data:`TRIAL_HISTORY_DIR`, a backup of
    Tune's copies needed only while it trains) is deleted; Tune keeps its newest checkpoints
    (``CheckpointConfig.num_to_keep``) for restarts. A trial interrupted by a stop keeps it:
    ``--resume`` continues from it. The study sweeps once more when its search has ended
    (:meth:`sweep`)."""

    def _drop(self, trial: Any) -> None:
        local = getattr(trial, "local_path", None)
        if local:
            shutil.rmtree(Path(local) / TRIAL_HISTORY_DIR, ignore_errors=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._drop(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._drop(trial)

    @staticmethod
    def sweep(experiment_dir: Path) -> None:
        """Drop every trial's history under a Tune experiment that has ended: a trial ASHA
        stopped may still have written one more checkpoint after it was completed."""
        for history in experiment_dir.glob(f"*/{TRIAL_HISTORY_DIR}"):
            shutil.rmtree(history, ignore_errors=True)


class StopCallback(Callback):
    """Connects a :class:`StudyStopper` to Tune's loop: signals take Tune's graceful path, and
    a full disk (its free space, or a trial that failed writing) stops the study the same way."""

    def __init__(self, stopper: StudyStopper) -> None:
        self.stopper = stopper
        self._next_check = 0.0

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles its RunConfig: the stopper (handlers, a lock) stays behind, and --resume
        # installs a fresh callback anyway.
        return (_detached_stop_callback, ())

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self.stopper.tune_started()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # Before the step's periodic experiment snapshot: a full disk would tear it.
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + DISK_CHECK_S
            self.stopper.check_disk()
        self.stopper.tune_step()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.stopper.tune_step()
        # The loop ends after this step: the last moment the stores are marked while Ray
        # still answers (Tune's clean-up needs it; a signal to the whole group ends it).
        self.stopper.mark()

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.stopper.check_disk()
        self.stopper.tune_step()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.stopper.check_disk()
        self.stopper.tune_step()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.stopper.tune_ended()


def _detached_stop_callback() -> StopCallback:
    """What an unpickled :class:`StopCallback` becomes: one with a stopper of its own."""
    return StopCallback(StudyStopper())
