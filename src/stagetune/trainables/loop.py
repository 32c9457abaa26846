"""The staged training loop: one schedule, on one process or one rank of several.

Reads like nanoGPT's loop (lr → forward/backward → clip → step → eval/checkpoint → log), but
the loop knows about phases: at each phase boundary it grows the model, reconfigures which
blocks train, optionally resets the optimizer, and accounts compute for exactly the work a
step of that phase does. Checkpoints are the :class:`CheckpointManager`'s. One cohesive thing:
:class:`StagedTrainer`, its run first, then its step, evaluation, phases, set-up and state.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, NamedTuple, cast

import torch
import torch.distributed as dist
from torch import nn

from stagetune.budget import FLOPS_REL_TOL
from stagetune.compute import step_flops, step_work
from stagetune.config import ExperimentConfig
from stagetune.data import PreparedData, TokenStream, prepare_data
from stagetune.errors import StagetuneError
from stagetune.metrics import (
    EVAL_LOSS,
    FLOPS,
    FLOPS_PAPER,
    PHASE_IDS,
    STATUS_DIVERGED,
    STATUS_FINISHED,
)
from stagetune.models import StagedModel, build_model
from stagetune.schedule import Phase, config_budget
from stagetune.trainables.checkpoint import CorruptCheckpointError
from stagetune.trainables.checkpointing import CheckpointManager
from stagetune.trainables.lr import lr_at
from stagetune.trainables.result import TrainResult
from stagetune.trainables.session import Session
from stagetune.trial import PHASE_CONFIRMATION, TrialDescription

__all__ = [
    "DIVERGENCE_CHECK_STEPS",
    "StagedTrainer",
    "StepFlops",
    "adamw_kernel",
    "growth_seed",
    "quiet_progress_bars",
]

DIVERGENCE_CHECK_STEPS = 8
"""On a GPU the loop reads the training loss on the host only every this many steps and at
every evaluation/checkpoint/log point, so the device queue never drains mid-run for a number
nobody looks at. Divergence is still caught: the losses since the last record are summed on
the device, and a sum is non-finite as soon as one of its terms is, so a non-finite step is
detected at the next check, at most this many steps late (on a CPU, where reading a loss costs
nothing, every step is a check)."""


class StepFlops(NamedTuple):
    """Training FLOPs of one step of the current phase, in both conventions."""

    standard: float
    paper: float


def growth_seed(seed: int, stage: int) -> int:
    """The seed of the growth operator that grows the model into ``stage``.

    Distinct for every (trial seed, stage) pair — 1009 is a prime above any stage count — and
    the same on every rank and on every resume, so a restarted run grows identically.
    """
    return seed * 1009 + stage


def quiet_progress_bars() -> None:
    """Checkpoints call ``save_pretrained`` often; transformers' progress bars would flood
    trial logs. The variable covers a transformers imported later (a Llama's model); one
    already imported is told directly. A GPT-2 run never imports it."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW's implementation on ``device``: the fused CUDA kernel on a GPU (one launch for
    every parameter), the multi-tensor ``foreach`` path elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagetuneError("train.device='cuda': no CUDA device is visible; use 'cpu' or 'auto'")
    return torch.device(name)


