"""Step throughput of stagetune's training loop, against a plain PyTorch loop and against FLOPs.

Run from the repository root (with stagetune installed, e.g. ``pip install -e .``)::

    python benchmarks/step_throughput.py            # default: ~1.5 min on a 2-core CPU
    python benchmarks/step_throughput.py --quick    # ~20 s, noisier
    python benchmarks/step_throughput.py --json     # one JSON object on stdout

Everything runs in one process, on one model config and one ``TokenStream``:

* ``plain``: a hand-written PyTorch loop over ``transformers.GPT2LMHeadModel(GPT2Config(...))``
  built here with the same shapes and attention kernel as stagetune's model (and a copy of its
  initial weights), the same AdamW settings and parameter groups, the same batches:
  zero_grad / forward / cross-entropy / backward / clip / step / loss.item().
* ``full``: ``StagedTrainer.train_step()`` on the baseline (one-stage, full-depth) schedule.
* ``p1_new_only`` / ``p1_paper``: ``StagedTrainer.train_step()`` in stage 2's phase 1 of a
  two-stage schedule (default increments [L/2, L/2]): the top blocks train, the older ones are
  frozen, under ``no_grad`` (``new_only``) or with autograd running through them to the
  trainable embeddings (``paper``).

The variants are interleaved: every round runs ``steps`` timed steps of each variant (the order
rotates from round to round), after ``warmup`` untimed steps per variant. The per-step time of
a variant is the median over rounds of (round wall time / steps), so slow drifts and bursts of
load from other processes on a shared machine hit every variant alike. The thread count is
fixed (``--threads``, default 1: on a shared 2-core box one thread is much less exposed to a
neighbour stealing a core mid-matmul than two). glibc's malloc thresholds are pinned first
(see :func:`pin_malloc`), and each variant's CPU time and minor page faults per step are
recorded beside the wall time; when the process got < 90 % of its threads' CPU time while
measuring (a contended machine), the output says so and gives the CPU-time ratios too.

Reported, with targets:

1. full-depth throughput ratio = plain step time / stagetune full-depth step time
   (stagetune steps/s ÷ plain steps/s), target >= 0.95;
2. phase-1 cost ratio, per freeze policy = (measured phase-1 step time / measured full-depth
   step time) / (analytic phase-1 step FLOPs / full step FLOPs, ``standard`` convention),
   target 0.85-1.15. For ``paper`` the measured ratio is also shown next to the ratio the
   paper's own cost convention promises (it ignores the backward through frozen blocks).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F
from torch import nn

from stagetune.compute import step_flops, step_work
from stagetune.config import ExperimentConfig, load_config
from stagetune.data import prepare_data
from stagetune.schedule import Schedule, Stage, baseline_schedule
from stagetune.trainables.loop import StagedTrainer, adamw_kernel
from stagetune.trainables.session import LocalSession
from stagetune.trial import TrialDescription

CPU = torch.device("cpu")
FULL_TARGET = 0.95
PHASE1_TARGET = (0.85, 1.15)

# Model and batch. Chosen so that matmuls dominate a step on a CPU: GPT-2 with 8 blocks of
# width 256 (4 heads of 64), 128-token sequences, 8 sequences a step, a 2048-token vocabulary.
# One step is ~44 GFLOP (standard convention; the block linears ~85 %, the LM head ~7 %, the
# attention matmuls ~7 %), i.e. ~0.6 s on one EPYC core and ~0.35 s on two: Python overhead per
# step (a few hundred module calls, ~1-3 ms) is well under 1 % of that, so the full-depth ratio
# measures the loop's real extra work and the phase-1 ratio measures compute, not the
# interpreter. Smaller widths (e.g. 64) make a step mostly framework overhead, where
# "phase-1 time / FLOPs" says nothing about the freezing. The config is also the shape the
# brief suggests, with L/2 = 4 frozen blocks in phase 1.
MODEL_OVERRIDES = [
    "model.family=gpt2",
    "model.n_layer=8",
    "model.n_embd=256",
    "model.n_head=4",
    "model.context_length=128",
    "model.dropout=0.0",
    "model.tie_embeddings=true",
    "model.attn_implementation=sdpa",
    "data.seq_len=128",
    "data.vocab_size=2048",
    # The builtin corpus (stdlib source) capped at 1 MiB: ~290k tokens, tokenizer and token
    # file are cached after the first run.
    "data.max_corpus_mb=1.0",
    "data.eval_batches=2",
    "train.batch_size=8",
    "train.grad_accum=1",
    "train.device=cpu",
    "train.dtype=float32",
    "train.lr=3e-4",
    "train.lr_schedule=constant",
    "train.warmup_steps=0",
    "train.grad_clip=1.0",
    "train.seed=0",
]

# (rounds, timed steps per variant per round, warm-up steps per variant)
DEFAULT_PLAN = (7, 5, 2)
QUICK_PLAN = (3, 2, 1)


# ---------------------------------------------------------------------------------------------
# variants


@dataclass
class Variant:
    name: str
    label: str
    step: Callable[[], float]
    """One optimizer step; returns the loss (a Python float, i.e. synchronised)."""


def _trainer(
    cfg: ExperimentConfig,
    schedule: Schedule,
    vocab_size: int,
    out: str,
    device: torch.device = CPU,
) -> StagedTrainer:
    trial = TrialDescription.from_config(cfg, schedule=schedule)
    return StagedTrainer(trial, LocalSession(out), config=cfg, vocab_size=vocab_size, device=device)


def _enter(trainer: StagedTrainer, index: int) -> None:
    # ``run()`` enters each phase with ``_enter_phase`` (grow, configure freezing, reset the
    # optimizer, set the step's FLOPs); the benchmark drives ``train_step()`` itself, so it
    # enters the phase the same way.
    trainer._enter_phase(index, fresh=True)
    trainer.model.train()


def _two_stage_schedule(L: int, first: int, freeze_policy: str) -> Schedule:
    # Stage 2's phase 1 is long enough never to end during the benchmark.
    return Schedule(
        num_layers=L,
        stages=(
            Stage(depth=first, phase1_steps=0, phase2_steps=1),
            Stage(depth=L, phase1_steps=1_000_000, phase2_steps=1),
        ),
        growth="random",
        freeze_policy=freeze_policy,
        optimizer_policy="reset",
    )


def _plain_model(cfg: ExperimentConfig, vocab_size: int) -> nn.Module:
    """The same GPT-2, written out by hand from the config (not through stagetune's adapter)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = cfg.model
    hf_cfg = GPT2Config(
        vocab_size=m.vocab_size or vocab_size,
        n_positions=m.context_length,
        n_embd=m.n_embd,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_inner=4 * m.n_embd,
        resid_pdrop=m.dropout,
        embd_pdrop=m.dropout,
        attn_pdrop=m.dropout,
        tie_word_embeddings=m.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,
        attn_implementation=m.attn_implementation,
    )
    model = GPT2LMHeadModel(hf_cfg)
    model.train()
    return model


def _plain_optimizer(
    model: nn.Module, cfg: ExperimentConfig, device: torch.device = CPU
) -> torch.optim.Optimizer:
    t = cfg.train
    embeddings = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # each (tied) parameter once
        (no_decay if id(p) in embeddings or p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        weight_decay=t.weight_decay,
        **adamw_kernel(device),  # the kernel stagetune's loop uses on this device
    )


def build_variants(
    cfg: ExperimentConfig, *, first_depth: int, tmp: str
) -> tuple[list[Variant], dict[str, Any]]:
    prepared = prepare_data(cfg.data)
    vocab = prepared.vocab_size
    L = cfg.model.n_layer

    # stagetune, full depth (the baseline schedule).
    full = _trainer(cfg, baseline_schedule(L, 1_000_000), vocab, os.path.join(tmp, "full"))
    _enter(full, 0)
    stream = full.stream  # every variant reads its batches from this one stream

    # stagetune, stage 2 phase 1, per freeze policy.
    phase1: dict[str, StagedTrainer] = {}
    for policy in ("new_only", "paper"):
        tr = _trainer(
            cfg, _two_stage_schedule(L, first_depth, policy), vocab, os.path.join(tmp, policy)
        )
        index = next(i for i, ph in enumerate(tr.phases) if ph.kind == "phase1")
        _enter(tr, index)
        ph = tr.phases[index]
        assert tr.model.active_depth == L and tr.model.trainable_from == first_depth, ph
        assert tr.model.freeze_policy == policy
        phase1[policy] = tr

    # The plain loop: same shapes, same initial weights, same optimizer settings.
    plain = _plain_model(cfg, vocab)
    stag_hf = full.model.hf_model
    assert type(plain) is type(stag_hf)
    assert plain.config._attn_implementation == stag_hf.config._attn_implementation, (
        plain.config._attn_implementation,
        stag_hf.config._attn_implementation,
    )
    shapes = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in stag_hf.state_dict().items()}, "shape mismatch"
    plain.load_state_dict(stag_hf.state_dict())
    plain_opt = _plain_optimizer(plain, cfg)
    clip = cfg.train.grad_clip
    plain_params = list(plain.parameters())
    plain_step_no = [0]

    def plain_step() -> float:
        x, y = stream.train_batch(plain_step_no[0])
        plain_opt.zero_grad(set_to_none=True)
        logits = plain(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(plain_params, clip, foreach=True)
        plain_opt.step()
        plain_step_no[0] += 1
        return loss.item()

    # Sanity: before any update both compute the same loss on the same batch.
    with torch.no_grad():
        x, y = stream.train_batch(0)
        ref = full.model(x, y).loss.item()
        lg = plain(input_ids=x).logits
        got = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1)).item()
    if abs(ref - got) > 1e-4:
        raise SystemExit(f"plain model does not match stagetune's model: loss {got} vs {ref}")

    # Analytic FLOPs per step (standard and paper conventions).
    dims = full.dims
    tokens = full.tokens_per_step
    works = {
        "full": step_work(phase="phase2", depth=L, prev_depth=0, freeze_policy="none"),
        **{
            f"p1_{pol}": step_work(
                phase="phase1", depth=L, prev_depth=first_depth, freeze_policy=pol
            )
            for pol in phase1
        },
    }
    flops = {
        name: {
            conv: step_flops(dims, w, tokens=tokens, convention=conv)
            for conv in ("standard", "paper")
        }
        for name, w in works.items()
    }
    # The trainer accounts exactly these FLOPs per step.
    assert full._step_flops.standard == flops["full"]["standard"]
    for pol, tr in phase1.items():
        assert tr._step_flops.standard == flops[f"p1_{pol}"]["standard"], pol

    variants = [
        Variant("plain", "plain PyTorch loop (HF GPT2LMHeadModel)", plain_step),
        Variant("full", "stagetune full depth (baseline)", lambda: float(full.train_step())),
        Variant(
            "p1_new_only",
            f"stagetune phase 1, new_only ({first_depth} frozen, no_grad)",
            lambda: float(phase1["new_only"].train_step()),
        ),
        Variant(
            "p1_paper",
            f"stagetune phase 1, paper ({first_depth} frozen, grad to embeddings)",
            lambda: float(phase1["paper"].train_step()),
        ),
    ]
    info = {
        "vocab_size": vocab,
        "params": sum(p.numel() for p in plain.parameters()),
        "tokens_per_step": tokens,
        "flops": flops,
        "first_depth": first_depth,
        "trainable_params": {
            "full": sum(p.numel() for p in full.model.trainable_parameters()),
            **{
                f"p1_{k}": sum(p.numel() for p in tr.model.trainable_parameters())
                for k, tr in phase1.items()
            },
        },
    }
    return variants, info


