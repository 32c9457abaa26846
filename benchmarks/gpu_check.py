"""One-GPU check of stagetune: throughput, MFU, FLOPs accounting, Ray Train on NCCL, FSDP2.

Run from the repository root on a machine with one CUDA GPU (H100/H200 class)::

    python benchmarks/gpu_check.py                   # ~5-7 min; JSON to $OUT/gpu_check.json
    python benchmarks/gpu_check.py --out check.json  # or to a given path
    python benchmarks/gpu_check.py --dry-run         # the same code paths on CPU, toy size
    python benchmarks/gpu_check.py --sections flops,steps --budget 200   # a subset

(``--limit-factor F`` widens every section's time box, for a dry run on a slow CPU.)

It prints one JSON document on stdout and a short table on stderr. Sections, each in a child
process of its own with a time box (a crash, an out-of-memory or a hang in one still leaves the
others' numbers), in this order, within a total budget (``--budget``, default 450 s):

* ``flops``: one training step's FLOPs as ``torch.utils.flop_counter.FlopCounterMode`` counts
  them on the real model (sdpa on CUDA: the counter has formulas for the flash and
  memory-efficient kernels) ÷ the analytic ``compute.step_flops`` (standard convention), for
  full depth and phase 1 under ``new_only`` and ``paper``; target within 2 %. (The dry run uses
  eager attention: on CPU the counter has no formula for sdpa's kernel and counts 0.)
* ``steps``: GPT-2 124M (12 x 768, 1024 tokens, vocabulary 50304), bf16 autocast, sdpa, fused
  AdamW, 16 sequences a step. ``StagedTrainer.train_step()`` at full depth (plus the loop's
  divergence check, as ``run()`` does it) against a bare nanoGPT-style loop on the same
  ``transformers`` model with the same weights, batches and optimizer settings: tokens/s, MFU
  (analytic FLOPs ÷ time ÷ the card's peak dense bf16 FLOP/s, from :data:`PEAK_BF16`), ratio
  stagetune ÷ bare (target >= 0.95); phase-1 step cost, measured time ratio ÷ analytic FLOPs
  ratio, for ``new_only`` and ``paper`` (target 0.85-1.15); peak memory per variant. Variants
  are interleaved in rounds, each round's time taken between two device synchronisations.
* ``ray_train``: the smoke-sized trial of a two-stage schedule on one Ray Train worker with one
  GPU (``TorchTrainer`` built by ``launcher.torch_trainer``: ``use_gpu``, ``nccl``), once with
  DDP and once with FSDP2 (``fully_shard`` at world size 1), and once in-process as the
  reference; their compute-matched comparison (eval loss at the same FLOPs) and peak GPU memory
  (``nvidia-smi``, the whole card). ``stagetune run`` trains a one-worker trial in-process, so
  this section is what drives Ray Train and NCCL.
* ``study``: ``stagetune run --preset smoke`` with ``resources.gpus_per_worker=1`` end to end
  (Tune, Optuna, MLflow on SQLite), and its compute-matched report.
* ``compile``: the ``steps`` comparison at full depth with ``train.compile=true`` against the
  bare loop under ``torch.compile`` (compile time reported apart).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import set_offline_env

set_offline_env()

SECTIONS = ("flops", "steps", "ray_train", "study", "compile")
SECTION_LIMIT_S = {"flops": 90, "steps": 150, "ray_train": 150, "study": 180, "compile": 200}
"""Each section's time box; the total budget clips the later ones."""
MIN_SECTION_S = 30
DEFAULT_BUDGET_S = 450
FLOPS_TOL = 0.02
FULL_TARGET = 0.95
PHASE1_TARGET = (0.85, 1.15)
LOSS_MATCH_TOL = 2e-3
JSON_NAME = "gpu_check.json"

PEAK_BF16: tuple[tuple[str, float], ...] = (
    # (substring of torch.cuda.get_device_name(), dense bf16 tensor-core FLOP/s); the first
    # match wins, so the more specific names come first. NVIDIA data sheets, no sparsity.
    ("GH200", 989.4e12),
    ("H200 NVL", 835.5e12),
    ("H200", 989.4e12),
    ("H100 NVL", 835.5e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.4e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362.1e12),
    ("L4", 121e12),
)

