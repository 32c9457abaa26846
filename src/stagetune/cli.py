"""The ``stagetune`` command: run, sweep, train, estimate, report, ui.

Every user error becomes one line on stderr (field, value, fix) and exit code 2, before
anything is created.

One cohesive module (over 400 lines): the command table and its thin commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagetune.cli_parser import build_parser
from stagetune.errors import StagetuneError

if TYPE_CHECKING:
    from stagetune.orchestration.interrupt import StudyStopper
    from stagetune.orchestration.prepare import PreparedStudy

__all__ = ["main"]


# -------------------------------------------------------------------------------------------


_Flag = tuple[str, str, Any]
"""A command-line flag that sets a config field: (flag, dotted field, value or None)."""


def _load(args: argparse.Namespace, flags: Sequence[_Flag] = ()):  # type: ignore[no-untyped-def]
    """The validated config of ``args``: preset, ``--config``, ``--set``, then the flags.

    One validation for every command (``run``, ``train``, ``estimate``), before anything is
    created: the config's own checks, then the schedule it describes (contradictions, the
    budget rule). An error about a field that a flag set names the flag.
    """
    from stagetune.config import load_config
    from stagetune.errors import ConfigError
    from stagetune.schedule import build_schedule

    given = [(flag, key, value) for flag, key, value in flags if value is not None]
    overrides = list(args.overrides) + [f"{key}={value}" for _, key, value in given]
    if getattr(args, "workdir", None):
        overrides.append(f"workdir={args.workdir}")
    try:
        cfg = load_config(args.config, preset=args.preset, overrides=overrides)
        # The tokenizer's vocabulary is not known yet; it moves FLOPs a little, never validity.
        build_schedule(cfg, vocab_size=cfg.model.vocab_size or cfg.data.vocab_size)
    except ConfigError as exc:
        flag = {key: flag for flag, key, _ in given}.get(exc.field)
        if flag is None:
            raise
        raise ConfigError(flag, exc.value, f"{exc.fix} (the flag sets {exc.field})") from None
    return cfg


def _increments(text: str | None) -> str | None:
    """``--increments 2,2,4`` as a YAML list; ``None`` when the flag is not given."""
    from stagetune.errors import ConfigError

    if text is None:
        return None
    try:
        incs = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            "--increments",
            text,
            "use comma-separated layer counts, e.g. 2,2,4,4 (leave the flag out for the "
            "configured schedule)",
        ) from None
    return json.dumps(incs)


def cmd_estimate(args: argparse.Namespace) -> int:
    from stagetune.estimate import estimate

    cfg = _load(
        args,
        [
            ("--stages", "schedule.num_stages", args.stages),
            ("--increments", "schedule.increments", _increments(args.increments)),
            ("--convention", "budget.convention", args.convention),
        ],
    )
    # Exactly what `stagetune train` would run: the same builder.
    est = estimate(cfg)
    if args.json:
        print(json.dumps(est.to_dict(), indent=1))
        return 0
    _print_estimate(est)
    return 0


def _print_estimate(est: Any) -> None:
    """The plan in the convention the budget is matched in; the other convention in a line."""
    from stagetune.results.formatting import flops_si

    sched, c, tps = est.schedule, est.chosen, est.tokens_per_step
    base_tokens = est.baseline_steps * tps
    print(
        f"model: {est.model}; {tps:,} tokens/step; baseline: {est.baseline_steps} steps, "
        f"{base_tokens:,} tokens, {flops_si(c.baseline_flops)}"
    )
    print(
        f"budget: {est.budget_factor:g}× the baseline = {flops_si(c.budget_flops)}, matched in "
        f"the {est.convention} FLOPs convention (--convention changes it)"
    )
    print(
        f"schedule (what 'stagetune train' runs): {sched.label()}; increments "
        f"{'-'.join(map(str, sched.increments))}; continual steps {sched.continual_steps} "
        f"({est.continual_source})"
    )
    print(f"\n{'stage':>5}  {'phase':<9} {'depth':>5} {'steps':>7} {'tokens':>13} "
          f"{'FLOPs':>14} {'% of baseline':>14}")  # fmt: skip
    steps = 0
    for ph in c.phases:
        steps += ph.steps
        print(
            f"{ph.stage:>5}  {ph.phase:<9} {ph.depth:>5} {ph.steps:>7} {ph.steps * tps:>13,} "
            f"{flops_si(ph.flops):>14} {ph.flops / c.baseline_flops:>14.1%}"
        )
    print(
        f"{'total':>5}  {'':<9} {'':>5} {steps:>7} {steps * tps:>13,} "
        f"{flops_si(c.total_flops):>14} {c.total_ratio:>14.1%}"
    )
    print(
        f"\nstages alone: {c.ratio:.1%} of the baseline; continual steps that match the budget: "
        f"{c.continual_steps_matched}"
    )
    for name, other in est.conventions.items():
        if name != est.convention:
            print(
                f"(in the {name} convention the same schedule costs {other.total_ratio:.1%} of "
                "the baseline; the budget is not matched there)"
            )


def cmd_train(args: argparse.Namespace) -> int:
    from stagetune.data import prepare_data
    from stagetune.data.prepare import model_vocab_size
    from stagetune.errors import ConfigError
    from stagetune.orchestration.lock import LOCK_FILE, DirectoryLock, check_unlocked
    from stagetune.orchestration.storage import TRAIN_DIR, check_own_directory, check_writable
    from stagetune.schedule import build_schedule
    from stagetune.trial import TrialDescription

    cfg = _load(args, [("--workers", "resources.workers_per_trial", args.workers)])
    out = Path(args.out).expanduser() if args.out else cfg.workdir_path / TRAIN_DIR / cfg.name
    check_own_directory(out, "--out")
    check_unlocked(out, field="--out")
    check_writable(out, "--out")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not args.resume:
        raise ConfigError(
            "--out", str(out), "the directory is not empty; pass --resume or another --out"
        )
    baseline = Path(args.baseline).expanduser() if args.baseline else None
    if baseline is not None:
        from stagetune.orchestration.train_run import check_baseline

        check_baseline(baseline)
    prepared = prepare_data(cfg.data)
    vocab = model_vocab_size(cfg, prepared)
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
    from stagetune.orchestration.library_logs import route_library_logs

    route_library_logs(cfg.workdir_path)
    # Everything above can refuse; only from here on is --out created.
    with DirectoryLock(out, field="--out", command="stagetune train"):
        return _train_into(
            out, trial, cfg, vocab, prepared=prepared, baseline=baseline, as_json=args.json
        )


def _train_into(
    out: Path,
    trial: Any,
    cfg: Any,
    vocab: int,
    *,
    prepared: Any,
    baseline: Path | None,
    as_json: bool,
) -> int:
    from stagetune.metrics import STATUS_FINISHED
    from stagetune.orchestration.train_run import compare_runs, log_train_run
    from stagetune.results.formatting import flops_si, ratio
    from stagetune.trainables.launcher import train_to_directory

    res = cfg.resources
    if res.workers_per_trial > 1:
        from stagetune.orchestration.cluster import check_placeable, connect

        check_placeable(res, connect(res.address))
    summary = train_to_directory(
        trial,
        config=cfg,
        vocab_size=vocab,
        out=out,
        echo=None if as_json else _echo,
        tokenizer_json=prepared.tokenizer_path,
        eot_id=prepared.eot_id,
    )
    uri, experiment = log_train_run(cfg, trial, out, summary["status"])
    summary["mlflow"] = {"tracking_uri": uri, "experiment": experiment}
    cmp = compare_runs(out, baseline) if baseline is not None else None
    if cmp is not None:
        summary["baseline"] = {
            "dir": str(baseline),
            "compared_at_flops": cmp.compute,
            "eval_loss": cmp.loss,
            "baseline_eval_loss": cmp.baseline_loss,
            "delta": cmp.delta,
            "compute_fraction": cmp.compute_fraction,
            "speedup": cmp.speedup,
        }
    if as_json:
        print(json.dumps(summary))
        return 0 if summary["status"] == STATUS_FINISHED else 1
    print(
        f"{summary['status']}: final eval loss {summary['final_eval_loss']:.4f} after "
        f"{flops_si(summary['flops'])} ({summary['tokens']} tokens, "
        f"{summary['seconds']:.1f}s); metrics in {out / 'metrics.jsonl'}"
    )
    if summary["model_dir"]:
        print(
            f"model and tokenizer: {summary['model_dir']} "
            "(AutoModelForCausalLM / AutoTokenizer .from_pretrained(dir))"
        )
    print(f"MLflow: experiment '{experiment}' at {uri} (browse with 'stagetune ui')")
    if baseline is not None and cmp is None:
        print(f"vs baseline {baseline}: no overlap on the compute axis, nothing to compare")
    elif cmp is not None:
        reach = (
            f"reached its final loss with {cmp.compute_fraction:.1%} of its compute "
            f"(speedup {ratio(cmp.speedup)})"
            if cmp.compute_fraction is not None
            else "did not reach its final loss"
        )
        print(
            f"vs baseline {baseline}: eval loss {cmp.loss:.4f} vs {cmp.baseline_loss:.4f} "
            f"({cmp.delta:+.4f}) at {flops_si(cmp.compute)}; {reach}"
        )
    return 0 if summary["status"] == STATUS_FINISHED else 1


def _echo(rec: dict[str, Any]) -> None:
    """``stagetune train``'s line per record."""
    from stagetune.results.formatting import flops_si

    print(
        f"step {rec['step']:>6}/{rec['total_steps']}  stage {rec['stage']} {rec['phase']:<9} "
        f"depth {rec['active_depth']}  train {rec['train_loss']:.4f}  eval {rec['eval_loss']:.4f}  "
        f"{flops_si(rec['flops'])}  {rec['seconds']:.1f}s",
        flush=True,
    )


