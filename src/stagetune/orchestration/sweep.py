"""``stagetune sweep``: the same study at several training lengths, then the regime curve.

A sweep owns a work directory (held by a lock, like a study's): ``sweep.json`` (the plan, and
which studies are done), ``studies/<name>/`` (each an ordinary study work directory, run by
:func:`~stagetune.orchestration.study.run_study`), the MLflow store shared by all its studies
(one experiment named after the sweep: sweep run → study parent runs → trials) and
``report/`` (:mod:`stagetune.results.sweep_report`). ``--resume`` continues the first study not
done (resuming it if it had started) and skips the finished ones. The plan is
:mod:`.sweep_plan`'s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.data import prepare_data
from stagetune.data.prepare import model_vocab_size
from stagetune.errors import ConfigError
from stagetune.orchestration.interrupt import StudyInterrupted, StudyStopper
from stagetune.orchestration.lock import LOCK_FILE, DirectoryLock, check_unlocked
from stagetune.orchestration.prepare import hold_workdir, prepare_study
from stagetune.orchestration.storage import StudyPaths, check_own_directory, check_writable
from stagetune.orchestration.study import run_study
from stagetune.orchestration.sweep_plan import PlannedStudy, plan_studies, study_points
from stagetune.results.store import check_tracking_uri
from stagetune.results.sweep_report import SweepPoint, SweepReport, build_sweep_report
from stagetune.results.sweep_run import SweepRun
from stagetune.search_spaces import SpaceContext, get_search_space

__all__ = ["SWEEP_FILE", "PreparedSweep", "SweepOptions", "prepare_sweep", "run_sweep"]

SWEEP_FILE: Final = "sweep.json"
STUDIES_DIR: Final = "studies"
WORKDIR_FLAG: Final = "--workdir"
COMMAND: Final = "stagetune sweep"


@dataclass(kw_only=True)
class SweepOptions:
    """What ``stagetune sweep`` asks for beyond a study's config."""

    tokens_per_param: Sequence[float]
    sizes: Sequence[tuple[int, int]] = ()
    """(layers, width) pairs; empty: the config's model."""
    seeds: int = 3
    reference_lrs: Sequence[float] = (0.5, 2.0)
    tune_schedules: bool = True
    """Each schedule also at every ``reference_lrs`` multiple of its lr (the reference's
    tuning); ``False``: the schedules at the configured lr only."""
    from_study: Path | None = None
    target: tuple[float, float] | None = None
    """A planned run: (non-embedding parameters, training tokens)."""


@dataclass(kw_only=True)
class PreparedSweep:
    """A validated sweep (nothing created yet)."""

    name: str
    workdir: Path
    tracking_uri: str
    studies: list[PlannedStudy]
    target: tuple[float, float] | None
    resume: bool
    done: list[str] = field(default_factory=list)
    corpus_note: str = ""

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tracking_uri": self.tracking_uri,
            "target": list(self.target) if self.target else None,
            "studies": [s.to_dict() for s in self.studies],
            "done": self.done,
        }

    def save(self) -> None:
        path = self.workdir / SWEEP_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=1), encoding="utf-8")
        os.replace(tmp, path)


def _best_of_prior_study(workdir: Path) -> dict[str, Any]:
    """The params of the best incremental trial (lowest eval loss) of a finished ``wide`` study."""
    import optuna

    paths = StudyPaths(workdir.expanduser().resolve())
    if not paths.study_file.is_file() or not paths.optuna_db.is_file():
        raise ConfigError("--from-study", str(workdir), "holds no study; pass a study's --workdir")
    cfg = config_from_dict(paths.load_study())
    if cfg.search.space != "wide":
        raise ConfigError(
            "--from-study",
            str(workdir),
            f"searched space {cfg.search.space!r}; a sweep takes points of 'wide' only",
        )
    st = optuna.load_study(study_name=cfg.name, storage=paths.optuna_url)
    done = [
        t
        for t in st.trials
        if t.state == optuna.trial.TrialState.COMPLETE and int(t.params.get("num_stages", 1)) > 1
    ]
    if not done:
        raise ConfigError("--from-study", str(workdir), "has no finished incremental trial")
    return dict(min(done, key=lambda t: t.values[0]).params)