GPU_MODEL = [
    "model.family=gpt2",
    "model.n_layer=12",
    "model.n_embd=768",
    "model.n_head=12",
    "model.context_length=1024",
    "model.vocab_size=50304",
    "model.dropout=0.0",
    "model.tie_embeddings=true",
    "model.attn_implementation=sdpa",
    "data.seq_len=1024",
    "data.vocab_size=2048",
    "data.max_corpus_mb=4.0",
    "data.eval_batches=2",
    "train.batch_size=16",
    "train.device=cuda",
    "train.dtype=bfloat16",
]
DRY_MODEL = [
    "model.family=gpt2",
    "model.n_layer=4",
    "model.n_embd=64",
    "model.n_head=4",
    "model.context_length=64",
    "model.dropout=0.0",
    "model.attn_implementation=sdpa",
    "data.seq_len=64",
    "data.vocab_size=512",
    "data.max_corpus_mb=0.5",
    "data.eval_batches=2",
    "train.batch_size=4",
    "train.device=cpu",
    "train.dtype=float32",
]
COMMON = ["train.lr=6e-4", "train.grad_clip=1.0", "train.grad_accum=1", "train.seed=0"]
# (rounds, timed steps per variant per round, warm-up steps per variant)
GPU_PLAN = (5, 20, 5)
DRY_PLAN = (2, 2, 1)
SMOKE_TRIAL = ["schedule.increments=[2, 2]", "model.n_layer=4", "schedule.continual_steps=4"]


# ------------------------------------------------------------------------------ helpers
def peak_flops(device_name: str | None) -> float | None:
    """The card's peak dense bf16 FLOP/s from :data:`PEAK_BF16` (``None``: unknown card)."""
    for key, value in PEAK_BF16:
        if device_name and key in device_name:
            return value
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(dry: bool, workdir: str, *extra: str) -> Any:
    from stagetune.config import load_config

    model = DRY_MODEL if dry else GPU_MODEL
    return load_config(overrides=[*model, *COMMON, f"workdir={workdir}", *extra])


