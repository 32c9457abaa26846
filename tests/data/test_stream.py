"""TokenStream: deterministic, sharded batches over memory-mapped token files."""

from __future__ import annotations

import itertools
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from stagetune.data import (
    TokenArray,
    TokenSegment,
    TokenStream,
    prepare_data,
)
from stagetune.errors import ConfigError
from tests.data.helpers import cfg_for, write_raw_bin

# --------------------------------------------------------------------------------------------
# TokenStream


@pytest.fixture
def ramp(tmp_path: Path) -> Path:
    """Token i has id i: every token names its own position (40k < 65536)."""
    return write_raw_bin(tmp_path / "ramp.bin", np.arange(40_000))


def stream(path: Path, **kw: int | float) -> TokenStream:
    base: dict[str, int | float] = dict(
        seq_len=16, batch_size=8, seed=0, eval_fraction=0.1, eval_batches=3
    )
    base.update(kw)
    return TokenStream(path, **base)  # type: ignore[arg-type]


def test_stream_targets_aligned(ramp: Path) -> None:
    x, y = stream(ramp).train_batch(0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert torch.equal((x[:, 0] % 16), torch.full((8,), int(x[0, 0]) % 16))  # one grid per epoch


def test_stream_is_a_pure_function_of_seed_and_step(ramp: Path) -> None:
    a, b = stream(ramp), stream(ramp)
    forward = [a.train_batch(s)[0] for s in range(0, 700, 37)]  # spans several epochs
    backward = [b.train_batch(s)[0] for s in reversed(range(0, 700, 37))][::-1]
    assert all(torch.equal(p, q) for p, q in zip(forward, backward))
    # Resume = call with the step: a fresh stream (or a pickled one) gives the same batch.
    revived = pickle.loads(pickle.dumps(a))
    assert len(pickle.dumps(a)) < 50_000
    assert torch.equal(revived.train_batch(123)[0], stream(ramp).train_batch(123)[0])
    # Another seed, another order.
    assert not torch.equal(stream(ramp, seed=1).train_batch(0)[0], forward[0])


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (4, 1), (2, 2), (1, 4), (8, 1)])
def test_rank_and_micro_shards_union_is_the_global_batch(
    ramp: Path, world: int, accum: int
) -> None:
    single = stream(ramp)
    for step in (0, 5, 281):  # 281 crosses into a later epoch
        parts_x, parts_y = [], []
        for rank in range(world):
            shard = stream(ramp, rank=rank, world_size=world, grad_accum=accum)
            assert shard.micro_batch_size == 8 // (world * accum)
            for micro in range(accum):
                x, y = shard.train_batch(step, micro)
                parts_x.append(x)
                parts_y.append(y)
        assert torch.equal(torch.cat(parts_x), single.train_batch(step)[0])
        assert torch.equal(torch.cat(parts_y), single.global_batch(step)[1])
    # Eval: every rank gets the same full list of equal micro-batches; its round-robin shares
    # (sharded=True) partition it, and together they are the one-worker eval set.
    full_x = torch.cat([x for x, _ in single.eval_batches()])
    shards = [stream(ramp, rank=r, world_size=world, grad_accum=accum) for r in range(world)]
    items = shards[0].eval_batches()
    assert len(items) == 3 * world * accum
    assert all(x.shape == (8 // (world * accum), 16) for x, _ in items)
    assert torch.equal(torch.cat([x for x, _ in items]), full_x)
    assert all(torch.equal(a[0], b[0]) for s in shards[1:] for a, b in zip(s.eval_batches(), items))
    shares = [s.eval_batches(sharded=True) for s in shards]
    assert sum(len(share) for share in shares) == len(items)
    for r, share in enumerate(shares):
        assert all(torch.equal(x, items[r + world * i][0]) for i, (x, _) in enumerate(share))


def test_epoch_is_a_permutation_of_windows(ramp: Path) -> None:
    s = stream(ramp, batch_size=4)
    per_epoch = s.windows_per_epoch
    starts = s.window_starts(np.arange(per_epoch))
    assert len(set(starts.tolist())) == per_epoch
    shift = int(starts.min()) % 16
    assert sorted(starts.tolist()) == [shift + 16 * i for i in range(per_epoch)]
    assert s.epoch_of(per_epoch // 4) == pytest.approx(1.0, abs=0.01)


def test_eval_split_disjoint_from_train(ramp: Path) -> None:
    s = stream(ramp)
    train_ids: set[int] = set()
    for step in range(int(3 * s.steps_per_epoch)):
        x, y = s.train_batch(step)
        train_ids.update(x.flatten().tolist())
        train_ids.update(y.flatten().tolist())
    eval_ids: set[int] = set()
    for x, y in s.eval_batches():
        eval_ids.update(x.flatten().tolist())
        eval_ids.update(y.flatten().tolist())
    assert max(train_ids) < s.num_train_tokens <= min(eval_ids)
    assert train_ids.isdisjoint(eval_ids)
    assert s.num_train_tokens + s.num_eval_tokens == 40_000
    # Eval is fixed: the same for every seed, and non-overlapping windows.
    other = stream(ramp, seed=7).eval_batches()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(s.eval_batches(), other))
    starts = torch.cat([x[:, 0] for x, _ in s.eval_batches()]).tolist()
    assert len(starts) == 3 * 8 and all(b - a >= 16 for a, b in itertools.pairwise(starts))


def test_stream_sizes(ramp: Path) -> None:
    s = stream(ramp, world_size=2, rank=1, grad_accum=2)
    assert s.tokens_per_step == 8 * 16
    assert s.num_tokens == 40_000 and s.num_train_tokens == 36_000
    assert s.train_batch(0, 1)[0].shape == (2, 16)
    assert len(s.eval_batches()) == 3 * 2 * 2 and len(s.eval_batches(sharded=True)) == 6


def test_stream_argument_errors(ramp: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        stream(ramp, world_size=3)
    with pytest.raises(ConfigError, match="rank"):
        stream(ramp, world_size=2, rank=2)
    with pytest.raises(ConfigError, match="micro"):
        stream(ramp, grad_accum=2).train_batch(0, micro=2)
    with pytest.raises(ConfigError, match=r"train\.seed"):
        stream(ramp, seed=-1)
    with pytest.raises(ConfigError, match="step"):
        stream(ramp).train_batch(-1)


def test_stream_uses_memmap_not_ram(tmp_path: Path) -> None:
    n = 24 * 1024 * 1024  # 48 MiB of uint16 tokens
    path = tmp_path / "big.bin"
    np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,)).flush()  # sparse file, no RAM
    prepared = prepare_data(cfg_for(tmp_path, str(path), seq_len=512))
    tracemalloc.start()
    try:
        s = TokenStream(prepared, seq_len=512, batch_size=16, seed=0, eval_batches=2)
        for step in (0, 1, 10_000):
            s.train_batch(step)
        s.eval_batches()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(isinstance(m, np.memmap) for m in s.tokens.memmaps)
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: tokens were loaded into RAM"


def test_token_array_pickles_by_reference(tmp_path: Path) -> None:
    path = write_raw_bin(tmp_path / "x.bin", np.arange(50_000))
    arr = TokenArray([TokenSegment(path, 0, 50_000)])
    blob = pickle.dumps(arr)
    assert len(blob) < 2_000
    assert np.array_equal(pickle.loads(blob).read(100, 5), np.arange(100, 105))
