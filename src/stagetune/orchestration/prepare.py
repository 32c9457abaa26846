"""Preparing a study: everything that can be refused is checked before anything is created.

The order matters for the "nothing half-written" rule: config, work directory, tracking store,
data and the search space's own points are checked here, before the first file or run exists
(the cluster's shape is checked once Ray is up, still before the first write). A work directory
holds one study, driven by one process at a time: a new study needs a directory of its own
(empty, or new), and the driver holds the directory's lock from before its first write until
it ends (:func:`hold_workdir`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.data import prepare_data
from stagetune.data.prepare import PreparedData, model_vocab_size
from stagetune.errors import ConfigError
from stagetune.models.size import param_counts
from stagetune.orchestration.lock import DirectoryLock, check_unlocked
from stagetune.orchestration.samplers import make_sampler
from stagetune.orchestration.storage import (
    StudyPaths,
    check_fresh_workdir,
    check_own_directory,
    check_writable,
)
from stagetune.results.regime import Regime
from stagetune.results.store import check_tracking_uri, sqlite_path
from stagetune.search_spaces import SearchSpace, SpaceContext, get_search_space

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = [
    "WORKDIR_FIELD",
    "PreparedStudy",
    "hold_workdir",
    "prepare_study",
    "study_regime",
    "tune_storage",
]

WORKDIR_FIELD = "workdir"


@dataclass(kw_only=True)
class PreparedStudy:
    """A validated study, ready to launch (nothing started yet)."""

    config: ExperimentConfig
    paths: StudyPaths
    vocab_size: int
    space: SearchSpace
    ctx: SpaceContext
    resume: bool
    regime: Regime
    """The reference's size and training length (its params go to the MLflow parent run)."""
    data: PreparedData
    """The tokens, prepared once for the study: its trials memory-map them."""
    sampler: BaseSampler
    """The study's seeded sampler, built (and checked to pickle) here; a new study's search
    takes it, a resumed one restores its own from Tune's snapshot."""


def prepare_study(
    cfg: ExperimentConfig | None,
    *,
    workdir: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
) -> PreparedStudy:
    """Validate everything that can be refused; returns without creating anything.

    The work directory must be a directory of its own (not ``/``, a top-level directory or the
    home directory) that no live driver holds; a new study's must hold no study and nothing
    foreign. On ``resume`` the config is the study's own (``study.json``); only
    ``tracking_uri`` (a tracking server that moved) may replace the stored one.
    """
    if resume:
        base = Path(workdir or (cfg.workdir if cfg else "stagetune-work")).expanduser().resolve()
        paths = StudyPaths(base)
        _check_workdir(paths, fresh=False)
        stored = paths.load_study()
        if tracking_uri:
            tracking = {**(stored.get("tracking") or {}), "tracking_uri": tracking_uri}
            stored = {**stored, "tracking": tracking}
        cfg = config_from_dict(stored)
        if not paths.optuna_db.is_file():
            raise ConfigError(
                "--resume",
                str(base),
                "the study has no Optuna storage; start it again without --resume",
            )
    else:
        assert cfg is not None
        if workdir:
            cfg = config_from_dict({**config_to_dict(cfg), "workdir": workdir})
        paths = StudyPaths(cfg.workdir_path)
        _check_workdir(paths, fresh=True)
    check_tracking_uri(cfg.resolved_tracking_uri())
    check_writable(paths.workdir, WORKDIR_FIELD)
    if cfg.resources.storage_path and "://" not in cfg.resources.storage_path:
        check_writable(Path(cfg.resources.storage_path).expanduser(), "resources.storage_path")
    db = sqlite_path(cfg.resolved_tracking_uri())
    if db is not None and db.parent != paths.workdir:
        check_writable(db.parent, "tracking.tracking_uri")
    data = prepare_data(cfg.data)
    vocab = model_vocab_size(cfg, data)
    space = get_search_space(cfg.search.space)
    ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
    # The baseline is every study's first point: a config it cannot be built from is refused
    # here, not as a failed first trial.
    space.build(space.baseline_point(ctx), ctx)
    for i, point in enumerate(cfg.search.points_to_evaluate):
        _check_point(space, ctx, point, i)
    # Tune pickles the sampler into the study's first file: one it cannot save is refused here.
    sampler = make_sampler(cfg, space)
    return PreparedStudy(
        config=cfg,
        paths=paths,
        vocab_size=vocab,
        space=space,
        ctx=ctx,
        resume=resume,
        regime=study_regime(cfg, vocab_size=vocab, num_tokens=data.num_tokens),
        data=data,
        sampler=sampler,
    )


def tune_storage(prep: PreparedStudy) -> str:
    """Where the study's Tune experiments live: ``resources.storage_path`` (a local path or a
    pyarrow URI), else ``<workdir>/ray_results``."""
    return prep.config.resources.storage_path or str(prep.paths.ray_storage)


def study_regime(cfg: ExperimentConfig, *, vocab_size: int, num_tokens: int) -> Regime:
    """The regime of the study ``cfg`` describes: the full-depth model's parameter counts and
    the T steps every full-depth recipe trains, over ``num_tokens`` of data."""
    counts = param_counts(cfg.model, vocab_size=vocab_size)
    return Regime(
        params_total=counts.total,
        params_non_embedding=counts.non_embedding,
        tokens_trained=cfg.schedule.baseline_steps * cfg.train.batch_size * cfg.data.seq_len,
        train_tokens=int(num_tokens * (1.0 - cfg.data.eval_fraction)),
    )


def _check_workdir(paths: StudyPaths, *, fresh: bool) -> None:
    check_own_directory(paths.workdir, WORKDIR_FIELD)
    # A directory in use is named as such first: its holder explains what else is there.
    check_unlocked(paths.workdir, field=WORKDIR_FIELD)
    if fresh:
        check_fresh_workdir(paths, WORKDIR_FIELD)


def _check_point(space: SearchSpace, ctx: SpaceContext, point: dict[str, Any], i: int) -> None:
    """A point to evaluate must be a complete point of the space, other than the baseline."""
    where = f"search.points_to_evaluate[{i}]"
    try:
        trial = space.build(point, ctx)
    except ConfigError as exc:
        name = exc.field.rsplit(".", 1)[-1]
        raise ConfigError(f"{where}.{name}", exc.value, exc.fix) from None
    if trial.is_baseline:
        raise ConfigError(where, point, "is the baseline, which every study runs anyway; drop it")


@contextlib.contextmanager
def hold_workdir(prep: PreparedStudy) -> Iterator[DirectoryLock]:
    """Hold the study's work directory for the driver's whole life (see :mod:`.lock`).

    A new study's directory is checked once more under the lock: another driver may have
    started a study there since :func:`prepare_study` looked.
    """
    with DirectoryLock(prep.paths.workdir, field=WORKDIR_FIELD, command="stagetune run") as lock:
        if not prep.resume:
            check_fresh_workdir(prep.paths, WORKDIR_FIELD)
        yield lock