def cmd_run(args: argparse.Namespace, *, stopper: StudyStopper | None = None) -> int:
    from stagetune.config import ExperimentConfig
    from stagetune.orchestration.lock import check_unlocked

    if args.resume:
        from stagetune.errors import ConfigError

        # A resumed study keeps the config it started with (study.json): flags that would
        # change it are refused rather than silently ignored.
        for flag, given in (
            ("--config", args.config),
            ("--preset", args.preset),
            ("--set", args.overrides),
            ("--trials", args.trials),
            ("--space", args.space),
            ("--budget-factor", args.budget_factor),
            ("--workers-per-trial", args.workers_per_trial),
            ("--seeds", args.seeds),
        ):
            if given:
                value = " ".join(given) if isinstance(given, list) else given
                raise ConfigError(
                    flag,
                    value,
                    "--resume continues the study with the config it started with; drop the "
                    "flag, or start a new study in another --workdir",
                )
        cfg, workdir = None, Path(args.workdir or ExperimentConfig.workdir)
    else:
        cfg = _load(
            args,
            [
                ("--trials", "search.num_trials", args.trials),
                ("--workers-per-trial", "resources.workers_per_trial", args.workers_per_trial),
                ("--seeds", "search.seeds", args.seeds),
                ("--space", "search.space", args.space),
                ("--budget-factor", "budget.factor", args.budget_factor),
                ("--tracking-uri", "tracking.tracking_uri", args.tracking_uri or None),
            ],
        )
        workdir = cfg.workdir_path
    # Refuse a directory in use at once, not after the study's imports (seconds).
    check_unlocked(workdir.expanduser().resolve(), field="workdir")
    from stagetune.orchestration.library_logs import route_library_logs

    route_library_logs(workdir)
    from stagetune.orchestration.prepare import hold_workdir, prepare_study

    prep = prepare_study(
        cfg, workdir=args.workdir, resume=args.resume, tracking_uri=args.tracking_uri
    )
    with hold_workdir(prep):
        return _run_prepared(args, prep, stopper=stopper)