def prepare_sweep(
    base: ExperimentConfig | None,
    options: SweepOptions | None,
    *,
    workdir: Path,
    resume: bool,
    tracking_uri: str | None = None,
) -> PreparedSweep:
    """Check everything that can be refused and plan the studies; creates nothing."""
    workdir = workdir.expanduser().resolve()
    check_own_directory(workdir, WORKDIR_FLAG)
    check_unlocked(workdir, field=WORKDIR_FLAG)
    if resume:
        path = workdir / SWEEP_FILE
        if not path.is_file():
            raise ConfigError(
                "--resume", str(workdir), "holds no sweep; start one without --resume"
            )
        state = json.loads(path.read_text(encoding="utf-8"))
        return PreparedSweep(
            name=state["name"],
            workdir=workdir,
            tracking_uri=tracking_uri or state["tracking_uri"],
            studies=[PlannedStudy.from_dict(s) for s in state["studies"]],
            target=tuple(state["target"]) if state.get("target") else None,  # type: ignore[arg-type]
            resume=True,
            done=list(state.get("done", [])),
        )
    assert base is not None and options is not None
    if workdir.is_dir() and any(p.name != LOCK_FILE for p in workdir.iterdir()):
        raise ConfigError(
            WORKDIR_FLAG, str(workdir), "is not empty; choose a new one, or --resume its sweep"
        )
    check_writable(workdir, WORKDIR_FLAG)
    uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    check_tracking_uri(uri, "--tracking-uri")
    prepared = prepare_data(base.data)
    vocab = model_vocab_size(base, prepared)
    extra = [_best_of_prior_study(options.from_study)] if options.from_study else []

    factors = (1.0, *options.reference_lrs) if options.tune_schedules else (1.0,)

    def points_for(cfg: ExperimentConfig) -> list[dict[str, Any]]:
        pts = study_points(cfg, extra=extra, lr_factors=factors)
        return [p for i, p in enumerate(pts) if p not in pts[:i]]

    sizes = options.sizes or [(base.model.n_layer, base.model.n_embd)]
    studies = plan_studies(
        base,
        sweep=base.name,
        tokens_per_param=options.tokens_per_param,
        sizes=sizes,
        seeds=options.seeds,
        vocab_size=vocab,
        reference_lrs=options.reference_lrs,
        points_for=points_for,
        tracking={"tracking_uri": uri, "experiment": base.name, "parent_run_id": None},
        study_dir=lambda name: workdir / STUDIES_DIR / name,
    )
    space = get_search_space("wide")
    for s in studies:
        cfg = config_from_dict(s.config)
        ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
        for i, point in enumerate(cfg.search.points_to_evaluate):
            try:
                space.build(point, ctx)
            except ConfigError as exc:
                raise ConfigError(f"{s.name}: point {i} {exc.field}", exc.value, exc.fix) from None
    longest = max(s.baseline_steps for s in studies) * base.train.batch_size * base.data.seq_len
    train_tokens = prepared.eval_start()
    note = (
        f"corpus {base.data.source}: {train_tokens:,} train tokens; the longest study trains "
        f"{longest:,} ({longest / train_tokens:.2f} epochs)"
    )
    return PreparedSweep(
        name=base.name,
        workdir=workdir,
        tracking_uri=uri,
        studies=studies,
        target=options.target,
        resume=False,
        corpus_note=note,
    )


@dataclass(kw_only=True)
class SweepResult:
    report: SweepReport
    run_id: str
    elapsed: float
    studies: list[str]


def _run_one(
    planned: PlannedStudy, run_id: str, *, quiet: bool, address: str | None, stopper: StudyStopper
) -> None:
    cfg = config_from_dict(planned.config)
    started = StudyPaths(cfg.workdir_path).study_file.is_file()
    if started:
        prep = prepare_study(None, workdir=str(cfg.workdir_path), resume=True)
    else:
        tracking = {**planned.config["tracking"], "parent_run_id": run_id}
        prep = prepare_study(config_from_dict({**planned.config, "tracking": tracking}))
    with hold_workdir(prep):
        run = run_study(prep, quiet=quiet, address=address, stopper=stopper)
    if run.pending_events:
        print(
            f"stagetune: study {planned.name}: {run.pending_events} tracking event(s) wait in "
            f"{run.paths.spool_dir}; the sweep report may miss them",
            file=sys.stderr,
        )


def run_sweep(
    prep: PreparedSweep,
    *,
    quiet: bool = False,
    address: str | None = None,
    stopper: StudyStopper | None = None,
    echo: Any = print,
) -> SweepResult:
    """Run (or continue) every study of the sweep, then build and log the report."""
    stopper = stopper or StudyStopper()
    stopper.resume_as = (COMMAND, prep.workdir)
    t0 = time.time()
    with DirectoryLock(prep.workdir, field=WORKDIR_FLAG, command=COMMAND):
        prep.save()
        sweep_run = SweepRun(prep.tracking_uri, prep.name, prep.name)
        sweep_run.log_params(
            {
                "tokens_per_param": ",".join(f"{s.tokens_per_param:g}" for s in prep.studies),
                "sizes": ",".join(sorted({s.size for s in prep.studies})),
                "studies": len(prep.studies),
                "seeds": config_from_dict(prep.studies[0].config).search.seeds,
            }
        )
        try:
            for planned in prep.studies:
                if planned.name in prep.done:
                    continue
                echo(
                    f"[sweep] {planned.name}: {planned.baseline_steps} baseline steps, "
                    f"{planned.actual_tokens_per_param:.3g} tokens/param"
                )
                _run_one(planned, sweep_run.run_id, quiet=quiet, address=address, stopper=stopper)
                prep.done.append(planned.name)
                prep.save()
        except StudyInterrupted:
            sweep_run.end("interrupted", "KILLED")
            raise
        points = [
            SweepPoint(
                study=s.name,
                size=s.size,
                tokens_per_param=s.actual_tokens_per_param,
                non_embedding_params=s.non_embedding_params,
            )
            for s in prep.studies
        ]
        report = build_sweep_report(
            prep.tracking_uri, prep.name, points, prep.workdir / "report", target=prep.target
        )
        from stagetune.results.sweep_report import sweep_metrics

        metrics, tags = sweep_metrics(report)
        sweep_run.log_results(metrics, tags, list(report.paths.values()))
        sweep_run.end("finished", "FINISHED")
    return SweepResult(
        report=report,
        run_id=sweep_run.run_id,
        elapsed=time.time() - t0,
        studies=[s.name for s in prep.studies],
    )


def config_with(base: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """``base`` with some sections' fields replaced (what the CLI sets for a sweep)."""
    data = config_to_dict(base)
    for name, fields in sections.items():
        data[name] = {**data[name], **fields}
    return config_from_dict(data)
