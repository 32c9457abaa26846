"""Checkpoints with checksums: the model at its active depth (Hugging Face safetensors, loadable
with ``from_pretrained``), the optimizer, and the trainer's counters.

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
    "MANIFEST",
    "CorruptCheckpointError",
    "find_latest_valid",
    "read_checkpoint",
    "verify_checkpoint",
    "write_manifest",
]

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
OPTIM = "optimizer.pt"
HF_DIR = "hf"


class CorruptCheckpointError(StagetuneError):
    """A checkpoint failed its checksum or is incomplete."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the SHA-256 of every file under ``directory`` (written last, atomically)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(directory)): _sha256(p) for p in files}
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


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Verified (trainer state, optimizer state, HF model dir) of a checkpoint."""
    verify_checkpoint(directory)
    state = json.loads((directory / STATE).read_text())
    optim = torch.load(directory / OPTIM, map_location="cpu", weights_only=True)
    return state, optim, directory / HF_DIR


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