def _run_prepared(
    args: argparse.Namespace, prep: PreparedStudy, *, stopper: StudyStopper | None
) -> int:
    from stagetune.orchestration.study import run_study

    t0 = time.time()
    # With --json, stdout carries only the JSON document; Ray's own chatter goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        run = run_study(prep, quiet=args.quiet or args.json, address=args.address, stopper=stopper)
    if run.interrupted:
        print(
            f"stagetune: {len(run.interrupted)} trial(s) interrupted by the earlier driver's "
            f"end could not be continued and were closed: {', '.join(run.interrupted)}",
            file=sys.stderr,
        )
    if run.pending_events:
        # MLflow is still away: the report would miss what the spool holds.
        spool = run.paths.spool_dir
        print(
            f"stagetune: the search finished, but MLflow at {run.tracking_uri} did not take "
            f"{run.pending_events} tracking event(s); they are kept in {spool}. Deliver them "
            f"and build the report with 'stagetune report --sync --workdir {run.paths.workdir}'",
            file=sys.stderr,
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "status": "tracking_pending",
                        "pending": run.pending_events,
                        "spool": str(spool),
                        "experiment": run.experiment,
                    }
                )
            )
        return 1
    return _print_report(
        run.tracking_uri,
        run.experiment,
        run.paths.report_dir,
        as_json=args.json,
        elapsed=time.time() - t0,
        pareto=run.pareto,
        models=lambda outcomes: _export_models(prep, outcomes),
    )


