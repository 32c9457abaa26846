"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): each rank writes its own
shards of the model and the optimizer; no rank ever holds the full state.

A checkpoint's ``dcp/`` directory holds DCP's ``__<rank>_<n>.distcp`` files (one per rank) and
its ``.metadata``. Loading reshards: the tensors given to :func:`load_sharded` decide what each
rank reads (DTensor shards for FSDP2 at any world size, whole tensors for one process).

DCP's ``.metadata`` is a pickle and its own reader unpickles it with :mod:`pickle`. Here it is
read by :class:`SafeReader`, whose unpickler resolves only DCP's metadata classes, ``torch``
dtypes and sizes: any other global (which could run code on load) is refused, whatever the
manifest says. Tensor payloads are read by DCP with ``torch.load(weights_only=True)``; the
state dict holds tensors only, so DCP has no byte items (plain pickles) to read.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from stagetune.trainables.checkpoint import DCP_DIR, DCP_METADATA, CorruptCheckpointError

__all__ = ["SafeReader", "load_sharded", "save_sharded", "saved_keys"]

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."

_SAFE_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "ChunkStorageMetadata",
            "MetadataIndex",
            "BytesStorageMetadata",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "Path"}),
}
"""What DCP's metadata pickle may name: its dataclasses, enum and the torch values they hold."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _SAFE_GLOBALS.get(module, frozenset()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")


def _read_metadata(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _MetadataUnpickler(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint {path.parent.parent}: {DCP_DIR}/{DCP_METADATA} refused by the "
            f"restricted unpickler ({exc})"
        ) from None


class SafeReader(FileSystemReader):
    """DCP's ``FileSystemReader`` with its metadata unpickled by an allowlist (see module)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._metadata_path = directory / DCP_METADATA

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata: Metadata = _read_metadata(self._metadata_path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # type: ignore[union-attr]
        return metadata


def saved_keys(checkpoint: Path) -> dict[str, Any]:
    """Key -> DCP tensor metadata (size, dtype) of a sharded checkpoint (restricted unpickle)."""
    meta = _read_metadata(checkpoint / DCP_DIR / DCP_METADATA)
    return dict(meta.state_dict_metadata)


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    names: dict[torch.Tensor, str] = {p: n for n, p in model.named_parameters()}
    out: dict[str, Any] = {}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if not torch.is_tensor(v):
                raise TypeError(f"optimizer state {names[p]}.{k} is not a tensor: {type(v)}")
            out[f"{OPTIM_PREFIX}{names[p]}.{k}"] = v
    return out


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and the optimizer under ``directory/dcp``
    (a collective when a process group is up; rank 0 also writes the metadata)."""
    import torch.distributed.checkpoint as dcp

    state = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    state.update(_optimizer_state(model, optimizer))
    with _quiet_single_process():
        dcp.save(
            state,
            storage_writer=dcp.FileSystemWriter(str(directory / DCP_DIR)),
            no_dist=not _distributed(),
        )


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every save and load without a process group, even when told it is one
    process (``no_dist``): that is how a one-worker run resumes, nothing to warn about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def load_sharded(
    checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, dict[str, torch.Tensor]]:
    """Load a sharded checkpoint's model into ``model`` in place, and its optimizer state
    resharded like each parameter; returns the optimizer state as ``{param name: {key:
    tensor}}`` for the caller to install (a collective when a process group is up)."""
    import torch.distributed.checkpoint as dcp

    saved = saved_keys(checkpoint)
    model_state = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    missing = [k for k in model_state if k not in saved]
    if missing:
        raise CorruptCheckpointError(f"checkpoint {checkpoint}: no weights for {missing[:3]}")
    params = dict(model.named_parameters())
    optim: dict[str, dict[str, torch.Tensor]] = {}
    templates: dict[str, torch.Tensor] = dict(model_state)
    for key, md in saved.items():
        if not key.startswith(OPTIM_PREFIX):
            continue
        name, _, field = key[len(OPTIM_PREFIX) :].rpartition(".")
        p = params.get(name)
        if p is None or not hasattr(md, "size"):
            raise CorruptCheckpointError(f"checkpoint {checkpoint}: unexpected entry {key}")
        if tuple(md.size) == tuple(p.shape):
            t = torch.empty_like(p, dtype=md.properties.dtype)  # sharded like the parameter
        else:
            t = torch.empty(md.size, dtype=md.properties.dtype)  # e.g. Adam's step counter
        optim.setdefault(name, {})[field] = templates[key] = t
    try:
        with _quiet_single_process():
            dcp.load(
                templates,
                storage_reader=SafeReader(checkpoint / DCP_DIR),
                no_dist=not _distributed(),
            )
    except CorruptCheckpointError:
        raise
    except Exception as exc:  # DCP wraps its readers' errors in its own CheckpointException
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptCheckpointError(
            f"checkpoint {checkpoint}: unreadable shards ({first})"
        ) from None
    return optim
