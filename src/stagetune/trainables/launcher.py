"""The one launcher: a trial trains in-process (one worker) or on a Ray Train ``TorchTrainer``
(several), for ``stagetune train`` and for every trial of ``stagetune run`` alike.

Several workers run the same loop as one rank each: DDP (or FSDP2 with
``resources.strategy=fsdp``) over ``nccl`` when every worker has a GPU
(``resources.gpus_per_worker > 0``), over ``gloo`` on CPUs; each worker asks Ray for its CPUs
and GPUs. The place of a run (:class:`TrainRun`) is the only difference between the two
commands: a trial of a study reports to Tune (rank 0's records, through
``TuneReportCallback``) and keeps its Train checkpoints in the study's storage; ``stagetune
train`` writes everything under its output directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stagetune.config import ExperimentConfig, ResourcesConfig, config_from_dict, config_to_dict
from stagetune.data import PreparedData
from stagetune.metrics import EVAL_LOSS, FLOPS, FLOPS_PAPER, STATUS_FINISHED
from stagetune.trainables.export import EXPORT_DIR, export_model, latest_checkpoint
from stagetune.trainables.result import TrainResult
from stagetune.trainables.session import (
    CHECKPOINTS_DIR,
    LocalSession,
    Session,
    TrainWorkerSession,
)
from stagetune.trial import TrialDescription

if TYPE_CHECKING:
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

__all__ = [
    "TRAIN_CHECKPOINTS_KEPT",
    "TrainRun",
    "launch",
    "scaling_config",
    "torch_config",
    "torch_trainer",
    "train_to_directory",
    "train_worker_loop",
]

TRAIN_CHECKPOINTS_KEPT = 3
"""Checkpoints a study trial's Ray Train run keeps in its storage (enough to fall back past a
corrupt one when its workers restart)."""
RECORD_KEYS = (
    "step",
    "tokens",
    FLOPS,
    FLOPS_PAPER,
    "seconds",
    "train_loss",
    EVAL_LOSS,
    "stage",
    "phase",
    "active_depth",
    "status",
)
"""What ``stagetune train --workers N`` keeps of each record in ``metrics.jsonl`` (Ray Train
adds its own bookkeeping columns)."""
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True, kw_only=True)
class TrainRun:
    """Where a multi-worker run keeps its state and where its records go."""

    name: str
    """Ray Train's run name: a retried run with the same name and storage resumes."""
    storage_path: str
    """Ray Train's storage (its checkpoints, for worker restarts)."""
    local_root: str
    """Each rank's local checkpoint history (``<local_root>/rank<r>``)."""
    report_to_tune: bool = False
    """Rank 0's records reach the enclosing Tune trial."""
    checkpoints_kept: int | None = None
    """Checkpoints Ray Train keeps (``None``: all)."""
    in_ray_task: bool = False
    """A one-worker run trains inside a Ray task holding ``cpus_per_worker`` CPUs (a Tune
    trial): torch uses that many threads. Outside Ray it keeps torch's default."""

    @classmethod
    def for_study_trial(cls, train_storage: str, trial_id: str) -> TrainRun:
        """A trial of ``stagetune run``: its state under the study's ``train_storage``."""
        return cls(
            name=f"train_{trial_id}",
            storage_path=train_storage,
            local_root=os.path.join(train_storage, "local", trial_id),
            report_to_tune=True,
            checkpoints_kept=TRAIN_CHECKPOINTS_KEPT,
            in_ray_task=True,
        )

    @classmethod
    def for_directory(cls, out: Path) -> TrainRun:
        """``stagetune train --out OUT``: everything under ``OUT``."""
        return cls(name="train", storage_path=str(out / "ray"), local_root=str(out / "workers"))


def launch(
    trial: TrialDescription,
    *,
    config: ExperimentConfig,
    vocab_size: int,
    run: TrainRun,
    session: Callable[[], Session],
    data: PreparedData | None = None,
) -> tuple[TrainResult, list[dict[str, Any]]]:
    """Train ``trial``: in this process through ``session()`` when
    ``resources.workers_per_trial`` is 1, else on a :func:`torch_trainer` placed at ``run``.
    ``data``: the tokens the driver prepared (each worker memory-maps them where it can).

    Returns the result and, for several workers, rank 0's records (a session of one worker has
    them already).
    """
    if config.resources.workers_per_trial == 1:
        # Here, not at the top: a multi-worker trial's Tune actor never builds a model, and
        # the loop's model imports (transformers) would cost it seconds on its first trial.
        from stagetune.trainables.loop import StagedTrainer

        if run.in_ray_task:
            _threads(config.resources.cpus_per_worker)
        loop = StagedTrainer(trial, session(), config=config, vocab_size=vocab_size, data=data)
        return loop.run(), []
    # Ray Train's controller polls workers every 2 s by default and a worker's report waits
    # for that poll: seconds per evaluation on short CPU trials. Ray Train propagates this
    # variable to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    callbacks: list[Any] = []
    if run.report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = torch_trainer(
        trial, config=config, vocab_size=vocab_size, run=run, callbacks=callbacks, data=data
    )
    result = trainer.fit()
    frame = result.metrics_dataframe
    records = [dict(r) for r in frame.to_dict("records")] if frame is not None else []
    last = records[-1] if records else {}
    return TrainResult.from_record(last, resumed_from_step=None), records


