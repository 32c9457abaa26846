"""Delivering tracking events: now, with a short bounded retry, or later from the spool.

Training must never notice MLflow. An event is delivered at once when MLflow answers within
``retry_seconds`` (exponential backoff with jitter); otherwise it is spooled
(:mod:`~stagetune.results.tracking.spool`) and MLflow counts as offline for ``offline_cooldown``
seconds, during which events go straight to the spool instead of each waiting out the retry
budget. Events of one key (a trial, or the study) keep their order: while some wait in the
spool, a new one joins them, and the spool is replayed first. An event MLflow refuses as
invalid is kept apart and never retried.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from stagetune.results.store import is_http, is_permanent
from stagetune.results.tracking.runs import Event, MlflowRuns
from stagetune.results.tracking.spool import STUDY_KEY, Op, Spool

__all__ = ["Delivery", "SyncResult", "TrackerStats"]

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TrackerStats:
    """Counters for observability and tests (read them, do not write them)."""

    delivered: int = 0
    """Events (study/trial starts, reports, ends, artifact uploads) that reached MLflow."""
    retries: int = 0
    spooled: int = 0
    rejected: int = 0
    """Events MLflow refused as invalid; kept in ``spool_dir/<key>.rejected.jsonl``."""
    duplicate_steps: int = 0
    """Reports skipped because MLflow already held their step."""
    last_error: str | None = None


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`MlflowTracker.sync_spool` achieved."""

    delivered: int
    pending: int
    """Events still in the spool (MLflow still unreachable)."""


class _Unreachable(Exception):
    """MLflow did not answer within the retry budget."""


class _Rejected(Exception):
    """MLflow refused the event (or it names no known op): it can never be delivered."""


