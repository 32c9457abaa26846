"""The training loop's checkpoint manager: save, restore, FSDP sharded checkpoints, RNG states,
verification and fallback.

The loop hands it its counters; it writes the model (Hugging Face safetensors, at the active
depth), the optimizer, the counters and every rank's generator states into a new directory,
lists them with checksums (:mod:`stagetune.trainables.checkpoint`) and renames the directory
into place, so a checkpoint is whole or absent. On restore it takes the newest checkpoint that
verifies and fits the schedule, skipping corrupt ones, and touches the model only once one does.

With FSDP2 each rank writes only its own shards of the model and the optimizer
(:mod:`stagetune.trainables.sharded`, ``torch.distributed.checkpoint``, imported only then: it
costs a worker about a second) into its own copy of the
checkpoint directory; rank 0 adds the counters, the generators and a manifest that lists every
rank's files (their digests are gathered), and Ray Train merges the ranks' directories into one
stored checkpoint. Loading reshards to any world size, one process included. The final
checkpoint also holds the model in Hugging Face format (``hf/``), gathered once, at the end.
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
    file_digests,
    is_sharded,
    newest_first,
    prune,
    read_checkpoint,
    read_state,
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
_BY_NAME = "by_name"
"""A sharded checkpoint's optimizer state, keyed by parameter name (see ``restore``)."""


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
        self._total_steps = schedule.total_steps
        self.device = device
        self.fsdp = fsdp
        self.rank, self.world_size = session.rank, session.world_size

    # -- save ----------------------------------------------------------------------------------
    def save(self, counters: dict[str, Any]) -> Path | None:
        """Write a verified checkpoint of the loop's ``counters`` (they hold its ``step``);
        every rank calls it (collectives). Returns the directory to report: rank 0's, and
        under FSDP every rank's (its shards), else ``None``."""
        if self.fsdp:
            return self._save_sharded(counters)
        rng = rng_state.gather(self.device, rank=self.rank, world_size=self.world_size)
        if self.rank != 0:
            return None
        tmp, final = self._new_directory(int(counters["step"]))
        self.model.save_pretrained(tmp / HF_DIR)
        torch.save(self.optimizer.state_dict(), tmp / OPTIM)
        self._write_rank0_files(tmp, counters, rng)
        write_manifest(tmp)
        return self._publish(tmp, final)

    def _save_sharded(self, counters: dict[str, Any]) -> Path:
        import torch.distributed as dist

        from stagetune.trainables.sharded import save_sharded

        rng = rng_state.gather(self.device, rank=self.rank, world_size=self.world_size)
        step = int(counters["step"])
        # The users' model, once: a full gather at the end only (a collective).
        final_model = self._hf_model_state() if step >= self._total_steps else None
        tmp, final = self._new_directory(step)
        save_sharded(tmp, self.model, self.optimizer)
        if self.rank == 0:
            if final_model is not None:
                self.model.save_pretrained(tmp / HF_DIR, state_dict=final_model)
            self._write_rank0_files(tmp, counters, rng)
        digests: list[dict[str, str] | None] = [None] * self.world_size
        dist.all_gather_object(digests, file_digests(tmp) if self.rank else {})
        if self.rank == 0:
            write_manifest(tmp, {k: v for d in digests if d for k, v in d.items()})
        return self._publish(tmp, final)

    def _new_directory(self, step: int) -> tuple[Path, Path]:
        root = self.session.checkpoint_root()
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp_step_{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp, root / f"step_{step:08d}"

    @staticmethod
    def _write_rank0_files(tmp: Path, counters: dict[str, Any], rng: rng_state.RngStates) -> None:
        rng_state.save(tmp, rng)
        (tmp / STATE).write_text(json.dumps(counters, indent=1))

    @staticmethod
    def _publish(tmp: Path, final: Path) -> Path:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(final.parent, keep=CHECKPOINTS_KEPT)
        return final

    def _hf_model_state(self) -> _Weights:
        return {
            k[len(_HF_PREFIX) :]: v
            for k, v in self._full_model_state().items()
            if k.startswith(_HF_PREFIX)
        }

    def _full_model_state(self) -> _Weights:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(  # type: ignore[return-value]
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

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
        if weights is None:  # sharded: the model loads in place, resharded (collective)
            from stagetune.trainables.sharded import load_sharded

            optimizer = {_BY_NAME: load_sharded(source, self.model, self.optimizer)}
        else:
            self._load_model_weights(weights)
        rng_state.restore(rng, source, self.device, rank=self.rank)  # after grow(): it reseeds
        return {"trainer": counters, "optimizer": optimizer}

    def load_optimizer_state(self, saved: dict[str, Any]) -> None:
        """Load an optimizer state :meth:`restore` returned (sharded ones already resharded
        like their parameters)."""
        by_name = saved.get(_BY_NAME)
        if by_name is None:
            self.optimizer.load_state_dict(saved)
            return
        params = dict(self.model.named_parameters())
        for name, st in by_name.items():
            self.optimizer.state[params[name]] = st

    def _read_valid(
        self, candidates: list[Path]
    ) -> tuple[Path, dict[str, Any], dict[str, Any], _Weights | None, rng_state.RngStates | None]:
        """The newest checkpoint that verifies and loads safely, and all of it; the model is
        not touched until one does, so a bad candidate leaves nothing half-applied."""
        skipped: list[str] = []
        for cand in newest_first(candidates):
            try:
                weights: _Weights | None = None
                optimizer: dict[str, Any] = {}
                if is_sharded(cand):
                    counters = read_state(cand)
                    from stagetune.trainables.sharded import saved_keys

                    saved_keys(cand)  # its metadata unpickles under the allowlist
                else:
                    counters, optimizer, hf_dir = read_checkpoint(cand)
                    weights = self._read_weights(cand, hf_dir)
                if counters.get("schedule") != self._schedule:
                    raise CorruptCheckpointError(
                        f"checkpoint {cand}: it belongs to a different schedule"
                    )
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

    @staticmethod
    def _read_weights(cand: Path, hf_dir: Path) -> _Weights:
        try:
            return load_file(str(hf_dir / "model.safetensors"), device="cpu")
        except Exception as exc:  # safetensors' own error type for a bad header
            raise CorruptCheckpointError(
                f"checkpoint {cand}: unreadable model weights ({exc})"
            ) from None

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