# ---------------------------------------------------------------------------------------------
# measurement


def measure(
    variants: list[Variant], *, rounds: int, steps: int, warmup: int, log: Callable[[str], None]
) -> dict[str, dict[str, list[float]]]:
    """Per variant and round: wall and CPU seconds per step, minor page faults per step.

    Rounds are interleaved and the order rotates from round to round.
    """
    for v in variants:
        for _ in range(warmup):
            v.step()
    out: dict[str, dict[str, list[float]]] = {
        v.name: {"wall": [], "cpu": [], "faults": []} for v in variants
    }
    n = len(variants)
    for r in range(rounds):
        order = variants[r % n :] + variants[: r % n]
        parts = []
        for v in order:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            c0 = time.process_time()
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = v.step()
            wall = (time.perf_counter() - t0) / steps
            cpu = (time.process_time() - c0) / steps
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - ru0.ru_minflt) / steps
            if loss != loss:  # NaN: something is broken, the timing would be meaningless
                raise SystemExit(f"{v.name}: loss is NaN")
            rec = out[v.name]
            rec["wall"].append(wall)
            rec["cpu"].append(cpu)
            rec["faults"].append(faults)
            parts.append(f"{v.name} {wall * 1e3:.0f}")
        log(f"  round {r + 1}/{rounds}: " + ", ".join(parts) + " ms/step")
    return out


def pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (mallopt), so freed tensors stay in the heap.

    By default glibc serves large blocks (activations, gradients, logits: 1-8 MiB here) with
    mmap below a *dynamic* threshold and trims the heap top on free; which step then pays for
    fresh zero-filled pages depends on the allocation history of the whole process. Measured
    here: 0 to 30k minor page faults and 0 to 60 ms of system time per step, landing on
    whichever variant comes next, the plain loop included, so a 3-5 % "difference" between
    two identical loops can be pure allocator luck. Pinning the thresholds (32 MiB, the
    largest mmap threshold glibc accepts; trim at 1 GiB) removes that cross-variant
    interference. ``--no-malloc-pin`` measures with glibc's defaults.
    """
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


CONTENDED_SHARE = 0.9
"""Below this share of its threads' CPU time per wall second, the machine was contended."""


def summarise(
    per_round: dict[str, dict[str, list[float]]], info: dict[str, Any], *, threads: int
) -> dict[str, Any]:
    wall = {k: v["wall"] for k, v in per_round.items()}
    # How much CPU the process got while measuring: ~1.0 on an idle machine (per thread).
    share = sum(sum(v["cpu"]) for v in per_round.values()) / (
        threads * sum(sum(v["wall"]) for v in per_round.values())
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu = {k: statistics.median(v["cpu"]) for k, v in per_round.items()}
    faults = {k: statistics.median(v["faults"]) for k, v in per_round.items()}
    flops = info["flops"]
    full_ratio = med["plain"] / med["full"]
    out: dict[str, Any] = {
        "cpu_share": share,
        "contended": share < CONTENDED_SHARE,
        "median_step_s": med,
        "median_cpu_step_s": cpu,
        "median_minor_faults_per_step": faults,
        "steps_per_s": {k: 1.0 / v for k, v in med.items()},
        "gflop_per_s": {
            k: flops["full" if k == "plain" else k]["standard"] / v / 1e9 for k, v in med.items()
        },
        "full_depth_ratio": {
            "value": full_ratio,
            "paired_round_ratios": [p / f for p, f in zip(wall["plain"], wall["full"])],
            "cpu_time_ratio": cpu["plain"] / cpu["full"],
            "target": f">= {FULL_TARGET}",
            "pass": full_ratio >= FULL_TARGET,
        },
        "phase1": {},
    }
    lo, hi = PHASE1_TARGET
    for pol in ("new_only", "paper"):
        key = f"p1_{pol}"
        measured = med[key] / med["full"]
        analytic = flops[key]["standard"] / flops["full"]["standard"]
        paper_conv = flops[key]["paper"] / flops["full"]["paper"]
        cost = measured / analytic
        out["phase1"][pol] = {
            "measured_time_ratio": measured,
            "paired_round_ratios": [a / b for a, b in zip(wall[key], wall["full"])],
            "cpu_time_ratio": cpu[key] / cpu["full"],
            "cpu_cost_ratio": cpu[key] / cpu["full"] / analytic,
            "analytic_flops_ratio_standard": analytic,
            "paper_convention_ratio": paper_conv,
            "cost_ratio": cost,
            "measured_vs_paper_convention": measured / paper_conv,
            "target": f"{lo}-{hi}",
            "pass": lo <= cost <= hi,
        }
    return out


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    info = result["model"]
    w = io.StringIO()
    m = result["machine"]
    p = w.write
    p(
        f"\nstep throughput: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, "
        f"{m['threads']} thread(s), malloc {'pinned' if result['plan']['malloc_pinned'] else 'default'}; {result['plan']['rounds']} rounds x {result['plan']['steps']} steps "
        f"(+{result['plan']['warmup']} warm-up) per variant, median of rounds\n"
    )
    p(
        f"model: {info['shape']}; {info['params'] / 1e6:.2f}M params; "
        f"{info['tokens_per_step']} tokens/step\n\n"
    )
    head = (
        f"{'variant':<62} {'ms/step':>8} {'steps/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} "
        f"{'train params':>12} {'cpu ms':>7} {'faults':>7}\n"
    )
    p(head)
    p("-" * (len(head) - 1) + "\n")
    for v in result["variants"]:
        k = v["name"]
        fl = info["flops"]["full" if k == "plain" else k]["standard"]
        tp = info["trainable_params"].get(k, info["params"])
        p(
            f"{v['label']:<62} {s['median_step_s'][k] * 1e3:8.1f} {s['steps_per_s'][k]:8.3f} "
            f"{fl / 1e9:10.2f} {s['gflop_per_s'][k]:8.1f} {tp / 1e6:11.2f}M "
            f"{s['median_cpu_step_s'][k] * 1e3:7.1f} {s['median_minor_faults_per_step'][k]:7.0f}\n"
        )
    fr = s["full_depth_ratio"]
    flag = " [contended, see below]" if s["contended"] else ""
    p("\n")
    p(
        f"full-depth throughput ratio (stagetune / plain): {fr['value']:.3f}   "
        f"target {fr['target']}   {'PASS' if fr['pass'] else 'MISS'}{flag}"
        f"   (per round: {', '.join(f'{x:.3f}' for x in fr['paired_round_ratios'])}; "
        f"CPU time: {fr['cpu_time_ratio']:.3f})\n"
    )
    for pol, d in s["phase1"].items():
        p(
            f"phase-1 cost ratio, {pol:<8}: measured time ratio {d['measured_time_ratio']:.3f} / "
            f"analytic FLOPs ratio {d['analytic_flops_ratio_standard']:.3f} = {d['cost_ratio']:.3f}   "
            f"target {d['target']}   {'PASS' if d['pass'] else 'MISS'}{flag}\n"
        )
    d = s["phase1"]["paper"]
    p(
        f"paper policy vs its promise: measured time ratio {d['measured_time_ratio']:.3f} vs "
        f"paper-convention ratio {d['paper_convention_ratio']:.3f} "
        f"({(d['measured_vs_paper_convention'] - 1) * 100:+.0f} %)\n"
    )
    d = s["phase1"]["new_only"]
    p(
        f"new_only vs the same promise: measured time ratio {d['measured_time_ratio']:.3f} vs "
        f"paper-convention ratio {d['paper_convention_ratio']:.3f} "
        f"({(d['measured_vs_paper_convention'] - 1) * 100:+.0f} %)\n"
    )
    p(f"CPU share while measuring: {s['cpu_share']:.2f} of {m['threads']} thread(s)\n")
    if s["contended"]:
        fr = s["full_depth_ratio"]
        p(
            "WARNING: the machine was contended (other processes took CPU time); wall-clock "
            "ratios are unreliable, rerun when it is quieter. CPU-time ratios: full depth "
            f"{fr['cpu_time_ratio']:.3f}; phase-1 cost "
            + ", ".join(f"{pol} {d['cpu_cost_ratio']:.3f}" for pol, d in s["phase1"].items())
            + "\n"
        )
    return w.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps (< 1 min)")
    ap.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 7; quick 3)")
    ap.add_argument(
        "--steps", type=int, help="timed steps per variant per round (default 5; quick 2)"
    )
    ap.add_argument(
        "--warmup", type=int, help="untimed steps per variant first (default 2; quick 1)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument(
        "--first-depth",
        type=int,
        help="depth of stage 1 (default L/2; e.g. 6 of 8 for increments [3L/4, L/4])",
    )
    ap.add_argument(
        "--no-malloc-pin",
        action="store_true",
        help="keep glibc's dynamic mmap/trim thresholds (see pin_malloc)",
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = ap.parse_args(argv)

    rounds, steps, warmup = QUICK_PLAN if args.quick else DEFAULT_PLAN
    rounds = args.rounds or rounds
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup
    pinned = False if args.no_malloc_pin else pin_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="stagetune-bench-") as tmp:
        cfg = load_config(overrides=[*MODEL_OVERRIDES, f"workdir={tmp}", *args.set])
        if cfg.model.family != "gpt2":
            raise SystemExit("this benchmark's plain loop is written for model.family=gpt2")
        L = cfg.model.n_layer
        first = args.first_depth or L // 2
        if not 1 <= first < L:
            raise SystemExit(f"--first-depth must be in [1, {L})")
        t_setup = time.perf_counter()
        variants, info = build_variants(cfg, first_depth=first, tmp=tmp)
        log(f"setup {time.perf_counter() - t_setup:.1f}s; measuring ...")
        t0 = time.perf_counter()
        per_round = measure(variants, rounds=rounds, steps=steps, warmup=warmup, log=log)
        elapsed = time.perf_counter() - t0

    m = cfg.model
    info["shape"] = (
        f"GPT-2 n_layer={m.n_layer} n_embd={m.n_embd} n_head={m.n_head} seq={cfg.data.seq_len} "
        f"batch={cfg.train.batch_size} vocab={info['vocab_size']} attn={m.attn_implementation} "
        f"tied={m.tie_embeddings} fp32; phase 1 = stage 2 of increments [{first}, {L - first}]"
    )
    result = {
        "benchmark": "step_throughput",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(
            [
                "python",
                "benchmarks/step_throughput.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": machine_info(args.threads),
        "plan": {
            "rounds": rounds,
            "steps": steps,
            "warmup": warmup,
            "malloc_pinned": pinned,
            "measure_seconds": round(elapsed, 1),
        },
        "model": info,
        "variants": [{"name": v.name, "label": v.label} for v in variants],
        "per_round_step_s": per_round,
        "summary": summarise(per_round, info, threads=args.threads),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
