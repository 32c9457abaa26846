"""The Ray Tune trainable: turns Ray's config dict into a :class:`TrialSpec` once, then trains.

A one-worker trial runs the loop in-process inside the Tune trial (no worker-group start-up).
A multi-worker trial is the driver of a Ray Train ``TorchTrainer`` (DDP or FSDP2) whose rank-0
metrics reach Tune through ``TuneReportCallback``; ranks reduce their metrics first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stagetune.config import ExperimentConfig, config_from_dict, config_to_dict
from stagetune.search_spaces import SpaceContext, get_search_space
from stagetune.trainables.session import TrainWorkerSession, TuneSession
from stagetune.trainables.spec import TrialSpec

__all__ = ["StudyContext", "make_trial_spec", "train_trial", "train_worker_loop"]

TRAIN_CHECKPOINTS_KEPT = 3
"""Checkpoints a multi-worker trial's Ray Train run keeps in its storage."""


@dataclass(frozen=True, kw_only=True)
class StudyContext:
    """What every trial of a study shares (shipped once through the object store)."""

    config: dict[str, Any]
    vocab_size: int
    train_storage: str
    """Where multi-worker trials keep their Ray Train runs (checkpoints for worker restarts)."""

    @classmethod
    def create(cls, cfg: ExperimentConfig, *, vocab_size: int, train_storage: str) -> StudyContext:
        return cls(config=config_to_dict(cfg), vocab_size=vocab_size, train_storage=train_storage)

    def experiment(self) -> ExperimentConfig:
        return config_from_dict(self.config, check_names=False)


def make_trial_spec(params: dict[str, Any], study: StudyContext, *, trial_name: str) -> TrialSpec:
    """Build the typed trial description from the searcher's parameters (pure)."""
    cfg = study.experiment()
    # Seed repeats wrap their point as {"point": {...}} (a grid over whole points).
    params = dict(params.get("point", params))
    seed = int(params.pop("seed", cfg.train.seed))
    space = get_search_space(cfg.search.space)
    ctx = SpaceContext.from_config(cfg, vocab_size=study.vocab_size)
    plan = space.build(params, ctx)
    return TrialSpec(
        config=cfg,
        schedule=plan.schedule,
        lr=plan.lr,
        warmup_steps=plan.warmup_steps,
        seed=seed,
        vocab_size=study.vocab_size,
        is_baseline=plan.is_baseline,
        trial_name=trial_name,
        params={**plan.params, "seed": seed, "schedule_key": plan.schedule_key},
    )


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


def train_trial(config: dict[str, Any], study: StudyContext) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters(study=...)``)."""
    from ray import tune

    ctx = tune.get_context()
    spec = make_trial_spec(config, study, trial_name=ctx.get_trial_name())
    res = spec.config.resources
    if res.workers_per_trial == 1:
        _threads(res.cpus_per_worker)
        from stagetune.trainables.loop import StagedTrainer

        StagedTrainer(spec, TuneSession()).run()
        return
    _run_torch_trainer(spec, study, trial_id=ctx.get_trial_id())


def train_worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, one rank of several."""
    spec = TrialSpec.from_dict(loop_config["spec"])
    _threads(spec.config.resources.cpus_per_worker)
    session = TrainWorkerSession(Path(loop_config["local_root"]))
    device = None
    if spec.config.resources.gpus_per_worker > 0:
        import ray.train.torch

        device = ray.train.torch.get_device()
    from stagetune.trainables.loop import StagedTrainer

    StagedTrainer(spec, session, device=device).run()


def _run_torch_trainer(spec: TrialSpec, study: StudyContext, *, trial_id: str) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray Train's controller polls workers every 2 s by default and a worker's report waits
    # for that poll: seconds per evaluation on short CPU trials. Ray Train propagates this
    # variable to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    res = spec.config.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    local_root = os.path.join(study.train_storage, "local", trial_id)
    trainer = TorchTrainer(
        train_worker_loop,
        train_loop_config={"spec": spec.to_dict(), "local_root": local_root},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            # Same name + storage on a retried trial: Ray Train resumes from its checkpoints.
            name=f"train_{trial_id}",
            storage_path=study.train_storage,
            failure_config=FailureConfig(max_failures=res.max_failures),
            # The newest few are enough to resume (and to fall back past a corrupt one).
            checkpoint_config=CheckpointConfig(num_to_keep=TRAIN_CHECKPOINTS_KEPT),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    trainer.fit()
