"""The ``stagetune`` command line: its commands and flags, each with its help, its default and
an example (the behaviour is in :mod:`stagetune.cli`)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from stagetune.registry import CONVENTIONS

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"stagetune: error: {message} (see '{self.prog} --help')\n")


_DESCRIPTION = """\
stagetune searches incremental (layer-wise growing) training schedules of a causal language
model with Ray Tune + Optuna and compares each with full-depth training at equal compute.
Results land in MLflow (one run per trial) and in a report."""

_EXAMPLES = """\
examples:
  stagetune estimate --stages 4                 what a 4-stage schedule costs vs the baseline
  stagetune run --trials 8 --workdir work       search, then report at equal compute
  stagetune sweep --workdir sweep               the same study at several training lengths
  stagetune report --workdir work               rebuild the report from MLflow
  stagetune ui --workdir work                   browse the runs in MLflow's UI
  stagetune train --set schedule.num_stages=4   train one schedule, export the model

'stagetune COMMAND --help' describes each command."""


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and examples as written; every flag's default shown where it has one (a
    flag whose default comes from the config says so in its help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (
            action.help or ""
        ):
            return action.help
        return super()._get_help_string(action)


def _config_args(p: argparse.ArgumentParser, *, workdir: str) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="YAML config file merged over the preset, e.g. my.yaml"
    )
    from stagetune.config import PRESETS

    names = ", ".join(PRESETS)
    p.add_argument("--preset", help=f"named preset: {names} (default: tiny), e.g. --preset smoke")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-3 (repeatable)",
    )
    p.add_argument(
        "--workdir",
        help=f"work directory: MLflow store, Optuna storage, results (default: {workdir})",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _sub(sub: Any, name: str, summary: str, description: str, examples: str) -> Any:
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary}.\n\n{description}",
        epilog="examples:\n" + examples,
        formatter_class=_Help,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``stagetune`` command's parser: every command, flag, default and example."""
    from stagetune import __version__
    from stagetune.config import ExperimentConfig

    d = ExperimentConfig()
    parser = _Parser(
        prog="stagetune", description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=_Help
    )
    parser.add_argument("--version", action="version", version=f"stagetune {__version__}")
    sub = parser.add_subparsers(
        dest="command", parser_class=_Parser, required=True, metavar="COMMAND"
    )

    run = _sub(
        sub, "run", "search schedules (Ray Tune + Optuna) and compare them at equal compute",
        "Trains the baseline and sampled schedules, stops weak ones early (ASHA on FLOPs), logs\n"
        "every trial to MLflow and ends with the report: a table, a verdict, plots.",
        "  stagetune run --trials 8 --workdir work\n"
        "  stagetune run --preset smoke --space compact --seeds 3\n"
        "  stagetune run --resume --workdir work",
    )  # fmt: skip
    _config_args(run, workdir=d.workdir)
    run.add_argument(
        "--trials", type=int,
        help=f"trials including the baseline (default: {d.search.num_trials}), e.g. --trials 16",
    )  # fmt: skip
    run.add_argument(
        "--space",
        help=f"search space: wide, paper, compact (default: {d.search.space}), e.g. --space paper",
    )
    run.add_argument(
        "--budget-factor", type=float,
        help="budget as a multiple of the baseline's compute "
        f"(default: {d.budget.factor:g}), e.g. --budget-factor 1.5",
    )  # fmt: skip
    run.add_argument(
        "--workers-per-trial", type=int,
        help="Ray Train workers per trial "
        f"(default: {d.resources.workers_per_trial}), e.g. --workers-per-trial 2",
    )  # fmt: skip
    run.add_argument(
        "--seeds", type=int,
        help=f"confirmation round: the reference and the best schedules on N seeds in all "
        f"(default: {d.search.seeds}), "
        "e.g. --seeds 3",
    )  # fmt: skip
    run.add_argument(
        "--address",
        help="Ray cluster address (default: $RAY_ADDRESS or a local instance), "
        "e.g. --address 10.0.0.5:6379",
    )
    run.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db), "
        "e.g. --tracking-uri http://127.0.0.1:5000",
    )
    run.add_argument("--resume", action="store_true", help="continue the study in --workdir")
    run.add_argument(
        "--quiet", action="store_true", help="no live progress (the final table still prints)"
    )

    train = _sub(
        sub, "train", "train one schedule (no search) and export the model",
        "Trains the configured schedule, writes metrics and checkpoints to --out, exports the\n"
        "final model with its tokenizer to <out>/final (transformers' from_pretrained loads it)\n"
        "and logs the run to MLflow (experiment <name>-train in the work directory).",
        "  stagetune train --set schedule.num_stages=1 --out runs/base\n"
        "  stagetune train --set schedule.increments=[2,2,2] --out runs/s3 --baseline runs/base",
    )  # fmt: skip
    _config_args(train, workdir=d.workdir)
    train.add_argument(
        "--out", help="output directory (default: <workdir>/train/<name>), e.g. --out runs/s4"
    )
    train.add_argument(
        "--workers", type=int,
        help=f"Ray Train workers (default: {d.resources.workers_per_trial}: in-process), "
        "e.g. --workers 2",
    )  # fmt: skip
    train.add_argument(
        "--resume", action="store_true", help="resume from the latest checkpoint in --out"
    )
    # A directory rather than training a baseline on the spot: the baseline is trained once
    # and compared with every schedule tried after it.
    train.add_argument(
        "--baseline",
        metavar="DIR",
        help="the --out directory of an earlier 'stagetune train' run to compare with at "
        "equal compute, e.g. --baseline runs/base (trained with --set schedule.num_stages=1)",
    )

    est = _sub(
        sub, "estimate", "FLOPs of a schedule vs the baseline, without training",
        "Prints the schedule 'stagetune train' would run, phase by phase, in the chosen FLOPs\n"
        "convention (the one the budget is matched in), with tokens and % of the baseline.",
        "  stagetune estimate --stages 4\n"
        "  stagetune estimate --increments 2,2,4,4 --convention paper --json",
    )  # fmt: skip
    _config_args(est, workdir=d.workdir)
    est.add_argument(
        "--stages", type=int,
        help=f"number of stages S, uniform increments (default: {d.schedule.num_stages}), "
        "e.g. --stages 4",
    )  # fmt: skip
    est.add_argument(
        "--increments",
        help="explicit layers added per stage (default: uniform), e.g. --increments 2,2,4,4",
    )
    est.add_argument(
        "--convention", choices=CONVENTIONS.names(),
        help=f"FLOPs convention the budget is matched in (default: {d.budget.convention}), "
        "e.g. --convention paper",
    )  # fmt: skip

    rep = _sub(
        sub, "report", "rebuild the compute-matched comparison from MLflow",
        "Reads the study back from MLflow, writes report.md/html/json and plots, logs them and\n"
        "every run's summary metrics to MLflow, and prints the table.",
        "  stagetune report --workdir work\n"
        "  stagetune report --workdir work --json > report.json",
    )  # fmt: skip
    rep.add_argument(
        "--experiment",
        help="MLflow experiment (default: the study's, read from --workdir), e.g. "
        "--experiment my-study",
    )
    rep.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db), "
        "e.g. --tracking-uri http://127.0.0.1:5000",
    )
    rep.add_argument(
        "--workdir", default=d.workdir, help="work directory of the study, e.g. --workdir work"
    )
    rep.add_argument(
        "--output",
        help="directory for report.md/html/json and plots (default: <workdir>/report)",
    )
    rep.add_argument(
        "--sync", action="store_true", help="first deliver metrics spooled while MLflow was away"
    )
    rep.add_argument(
        "--json", action="store_true", help="print report.json (the same document) to stdout"
    )

    from stagetune.cli_sweep import add_sweep_parser

    sw = _sub(
        sub, "sweep", "the same study at several training lengths: where incremental training stops paying",
        "Runs one study per training length (tokens per non-embedding parameter) and model size:\n"
        "the tuned full-depth reference, the paper's S=2 and S=4, a G_stack-style schedule, each\n"
        "on every seed; then fits the regime curve and estimates the crossover.",
        "  stagetune sweep --workdir sweep --tokens-per-param 0.3,3,30 --seeds 3\n"
        "  stagetune sweep --resume --workdir sweep",
    )  # fmt: skip
    _config_args(sw, workdir=d.workdir)
    add_sweep_parser(sw)

    ui = _sub(
        sub, "ui", "start the MLflow UI on the study's store",
        "Serves MLflow's UI on the work directory's store, on loopback unless told otherwise;\n"
        "Ctrl-C stops it.",
        "  stagetune ui --workdir work\n"
        "  stagetune ui --workdir work --port 0",
    )  # fmt: skip
    ui.add_argument(
        "--workdir", default=d.workdir, help="work directory of the study, e.g. --workdir work"
    )
    ui.add_argument(
        "--tracking-uri",
        help="backend store URI (default: sqlite:///<workdir>/mlflow.db), "
        "e.g. --tracking-uri sqlite:///other.db",
    )
    ui.add_argument(
        "--host", default="127.0.0.1", help="bind address (loopback only), e.g. --host 0.0.0.0"
    )
    ui.add_argument("--port", type=int, default=5000, help="TCP port (0: any free), e.g. --port 0")
    return parser
