"""``stagetune sweep``: its flags and its command (the rest of the CLI is :mod:`stagetune.cli`).

Kept apart so :mod:`stagetune.cli` stays a short table of commands; it hands this module its
shared helpers (config flags, config loading) instead of being imported from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_sweep_parser", "run_sweep_command"]

_DATA_KEYS = ("data.source", "data.max_corpus_mb")


def add_sweep_parser(sw: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's own flags (the config flags are the other commands')."""
    from stagetune.orchestration.sweep_plan import DEFAULT_REFERENCE_LRS, DEFAULT_TOKENS_PER_PARAM

    default_tpp = ",".join(f"{x:g}" for x in DEFAULT_TOKENS_PER_PARAM)
    sw.add_argument(
        "--tokens-per-param",
        default=default_tpp,
        help=f"training lengths in tokens per non-embedding parameter (default {default_tpp}), "
        "e.g. --tokens-per-param 0.3,3,30",
    )
    sw.add_argument(
        "--sizes",
        help="model sizes as LAYERSxWIDTH (default: the config's), e.g. --sizes 4x128,6x128",
    )
    sw.add_argument(
        "--seeds", type=int, default=3, help="seeds per schedule (default 3), e.g. --seeds 5"
    )
    sw.add_argument(
        "--reference-lrs",
        default=",".join(f"{x:g}" for x in DEFAULT_REFERENCE_LRS),
        help="the full-depth reference's lr sweep: multiples of train.lr beside it "
        "(default %(default)s), e.g. --reference-lrs 0.25,0.5,2",
    )
    sw.add_argument(
        "--untuned-schedules",
        action="store_true",
        help="run the schedules at train.lr only (default: each also at every --reference-lrs "
        "multiple, the reference's own lr tuning)",
    )
    sw.add_argument(
        "--from-study",
        metavar="DIR",
        help="work directory of a prior 'wide' study: its best schedule joins, e.g. --from-study work",
    )
    sw.add_argument(
        "--target-params",
        type=float,
        help="planned run: non-embedding parameters, e.g. --target-params 85e6",
    )
    sw.add_argument(
        "--target-tokens", type=float, help="planned run: training tokens, e.g. --target-tokens 5e9"
    )
    sw.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS or a local instance)"
    )
    sw.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db)"
    )
    sw.add_argument("--resume", action="store_true", help="continue the sweep in --workdir")
    sw.add_argument("--quiet", action="store_true", help="no live progress display")


def _data_given(args: argparse.Namespace) -> bool:
    """The user chose the data (``--set data.source=...``, or a config file's ``data``)."""
    if any(o.split("=", 1)[0].strip() in _DATA_KEYS for o in args.overrides):
        return True
    if args.config:
        from stagetune.config.loading import read_config_file

        data = read_config_file(args.config).get("data") or {}
        return any(k in data for k in ("source", "max_corpus_mb"))
    return False


def _options(args: argparse.Namespace) -> Any:
    from stagetune.errors import ConfigError
    from stagetune.orchestration.sweep import SweepOptions
    from stagetune.orchestration.sweep_plan import parse_floats, parse_sizes

    if (args.target_params is None) != (args.target_tokens is None):
        raise ConfigError("--target-params", args.target_params, "give --target-tokens with it")
    target = None
    if args.target_params is not None:
        if args.target_params <= 0 or args.target_tokens <= 0:
            raise ConfigError("--target-params", args.target_params, "use positive numbers")
        target = (args.target_params, args.target_tokens)
    if not 2 <= args.seeds <= 20:
        raise ConfigError("--seeds", args.seeds, "use 2-20 seeds (an interval needs two)")
    return SweepOptions(
        tokens_per_param=parse_floats(args.tokens_per_param, "--tokens-per-param"),
        sizes=parse_sizes(args.sizes) if args.sizes else (),
        seeds=args.seeds,
        reference_lrs=parse_floats(args.reference_lrs, "--reference-lrs"),
        tune_schedules=not args.untuned_schedules,
        from_study=Path(args.from_study) if args.from_study else None,
        target=target,
    )


def _base_config(args: argparse.Namespace, load: Callable[..., Any], options: Any) -> Any:
    """The config every study starts from: the sweep's data default unless the user chose."""
    from stagetune.models.size import param_counts
    from stagetune.orchestration.sweep import config_with
    from stagetune.orchestration.sweep_plan import SWEEP_SOURCE, corpus_cap_mb

    cfg = load(args)
    if _data_given(args):
        return cfg
    sizes = options.sizes or [(cfg.model.n_layer, cfg.model.n_embd)]
    vocab = cfg.model.vocab_size or cfg.data.vocab_size
    need = max(options.tokens_per_param) * max(
        param_counts(
            config_with(cfg, model={"n_layer": n, "n_embd": d}).model, vocab_size=vocab
        ).non_embedding
        for n, d in sizes
    )
    cap = max(cfg.data.max_corpus_mb, corpus_cap_mb(need, cfg.data.eval_fraction))
    return config_with(cfg, data={"source": SWEEP_SOURCE, "max_corpus_mb": cap})


def run_sweep_command(args: argparse.Namespace, load: Callable[..., Any], stopper: Any) -> int:
    """``stagetune sweep`` (under ``stopper``, like ``run``)."""
    from stagetune.errors import ConfigError
    from stagetune.orchestration.sweep import prepare_sweep, run_sweep

    if args.resume:
        for flag, given in (
            ("--config", args.config),
            ("--preset", args.preset),
            ("--set", args.overrides),
            ("--sizes", args.sizes),
            ("--from-study", args.from_study),
        ):
            if given:
                raise ConfigError(flag, given, "--resume continues the sweep as planned; drop it")
        workdir = Path(args.workdir or "stagetune-sweep")
        prep = prepare_sweep(
            None, None, workdir=workdir, resume=True, tracking_uri=args.tracking_uri
        )
    else:
        options = _options(args)
        base = _base_config(args, load, options)
        workdir = Path(args.workdir or "stagetune-sweep")
        prep = prepare_sweep(
            base, options, workdir=workdir, resume=False, tracking_uri=args.tracking_uri
        )
    quiet = args.quiet or args.json

    def echo(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    if prep.corpus_note:
        echo(f"[sweep] {prep.corpus_note}")
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = run_sweep(prep, quiet=quiet, address=args.address, stopper=stopper, echo=echo)
    if args.json:
        print(
            json.dumps(
                {
                    **result.report.data,
                    "run_id": result.run_id,
                    "elapsed_s": result.elapsed,
                    "paths": {k: str(v) for k, v in result.report.paths.items()},
                },
                default=str,
            )
        )
        return 0
    print(result.report.text)
    print(f"report: {result.report.paths['sweep_report.md']} (and .html, .json, regime_curve.png)")
    print(f"MLflow: experiment '{prep.name}' at {prep.tracking_uri}, sweep run {result.run_id}")
    print(f"done in {result.elapsed:.0f}s")
    return 0
