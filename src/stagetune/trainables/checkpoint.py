"""Checkpoints with checksums: the model at its active depth (Hugging Face safetensors, loadable
with ``from_pretrained``), the optimizer, the trainer's counters, and the random-number
generators' states (:mod:`stagetune.trainables.rng_state`).

Every file is listed in ``manifest.json`` with its SHA-256, so a truncated or altered
checkpoint is detected before anything is loaded from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from stagetune.errors import StagetuneError

__all__ = [
    "DCP_DIR",
    "MANIFEST",
    "CorruptCheckpointError",
    "checkpoint_step",
    "file_digests",
    "find_latest_valid",
    "is_sharded",
    "newest_first",
    "read_checkpoint",
    "read_state",
    "verify_checkpoint",
    "write_manifest",
]

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
OPTIM = "optimizer.pt"
HF_DIR = "hf"
DCP_DIR = "dcp"
"""Where a sharded checkpoint keeps its ``torch.distributed.checkpoint`` files
(:mod:`stagetune.trainables.sharded`)."""
DCP_METADATA = ".metadata"


class CorruptCheckpointError(StagetuneError):
    """A checkpoint failed its checksum or is incomplete."""


def is_sharded(checkpoint: Path) -> bool:
    """Whether a checkpoint directory holds DCP shards (rather than safetensors + .pt).

    Here, not in :mod:`~stagetune.trainables.sharded`: telling needs no
    ``torch.distributed.checkpoint``, whose import costs a worker about a second."""
    return (checkpoint / DCP_DIR / DCP_METADATA).is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``directory`` (the manifest excepted)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(directory).as_posix(): _sha256(p) for p in files}


def write_manifest(directory: Path, others: dict[str, str] | None = None) -> None:
    """Record the SHA-256 of every file under ``directory`` (written last, atomically), and
    ``others``: files other ranks wrote into their own copy of the checkpoint directory
    (:func:`file_digests`), which the stored checkpoint holds once every rank's is merged."""
    manifest = {**(others or {}), **file_digests(directory)}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)


def verify_checkpoint(directory: Path) -> None:
    """Raise :class:`CorruptCheckpointError` unless every file matches the manifest."""
    man = directory / MANIFEST
    if not man.is_file():
        raise CorruptCheckpointError(f"checkpoint {directory}: no {MANIFEST} (incomplete write)")
    try:
        manifest = json.loads(man.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint {directory}: unreadable manifest ({exc})"
        ) from None
    for rel, digest in manifest.items():
        p = directory / rel
        if not p.is_file():
            raise CorruptCheckpointError(f"checkpoint {directory}: {rel} is missing")
        if _sha256(p) != digest:
            raise CorruptCheckpointError(f"checkpoint {directory}: {rel} fails its checksum")


def read_state(directory: Path) -> dict[str, Any]:
    """The trainer state (counters) of a checkpoint, after verifying every file."""
    verify_checkpoint(directory)
    try:
        state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint {directory}: unreadable {STATE} ({exc})"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptCheckpointError(f"checkpoint {directory}: {STATE} holds no step counter")
    return state


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Verified (trainer state, optimizer state, HF model dir) of a checkpoint.

    The optimizer state is unpickled with ``weights_only=True``: tensors and plain containers
    only. A file holding any other object (which could run code on load) is refused, even when
    its checksum matches (whoever altered it may have rewritten the manifest too).
    """
    state = read_state(directory)
    try:
        optim = torch.load(directory / OPTIM, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for a refused object, others for garbage
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptCheckpointError(
            f"checkpoint {directory}: {OPTIM} refused by the safe loader "
            f"(torch.load weights_only=True: {first})"
        ) from None
    if not isinstance(optim, dict):
        raise CorruptCheckpointError(f"checkpoint {directory}: {OPTIM} holds no optimizer state")
    return state, optim, directory / HF_DIR


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint claims to hold (unverified; -1 when unreadable): for ordering."""
    try:
        step = json.loads((directory / STATE).read_text(encoding="utf-8")).get("step")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) else -1


def newest_first(candidates: Iterable[Path]) -> list[Path]:
    """Candidates ordered by the step they hold, newest first (stable for equal steps).

    A restarted trial may see Tune's copy of an older checkpoint next to newer local ones
    (written after Tune's last snapshot): resuming from the newest repeats the least work.
    """
    items = list(dict.fromkeys(candidates))
    return sorted(items, key=checkpoint_step, reverse=True)


def find_latest_valid(candidates: Iterable[Path]) -> tuple[Path | None, list[str]]:
    """The first candidate that verifies, and the reasons the ones before it were skipped."""
    skipped: list[str] = []
    for c in candidates:
        try:
            verify_checkpoint(c)
            return c, skipped
        except CorruptCheckpointError as exc:
            skipped.append(str(exc))
    return None, skipped


def prune(directory: Path, keep: int) -> None:
    """Keep the ``keep`` newest ``step_*`` checkpoints under ``directory``."""
    ckpts = sorted(directory.glob("step_*"))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