class Delivery:
    """Delivers a tracker's events to MLflow, or spools them; thread-safe.

    Args:
        runs: the study's runs in MLflow (what an event is applied to).
        spool: where undeliverable events wait.
        stats: the tracker's counters, updated here.
        retry_seconds: total backoff budget per event before it is spooled.
        offline_cooldown: how long events go straight to the spool after a failed delivery.
    """

    def __init__(
        self,
        runs: MlflowRuns,
        spool: Spool,
        *,
        stats: TrackerStats,
        retry_seconds: float,
        offline_cooldown: float,
    ) -> None:
        self.runs = runs
        self.spool = spool
        self.stats = stats
        self.retry_seconds = retry_seconds
        self.offline_cooldown = offline_cooldown
        self._offline_until = 0.0
        self._state_lock = threading.Lock()
        # Lock order: a key lock, then the I/O lock, then MlflowRuns' parent lock; never the
        # reverse.
        self._key_locks: dict[str, threading.RLock] = {}
        # A local SQL store is one file: serialising our writes avoids "database is locked"
        # between driver threads. A server handles concurrency itself.
        self._io_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if is_http(self.runs.tracking_uri) else threading.Lock()
        )

    @property
    def offline(self) -> bool:
        """MLflow failed lately: events go straight to the spool until the cooldown ends."""
        return time.monotonic() < self._offline_until

    def submit(self, key: str, event: Event) -> str | None:
        """Deliver ``event`` now, or spool it; the run id it touched when delivered."""
        with self._key_lock(key):
            spooled = False
            try:
                pending = self.spool.has(key) or (key != STUDY_KEY and self.spool.has(STUDY_KEY))
                if self.offline:
                    self._spool_event(key, event)
                    return None
                if pending:
                    # Earlier events wait in the spool: keep the order, then try to catch up
                    # (the study's spool first: trial runs need the parent run).
                    self._spool_event(key, event)
                    spooled = True
                    self._sync_key(key)
                    return self.runs.known_run(event)
                return self._deliver_or_spool(key, event)
            except Exception as exc:  # never let a tracking bug reach training
                _log.exception("stagetune tracking: unexpected error; the event stays spooled")
                if not spooled:
                    with contextlib.suppress(Exception):
                        self._spool_event(key, event)
                self.stats.last_error = repr(exc)
                return None

    def reject(self, key: str, event: Event, reason: str) -> None:
        """Keep an event that can never be delivered where it is never replayed."""
        _log.warning(
            "MLflow refused a %s event of %s (%s); kept in %s",
            event.get("op"),
            key,
            reason,
            self.spool.directory,
        )
        with contextlib.suppress(Exception):
            self.spool.reject(key, event, reason)
        with self._state_lock:
            self.stats.rejected += 1
            self.stats.last_error = reason

    def sync(self) -> SyncResult:
        """Deliver spooled events (study first, then each trial, in order); never raises.

        Safe to repeat and safe against steps MLflow already holds. Works from any process
        that points at the same ``spool_dir`` (e.g. ``stagetune report`` after the driver died).
        """
        try:
            delivered, pending, ok = self._sync_key(STUDY_KEY)
            for key in self.spool.trial_keys():
                if not ok:
                    # MLflow is down: one failed wait is enough, count the rest as pending.
                    pending += len(self.spool.read(key))
                    continue
                d, p, ok = self._sync_key(key)
                delivered += d
                pending += p
        except Exception:  # never let a tracking bug reach training
            _log.exception("stagetune tracking: unexpected error while syncing the spool")
            return SyncResult(delivered=0, pending=self.pending())
        return SyncResult(delivered=delivered, pending=pending)

    def pending(self) -> int:
        """Number of spooled events waiting for delivery."""
        return self.spool.pending()

    def ask(self, question: Callable[[MlflowRuns], T]) -> T:
        """Ask MLflow something now, once: no retry, nothing spooled.

        A transient failure marks MLflow offline; every failure is raised.
        """
        try:
            with self._io_lock:
                return question(self.runs)
        except Exception as exc:
            if not is_permanent(exc):
                self._mark_offline(exc)
            raise

    def count_duplicate_step(self) -> None:
        """A report skipped because MLflow already held its step."""
        with self._state_lock:
            self.stats.duplicate_steps += 1

    def _key_lock(self, key: str) -> threading.RLock:
        with self._state_lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.RLock()
            return lock

    def _mark_offline(self, exc: BaseException) -> None:
        with self._state_lock:
            first = self._offline_until == 0.0
            self._offline_until = time.monotonic() + self.offline_cooldown
            self.stats.last_error = str(exc)
        if first:
            _log.warning(
                "MLflow at %s is unreachable (%s); spooling to %s until it answers",
                self.runs.tracking_uri,
                (str(exc).splitlines() or [repr(exc)])[0][:200],
                self.spool.directory,
            )

    def _mark_online(self) -> None:
        with self._state_lock:
            was_offline = self._offline_until != 0.0
            self._offline_until = 0.0
        if was_offline:
            _log.info("MLflow at %s answers again", self.runs.tracking_uri)

    def _deliver_or_spool(self, key: str, event: Event) -> str | None:
        try:
            run_id = self._deliver_with_retry(event)
        except _Rejected as exc:
            self.reject(key, event, str(exc))
            return None
        except _Unreachable as exc:
            self._mark_offline(exc)
            self._spool_event(key, event)
            return None
        self._mark_online()
        return run_id

    def _deliver_with_retry(self, event: Event, *, refresh: bool = False) -> str | None:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        attempt = 0
        while True:
            try:
                with self._io_lock:
                    # After a failed attempt the batch may have landed anyway: hence the refresh.
                    run_id = self.runs.apply(event, refresh=refresh or attempt > 0)
                with self._state_lock:
                    self.stats.delivered += 1
                return run_id
            except Exception as exc:
                if is_permanent(exc):
                    raise _Rejected(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Unreachable(str(exc)) from exc
                with self._state_lock:
                    self.stats.retries += 1
                    self.stats.last_error = str(exc)
                # Jitter keeps concurrent trials from retrying in lockstep.
                time.sleep(min(remaining, delay * (0.5 + random.random())))
                delay = min(delay * 2, 2.0)
                attempt += 1

    def _spool_event(self, key: str, event: Event) -> None:
        self.spool.append(key, event)
        with self._state_lock:
            self.stats.spooled += 1

    def _sync_key(self, key: str) -> tuple[int, int, bool]:
        """Deliver one spool file in order: (delivered, still pending, MLflow answered)."""
        with self._key_lock(key):
            events = self.spool.read(key)
            if not events:
                self.spool.clear(key)
                return 0, 0, True
            if key != STUDY_KEY and self.spool.has(STUDY_KEY):
                _, _, ok = self._sync_key(STUDY_KEY)
                if not ok or self.spool.has(STUDY_KEY):
                    return 0, len(events), ok  # the parent run must exist first
            delivered = 0
            refreshed: set[str] = set()
            for i, ev in enumerate(events):
                # Another process may have logged this trial meanwhile: re-read its steps once.
                refresh = ev["op"] == Op.REPORT and ev["trial_id"] not in refreshed
                if refresh:
                    refreshed.add(ev["trial_id"])
                try:
                    self._deliver_with_retry(ev, refresh=refresh)
                    delivered += 1
                except _Rejected as exc:
                    self.reject(key, ev, str(exc))
                except _Unreachable as exc:
                    self._mark_offline(exc)
                    rest = events[i:]
                    self.spool.keep(key, rest)
                    return delivered, len(rest), False
            self.spool.clear(key)
            self._mark_online()
            return delivered, 0, True