class StagedTrainer:
    """Trains ``trial.schedule`` and reports through ``session``.

    Args:
        trial: what to train (schedule, lr, warmup, seed).
        session: where records and checkpoints go (local, a Tune trial, a Train worker).
        config: the study's config (model, data, training settings, resources).
        vocab_size: the tokenizer's vocabulary size.
        device: default ``train.device`` (a Ray Train worker passes its own).

    Public surface: :meth:`run`, :meth:`train_step`, :meth:`evaluate`, :meth:`state_dict`,
    :meth:`load_state_dict`.
    """

    def __init__(
        self,
        trial: TrialDescription,
        session: Session,
        *,
        config: ExperimentConfig,
        vocab_size: int,
        device: torch.device | None = None,
        data: PreparedData | None = None,
    ) -> None:
        quiet_progress_bars()
        self.trial = trial
        self.session = session
        cfg = config
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
        torch.manual_seed(trial.seed)

        # The driver's prepared tokens where this machine has them (a study's trials, a Ray
        # Train worker): memory-mapped as they are, without fingerprinting the source again.
        self.data = data if data is not None and data.on_this_machine() else prepare_data(cfg.data)
        self.grad_accum = cfg.train.grad_accum
        self.stream = TokenStream(
            self.data,
            seq_len=cfg.data.seq_len,
            batch_size=cfg.train.batch_size,
            seed=trial.seed,
            eval_fraction=cfg.data.eval_fraction,
            eval_batches=cfg.data.eval_batches,
            rank=self.rank,
            world_size=self.world_size,
            grad_accum=self.grad_accum,
        )
        self.schedule = trial.schedule
        self.phases = self.schedule.phases()
        self.total_steps = self.schedule.total_steps
        # Evaluations sit at multiples of this, identical for every schedule of a study.
        budget = config_budget(cfg, vocab_size=vocab_size, convention="standard")
        self.eval_interval_flops = budget.budget_flops / cfg.train.eval_points
        self.dims = budget.dims
        self.tokens_per_step = budget.tokens_per_step

        self.model: StagedModel = build_model(cfg.model, vocab_size=vocab_size, seed=trial.seed)
        self.model.set_active_depth(self.schedule.stages[0].depth)
        self.model.to(self.device)
        # FSDP2 wherever a process group runs, a one-worker Ray Train run included (a world
        # of one: the same sharded code path, e.g. for a one-GPU check).
        self._fsdp = cfg.resources.strategy == "fsdp" and dist.is_initialized()
        if self._fsdp:
            self._shard_fsdp()
        self.optimizer = self._make_optimizer()
        self._ddp: nn.Module | None = None
        self.checkpoints = CheckpointManager(
            model=self.model,
            optimizer=self.optimizer,
            session=session,
            schedule=self.schedule,
            device=self.device,
            fsdp=self._fsdp,
        )

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
        self._clock: float | None = None  # start of the training time not yet in ``seconds``
        self._compiled: nn.Module | None = None
        self._phase_index = -1
        self._step_flops = StepFlops(0.0, 0.0)
        self.resumed_from_step: int | None = None

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        """Train the whole schedule (resuming from the session's latest valid checkpoint)."""
        self._restore()
        self._check_ranks_agree()
        interval = self.eval_interval_flops
        index = self._phase_at(self.step)
        # A checkpoint taken at a phase boundary resumes by entering the next phase afresh
        # (grow, reset), exactly as the uninterrupted run did right after writing it.
        self._enter_phase(index, fresh=self.step == self.phases[index].start_step)
        next_eval = (math.floor(self.flops / interval + FLOPS_REL_TOL) + 1) * interval
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
            self.train_step()
            at_boundary = self.step == self.phases[self._phase_index].end_step
            at_eval = self.flops >= next_eval * (1 - FLOPS_REL_TOL)
            periodic = bool(every) and self.step % every == 0
            log_point = at_eval or at_boundary or periodic
            if (log_point or self._check_due()) and self._diverged():
                status = STATUS_DIVERGED
                # train_loss: the (non-finite) mean of the losses since the last record.
                self.session.report(self._record(eval_loss=float("nan"), status=status), None)
                break
            if log_point:
                done = self.step >= self.total_steps
                self._eval_and_report(
                    checkpoint=at_boundary or periodic, status=STATUS_FINISHED if done else None
                )
                while next_eval <= self.flops * (1 + FLOPS_REL_TOL):
                    next_eval += interval
        self._settle()
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

    # ------------------------------------------------------------------ the step
    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the (rank-averaged) training loss as a 0-d tensor on
        the device, without waiting for it (reading it on the host is the caller's sync)."""
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._clock is None:
            self._clock = time.perf_counter()
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
        self.step += 1
        self.tokens += self.tokens_per_step
        self.flops += self._step_flops.standard
        self.flops_paper += self._step_flops.paper
        self._loss_sum += loss_acc
        self._loss_count += 1
        return loss_acc

    def _check_due(self) -> bool:
        return self.device.type != "cuda" or self.step % DIVERGENCE_CHECK_STEPS == 0

    def _diverged(self) -> bool:
        """Whether a loss since the last record was non-finite (a host sync)."""
        return not math.isfinite(float(self._loss_sum))

    def _settle(self) -> None:
        """Add the training time since the clock started to ``seconds``: on a GPU after the
        queued work has run, so ``seconds`` is the steps' real time, not their launch time."""
        if self._clock is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._clock
        self._clock = None

    def _lr(self, step: int) -> float:
        t = self.cfg.train
        return lr_at(
            step,
            peak=self.trial.lr,
            total_steps=self.total_steps,
            schedule=t.lr_schedule,
            warmup_steps=self.trial.warmup_steps,
            min_lr_ratio=t.min_lr_ratio,
            decay_fraction=t.decay_fraction,
        )

    @property
    def _forward_module(self) -> nn.Module:
        if self._compiled is not None:
            return self._compiled
        return self._ddp if self._ddp is not None else self.model

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

    # ------------------------------------------------------------------ eval, checkpoint, log
    def _eval_and_report(self, *, checkpoint: bool, status: str | None = None) -> None:
        self._settle()  # the evaluation's time is not training time
        eval_loss = self.evaluate()
        self.last_eval_loss = eval_loss
        self.evals_done += 1
        rec = self._record(eval_loss=eval_loss, status=status)
        ckpt = self.checkpoints.save(self._counters()) if checkpoint else None
        self.session.report(rec, ckpt)

    def _record(self, *, eval_loss: float, status: str | None = None) -> dict[str, Any]:
        self._settle()
        ph = self.phases[self._phase_index]
        train_loss = float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")
        self._loss_sum.zero_()
        self._loss_count = 0
        rec: dict[str, Any] = {
            "step": self.step,
            "tokens": self.tokens,
            FLOPS: self.flops,
            FLOPS_PAPER: self.flops_paper,
            "seconds": round(self.seconds, 4),
            "train_loss": train_loss,
            EVAL_LOSS: eval_loss,
            "lr": self._lr(self.step - 1),  # the rate of the step that led here
            "stage": ph.stage,
            "phase_id": PHASE_IDS[ph.kind],
            "phase": ph.kind,
            "active_depth": self.model.active_depth,
            "total_steps": self.total_steps,
            "is_baseline": self.trial.is_baseline,
            "full_depth": self.trial.is_full_depth,
            # The live reference is chosen on the study's seed: the round's seeds stay out.
            "confirmation": self.trial.phase == PHASE_CONFIRMATION,
        }
        if status:
            rec["status"] = status
        return rec

    # ------------------------------------------------------------------ phases
    def _phase_at(self, step: int) -> int:
        for i, ph in enumerate(self.phases):
            if ph.start_step <= step < ph.end_step:
                return i
        return len(self.phases) - 1

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
            seed = growth_seed(self.trial.seed, ph.stage)
            self.model.grow(ph.depth, self.schedule.growth, seed=seed)
            grew = True
        self.model.configure_phase(
            trainable_from=ph.trainable_from, freeze_policy=self.schedule.freeze_policy
        )
        policy = self.schedule.optimizer_policy
        if fresh and policy != "carry" and index > 0:
            prev = self.phases[index - 1]
            continual_start = ph.kind == "continual" and prev.kind != "continual"
            if continual_start or (grew and policy == "reset"):
                self.optimizer.state.clear()
        work = step_work(
            phase=ph.kind,
            depth=ph.depth,
            prev_depth=ph.prev_depth,
            freeze_policy=self.schedule.freeze_policy,
        )
        self._step_flops = StepFlops(
            standard=step_flops(
                self.dims, work, tokens=self.tokens_per_step, convention="standard"
            ),
            paper=step_flops(self.dims, work, tokens=self.tokens_per_step, convention="paper"),
        )
        self._phase_index = index
        self._wrap_ddp()
        self._compile()

    def _compile(self) -> None:
        """``train.compile``: compile this phase's training module afresh. Its depth, frozen
        prefix and ``no_grad`` split are fixed within a phase and change at the next, so the
        old phase's graphs are dropped first (they would only count against dynamo's
        recompile limit, which a many-stage schedule would otherwise reach)."""
        self._compiled = None
        if not self.cfg.train.compile:
            return
        torch.compiler.reset()
        # An nn.Module compiles to an nn.Module (OptimizedModule); the stub says Callable.
        self._compiled = cast(nn.Module, torch.compile(self._forward_module, dynamic=False))

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

    # ------------------------------------------------------------------ set-up
    def _shard_fsdp(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in self.model.blocks:
            fully_shard(block)
        fully_shard(self.model)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        # One AdamW over every parameter for the whole run: parameters that get no gradient
        # in a phase (frozen, inactive) are skipped by AdamW, including weight decay.
        groups = self.model.parameter_groups(
            t.weight_decay, trainable_only=False, decay_embeddings=t.decay_embeddings
        )
        return torch.optim.AdamW(
            groups,
            lr=self.trial.lr,
            betas=(t.beta1, t.beta2),
            weight_decay=t.weight_decay,
            **adamw_kernel(self.device),
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counters and optimizer state; the model is saved separately as safetensors."""
        return {"trainer": self._counters(), "optimizer": self.optimizer.state_dict()}

    def _counters(self) -> dict[str, Any]:
        self._settle()
        return {
            "step": self.step,
            "flops": self.flops,
            "flops_paper": self.flops_paper,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "evals_done": self.evals_done,
            "last_eval_loss": self.last_eval_loss,
            "active_depth": self.model.active_depth,
            "schedule": self.schedule.to_dict(),
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
        self.checkpoints.load_optimizer_state(state["optimizer"])

    def _restore(self) -> None:
        state = self.checkpoints.restore()
        if state is None:
            return
        self.load_state_dict(state)
        self.resumed_from_step = self.step

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
