"""The training loop's checkpoint manager: save, restore, FSDP full-state gather, RNG states,
verification and fallback.

The loop hands it its counters; it writes the model (Hugging Face safetensors, at the active
depth), the optimizer, the counters and every rank's generator states into a new directory,
lists them with checksums (:mod:`stagetune.trainables.checkpoint`) and renames the directory
into place, so a checkpoint is whole or absent. On restore it takes the newest checkpoint that
verifies and fits the schedule, skipping corrupt ones, and touches the model only once one does.
With FSDP2 every rank gathers full tensors (collectives) and rank 0 writes them, so a
checkpoint does not depend on the number of ranks that wrote it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from stagetune.models import StagedModel
from stagetune.schedule import Schedule
from stagetune.trainables import rng_state
from stagetune.trainables.checkpoint import (
    HF_DIR,
    OPTIM,
    STATE,
    CorruptCheckpointError,
    newest_first,
    prune,
    read_checkpoint,
    write_manifest,
)
from stagetune.trainables.session import Session

__all__ = ["CHECKPOINTS_KEPT", "CheckpointManager"]

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 3
"""Checkpoints a run keeps in its local history: enough to fall back past a corrupt one."""
_HF_PREFIX = "hf_model."
"""Where the Hugging Face model sits in a :class:`StagedModel`'s state dict."""
_Weights = dict[str, torch.Tensor]