def torch_trainer(
    trial: TrialDescription,
    *,
    config: ExperimentConfig,
    vocab_size: int,
    run: TrainRun,
    callbacks: list[Any] | None = None,
    data: PreparedData | None = None,
) -> TorchTrainer:
    """The ``TorchTrainer`` that trains ``trial`` on ``resources.workers_per_trial`` workers
    (built, not started; ``callbacks``: Ray Train's, e.g. the one reporting to Tune;
    ``data``: the driver's prepared tokens, handed to every worker)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    res = config.resources
    return TorchTrainer(
        train_worker_loop,
        train_loop_config={
            "trial": trial.to_dict(),
            "config": config_to_dict(config),
            "vocab_size": vocab_size,
            "local_root": run.local_root,
            "data": data,
        },
        torch_config=torch_config(res),
        scaling_config=scaling_config(res),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.storage_path,
            failure_config=FailureConfig(max_failures=res.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=run.checkpoints_kept),
            callbacks=callbacks or [],
        ),
    )


def torch_config(res: ResourcesConfig) -> TorchConfig:
    """``nccl`` between GPU workers, ``gloo`` between CPU workers."""
    from ray.train.torch import TorchConfig

    return TorchConfig(backend="nccl" if res.gpus_per_worker > 0 else "gloo")


def scaling_config(res: ResourcesConfig) -> ScalingConfig:
    """``workers_per_trial`` workers, each asking for its CPUs and GPUs, placed by
    ``resources.placement_strategy``."""
    from ray.train import ScalingConfig

    use_gpu = res.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(
        num_workers=res.workers_per_trial,
        use_gpu=use_gpu,
        resources_per_worker=per_worker,
        placement_strategy=res.placement_strategy,
    )


def train_worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, one rank of several.

    The plain dicts Ray ships become typed values here, once.
    """
    from stagetune.trainables.loop import StagedTrainer

    trial = TrialDescription.from_dict(loop_config["trial"])
    config = config_from_dict(loop_config["config"], check_names=False)
    _threads(config.resources.cpus_per_worker)
    device = None
    if config.resources.gpus_per_worker > 0:
        import ray.train.torch

        device = ray.train.torch.get_device()
    session = TrainWorkerSession(Path(loop_config["local_root"]))
    StagedTrainer(
        trial,
        session,
        config=config,
        vocab_size=int(loop_config["vocab_size"]),
        device=device,
        data=loop_config.get("data"),
    ).run()


def train_to_directory(
    trial: TrialDescription,
    *,
    config: ExperimentConfig,
    vocab_size: int,
    out: Path,
    echo: Callable[[dict[str, Any]], None] | None = None,
    tokenizer_json: Path | None = None,
    eot_id: int | None = None,
) -> dict[str, Any]:
    """``stagetune train``: train ``trial`` into ``out`` (records in ``metrics.jsonl``,
    checkpoints, ``summary.json``); returns the summary. ``echo`` sees each record of an
    in-process run as it is reported.

    A finished run's model is exported with its tokenizer (``tokenizer_json``, end-of-text id
    ``eot_id``) to ``out/final`` (:mod:`~stagetune.trainables.export`), named in the summary
    as ``model_dir``."""
    out.mkdir(parents=True, exist_ok=True)
    result, records = launch(
        trial,
        config=config,
        vocab_size=vocab_size,
        run=TrainRun.for_directory(out),
        session=lambda: LocalSession(out, echo=echo),
    )
    if records:
        with (out / METRICS_FILE).open("w") as f:
            for r in records:
                f.write(json.dumps({k: r[k] for k in RECORD_KEYS if k in r}) + "\n")
    model_dir = None
    if result.status == STATUS_FINISHED:
        run = TrainRun.for_directory(out)
        # In-process runs keep checkpoints under out/checkpoints, Train's rank 0 its own; a
        # sharded (FSDP) checkpoint is whole only in Ray Train's storage, where every rank's
        # files were merged.
        ckpt = latest_checkpoint(
            [
                out / CHECKPOINTS_DIR,
                Path(run.local_root) / "rank0",
                Path(run.storage_path) / run.name,
            ]
        )
        model_dir = export_model(
            ckpt, out / EXPORT_DIR, tokenizer_json=tokenizer_json, eot_id=eot_id
        )
    summary = {
        **result.to_dict(),
        "schedule": trial.schedule.to_dict(),
        "label": trial.label,
        "out": str(out),
        "model_dir": None if model_dir is None else str(model_dir),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))