def _export_models(prep: PreparedStudy, outcomes: list[Any]) -> dict[str, Path]:
    """The reference's and the best schedule's models under ``<workdir>/models``."""
    from stagetune.orchestration.prepare import tune_storage
    from stagetune.orchestration.storage import MODELS_DIR
    from stagetune.orchestration.study_models import export_study_models

    root = tune_storage(prep)
    if "://" in root:
        return {}  # Tune's checkpoints live in object storage: nothing local to export
    return export_study_models(
        outcomes,
        storage_root=Path(root).expanduser(),
        out=prep.paths.workdir / MODELS_DIR,
        seed=str(prep.config.train.seed),
        tokenizer_json=prep.data.tokenizer_path,
        eot_id=prep.data.eot_id,
    )


def _print_report(
    tracking_uri: str,
    experiment: str,
    output: Path,
    *,
    as_json: bool,
    elapsed: float | None = None,
    pareto: list[dict[str, Any]] | None = None,
    models: Callable[[list[Any]], dict[str, Path]] | None = None,
) -> int:
    from stagetune.results import build_report, format_table

    report = build_report(
        tracking_uri, experiment, output, log_to_mlflow=True, optuna_pareto=pareto
    )
    exported = models(report.outcomes) if models is not None else {}
    if as_json:
        for role, path in exported.items():
            print(f"stagetune: {role} model exported to {path}", file=sys.stderr)
        # Exactly report.json: one schema for the file and the command.
        print(report.paths["report_json"].read_text(encoding="utf-8"))
        return 0
    print(format_table(report.outcomes))
    print(report.verdict)
    if pareto:
        from stagetune.results.formatting import flops_si

        print("Pareto set (eval loss, FLOPs):")
        for p in pareto:
            print(f"  {p['eval_loss']:.4f}  {flops_si(p['flops'])}  {p['params']}")
    where = f"report: {output / 'report.md'} and {output / 'report.html'}"
    print(where)
    for role, path in exported.items():
        print(f"{role} model: {path} (transformers: from_pretrained of that directory)")
    print(f"MLflow: experiment '{experiment}' at {tracking_uri} (browse with 'stagetune ui')")
    if elapsed is not None:
        print(f"done in {elapsed:.0f}s")
    return 0


def _study_name_from_workdir(workdir: Path) -> tuple[str | None, str | None]:
    from stagetune.orchestration.storage import StudyPaths

    if (workdir / "study.json").is_file():
        data = StudyPaths(workdir).load_study()
        tracking = data.get("tracking") or {}
        return tracking.get("experiment") or data.get("name"), tracking.get("tracking_uri")
    return None, None


