"""How much the environment corpus (``data.source: pysources``) can feed, and what it costs.

Run from the repository root (with stagetune installed, e.g. ``pip install -e .``)::

    python benchmarks/corpus_size.py            # a few minutes on 2 CPU cores
    python benchmarks/corpus_size.py --json     # one JSON object on stdout

What is measured, on the real environment of the running interpreter (its site-packages and
standard library), uncapped (``--max-mb``, default 100000), in a fresh token cache (a temporary
directory, removed afterwards; ``--cache-dir`` keeps one):

* the selection: ``.py`` candidates, files taken (all unique: identical files are taken once),
  files skipped per rule, MiB taken, and the seconds to list and ``stat`` the candidates (the
  fingerprint) and to read and select them (cold: no manifest yet);
* the built-in tokenizer (byte-level BPE, ``--vocab``, default 1024, the default config's):
  training seconds on its bounded sample;
* tokenisation: ``prepare_data`` seconds, tokens, tokens/s and bytes per token;
* the cached second ``prepare_data`` with a fresh source instance (what every trial worker
  does): seconds, and that it is a cache hit;
* the train/eval split at the default ``data.eval_fraction`` (0.05, at a file boundary);
* how many training tokens per non-embedding parameter the train split feeds without
  repeating, for GPT-2 models of depth L ∈ {4, 6, 8} and width d ∈ {64, 128, 256} (parameters
  counted on the built model: every parameter but the token and position embeddings; the
  head is tied to the token embedding).

Seconds depend on the machine's load (the load average is printed); token counts do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine

DEPTHS = (4, 6, 8)
WIDTHS = (64, 128, 256)
_MIB = 1024 * 1024
# Reference points for tokens per non-embedding parameter (issue 11).
COMPUTE_OPTIMAL = 20
PAPER = 60


def _log(msg: str) -> None:
    print(f"[corpus_size {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def non_embedding_params(n_layer: int, n_embd: int, vocab: int) -> int:
    """Parameters of a stagetune GPT-2 (tied head) less its token and position embeddings."""
    from stagetune.config import ModelConfig
    from stagetune.models.family import get_family

    adapter = get_family("gpt2")
    cfg = ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=4)
    model = adapter.model_class()(adapter.build_hf_config(cfg, vocab_size=vocab))
    embedded = {id(p) for m in adapter.embedding_modules(model) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


def measure(max_mb: float, vocab: int, cache_dir: Path) -> dict[str, Any]:
    from stagetune.config import DataConfig
    from stagetune.data import PySourcesCorpus, prepare_data, resolve_tokenizer

    cfg = DataConfig(
        source="pysources", vocab_size=vocab, max_corpus_mb=max_mb, cache_dir=str(cache_dir)
    )
    source = PySourcesCorpus(max_mb, cache_dir=cache_dir)
    t0 = time.perf_counter()
    source.fingerprint()
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    selection = source.selection()
    t_select = time.perf_counter() - t0
    _log(source.describe())

    t0 = time.perf_counter()
    info = resolve_tokenizer(cfg, source)
    t_tokenizer = time.perf_counter() - t0
    _log(f"tokenizer: {info.vocab_size} ids in {t_tokenizer:.1f} s")

    t0 = time.perf_counter()
    prepared = prepare_data(cfg, source=source)
    t_prepare = time.perf_counter() - t0
    _log(f"tokenised: {prepared.num_tokens:,} tokens in {t_prepare:.1f} s")

    stamp = prepared.tokens_path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = prepare_data(cfg, source=PySourcesCorpus(max_mb, cache_dir=cache_dir))
    t_cached = time.perf_counter() - t0
    cache_hit = again == prepared and again.tokens_path.stat().st_mtime_ns == stamp
    _log(f"cached prepare: {t_cached:.2f} s (hit: {cache_hit})")

    eval_start = prepared.eval_start()
    models = []
    for n_layer in DEPTHS:
        for n_embd in WIDTHS:
            params = non_embedding_params(n_layer, n_embd, prepared.vocab_size)
            models.append(
                {
                    "n_layer": n_layer,
                    "n_embd": n_embd,
                    "non_embedding_params": params,
                    "tokens_per_param": eval_start / params,
                }
            )
    return {
        "environment": {label: str(path) for label, path in source.roots.items()},
        "cap_mb": max_mb,
        "candidates": selection.candidates,
        "files": len(selection.files),
        "skipped": selection.skipped,
        "mib": selection.size_bytes / _MIB,
        "seconds_fingerprint": t_scan,
        "seconds_select_cold": t_select,
        "vocab_size": prepared.vocab_size,
        "seconds_tokenizer": t_tokenizer,
        "tokens": prepared.num_tokens,
        "bytes_per_token": selection.size_bytes / prepared.num_tokens,
        "seconds_tokenise": t_prepare,
        "tokens_per_second": prepared.num_tokens / t_prepare,
        "seconds_cached_prepare": t_cached,
        "cache_hit": cache_hit,
        "eval_fraction": prepared.eval_fraction,
        "train_tokens": eval_start,
        "eval_tokens": prepared.num_tokens - eval_start,
        "describe": prepared.describe(),
        "models": models,
    }


def report(out: dict[str, Any]) -> str:
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in out["skipped"].items())
    lines = [
        f"environment: {', '.join(f'{k} {v}' for k, v in out['environment'].items())}",
        f"files: {out['files']:,} taken (unique) of {out['candidates']:,} .py candidates; "
        f"skipped {skipped}",
        f"size: {out['mib']:.1f} MiB (cap {out['cap_mb']:g} MiB); fingerprint (list + stat) "
        f"{out['seconds_fingerprint']:.2f} s, selection (read all, cold) "
        f"{out['seconds_select_cold']:.1f} s",
        f"tokenizer: BPE vocab {out['vocab_size']} trained in {out['seconds_tokenizer']:.1f} s",
        f"tokens: {out['tokens']:,} ({out['bytes_per_token']:.2f} bytes/token); tokenised in "
        f"{out['seconds_tokenise']:.1f} s = {out['tokens_per_second']:,.0f} tokens/s",
        f"cached second prepare: {out['seconds_cached_prepare']:.2f} s "
        f"(cache hit: {out['cache_hit']})",
        f"split at eval_fraction {out['eval_fraction']:g}, at a file boundary: "
        f"{out['train_tokens']:,} train / {out['eval_tokens']:,} eval tokens",
        "",
        "train tokens per non-embedding parameter, without repeating data "
        f"(compute-optimal ≈ {COMPUTE_OPTIMAL}, the paper ≈ {PAPER}):",
        "| L \\ d | " + " | ".join(str(d) for d in WIDTHS) + " |",
        "|---|" + "---:|" * len(WIDTHS),
    ]
    by_size = {(m["n_layer"], m["n_embd"]): m for m in out["models"]}
    for n_layer in DEPTHS:
        cells = []
        for d in WIDTHS:
            m = by_size[(n_layer, d)]
            cells.append(f"{m['tokens_per_param']:.1f} ({m['non_embedding_params'] / 1e6:.2f}M)")
        lines.append(f"| {n_layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-mb", type=float, default=100_000.0, help="data.max_corpus_mb")
    ap.add_argument("--vocab", type=int, default=1024, help="data.vocab_size (default 1024)")
    ap.add_argument("--cache-dir", help="keep the token cache here (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    temporary = args.cache_dir is None
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="stagetune-corpus-"))
    try:
        out = measure(args.max_mb, args.vocab, cache_dir)
    finally:
        if temporary:
            shutil.rmtree(cache_dir, ignore_errors=True)
    out["machine"] = machine(load)
    out["machine"]["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM", "")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(report(out))
        print(f"\nmachine: {json.dumps(out['machine'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
