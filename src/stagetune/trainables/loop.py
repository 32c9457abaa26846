"""The staged training loop: one schedule, on one process or one rank of several.

Reads like nanoGPT's loop (lr → eval/checkpoint → forward/backward → clip → step → log), but
the loop knows about phases: at each phase boundary it grows the model, reconfigures which
blocks train, optionally resets the optimizer, and accounts compute for exactly the work a
step of that phase does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from stagetune.compute import forward_flops, step_flops, step_work
from stagetune.data import TokenStream, prepare_data
from stagetune.errors import StagetuneError
from stagetune.metrics import PHASE_IDS, STATUS_DIVERGED, STATUS_FINISHED
from stagetune.models import StagedModel, build_model
from stagetune.schedule import Phase
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
from stagetune.trainables.lr import lr_at
from stagetune.trainables.session import Session
from stagetune.trainables.spec import TrialSpec

__all__ = ["StagedTrainer", "TrainResult"]
_Weights = dict[str, torch.Tensor]

# Checkpoints call save_pretrained often; its progress bars would flood trial logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover - transformers without the helper
    pass


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """How a run ended."""

    status: str
    final_eval_loss: float
    flops: float
    flops_paper: float
    tokens: int
    seconds: float
    steps: int
    resumed_from_step: int | None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagetuneError("train.device='cuda': no CUDA device is visible; use 'cpu' or 'auto'")
    return torch.device(name)


class StagedTrainer:
    """Trains ``spec.schedule`` and reports through ``session``.

    Public surface: :meth:`train_step`, :meth:`evaluate`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`run`.
    """

    def __init__(self, spec: TrialSpec, session: Session, *, device: torch.device | None = None):
        self.spec = spec
        self.session = session
        cfg = spec.config
        self.cfg = cfg
        self.rank, self.world_size = session.rank, session.world_size
        self.device = device or _resolve_device(cfg.train.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        use_bf16 = cfg.train.dtype == "bfloat16" or (
            cfg.train.dtype == "auto" and self.device.type == "cuda"
        )
        self._autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if use_bf16
            else contextlib.nullcontext()
        )
        torch.manual_seed(spec.seed)

        self.data = prepare_data(cfg.data)
        self.grad_accum = cfg.train.grad_accum
        self.stream = TokenStream(
            self.data,
            seq_len=cfg.data.seq_len,
            batch_size=cfg.train.batch_size,
            seed=spec.seed,
            eval_fraction=cfg.data.eval_fraction,
            eval_batches=cfg.data.eval_batches,
            rank=self.rank,
            world_size=self.world_size,
            grad_accum=self.grad_accum,
        )
        self.schedule = spec.schedule
        self.phases = self.schedule.phases()
        self.total_steps = self.schedule.total_steps
        self.dims = spec.dims
        self.tokens_per_step = spec.tokens_per_step

        self.model: StagedModel = build_model(cfg.model, vocab_size=spec.vocab_size, seed=spec.seed)
        self.model.set_active_depth(self.schedule.stages[0].depth)
        self.model.to(self.device)
        self._fsdp = cfg.resources.strategy == "fsdp" and self.world_size > 1
        if self._fsdp:
            self._shard_fsdp()
        self.optimizer = self._make_optimizer()
        self._ddp: nn.Module | None = None

        # Counters (all part of state_dict).
        self.step = 0
        self.flops = 0.0
        self.flops_paper = 0.0
        self.tokens = 0
        self.seconds = 0.0
        self.evals_done = 0
        self.last_eval_loss = float("nan")
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._phase_index = -1
        self._step_flops = (0.0, 0.0)
        self.resumed_from_step: int | None = None

    # ------------------------------------------------------------------ setup helpers
    def _shard_fsdp(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in self.model.blocks:
            fully_shard(block)
        fully_shard(self.model)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        # One AdamW over every parameter for the whole run: parameters that get no gradient
        # in a phase (frozen, inactive) are skipped by AdamW, including weight decay.
        groups = self.model.parameter_groups(t.weight_decay, trainable_only=False)
        return torch.optim.AdamW(
            groups,
            lr=self.spec.lr,
            betas=(t.beta1, t.beta2),
            weight_decay=t.weight_decay,
            foreach=True,
        )

    def _phase_at(self, step: int) -> int:
        for i, ph in enumerate(self.phases):
            if ph.start_step <= step < ph.end_step:
                return i
        return len(self.phases) - 1

    def _check_ranks_agree(self) -> None:
        """Every rank must resume from the same step: DDP would otherwise pair different
        steps' gradients, and the ranks hang once one of them finishes."""
        if self.world_size == 1:
            return
        steps = torch.tensor([self.step, -self.step], dtype=torch.float64, device=self.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        hi, lo = int(steps[0]), -int(steps[1])
        if hi != lo:
            raise CorruptCheckpointError(
                f"ranks resumed from different steps ({lo}..{hi}); their checkpoints disagree"
            )

    def _enter_phase(self, index: int, *, fresh: bool) -> None:
        """Grow, reconfigure and (by policy) reset the optimizer for phase ``index``.

        ``fresh`` is False when the model and optimizer come from a checkpoint taken inside
        this phase: then only the trainable set is restored.
        """
        ph: Phase = self.phases[index]
        grew = False
        if ph.depth > self.model.active_depth:
            if not fresh:
                raise CorruptCheckpointError(
                    f"checkpoint depth {self.model.active_depth} is below phase depth {ph.depth}"
                )
            self.model.grow(ph.depth, self.schedule.growth, seed=self.spec.seed * 1009 + ph.stage)
            grew = True
        self.model.configure_phase(
            trainable_from=ph.trainable_from, freeze_policy=self.schedule.freeze_policy
        )
        if fresh and self.schedule.optimizer_policy == "reset" and index > 0:
            prev = self.phases[index - 1]
            if grew or (ph.kind == "continual" and prev.kind != "continual"):
                self.optimizer.state.clear()
        work = step_work(
            phase=ph.kind,
            depth=ph.depth,
            prev_depth=ph.prev_depth,
            freeze_policy=self.schedule.freeze_policy,
        )
        self._step_flops = (
            step_flops(self.dims, work, tokens=self.tokens_per_step, convention="standard"),
            step_flops(self.dims, work, tokens=self.tokens_per_step, convention="paper"),
        )
        self._phase_index = index
        self._wrap_ddp()

    def _wrap_ddp(self) -> None:
        if self.world_size == 1 or self._fsdp:
            self._ddp = None
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The trainable set changes per phase; DDP's reducer is built for a fixed set, so the
        # module is re-wrapped at each phase boundary (cheap: a parameter broadcast).
        self._ddp = DDP(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    @property
    def _forward_module(self) -> nn.Module:
        return self._ddp if self._ddp is not None else self.model

    # ------------------------------------------------------------------ the step
    def _lr(self, step: int) -> float:
        t = self.cfg.train
        return lr_at(
            step,
            peak=self.spec.lr,
            total_steps=self.total_steps,
            schedule=t.lr_schedule,
            warmup_steps=self.spec.warmup_steps,
            min_lr_ratio=t.min_lr_ratio,
            decay_fraction=t.decay_fraction,
        )

    def train_step(self) -> float:
        """One optimizer step; returns the (rank-averaged) training loss."""
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        module = self._forward_module
        loss_acc = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.stream.train_batch(self.step, micro)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            sync = micro == self.grad_accum - 1 or self._ddp is None
            ctx = contextlib.nullcontext() if sync else self._ddp.no_sync()  # type: ignore[union-attr,operator]
            with ctx, self._autocast:
                loss = module(x, y).loss / self.grad_accum
            with ctx:
                loss.backward()
            loss_acc += loss.detach()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                self.model.trainable_parameters(), self.cfg.train.grad_clip, foreach=True
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world_size > 1:
            dist.all_reduce(loss_acc, op=dist.ReduceOp.SUM)
            loss_acc /= self.world_size
        loss_val = float(loss_acc)  # syncs; also what divergence detection needs every step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.step += 1
        self.tokens += self.tokens_per_step
        self.flops += self._step_flops[0]
        self.flops_paper += self._step_flops[1]
        self._loss_sum += loss_acc
        self._loss_count += 1
        return loss_val

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed eval batches (sharded over ranks, then averaged)."""
        self.model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for i, (x, y) in enumerate(self.stream.eval_batches()):
            if i % self.world_size != self.rank:
                continue
            with self._autocast:
                loss = self.model(x.to(self.device), y.to(self.device)).loss
            total[0] += loss.double()
            total[1] += 1
        if self.world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.model.train()
        return float(total[0] / total[1].clamp(min=1))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counters and optimizer state; the model is saved separately as safetensors."""
        return {
            "trainer": {
                "step": self.step,
                "flops": self.flops,
                "flops_paper": self.flops_paper,
                "tokens": self.tokens,
                "seconds": self.seconds,
                "evals_done": self.evals_done,
                "last_eval_loss": self.last_eval_loss,
                "active_depth": self.model.active_depth,
                "schedule": self.schedule.to_dict(),
            },
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tr = state["trainer"]
        if tr["schedule"] != self.schedule.to_dict():
            raise CorruptCheckpointError("checkpoint belongs to a different schedule")
        self.step = int(tr["step"])
        self.flops = float(tr["flops"])
        self.flops_paper = float(tr["flops_paper"])
        self.tokens = int(tr["tokens"])
        self.seconds = float(tr["seconds"])
        self.evals_done = int(tr["evals_done"])
        self.last_eval_loss = float(tr["last_eval_loss"])
        if state["optimizer"].get("fsdp_full"):
            self._load_fsdp_optimizer_state(state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])

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

    def _load_fsdp_optimizer_state(self, saved: dict[str, Any]) -> None:
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

    def _model_state_for_save(self) -> dict[str, torch.Tensor]:
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            return get_model_state_dict(  # type: ignore[return-value]
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.model.state_dict()

    def save_checkpoint(self) -> Path | None:
        """Write a verified checkpoint of the current step; rank 0 writes, returns its path."""
        full_model: dict[str, torch.Tensor] | None = None
        if self._fsdp:
            # Collectives: every rank gathers, rank 0 writes full (unsharded) tensors.
            state = {
                "trainer": self.state_dict()["trainer"],
                "optimizer": self._fsdp_full_optimizer_state(),
            }
            full_model = {
                k[len("hf_model.") :]: v
                for k, v in self._model_state_for_save().items()
                if k.startswith("hf_model.")
            }
        else:
            state = self.state_dict()
        rng = rng_state.gather(self.device, rank=self.rank, world_size=self.world_size)
        if self.rank != 0:
            return None
        root = self.session.checkpoint_root()
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{self.step:08d}"
        tmp = root / f".tmp_step_{self.step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / HF_DIR, state_dict=full_model)
        torch.save(state["optimizer"], tmp / OPTIM)
        rng_state.save(tmp, rng)
        (tmp / STATE).write_text(json.dumps(state["trainer"], indent=1))
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(root, keep=3)
        return final

    def _read_valid(
        self, candidates: list[Path]
    ) -> tuple[Path, dict[str, Any], dict[str, Any], _Weights, rng_state.RngStates | None]:
        """The newest checkpoint that verifies and loads safely, and all of it; the model is
        not touched until one does, so a bad candidate leaves nothing half-applied."""
        skipped: list[str] = []
        for cand in newest_first(candidates):
            try:
                trainer_state, optim_state, hf_dir = read_checkpoint(cand)
                if trainer_state.get("schedule") != self.schedule.to_dict():
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
                print(f"[stagetune] skipping corrupt checkpoint: {exc}", flush=True)
                continue
            if skipped:
                print(
                    f"[stagetune] resuming from the previous good checkpoint {cand} "
                    f"(step {trainer_state['step']})",
                    flush=True,
                )
            return cand, trainer_state, optim_state, weights, rng
        raise CorruptCheckpointError(
            f"no valid checkpoint left to resume from ({len(skipped)} found, all corrupt): "
            + "; ".join(skipped)
            + "; delete them to start the run over"
        )

    def _restore(self) -> None:
        candidates = self.session.restore_candidates()
        if not candidates:
            return
        source, trainer_state, optim_state, weights, rng = self._read_valid(candidates)
        depth = int(trainer_state["active_depth"])
        if depth > self.model.active_depth:
            self.model.grow(depth, "random", seed=0)  # weights are overwritten just below
        self._load_model_weights(weights)
        self.load_state_dict({"trainer": trainer_state, "optimizer": optim_state})
        rng_state.restore(rng, source, self.device, rank=self.rank)  # last: grow() reseeds CUDA
        self.resumed_from_step = self.step

    def _load_model_weights(self, weights: _Weights) -> None:
        target = self.model.hf_model
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(
                self.model,
                {"hf_model." + k: v for k, v in weights.items()},
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
            return
        missing, unexpected = target.load_state_dict(weights, strict=False)
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

    # ------------------------------------------------------------------ the run
    def _record(self, *, eval_loss: float, status: str | None = None) -> dict[str, Any]:
        ph = self.phases[self._phase_index]
        train_loss = float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")
        self._loss_sum.zero_()
        self._loss_count = 0
        rec: dict[str, Any] = {
            "step": self.step,
            "tokens": self.tokens,
            "flops": self.flops,
            "flops_paper": self.flops_paper,
            "seconds": round(self.seconds, 4),
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "lr": self._lr(self.step - 1),  # the rate of the step that led here
            "stage": ph.stage,
            "phase_id": PHASE_IDS[ph.kind],
            "phase": ph.kind,
            "active_depth": self.model.active_depth,
            "total_steps": self.total_steps,
            "is_baseline": self.spec.is_baseline,
        }
        if status:
            rec["status"] = status
        return rec

    def _eval_and_report(self, *, checkpoint: bool, status: str | None = None) -> None:
        eval_loss = self.evaluate()
        self.last_eval_loss = eval_loss
        self.evals_done += 1
        rec = self._record(eval_loss=eval_loss, status=status)
        ckpt = self.save_checkpoint() if checkpoint else None
        self.session.report(rec, ckpt)

    def eval_flops(self) -> float:
        """Forward FLOPs of one evaluation (not counted as training compute)."""
        n = self.cfg.data.eval_batches * self.cfg.train.batch_size * self.cfg.data.seq_len
        return forward_flops(self.dims, depth=self.model.active_depth, tokens=n)

    def run(self) -> TrainResult:
        """Train the whole schedule (resuming from the session's latest valid checkpoint)."""
        self._restore()
        self._check_ranks_agree()
        interval = self.spec.eval_interval_flops
        index = self._phase_at(self.step)
        # A checkpoint taken at a phase boundary resumes by entering the next phase afresh
        # (grow, reset), exactly as the uninterrupted run did right after writing it.
        self._enter_phase(index, fresh=self.step == self.phases[index].start_step)
        next_eval = (math.floor(self.flops / interval + 1e-9) + 1) * interval
        every = self.cfg.train.checkpoint_every
        status = STATUS_FINISHED
        self.model.train()
        if self.step >= self.total_steps:
            # Restored from the final checkpoint (e.g. the driver died before the trial's end
            # was recorded): train nothing, report the final record again (same step, so the
            # trackers de-duplicate it).
            self._eval_and_report(checkpoint=False, status=STATUS_FINISHED)
        while self.step < self.total_steps:
            ph_index = self._phase_at(self.step)
            if ph_index != self._phase_index:
                self._enter_phase(ph_index, fresh=True)
            loss = self.train_step()
            if not math.isfinite(loss):
                status = STATUS_DIVERGED
                rec = self._record(eval_loss=float("nan"), status=status)
                rec["train_loss"] = loss
                self.session.report(rec, None)
                break
            at_boundary = self.step == self.phases[self._phase_index].end_step
            at_eval = self.flops >= next_eval * (1 - 1e-9)
            periodic = bool(every) and self.step % every == 0
            if at_eval or at_boundary or periodic:
                done = self.step >= self.total_steps
                self._eval_and_report(
                    checkpoint=at_boundary or periodic, status=STATUS_FINISHED if done else None
                )
                while next_eval <= self.flops * (1 + 1e-9):
                    next_eval += interval
        return TrainResult(
            status=status,
            final_eval_loss=self.last_eval_loss,
            flops=self.flops,
            flops_paper=self.flops_paper,
            tokens=self.tokens,
            seconds=self.seconds,
            steps=self.step,
            resumed_from_step=self.resumed_from_step,
        )
