"""Deterministic, stateless batches over memmapped tokens: :class:`TokenStream`.

The token stream is split once: the last ``eval_fraction`` of the tokens is the eval split
and never appears in training (for data split by document, from the document start nearest
to that point: :meth:`PreparedData.eval_start`). The train split is cut into non-overlapping windows of
``seq_len + 1`` tokens (the input and its one-token-shifted target). Every epoch ``e`` uses a
random shift of the window grid and a random permutation of the windows, both drawn from
``np.random.default_rng([seed, e])``; concatenating the epochs' permutations gives one
infinite *window stream*.

Global batch ``step`` is the windows at positions ``step·B … step·B + B − 1`` of that stream.
Rank ``r`` of ``W`` workers takes the contiguous slice ``[r·B/W, (r+1)·B/W)`` of the global
batch, and micro-step ``m`` of ``A`` accumulation steps the slice ``[m·b, (m+1)·b)`` of the
rank's part (``b = B/(W·A)``). A batch is therefore a pure function of
(seed, step, micro, rank, world_size): no iterator state, resume is "call with the step", every
trial with the same seed sees the same tokens in the same order whatever its schedule, and the
union over ranks and micro-steps of one step is exactly the one-worker global batch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stagetune.data.prepare import PreparedData, require_tokens
from stagetune.data.split import tail_split
from stagetune.data.tokens import TokenArray, read_token_file
from stagetune.errors import ConfigError

__all__ = ["TokenStream"]

Batch = tuple[torch.Tensor, torch.Tensor]
# Epoch permutations kept in memory: a batch spans at most two consecutive epochs.
_EPOCH_CACHE = 2


class TokenStream:
    """Train and eval batches over a prepared token stream.

    Args:
        prepared_or_path: a :class:`PreparedData`, or the path of a token file (raw uint16
            ``.bin``, llm.c ``.bin`` or ``.npy``).
        seq_len: tokens per sequence (``x`` and ``y`` are both ``[*, seq_len]``).
        batch_size: global sequences per optimizer step (over all ranks and micro-steps).
        seed: seed of the window order (a non-negative integer).
        eval_fraction: share of the tokens, from the end, held out for evaluation (rounded to
            a document boundary for data prepared from a source that splits by document).
        eval_batches: global eval batches of ``batch_size`` sequences each.
        rank: this worker's rank; world_size: number of data-parallel workers.
        grad_accum: micro-steps per optimizer step on each worker.

    Raises:
        ConfigError: invalid sizes, or too few tokens for one train batch plus the eval split.
    """

    def __init__(
        self,
        prepared_or_path: PreparedData | str | os.PathLike[str],
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        eval_fraction: float = 0.05,
        eval_batches: int = 4,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        if isinstance(prepared_or_path, PreparedData):
            self.prepared: PreparedData | None = prepared_or_path
            self.tokens = prepared_or_path.open()
            self.source = prepared_or_path.source
        else:
            self.prepared = None
            path = Path(prepared_or_path)
            self.tokens = TokenArray([read_token_file(path)])
            self.source = str(path)
        _check(seq_len >= 1, "data.seq_len", seq_len, "use >= 1")
        _check(batch_size >= 1, "train.batch_size", batch_size, "use >= 1")
        _check(
            isinstance(seed, (int, np.integer)) and seed >= 0,
            "train.seed",
            seed,
            "use a non-negative integer",
        )
        _check(0.0 < eval_fraction < 1.0, "data.eval_fraction", eval_fraction, "use (0, 1)")
        _check(eval_batches >= 1, "data.eval_batches", eval_batches, "use >= 1")
        _check(world_size >= 1, "resources.workers_per_trial", world_size, "use >= 1")
        _check(0 <= rank < world_size, "rank", rank, f"use 0..{world_size - 1}")
        _check(grad_accum >= 1, "train.grad_accum", grad_accum, "use >= 1")
        _check(
            batch_size % (world_size * grad_accum) == 0,
            "train.batch_size",
            batch_size,
            f"must be divisible by workers × grad_accum = {world_size * grad_accum}",
        )
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.eval_fraction = eval_fraction
        self.num_eval_batches = eval_batches
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        # Sequences in one train_batch / eval_batches item.
        self.micro_batch_size = batch_size // (world_size * grad_accum)

        total = len(self.tokens)
        by_document = self.prepared is not None and self.prepared.document_starts is not None
        if self.prepared is not None:
            self.num_train_tokens = self.prepared.eval_start(eval_fraction)
        else:
            self.num_train_tokens = tail_split(total, eval_fraction)
        self.num_eval_tokens = total - self.num_train_tokens
        # One window slot is reserved for the per-epoch shift of the grid (up to seq_len - 1).
        self.windows_per_epoch = (self.num_train_tokens - seq_len) // seq_len
        eval_windows = eval_batches * batch_size
        available_eval = (self.num_eval_tokens - 1) // seq_len
        require_tokens(
            total,
            self.source,
            seq_len=seq_len,
            batch_size=batch_size,
            eval_fraction=eval_fraction,
            eval_batches=eval_batches,
            eval_start=self.num_train_tokens if by_document else None,
        )
        # Eval windows: evenly spread, non-overlapping, fixed (independent of the seed, so every
        # seed and trial is evaluated on the same tokens).
        picks = (np.arange(eval_windows, dtype=np.int64) * available_eval) // eval_windows
        self._eval_starts = self.num_train_tokens + picks * seq_len
        self._epochs: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        self._eval_cache: list[Batch] | None = None

    # ---------------------------------------------------------------------------------------
    # sizes

    @property
    def num_tokens(self) -> int:
        """All tokens (train + eval)."""
        return len(self.tokens)

    @property
    def tokens_per_step(self) -> int:
        """Training tokens per optimizer step over all workers: ``batch_size × seq_len``."""
        return self.batch_size * self.seq_len

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the train windows."""
        return self.windows_per_epoch / self.batch_size

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size when built from :class:`PreparedData`, else ``None``."""
        return self.prepared.vocab_size if self.prepared is not None else None

    def epoch_of(self, step: int) -> float:
        """How many epochs of training data have been consumed before ``step``."""
        return step * self.batch_size / self.windows_per_epoch

    # ---------------------------------------------------------------------------------------
    # batches

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """(grid shift, window permutation) of an epoch, memoised for the last two epochs."""
        hit = self._epochs.get(epoch)
        if hit is not None:
            self._epochs.move_to_end(epoch)
            return hit
        rng = np.random.default_rng([self.seed, epoch])
        shift = int(rng.integers(self.seq_len))
        perm = rng.permutation(self.windows_per_epoch)
        if self.windows_per_epoch < 2**31:
            perm = perm.astype(np.int32)  # half the memory for large corpora
        self._epochs[epoch] = (shift, perm)
        while len(self._epochs) > _EPOCH_CACHE:
            self._epochs.popitem(last=False)
        return shift, perm

    def window_starts(self, positions: np.ndarray) -> np.ndarray:
        """Token offsets of the windows at ``positions`` of the window stream."""
        positions = np.asarray(positions, dtype=np.int64)
        starts = np.empty_like(positions)
        epochs = positions // self.windows_per_epoch
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            shift, perm = self._epoch(int(epoch))
            index = perm[positions[mask] % self.windows_per_epoch].astype(np.int64)
            starts[mask] = shift + index * self.seq_len
        return starts

    def _batch(self, starts: np.ndarray) -> Batch:
        rows = self.tokens.gather(starts, self.seq_len + 1)
        data = torch.from_numpy(rows)
        # y[i] = x[i + 1]: targets are already aligned; the model must not shift again.
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def train_batch(self, step: int, micro: int = 0) -> Batch:
        """(x, y) of this rank's micro-step ``micro`` of optimizer step ``step``.

        Both are int64 ``[micro_batch_size, seq_len]``; ``y`` is ``x`` shifted by one token.
        """
        _check(step >= 0, "step", step, "use a non-negative step")
        _check(0 <= micro < self.grad_accum, "micro", micro, f"use 0..{self.grad_accum - 1}")
        first = (
            step * self.batch_size
            + self.rank * (self.batch_size // self.world_size)
            + micro * self.micro_batch_size
        )
        positions = np.arange(first, first + self.micro_batch_size, dtype=np.int64)
        return self._batch(self.window_starts(positions))

    def global_batch(self, step: int) -> Batch:
        """The whole ``[batch_size, seq_len]`` batch of ``step`` (what one worker would see)."""
        _check(step >= 0, "step", step, "use a non-negative step")
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return self._batch(self.window_starts(positions))

    def eval_batches(self, *, sharded: bool = False) -> list[Batch]:
        """The fixed eval set as micro-batches of ``[micro_batch_size, seq_len]``.

        The eval set is ``eval_batches × batch_size`` fixed windows from the eval split (the
        same for every seed and trial), cut into ``eval_batches × world_size × grad_accum``
        equally sized items, in order. By default every rank gets the **same full list**; a
        data-parallel loop evaluates items ``i`` with ``i % world_size == rank`` and sums
        (loss, count) over ranks, which is exactly the one-worker eval loss.
        ``sharded=True`` returns just that share (``items[rank::world_size]``).
        """
        if self._eval_cache is None:
            size = self.micro_batch_size
            count = len(self._eval_starts) // size
            self._eval_cache = [
                self._batch(self._eval_starts[i * size : (i + 1) * size]) for i in range(count)
            ]
        items = list(self._eval_cache)
        return items[self.rank :: self.world_size] if sharded else items

    def global_eval_batches(self) -> list[Batch]:
        """The whole eval set as ``eval_batches`` batches of ``[batch_size, seq_len]``."""
        return [
            self._batch(self._eval_starts[b * self.batch_size : (b + 1) * self.batch_size])
            for b in range(self.num_eval_batches)
        ]

    # ---------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the CLI."""
        return (
            f"{self.num_train_tokens:,} train / {self.num_eval_tokens:,} eval tokens; "
            f"{self.windows_per_epoch:,} windows of {self.seq_len} per epoch "
            f"({self.steps_per_epoch:.1f} steps of {self.tokens_per_step:,} tokens); "
            f"rank {self.rank}/{self.world_size}, micro-batch {self.micro_batch_size}"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Permutations are cheap to recompute; keep pickles (e.g. to Ray workers) small.
        state = self.__dict__.copy()
        state["_epochs"] = OrderedDict()
        state["_eval_cache"] = None
        return state


def _check(ok: bool, field: str, value: object, fix: str) -> None:
    if not ok:
        raise ConfigError(field, value, fix)