def cmd_report(args: argparse.Namespace) -> int:
    from stagetune.config import validate_name
    from stagetune.errors import ConfigError
    from stagetune.results import MlflowTracker
    from stagetune.results.store import check_tracking_uri

    workdir = Path(args.workdir).expanduser().resolve()
    name, uri = _study_name_from_workdir(workdir)
    experiment = args.experiment or name
    if not experiment:
        raise ConfigError(
            "--experiment", None, f"no study in {workdir}; pass --experiment NAME or --workdir"
        )
    validate_name(experiment, "--experiment")
    tracking_uri = args.tracking_uri or uri or f"sqlite:///{workdir / 'mlflow.db'}"
    check_tracking_uri(tracking_uri, "--tracking-uri")
    if args.sync:
        tracker = MlflowTracker(tracking_uri, experiment, spool_dir=workdir / "mlflow_spool")
        synced = tracker.sync_spool()
        if not args.json:
            print(f"spooled metrics: {synced}")
    output = Path(args.output).expanduser() if args.output else workdir / "report"
    return _print_report(tracking_uri, experiment, output, as_json=args.json)


def cmd_ui(args: argparse.Namespace) -> int:
    from stagetune.errors import ConfigError
    from stagetune.results import start_ui

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "use a TCP port in 0-65535 (0: any free port)")
    workdir = Path(args.workdir).expanduser().resolve()
    name, uri = _study_name_from_workdir(workdir)
    tracking_uri = args.tracking_uri or uri or f"sqlite:///{workdir / 'mlflow.db'}"

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # The server runs in its own process group: stop it on SIGTERM too, and take Ctrl-C even
    # when a non-interactive shell started us with SIGINT ignored. Installed before the
    # server starts, so an early signal also reaches start_ui's clean-up.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server = start_ui(tracking_uri, host=args.host, port=args.port, wait=True)
    except KeyboardInterrupt:
        return 130
    print(
        f"MLflow UI: {server.url}  (experiment: {name or 'see the list'}); Ctrl-C stops it",
        flush=True,
    )
    try:
        if server.process is not None:
            server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _sweep(args: argparse.Namespace, *, stopper: StudyStopper) -> int:
    from stagetune.cli_sweep import run_sweep_command

    return run_sweep_command(args, _load, stopper)


def _run_until_stopped(args: argparse.Namespace) -> int:
    """``stagetune run`` (or ``sweep``) under a :class:`StudyStopper`: SIGINT, SIGTERM or a full
    disk stop the study gracefully, at any moment, with one line that says how to continue."""
    from stagetune.orchestration.interrupt import StudyInterrupted, StudyStopper

    # Tune's graceful stop is its SIGINT handler; the stopper routes SIGTERM to it as well.
    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    with StudyStopper() as stopper:
        stopper.as_json = args.json
        try:
            command = _sweep if args.command == "sweep" else cmd_run
            return command(args, stopper=stopper)
        except StudyInterrupted as stop:
            # Further signals are ignored from here on: the clean-up is not cut short.
            stopper.close(stop)
            if stopper.ray_started:
                import ray

                ray.shutdown()  # no raylet, GCS or worker of this driver stays behind
            return stop.exit_code


class _PrintHandler(logging.Handler):
    """Prints records to the ``sys.stdout`` of the moment (``run --json`` redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), flush=True)
        except Exception:
            self.handleError(record)


def _show_training_notes() -> None:
    """The training loop's notes (a corrupt checkpoint skipped, generators reseeded) appear on
    stdout beside its progress lines; stderr stays for the one line of an error."""
    notes = logging.getLogger("stagetune.trainables")
    if not any(isinstance(h, _PrintHandler) for h in notes.handlers):
        handler = _PrintHandler()
        handler.setFormatter(logging.Formatter("[stagetune] %(message)s"))
        notes.addHandler(handler)


EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE
"""Exit code when the reader of stdout went away (``stagetune estimate --json | head``), as for
a process the shell's SIGPIPE ended."""


def _stdout_closed() -> int:
    """The reader closed stdout: stop quietly (no traceback, no second error at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stagetune`` console script."""
    _show_training_notes()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tune's own progress tables at verbose=0 only in the legacy reporter; stagetune prints its
    # own one-line progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    handlers = {
        "run": _run_until_stopped,
        "sweep": _run_until_stopped,
        "train": cmd_train,
        "estimate": cmd_estimate,
        "report": cmd_report,
        "ui": cmd_ui,
    }
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except StagetuneError as exc:
        msg = " ".join(str(exc).split())
        print(f"stagetune: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stagetune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
