"""Rank 0's peak memory while saving an FSDP2 checkpoint: a full gather on rank 0 (what
stagetune did before issue 16) against each rank writing its own shards
(``torch.distributed.checkpoint``, :func:`stagetune.trainables.sharded.save_sharded`).

Run from the repository root (with stagetune installed)::

    python benchmarks/checkpoint_memory.py             # ~1 min on a 2-core CPU box
    python benchmarks/checkpoint_memory.py --json

What is measured. Two processes (``torch.multiprocessing``, gloo) shard a stack of
``--width``-wide linear layers with ``fully_shard`` (one unit per layer, as stagetune shards
its blocks), take one AdamW step (so the optimizer holds two tensors per parameter), then
save. A thread samples rank 0's resident set size (``/proc/self/statm``) every millisecond
while the save runs; the figure is the peak minus the RSS just before the save: what saving
adds on top of training. Each variant and size runs in a fresh pair of processes.

* ``gather``: ``get_model_state_dict`` and ``get_optimizer_state_dict`` with
  ``full_state_dict=True, cpu_offload=True`` (every tensor gathered, rank 0 keeps the full
  state), then ``torch.save`` on rank 0.
* ``sharded``: ``save_sharded``: each rank writes its shards and nothing is gathered.

Two model sizes (``--layers``): the gather's peak grows with the full state (parameters plus
AdamW's two moments: 3 × 4 bytes per parameter), the sharded save's does not.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _common import machine

WORLD = 2
MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRss:
    """Samples this process's RSS every millisecond until stopped; keeps the peak."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _save(variant: str, model: nn.Module, opt: torch.optim.Optimizer, out: Path) -> None:
    if variant == "sharded":
        from stagetune.trainables.sharded import save_sharded

        save_sharded(out, model, opt)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "model": get_model_state_dict(model, options=full),
        "optim": get_optimizer_state_dict(model, opt, options=full),
    }
    if dist.get_rank() == 0:
        torch.save(state, out / "full.pt")


def _worker(rank: int, port: int, variant: str, layers: int, width: int, result: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model(torch.randn(4, width)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"rank{rank}"
        out.mkdir()
        dist.barrier()
        before = _rss()
        t0 = time.perf_counter()
        with _PeakRss() as peak:
            _save(variant, model, opt, out)
            dist.barrier()
        seconds = time.perf_counter() - t0
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())  # global (DTensor) sizes
        result.update(
            variant=variant,
            layers=layers,
            params_m=round(params / 1e6, 2),
            full_state_mib=round(3 * 4 * params / MIB, 1),
            save_peak_over_rss_mib=round((peak.peak - before) / MIB, 1),
            seconds=round(seconds, 2),
        )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(variant: str, layers: int, width: int) -> dict[str, Any]:
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_worker, args=(_free_port(), variant, layers, width, result), nprocs=WORLD)
        return dict(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = [measure(v, n, args.width) for n in args.layers for v in ("gather", "sharded")]
    if args.json:
        print(json.dumps({"rows": rows, "machine": machine(load)}, indent=1))
        return
    print(f"{'variant':8} {'layers':>6} {'params M':>9} {'full state MiB':>15} "
          f"{'rank-0 save peak MiB':>21} {'seconds':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['variant']:8} {r['layers']:>6} {r['params_m']:>9} {r['full_state_mib']:>15} "
              f"{r['save_peak_over_rss_mib']:>21} {r['seconds']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
