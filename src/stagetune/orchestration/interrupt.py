"""Stopping a study without losing anything: SIGINT, SIGTERM or a full disk, at any moment.

A :class:`StudyStopper` holds SIGINT and SIGTERM for the whole of ``stagetune run``. While Ray
Tune's loop runs, either signal, and a full disk (seen by
:class:`~stagetune.orchestration.callbacks.StopCallback` or reported with
:func:`stagetune.diskspace.report_full`), takes Tune's own graceful path: the loop ends, Tune
writes a last experiment snapshot and stops the trials. Before the study runs (config, data)
and after it (the report) a signal raises :class:`StudyInterrupted` at once; inside
``run_study`` (a :meth:`StudyStopper.deferred` section: Ray's start-up, writes to the stores)
it takes effect at the next phase boundary. Then :func:`mark_interrupted` records the stop:

* **Tune**: its last snapshot holds the trials that ran as unfinished (RUNNING or PENDING);
  ``Tuner.restore(resume_unfinished=True)`` continues them from their newest checkpoint.
* **Optuna**: such a trial stays RUNNING, with ``stagetune_status=interrupted``. Optuna cannot
  reopen a finished trial, and the continued Tune trial reports to the same Optuna trial, which
  ends when it ends. (A trial the snapshot does not know, because the driver died before Tune
  could write one, cannot be continued: ``--resume`` closes it as FAIL, same attribute.)
* **MLflow**: the trial's run is KILLED with tag ``stagetune.status=interrupted``; the study's
  parent run too (it is never FINISHED before the study is). ``--resume`` reopens both.
* No report and no verdict are built from the partial study.

The driver prints one line (:meth:`StudyInterrupted.message`) and exits 130 (SIGINT), 143
(SIGTERM) or 1 (disk full: not a fault of the input, which was accepted).

One cohesive module (over 400 lines): the stop protocol across Tune, Optuna and MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from stagetune.diskspace import DiskFull, disk_full_in, first_full
from stagetune.metrics import STATUS_INTERRUPTED

if TYPE_CHECKING:
    from stagetune.results import MlflowTracker

# Light on purpose (no Ray, Optuna or MLflow at import): ``stagetune run`` holds its signals
# before it imports any of them.

__all__ = [
    "StudyInterrupted",
    "StudyStopper",
    "as_interruption",
    "mark_interrupted",
]

log = logging.getLogger(__name__)

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
EXIT_DISK_FULL: Final = 1
RAY_WATCH_S: Final = 120.0
"""How long after a signal the stop watches for the local Ray dying under the driver."""
_RAY_CORE: Final = frozenset({"gcs_server", "raylet"})

# Tune's words for a stop it takes for a signal: its advice (Tuner.restore) is not how a
# stagetune study continues, and the one line stagetune prints says what is.
_TUNE_STOP_NOISE: Final = (
    "Stop signal received",
    "Experiment has been interrupted",
    "Trials did not complete",
    "Failed to fetch metrics",  # of trials the stop kept from reporting
)
_TRACKING_LOGGER: Final = "stagetune.results.tracking"


class StudyInterrupted(KeyboardInterrupt):
    """The study stopped before its end; nothing it had is lost, ``--resume`` continues it."""

    def __init__(self, *, signum: int | None = None, disk_full: DiskFull | None = None) -> None:
        self.signum = signum
        self.disk_full = disk_full
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        if self.disk_full is not None:
            return "disk full: " + self.disk_full.describe()
        return signal.Signals(self.signum).name if self.signum else "interrupted"

    @property
    def exit_code(self) -> int:
        if self.disk_full is not None:
            return EXIT_DISK_FULL
        return 128 + (self.signum or signal.SIGINT)

    def message(
        self, workdir: Path | None, *, started: bool, command: str = "stagetune run"
    ) -> str:
        """The one line for stderr: what happened and how to continue (with ``command``)."""
        if not started or workdir is None:
            # Nothing of the study was written yet: there is nothing to resume.
            return "interrupted before the study started (nothing was written): run it again"
        resume = f"{command} --resume --workdir {workdir}"
        if self.disk_full is not None:
            return f"{self.reason}; free space, then {resume}"
        return f"interrupted: continue with {resume}"


class _QuietStop(logging.Filter):
    """Drops what the one closing line says better: Tune's own stop advice once a stop was
    asked for, and the errors of writes that failed because the disk is full."""

    def __init__(self, stopper: StudyStopper) -> None:
        super().__init__()
        self.stopper = stopper

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and disk_full_in(record.exc_info[1]) is not None:
            return False
        if self.stopper.disk_full is not None and record.name.startswith(_TRACKING_LOGGER):
            return False  # MLflow's store is as full as the rest; --resume reconciles it
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: not ours to judge
            return True
        if disk_full_in(Exception(text)) is not None:
            return False
        return not (self.stopper.requested and text.startswith(_TUNE_STOP_NOISE))


class StudyStopper:
    """SIGINT/SIGTERM (and a full disk) -> a graceful stop of ``stagetune run``.

    Use as a context manager around the command: it installs the handlers and restores the
    previous ones on exit. A stopper that is not installed still serves
    :class:`~stagetune.orchestration.callbacks.StopCallback` (the disk watch) and
    :meth:`deferred`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.disk_full: DiskFull | None = None
        self.watched: list[Path] = []
        """File systems the study writes to; a full one stops it."""
        self.workdir: Path | None = None
        self.study_started = False
        """Set once the study exists on disk (``--resume`` can continue it)."""
        self.ray_started = False
        """This driver started the local Ray instance it uses (and shuts it down on a stop)."""
        self.on_stop: Callable[[], None] | None = None
        """Marks the stores interrupted (:func:`mark_interrupted`): run once Tune's loop was
        told to stop, before Tune's clean-up (which needs Ray), and again on the way out."""
        self.as_json = False
        """The closing words also go to stdout as a JSON document (``--json``)."""
        self.resume_as: tuple[str, Path] | None = None
        """(command, work directory) that continues the work when it is not the study's own
        ``stagetune run`` (a sweep continues all its studies)."""
        self._installed = False
        self._previous: dict[int, Any] = {}
        self._defer = 0
        self._raised = False
        self._tune_handler: Callable[[int, FrameType | None], Any] | None = None
        self._tune_told = False
        # Reentrant: a signal handler runs on the main thread, possibly inside a section
        # that holds the lock.
        self._lock = threading.RLock()
        self._marked = False
        self._closed = False
        self._filter = _QuietStop(self)
        self._filtered: list[logging.Handler] = []

    # -- state -----------------------------------------------------------------------------
    @property
    def requested(self) -> bool:
        return self.signum is not None or self.disk_full is not None

    def interruption(self) -> StudyInterrupted:
        disk = self.disk_full.located(self.watched) if self.disk_full is not None else None
        return StudyInterrupted(signum=self.signum, disk_full=disk)

    def request_stop(self, disk_full: DiskFull | None = None, *, signum: int | None = None) -> bool:
        """Record the first reason to stop; returns whether this call was the first."""
        with self._lock:
            if self.requested:
                return False
            self.signum, self.disk_full = signum, disk_full
        if disk_full is not None:
            log.debug("stopping the study: %s", disk_full.describe())
        return True

    # -- handlers --------------------------------------------------------------------------
    def __enter__(self) -> StudyStopper:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            if not self._installed:
                self._previous[sig] = previous
        self._installed = True
        self._quiet_logs()

    def rearm(self) -> None:
        """Install the handlers again if they are installed: needed after ``ray.init``, whose
        core worker puts its own C++ SIGTERM handler (a stack dump, then abort) over Python's."""
        if self._installed:
            self.install()

    def uninstall(self) -> None:
        if not self._installed:
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._installed = False
        for handler in self._filtered:
            handler.removeFilter(self._filter)
        self._filtered.clear()

    def _quiet_logs(self) -> None:
        """Filter every log handler there is now (Ray's and Tune's appear on import)."""
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            for handler in lg.handlers:
                if handler not in self._filtered:
                    handler.addFilter(self._filter)
                    self._filtered.append(handler)
        if logging.lastResort is not None and logging.lastResort not in self._filtered:
            logging.lastResort.addFilter(self._filter)
            self._filtered.append(logging.lastResort)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.request_stop(signum=signum):
            return  # already stopping: a second signal changes nothing
        if self.ray_started:
            threading.Thread(target=self._watch_ray, name="stagetune-stop", daemon=True).start()
        if self._tell_tune(frame):
            return
        if self._defer == 0:
            self._raised = True
            raise self.interruption()

    def _tell_tune(self, frame: FrameType | None = None) -> bool:
        """Let Tune's loop end gracefully (its own SIGINT path); False when no loop runs."""
        handler = self._tune_handler
        if handler is None:
            return False
        if not self._tune_told:
            self._tune_told = True
            handler(signal.SIGINT, frame)
        return True

    # -- sections --------------------------------------------------------------------------
    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A section a signal must not cut in two: the stop takes effect at its :meth:`check`
        points, or when it ends."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        self.check()

    def check(self) -> None:
        """A safe point: raise :class:`StudyInterrupted` if a stop was asked for (also inside
        a deferred section) and not raised yet."""
        if self.requested and not self._raised:
            self._raised = True
            raise self.interruption()

    # -- Tune's loop -----------------------------------------------------------------------
    def tune_started(self) -> None:
        """Tune's loop starts (``Callback.setup``, inside ``Tuner.fit``, main thread): wrap the
        SIGINT handler Tune just installed, so either signal takes its graceful path."""
        self._tune_told = False
        if self._installed and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current == self._on_signal:
                # Tune's handler has already fired (and restored ours): a SIGINT came first.
                self.request_stop(signum=signal.SIGINT)
                self._tune_told = True
            elif callable(current):
                self._tune_handler = current
                signal.signal(signal.SIGINT, self._on_signal)
            self._quiet_logs()
        self.tune_step()

    def tune_step(self) -> None:
        """Between two steps of Tune's loop: pass on a stop asked for from elsewhere.

        A full disk ends the loop with its error instead of Tune's graceful stop: that stop
        writes a last experiment snapshot in place of the previous one, and on a full disk
        the write tears it, while the previous one is what ``--resume`` needs.
        """
        if self.disk_full is not None:
            raise self.disk_full.error()
        if self.requested:
            self._tell_tune()

    def tune_ended(self) -> None:
        """Tune's loop is over (``Callback.on_experiment_end``)."""
        if self._installed and signal.getsignal(signal.SIGINT) != self._on_signal:
            signal.signal(signal.SIGINT, self._on_signal)  # Tune leaves its handler behind
        self._tune_handler = None

    def mark(self) -> None:
        """Record the stop in the stores (once; a no-op until a stop was asked for)."""
        with self._lock:
            if not self.requested or self._marked or self.on_stop is None:
                return
            self._marked = True
        self.on_stop()

    def close(self, stop: StudyInterrupted) -> bool:
        """Say the closing words (one line on stderr, and JSON on stdout with ``as_json``);
        False if they were said already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        if self.resume_as is not None:
            line = stop.message(self.resume_as[1], started=True, command=self.resume_as[0])
        else:
            line = stop.message(self.workdir, started=self.study_started)
        if self.as_json:
            print(json.dumps({"status": "interrupted", "reason": stop.reason, "next": line}))
        print(line, file=sys.stderr, flush=True)
        return True

    def _watch_ray(self) -> None:
        """A signal sent to the whole process group (systemd's stop, ``kill -TERM -PGID``)
        ends this driver's local Ray too: Tune's clean-up then waits a minute for a GCS that is
        gone, and Ray ends the process with exit 1. Instead: mark the stores, say the closing
        words and exit with the signal's code."""
        import ray

        node = ray._private.worker._global_node
        deadline = time.monotonic() + RAY_WATCH_S
        while node is not None and not self._closed and time.monotonic() < deadline:
            if {kind for kind, _ in node.dead_processes()} & _RAY_CORE:
                self.mark()
                if self.close(self.interruption()):
                    sys.stdout.flush()
                    os._exit(self.interruption().exit_code)
                return
            time.sleep(0.5)

    def check_disk(self) -> None:
        """Stop if a watched file system is (nearly) full."""
        full = first_full(self.watched)
        if full is not None:
            self.request_stop(full)


def as_interruption(exc: BaseException, stopper: StudyStopper) -> StudyInterrupted | None:
    """``exc`` as the study's interruption: itself, a stop already asked for (the error came
    from the stop), or a full disk; ``None`` for any other error."""
    if isinstance(exc, StudyInterrupted):
        return exc
    full = disk_full_in(exc)
    if full is not None:
        stopper.request_stop(full)
    if not stopper.requested:
        return None
    stopper._raised = True
    return stopper.interruption()


def mark_interrupted(
    *,
    optuna_storage: Any,
    study_name: str,
    tracker: MlflowTracker | None,
    study_finished: bool,
) -> None:
    """Record the stop in Optuna and MLflow (see the module doc); never raises.

    Writes that fail (the disk may be full) are left out: ``--resume`` reconciles a trial that
    is still RUNNING in Optuna or MLflow with Tune's snapshot all the same.
    """
    import optuna
    from optuna.trial import TrialState

    from stagetune.orchestration.searcher import ATTR_STATUS

    if optuna_storage is not None:
        try:
            study = optuna.load_study(study_name=study_name, storage=optuna_storage)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                optuna_storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, STATUS_INTERRUPTED)
        except Exception as exc:  # no study yet, or the disk is full
            log.debug("could not mark running Optuna trials interrupted: %s", exc)
    if tracker is None:
        return
    try:
        for trial_id in tracker.open_trials():
            tracker.end_trial(trial_id, STATUS_INTERRUPTED)
        if not study_finished:
            tracker.end_study(STATUS_INTERRUPTED)
    except Exception as exc:
        log.debug("could not mark open MLflow runs interrupted: %s", exc)
