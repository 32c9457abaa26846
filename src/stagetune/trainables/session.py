"""Where a training loop reports to: a local directory, a Ray Tune trial, or a Ray Train worker.

The loop itself is the same everywhere; only reporting and checkpoint discovery differ.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CHECKPOINTS_DIR",
    "TRIAL_HISTORY_DIR",
    "LocalSession",
    "Session",
    "TrainWorkerSession",
    "TuneSession",
]

log = logging.getLogger(__name__)


class Session(Protocol):
    """What the training loop needs from its environment."""

    rank: int
    world_size: int

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Publish one metric record (all ranks call this with identical, reduced metrics)."""

    def checkpoint_root(self) -> Path:
        """Directory where this worker writes its local checkpoint history."""

    def restore_candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first (the loop takes the first that verifies)."""


def _placement() -> dict[str, Any]:
    """Where the process that trained this record runs: its Ray node id and process id.

    Tune's own ``node_ip``/``pid`` name the trial's driver process, and on one host every node
    shares an IP; these name the process that actually trained (rank 0 of a Train run).
    """
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid()}


CHECKPOINTS_DIR = "checkpoints"
"""A local session's checkpoint history, under its output directory."""
TRIAL_HISTORY_DIR = "stagetune_checkpoints"
"""A Tune trial's own checkpoint history, under its trial directory: it backs up Tune's copies
while the trial trains (a corrupt newest one falls back to it) and is deleted when the trial
ends (:class:`stagetune.orchestration.callbacks.CheckpointRetention`)."""


def _local_history(root: Path) -> list[Path]:
    return sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)


class LocalSession:
    """Writes ``metrics.jsonl`` and checkpoints under ``out_dir`` (``stagetune train``, tests)."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: Path, *, echo: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        self._echo = echo

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.records.append(dict(metrics))
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._echo is not None:
            self._echo(metrics)

    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINTS_DIR

    def restore_candidates(self) -> list[Path]:
        return _local_history(self.checkpoint_root())


class TuneSession:
    """Inside a Ray Tune function trainable (one-worker trials run the loop in-process)."""

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        from ray import tune

        self._tune = tune
        trial_dir = Path(tune.get_context().get_trial_dir())
        self._root = trial_dir / TRIAL_HISTORY_DIR
        self._placement = _placement()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = self._tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._tune.report({**metrics, **self._placement}, checkpoint=ckpt)

    def checkpoint_root(self) -> Path:
        return self._root

    def restore_candidates(self) -> list[Path]:
        out: list[Path] = []
        ckpt = self._tune.get_checkpoint()
        if ckpt is not None:
            # Tune's copy lives in storage: read in place when local, else fetched first.
            out.append(_fetch(ckpt))
        out.extend(p for p in _local_history(self._root) if p not in out)
        return out


class TrainWorkerSession:
    """Inside a Ray Train worker (``TorchTrainer``); Tune hears rank 0 via TuneReportCallback."""

    def __init__(self, local_root: Path) -> None:
        import ray.train

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self._root = Path(local_root) / f"rank{self.rank}"
        self._placement = _placement()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        # Every rank that wrote part of the checkpoint reports it (FSDP: each its own shards);
        # Ray Train puts all of them into one stored checkpoint directory.
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = self._train.Checkpoint.from_directory(str(checkpoint_dir))
        # Only rank 0's record reaches Tune (TuneReportCallback), so node_id/worker_pid name it.
        self._train.report({**metrics, **self._placement}, checkpoint=ckpt)

    def checkpoint_root(self) -> Path:
        return self._root

    def restore_candidates(self) -> list[Path]:
        """The Train run's own checkpoints, newest first: the same list on every rank.

        Every rank must resume from the same step (DDP pairs their collectives step by step),
        so only checkpoints that every rank sees count. A rank's local history does not: only
        rank 0 writes one, and it can be ahead of what Train registered when a worker died
        between writing a checkpoint and Train taking the report.
        """
        latest = self._train.get_checkpoint()
        if latest is None:
            return []
        older: list[Any] = []
        try:
            # Older ones let a corrupt newest checkpoint fall back (the loop verifies each).
            reported = self._train.get_all_reported_checkpoints(timeout_s=60)
            older = [r.checkpoint for r in reversed(reported) if r.checkpoint.path != latest.path]
        except Exception as exc:  # alpha API; the newest alone still resumes
            log.warning("older checkpoints unavailable (%s)", exc)
        out = [_fetch(latest)]
        # Remote storage: only the newest is fetched (each would cost a full download).
        out.extend(p for p in map(_in_place, older) if p is not None)
        return out


def _in_place(ckpt: Any) -> Path | None:
    """The directory of a Ray (Train or Tune) checkpoint when it can be read where it is."""
    import pyarrow.fs

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem) and Path(ckpt.path).is_dir():
        return Path(ckpt.path)
    return None


def _fetch(ckpt: Any) -> Path:
    """A local directory holding the checkpoint: in place, or downloaded into a temp dir."""
    here = _in_place(ckpt)
    if here is not None:
        return here
    local = Path(tempfile.mkdtemp(prefix="stagetune-restore-"))
    ckpt.to_directory(str(local))
    return local


def cleanup(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
