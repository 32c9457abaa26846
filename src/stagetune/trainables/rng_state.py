"""Random-number generator states in checkpoints: a resumed run draws what the uninterrupted
run drew (dropout masks), so it trains to the same losses.

A training step draws from two generators per rank: the global CPU generator (dropout on the
CPU) and the CUDA generator of the rank's device (dropout on a GPU). Everything else a step
touches is stateless by design: the data stream's batches are a pure function of (seed, step),
and growth operators draw from a generator seeded per stage and fork the global one around their
work. These two states are therefore all the randomness a checkpoint must carry.

Every rank's states are gathered to rank 0, which writes them as one safetensors file beside
the weights (tensors only: nothing is unpickled on resume; the manifest's checksums cover it).
A checkpoint written before stagetune saved these states resumes with a one-line note.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from stagetune.trainables.checkpoint import CorruptCheckpointError

__all__ = ["RNG_FILE", "RngStates", "gather", "load", "restore", "save"]

log = logging.getLogger(__name__)

RNG_FILE = "rng_state.safetensors"
_CPU = "cpu"
_CUDA = "cuda"
RngStates = dict[str, torch.Tensor]
"""Generator states by key ``rank<r>.cpu`` / ``rank<r>.cuda`` (uint8 tensors)."""


def _key(rank: int, generator: str) -> str:
    return f"rank{rank}.{generator}"


def gather(device: torch.device, *, rank: int, world_size: int) -> RngStates:
    """Every rank's generator states (a collective: every rank calls it at the same step).

    Each rank's states travel as one uint8 tensor on ``device`` (what the process group's
    backend accepts); only rank 0 needs the result, the others get it too.
    """
    local = [torch.get_rng_state()]
    if device.type == "cuda":
        local.append(torch.cuda.get_rng_state(device))
    if world_size == 1:
        parts = [local]
    else:
        flat = torch.cat(local).to(device)
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        # Same device type on every rank, hence the same split.
        parts = [list(g.cpu().split([len(s) for s in local])) for g in gathered]
    out: RngStates = {}
    for r, states in enumerate(parts):
        # Copies: safetensors refuses tensors that share memory (the split views do).
        out[_key(r, _CPU)] = states[0].clone()
        if len(states) > 1:
            out[_key(r, _CUDA)] = states[1].clone()
    return out


def save(directory: Path, states: RngStates) -> None:
    """Write ``states`` into the checkpoint being assembled in ``directory``."""
    save_file(states, str(directory / RNG_FILE))


def load(directory: Path) -> RngStates | None:
    """The states saved in a verified checkpoint; None when it predates them.

    Checked here, before anything is restored, so that a bad file makes the resume fall back
    to the previous checkpoint like any other corrupt one.

    Raises:
        CorruptCheckpointError: the file is unreadable, or holds something other than CPU
            generator states of this torch build's size (and uint8 CUDA states).
    """
    path = directory / RNG_FILE
    if not path.is_file():
        return None
    try:
        states = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors' own error type for a bad header
        raise CorruptCheckpointError(
            f"checkpoint {directory}: unreadable {RNG_FILE} ({exc})"
        ) from None
    cpu_size = torch.get_rng_state().numel()
    for key, t in states.items():
        size_ok = not key.endswith("." + _CPU) or t.numel() == cpu_size
        if t.dtype != torch.uint8 or t.dim() != 1 or not size_ok:
            raise CorruptCheckpointError(
                f"checkpoint {directory}: {RNG_FILE} entry {key!r} is no generator state"
            )
    return states


def restore(states: RngStates | None, source: Path, device: torch.device, *, rank: int) -> None:
    """Set this rank's generators to ``states`` (from checkpoint ``source``).

    Without saved states (an older checkpoint, or none for this rank or device) the generators
    keep their fresh seeding and one line says that random draws now differ from the
    uninterrupted run.

    Raises:
        CorruptCheckpointError: a saved state the generator refuses (wrong size).
    """
    wanted = [_CPU] + ([_CUDA] if device.type == "cuda" else [])
    missing = [g for g in wanted if states is None or _key(rank, g) not in states]
    if missing:
        log.warning(
            "checkpoint %s holds no %s RNG state for rank %d (written by an older stagetune, "
            "or on other devices): resuming with freshly seeded generators, so dropout draws "
            "differ from an uninterrupted run",
            source,
            "/".join(missing),
            rank,
        )
    if states is None:
        return
    try:
        if _CPU not in missing:
            torch.set_rng_state(states[_key(rank, _CPU)])
        if _CUDA in wanted and _CUDA not in missing:
            torch.cuda.set_rng_state(states[_key(rank, _CUDA)], device)
    except (RuntimeError, ValueError) as exc:
        raise CorruptCheckpointError(f"checkpoint {source}: {RNG_FILE} refused ({exc})") from None