class CardMemory:
    """Peak memory in use on the whole card (``nvidia-smi``), polled every 0.2 s: what a Ray
    worker in another process holds, caching allocator and CUDA context included."""

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        smi = shutil.which("nvidia-smi")
        query = [smi or "", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while smi and not self._stop.wait(0.2):
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                used = float(
                    subprocess.run(query, capture_output=True, text=True).stdout.split()[0]
                )
                self.peak_mib = max(self.peak_mib or 0.0, used)

    def __enter__(self) -> CardMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# ------------------------------------------------------------------------------ flops
def section_flops(dry: bool, workdir: str) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stagetune.compute import step_flops, step_work
    from stagetune.data import prepare_data
    from stagetune.data.prepare import model_vocab_size
    from stagetune.models import build_model

    # On CPU FlopCounterMode counts sdpa's kernel as 0: the dry run counts eager attention.
    cfg = _config(dry, workdir, *(["model.attn_implementation=eager"] if dry else []))
    vocab = model_vocab_size(cfg, prepare_data(cfg.data))
    device = torch.device(cfg.train.device)
    L, T, batch = cfg.model.n_layer, cfg.data.seq_len, 2
    cases = {
        "full": ("phase2", L, 0, "none"),
        "p1_new_only": ("phase1", L, L // 2, "new_only"),
        "p1_paper": ("phase1", L, L // 2, "paper"),
    }
    out: dict[str, Any] = {"attn_implementation": cfg.model.attn_implementation}
    for name, (phase, depth, prev, policy) in cases.items():
        model = build_model(cfg.model, vocab_size=vocab, seed=0)
        model.set_active_depth(prev or depth)
        if prev:
            model.grow(depth, "random", seed=0)
        model.configure_phase(trainable_from=prev, freeze_policy=policy)
        model.to(device).train()
        x = torch.randint(0, vocab, (batch, T), device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry)

        counter = FlopCounterMode(display=False)
        with counter:
            with autocast:
                loss = model(x, x).loss
            loss.backward()
        counted = counter.get_total_flops()
        ops = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
        work = step_work(phase=phase, depth=depth, prev_depth=prev, freeze_policy=policy)
        analytic = step_flops(model.dims(T), work, tokens=batch * T)
        ratio = counted / analytic
        out[name] = {
            "counted": counted,
            "analytic": analytic,
            "ratio": ratio,
            "pass": abs(ratio - 1) <= FLOPS_TOL,
            "ops": ops,
        }
        del model
    out["pass"] = all(out[k]["pass"] for k in cases)
    return out


# ------------------------------------------------------------------------------ steps
def _resident_bytes(module: Any, optimizer: Any) -> int:
    """Parameters, buffers and optimizer state of one configuration (what stays on the card
    between steps; gradients are freed by ``zero_grad(set_to_none=True)``)."""
    tensors = list(module.state_dict().values())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if hasattr(v, "nbytes")]
    # Tied weights appear under two names: count each storage once.
    return sum(int(t.nbytes) for t in {t.data_ptr(): t for t in tensors}.values())


def _bare_loop(cfg: Any, plain: Any, module: Any, device: Any, stream: Any) -> Callable[[], Any]:
    """nanoGPT's training step on the plain model: autocast forward, cross-entropy, backward,
    clip, fused AdamW, ``zero_grad(set_to_none=True)``; no host sync."""
    import torch
    import torch.nn.functional as F

    from step_throughput import _plain_optimizer

    opt = _plain_optimizer(plain, cfg, device)
    params = list(plain.parameters())
    clip = cfg.train.grad_clip
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=cfg.train.dtype == "bfloat16"
    )
    step_no = [0]

    def step() -> Any:
        x, y = stream.train_batch(step_no[0])
        step_no[0] += 1
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast:
            logits = module(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def _staged_step(trainer: Any) -> Callable[[], Any]:
    """``train_step()`` plus the divergence check ``run()`` does after it."""

    def step() -> Any:
        loss = trainer.train_step()
        if trainer._check_due():
            trainer._diverged()
        return loss

    return step


def _measure(
    variants: dict[str, Callable[[], Any]], device: Any, plan: tuple[int, int, int]
) -> dict[str, Any]:
    """Interleaved rounds (the order rotates); a round's time is taken between two device
    synchronisations. Per variant: median seconds a step, warm-up seconds (compile included),
    peak memory above what was allocated when its round began."""
    import torch

    rounds, steps, warmup = plan
    warm: dict[str, float] = {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync(device)
        warm[name] = time.perf_counter() - t0
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    step_peak: dict[str, int] = dict.fromkeys(variants, 0)
    names = list(variants)
    cuda = device.type == "cuda"
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            base = torch.cuda.memory_allocated(device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = variants[name]()
            _sync(device)
            per_round[name].append((time.perf_counter() - t0) / steps)
            if cuda:
                step_peak[name] = max(
                    step_peak[name], torch.cuda.max_memory_allocated(device) - base
                )
            if not torch.isfinite(loss).item():
                raise RuntimeError(f"{name}: non-finite loss {float(loss)}")
    return {
        "step_s": {k: statistics.median(v) for k, v in per_round.items()},
        "per_round_s": per_round,
        "warmup_s": warm,
        "step_peak_bytes": step_peak if cuda else None,
    }


def _host_syncs(trainer: Any, device: Any) -> str:
    """``none`` if :data:`~stagetune.trainables.loop.DIVERGENCE_CHECK_STEPS` - 1 training steps
    (the steps between two divergence checks) run without a host synchronisation, else the
    first one's error (``torch.cuda.set_sync_debug_mode("error")``)."""
    import torch

    from stagetune.trainables.loop import DIVERGENCE_CHECK_STEPS

    _sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(DIVERGENCE_CHECK_STEPS - 1):
            trainer.train_step()
        return "none"
    except RuntimeError as e:
        return str(e)[:500]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        _sync(device)


def section_steps(dry: bool, workdir: str, *, compiled: bool = False) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import step_throughput as st
    from stagetune.data import prepare_data
    from stagetune.data.prepare import model_vocab_size
    from stagetune.schedule import baseline_schedule

    torch.set_float32_matmul_precision("high")  # both sides alike (nanoGPT allows TF32 too)
    cfg = _config(dry, workdir, *(["train.compile=true"] if compiled else []))
    vocab = model_vocab_size(cfg, prepare_data(cfg.data))
    device = torch.device(cfg.train.device)
    L = cfg.model.n_layer
    full = st._trainer(
        cfg, baseline_schedule(L, 1_000_000), vocab, os.path.join(workdir, "full"), device
    )
    st._enter(full, 0)
    trainers = {"full": full}
    if not compiled:
        for policy in ("new_only", "paper"):
            tr = st._trainer(
                cfg,
                st._two_stage_schedule(L, L // 2, policy),
                vocab,
                os.path.join(workdir, policy),
                device,
            )
            st._enter(tr, next(i for i, ph in enumerate(tr.phases) if ph.kind == "phase1"))
            trainers[f"p1_{policy}"] = tr
    plain = st._plain_model(cfg, vocab)
    plain.load_state_dict(full.model.hf_model.state_dict())
    plain.to(device)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.dtype == "bfloat16"),
    ):
        x, y = (t.to(device) for t in full.stream.train_batch(0))
        ref = float(full.model(x, y).loss)
        lg = plain(input_ids=x).logits.float()
        got = float(F.cross_entropy(lg.view(-1, lg.size(-1)), y.view(-1)))
    bare_module = torch.compile(plain, dynamic=False) if compiled else plain
    bare = _bare_loop(cfg, plain, bare_module, device, full.stream)
    variants = {"bare": bare, **{k: _staged_step(tr) for k, tr in trainers.items()}}
    m = _measure(variants, device, DRY_PLAN if dry else GPU_PLAN)

    syncs = _host_syncs(full, device) if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(name)
    tokens = full.tokens_per_step
    rows: dict[str, Any] = {}
    for k, t in m["step_s"].items():
        tr = full if k == "bare" else trainers[k]
        flops = tr._step_flops.standard
        resident = (
            _resident_bytes(plain, bare.optimizer)
            if k == "bare"
            # type: ignore[attr-defined]
            else (_resident_bytes(tr.model, tr.optimizer))
        )
        step_peak = m["step_peak_bytes"][k] if m["step_peak_bytes"] else None
        rows[k] = {
            "step_ms": t * 1e3,
            "tokens_per_s": tokens / t,
            "tflop_per_s": flops / t / 1e12,
            "mfu": flops / t / peak if peak else None,
            "warmup_s": m["warmup_s"][k],
            "resident_gib": resident / 2**30,
            "peak_gib": (resident + step_peak) / 2**30 if step_peak is not None else None,
        }
    ratio = m["step_s"]["bare"] / m["step_s"]["full"]
    out: dict[str, Any] = {
        "mode": "torch.compile" if compiled else "eager",
        "device": name or "cpu",
        "peak_bf16_flops": peak,
        "model": " ".join(o for o in (DRY_MODEL if dry else GPU_MODEL)),
        "tokens_per_step": tokens,
        "plan": dict(zip(("rounds", "steps", "warmup"), DRY_PLAN if dry else GPU_PLAN)),
        "initial_loss": {"stagetune": ref, "bare": got},
        "variants": rows,
        "per_round_s": m["per_round_s"],
        "full_vs_bare": {
            "ratio": ratio,
            "target": f">= {FULL_TARGET}",
            "pass": ratio >= FULL_TARGET,
        },
        "train_step_host_syncs": syncs,
    }
    if not compiled:
        lo, hi = PHASE1_TARGET
        f_full = full._step_flops
        out["phase1"] = {}
        for pol in ("new_only", "paper"):
            f = trainers[f"p1_{pol}"]._step_flops
            measured = m["step_s"][f"p1_{pol}"] / m["step_s"]["full"]
            analytic = f.standard / f_full.standard
            cost = measured / analytic
            out["phase1"][pol] = {
                "measured_time_ratio": measured,
                "analytic_flops_ratio": analytic,
                "paper_convention_ratio": f.paper / f_full.paper,
                "cost_ratio": cost,
                "target": f"{lo}-{hi}",
                "pass": lo <= cost <= hi,
            }
    out["pass"] = (
        out["full_vs_bare"]["pass"]
        and syncs in (None, "none")
        and all(d["pass"] for d in out.get("phase1", {}).values())
    )
    return out


def section_compile(dry: bool, workdir: str) -> dict[str, Any]:
    return section_steps(dry, workdir, compiled=True)


# ------------------------------------------------------------------------------ Ray Train
def _smoke_config(dry: bool, workdir: str, *extra: str) -> Any:
    from stagetune.config import load_config, preset_overrides

    gpus = 0 if dry else 1
    return load_config(
        overrides=[
            *preset_overrides("smoke"),
            *SMOKE_TRIAL,
            f"resources.gpus_per_worker={gpus}",
            "resources.cpus_per_worker=1",
            f"workdir={workdir}",
            *extra,
        ]
    )


def _matched(records: list[dict[str, Any]], ref: list[dict[str, Any]]) -> float | None:
    """Largest |eval loss difference| at the records' common FLOPs (compute-matched)."""
    by_flops = {round(float(r["flops"])): float(r["eval_loss"]) for r in ref}
    diffs = [
        abs(float(r["eval_loss"]) - by_flops[round(float(r["flops"]))])
        for r in records
        if round(float(r["flops"])) in by_flops
    ]
    return max(diffs) if diffs else None


def section_ray_train(dry: bool, workdir: str) -> dict[str, Any]:
    import ray

    from stagetune.data import prepare_data
    from stagetune.data.prepare import model_vocab_size
    from stagetune.orchestration.cluster import start_local
    from stagetune.schedule import build_schedule
    from stagetune.trainables.launcher import TrainRun, torch_trainer, train_to_directory
    from stagetune.trial import TrialDescription

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    cfg = _smoke_config(dry, workdir)
    vocab = model_vocab_size(cfg, prepare_data(cfg.data))
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    root = Path(workdir)
    out: dict[str, Any] = {"schedule": trial.schedule.to_dict()}

    with CardMemory() as mem:
        summary = train_to_directory(trial, config=cfg, vocab_size=vocab, out=root / "inproc")
    ref = [json.loads(x) for x in (root / "inproc" / "metrics.jsonl").read_text().splitlines()]
    out["in_process"] = {
        "status": summary["status"],
        "final_eval_loss": summary["final_eval_loss"],
        "flops": summary["flops"],
        "card_peak_mib": mem.peak_mib,
    }
    env = {k: os.environ[k] for k in ("STAGETUNE_CACHE", "HF_HUB_OFFLINE") if k in os.environ}
    start_local(
        num_cpus=max(2, min(8, os.cpu_count() or 2)),
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        for strategy in ("ddp", "fsdp"):
            scfg = _smoke_config(dry, workdir, f"resources.strategy={strategy}")
            run = TrainRun.for_directory(root / f"train_{strategy}")
            trainer = torch_trainer(trial, config=scfg, vocab_size=vocab, run=run)
            with CardMemory() as mem:
                result = trainer.fit()
            frame = result.metrics_dataframe
            records = [dict(r) for r in frame.to_dict("records")] if frame is not None else []
            last = records[-1] if records else {}
            gap = _matched(records, ref)
            out[strategy] = {
                "backend": trainer.backend_config.backend,
                "use_gpu": trainer.scaling_config.use_gpu,
                "workers": trainer.scaling_config.num_workers,
                "status": last.get("status"),
                "final_eval_loss": last.get("eval_loss"),
                "flops": last.get("flops"),
                "matched_points": len(records),
                "max_eval_loss_gap_vs_in_process": gap,
                "card_peak_mib": mem.peak_mib,
                "pass": last.get("status") == "finished"
                and last.get("flops") == summary["flops"]
                and gap is not None
                and gap <= LOSS_MATCH_TOL,
            }
    finally:
        ray.shutdown()
    out["pass"] = all(out[s]["pass"] for s in ("ddp", "fsdp"))
    return out


# ------------------------------------------------------------------------------ study
STUDY_COLUMNS = (
    "final_eval_loss",
    "total_compute",
    "loss_at_matched",
    "baseline_loss_at_matched",
    "matched_delta",
    "compute_fraction",
)


def _mean(stat: Any) -> float | None:
    return stat.get("mean") if isinstance(stat, dict) else stat


def section_study(dry: bool, workdir: str) -> dict[str, Any]:
    from stagetune.cli import main

    gpus = 0 if dry else 1
    args = ["run", "--preset", "smoke", "--workdir", str(Path(workdir) / "study"), "--trials", "3"]
    args += ["--json", "--quiet", "--set", f"resources.gpus_per_worker={gpus}"]
    buf = io.StringIO()
    with CardMemory() as mem, contextlib.redirect_stdout(buf):
        rc = main(args)
    data = json.loads(buf.getvalue())
    rows = [
        {
            "schedule": r.get("schedule"),
            "is_baseline": r.get("is_baseline"),
            # Means over seeds (one seed here) of the report's compute-matched columns.
            **{k: _mean(r.get(k)) for k in STUDY_COLUMNS},
        }
        for r in data.get("outcomes", [])
    ]
    return {
        "command": "stagetune " + " ".join(args),
        "exit_code": rc,
        "outcomes": rows,
        "verdict": data.get("verdict"),
        "card_peak_mib": mem.peak_mib,
        "pass": rc == 0 and bool(rows),
    }


# ------------------------------------------------------------------------------ driver
RUNNERS: dict[str, Callable[[bool, str], dict[str, Any]]] = {
    "flops": section_flops,
    "steps": section_steps,
    "ray_train": section_ray_train,
    "study": section_study,
    "compile": section_compile,
}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a timed-out section with everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


def run_section(name: str, *, dry: bool, workdir: Path, limit: float, logs: Path) -> dict[str, Any]:
    """Run one section in a child process within ``limit`` seconds; its result, or why not."""
    part = workdir / f"{name}.json"
    log = logs / f"{name}.log"
    cmd = [sys.executable, __file__, "--section", name, "--workdir", str(workdir / name)]
    cmd += ["--child-out", str(part), *(["--dry-run"] if dry else [])]
    t0 = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
    seconds = round(time.perf_counter() - t0, 1)
    if rc == 0 and part.is_file():
        return {"status": "ok", "seconds": seconds, **json.loads(part.read_text())}
    tail = log.read_text(errors="replace")[-3000:]
    status = f"timeout after {limit:.0f}s" if rc is None else f"failed (exit {rc})"
    return {"status": status, "seconds": seconds, "pass": False, "log_tail": tail}


def _fmt(x: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("-", f">{width}") if x is None else format(x, spec)


def render(doc: dict[str, Any]) -> str:
    """The short table."""
    w = io.StringIO()
    p = w.write
    m = doc["machine"]
    p(f"\nGPU check{' (DRY RUN, CPU)' if doc['dry_run'] else ''}: {m['device']}, ")
    p(f"peak bf16 {_fmt(m['peak_bf16_flops'] and m['peak_bf16_flops'] / 1e12, '.0f')} TFLOP/s, ")
    p(f"torch {m['torch']} (CUDA {m['cuda']}); {doc['elapsed_s']:.0f}s of {doc['budget_s']}s\n")
    for name, sec in doc["sections"].items():
        verdict = "PASS" if sec.get("pass") else "MISS"
        p(f"\n[{name}] {sec['status']} in {sec.get('seconds', 0)}s  {verdict}\n")
        if sec["status"] != "ok":
            continue
        if name == "flops":
            for k in ("full", "p1_new_only", "p1_paper"):
                d = sec[k]
                p(f"  {k:<12} counted/analytic {d['ratio']:.4f} (target 1 +- {FLOPS_TOL})\n")
        elif name in ("steps", "compile"):
            p(f"  {'variant':<12} {'ms/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} ")
            p(f"{'peak GiB':>8} {'warm-up s':>9}\n")
            for k, d in sec["variants"].items():
                p(f"  {k:<12} {d['step_ms']:8.1f} {d['tokens_per_s']:10.0f} ")
                p(f"{d['tflop_per_s']:8.1f} {_fmt(d['mfu'], '6.1%')} ")
                p(f"{_fmt(d['peak_gib'], '8.2f')} {d['warmup_s']:9.1f}\n")
            fr = sec["full_vs_bare"]
            p(f"  stagetune / bare ({sec['mode']}): {fr['ratio']:.3f}  target {fr['target']}\n")
            for pol, d in sec.get("phase1", {}).items():
                p(f"  phase-1 cost {pol:<8}: {d['measured_time_ratio']:.3f} / ")
                p(
                    f"{d['analytic_flops_ratio']:.3f} = {d['cost_ratio']:.3f}  target {d['target']}\n"
                )
        elif name == "ray_train":
            for k in ("in_process", "ddp", "fsdp"):
                d = sec[k]
                via = f"{d['backend']}, {d['workers']} worker" if "backend" in d else "in-process"
                gap = d.get("max_eval_loss_gap_vs_in_process")
                p(f"  {k:<10} ({via}): {d['status']}, eval {_fmt(d['final_eval_loss'], '.4f')}")
                p(f", |gap| {_fmt(gap, '.1e')}, card peak {_fmt(d['card_peak_mib'], '.0f')} MiB\n")
        elif name == "study":
            for r in sec["outcomes"]:
                p(f"  {r['schedule']!s:<40} eval {_fmt(r['final_eval_loss'], '.4f')}  ")
                p(f"at matched compute {_fmt(r['loss_at_matched'], '.4f')} vs baseline ")
                p(f"{_fmt(r['baseline_loss_at_matched'], '.4f')}\n")
            p(f"  card peak {_fmt(sec['card_peak_mib'], '.0f')} MiB; {sec['verdict']}\n")
    p(f"\noverall: {'PASS' if doc['pass'] else 'MISS'}\n")
    return w.getvalue()


def _machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {
        "device": name,
        "peak_bf16_flops": peak_flops(name) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
    }


def _out_path(given: str | None) -> Path | None:
    if given:
        return Path(given)
    return Path(os.environ["OUT"]) / JSON_NAME if os.environ.get("OUT") else None


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stagetune-gpu-check-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (what CI runs)")
    ap.add_argument("--out", help=f"JSON path (default $OUT/{JSON_NAME} when $OUT is set)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="total seconds")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    ap.add_argument(
        "--limit-factor",
        type=float,
        default=1.0,
        help="multiply every section's time box (a slow CPU's dry run)",
    )
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # a child
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.section:
        os.makedirs(args.workdir, exist_ok=True)
        result = RUNNERS[args.section](args.dry_run, args.workdir)
        tmp = Path(args.child_out + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(args.child_out)
        return 0

    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(
            f"gpu_check: --sections: unknown {unknown}; use {','.join(SECTIONS)}", file=sys.stderr
        )
        return 2
    out = _out_path(args.out)
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "check": "gpu_check",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "machine": _machine(),
        "sections": {},
    }
    with _workdir() as work:
        os.environ.setdefault("STAGETUNE_CACHE", str(work / "cache"))  # shared by the sections
        logs = out.parent / "gpu_check_logs" if out else work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in SECTIONS:
            if name not in chosen:
                continue
            left = args.budget - (time.perf_counter() - t0)
            limit = min(SECTION_LIMIT_S[name] * args.limit_factor, left)
            if limit < MIN_SECTION_S:
                doc["sections"][name] = {"status": "skipped (time budget)", "pass": False}
                continue
            print(f"gpu_check: {name} (up to {limit:.0f}s) ...", file=sys.stderr, flush=True)
            doc["sections"][name] = run_section(
                name, dry=args.dry_run, workdir=work, limit=limit, logs=logs
            )
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    doc["pass"] = bool(doc["sections"]) and all(s.get("pass") for s in doc["sections"].values())
    text = json.dumps(doc, indent=1, default=str)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    try:
        table = render(doc)
    except Exception as e:  # the JSON document must come out whatever a section returned
        table = f"gpu_check: no table ({type(e).__name__}: {e}); the JSON has every number\n"
    print(table, file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