class CheckpointManager:
    """Checkpoints of one run: the model, its optimizer, the loop's counters, RNG states.

    Args:
        model: the staged model (sharded with ``fully_shard`` when ``fsdp``).
        optimizer: its optimizer (one for the whole run).
        session: where checkpoints are written and found again.
        schedule: the run's schedule; a checkpoint of another schedule is refused.
        device: the rank's device (its generators are saved too).
        fsdp: parameters are DTensors sharded over the ranks.
    """

    def __init__(
        self,
        *,
        model: StagedModel,
        optimizer: torch.optim.Optimizer,
        session: Session,
        schedule: Schedule,
        device: torch.device,
        fsdp: bool,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.session = session
        self._schedule = schedule.to_dict()
        self.device = device
        self.fsdp = fsdp
        self.rank, self.world_size = session.rank, session.world_size

    # -- save ----------------------------------------------------------------------------------
    def save(self, counters: dict[str, Any]) -> Path | None:
        """Write a verified checkpoint of the loop's ``counters`` (they hold its ``step``);
        every rank calls it (collectives), rank 0 writes and returns the path."""
        full_model: _Weights | None = None
        if self.fsdp:
            # Collectives: every rank gathers, rank 0 writes full (unsharded) tensors.
            optimizer = self._fsdp_full_optimizer_state()
            full_model = {
                k[len(_HF_PREFIX) :]: v
                for k, v in self._full_model_state().items()
                if k.startswith(_HF_PREFIX)
            }
        else:
            optimizer = self.optimizer.state_dict()
        rng = rng_state.gather(self.device, rank=self.rank, world_size=self.world_size)
        if self.rank != 0:
            return None
        step = int(counters["step"])
        root = self.session.checkpoint_root()
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{step:08d}"
        tmp = root / f".tmp_step_{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / HF_DIR, state_dict=full_model)
        torch.save(optimizer, tmp / OPTIM)
        rng_state.save(tmp, rng)
        (tmp / STATE).write_text(json.dumps(counters, indent=1))
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(root, keep=CHECKPOINTS_KEPT)
        return final

    def _full_model_state(self) -> _Weights:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(  # type: ignore[return-value]
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def _fsdp_full_optimizer_state(self) -> dict[str, Any]:
        """AdamW state with every DTensor gathered to a full tensor, keyed by parameter name.

        Iterates parameters in ``named_parameters`` order, identical on every rank, because
        ``full_tensor`` is a collective.
        """
        from torch.distributed.tensor import DTensor

        out: dict[str, Any] = {}
        for name, p in self.model.named_parameters():
            st = self.optimizer.state.get(p)
            if not st:
                continue
            out[name] = {
                k: (v.full_tensor().cpu() if isinstance(v, DTensor) else v) for k, v in st.items()
            }
        groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        return {"fsdp_full": True, "state": out, "param_groups": groups}

    # -- restore -------------------------------------------------------------------------------
    def restore(self) -> dict[str, Any] | None:
        """Restore the model and the generators from the newest valid checkpoint the session
        offers; returns its ``{"trainer": counters, "optimizer": state}`` for the loop to load
        (:meth:`load_optimizer_state`), or ``None`` when there is none.

        Raises:
            CorruptCheckpointError: checkpoints exist but none verifies.
        """
        candidates = self.session.restore_candidates()
        if not candidates:
            return None
        source, counters, optimizer, weights, rng = self._read_valid(candidates)
        depth = int(counters["active_depth"])
        if depth > self.model.active_depth:
            self.model.grow(depth, "random", seed=0)  # weights are overwritten just below
        self._load_model_weights(weights)
        rng_state.restore(rng, source, self.device, rank=self.rank)  # after grow(): it reseeds
        return {"trainer": counters, "optimizer": optimizer}

    def load_optimizer_state(self, saved: dict[str, Any]) -> None:
        """Load an optimizer state :meth:`save` wrote (full tensors re-sharded under FSDP)."""
        if not saved.get("fsdp_full"):
            self.optimizer.load_state_dict(saved)
            return
        from torch.distributed.tensor import DTensor, distribute_tensor

        for name, p in self.model.named_parameters():
            st = saved["state"].get(name)
            if st is None:
                continue
            self.optimizer.state[p] = {
                k: (
                    distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape
                    else v
                )
                for k, v in st.items()
            }

    def _read_valid(
        self, candidates: list[Path]
    ) -> tuple[Path, dict[str, Any], dict[str, Any], _Weights, rng_state.RngStates | None]:
        """The newest checkpoint that verifies and loads safely, and all of it; the model is
        not touched until one does, so a bad candidate leaves nothing half-applied."""
        skipped: list[str] = []
        for cand in newest_first(candidates):
            try:
                counters, optimizer, hf_dir = read_checkpoint(cand)
                if counters.get("schedule") != self._schedule:
                    raise CorruptCheckpointError(
                        f"checkpoint {cand}: it belongs to a different schedule"
                    )
                try:
                    weights = load_file(str(hf_dir / "model.safetensors"), device="cpu")
                except Exception as exc:  # safetensors' own error type for a bad header
                    raise CorruptCheckpointError(
                        f"checkpoint {cand}: unreadable model weights ({exc})"
                    ) from None
                rng = rng_state.load(cand)
            except CorruptCheckpointError as exc:
                skipped.append(str(exc))
                log.warning("skipping corrupt checkpoint: %s", exc)
                continue
            if skipped:
                log.warning(
                    "resuming from the previous good checkpoint %s (step %s)",
                    cand,
                    counters["step"],
                )
            return cand, counters, optimizer, weights, rng
        raise CorruptCheckpointError(
            f"no valid checkpoint left to resume from ({len(skipped)} found, all corrupt): "
            + "; ".join(skipped)
            + "; delete them to start the run over"
        )

    def _load_model_weights(self, weights: _Weights) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(
                self.model,
                {_HF_PREFIX + k: v for k, v in weights.items()},
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
            return
        missing, unexpected = self.model.hf_model.load_state_dict(weights, strict=False)
        depth_ok = all(self._is_inactive_or_tied(k) for k in missing)
        if unexpected or not depth_ok:
            raise CorruptCheckpointError(
                f"checkpoint weights do not fit the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )

    def _is_inactive_or_tied(self, key: str) -> bool:
        if key == "lm_head.weight" and self.model.tied_embeddings:
            return True
        block = self.model.family.block_index(key)
        return block is not None and block >= self.model.active_depth
