"""Where a study runs and where it is tracked: the ``resources`` and ``tracking`` sections."""

from __future__ import annotations

from dataclasses import dataclass

from stagetune.config.checks import choice, require

__all__ = ["PLACEMENT_STRATEGIES", "ResourcesConfig", "TrackingConfig"]

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray placement group strategies a multi-worker trial may ask for."""


@dataclass(kw_only=True)
class ResourcesConfig:
    """Where and how each trial runs."""

    workers_per_trial: int = 1
    """Ray Train workers per trial (1 runs the loop in-process inside the Tune trial)."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    strategy: str = "ddp"
    """Multi-worker strategy: ``ddp`` or ``fsdp`` (FSDP2 ``fully_shard``)."""
    placement_strategy: str = "PACK"
    """Where a multi-worker trial's workers go (a Ray placement group strategy): ``PACK`` as
    few nodes as possible, ``SPREAD`` over nodes when they fit, ``STRICT_PACK`` one node,
    ``STRICT_SPREAD`` one worker per node (a node lost costs one worker's share)."""
    address: str | None = None
    """Ray cluster address; ``None`` uses ``$RAY_ADDRESS`` or starts a local instance."""
    max_failures: int = 2
    """Trial restarts from its latest checkpoint after a worker or node failure."""
    storage_path: str | None = None
    """Ray Tune storage (local path or a pyarrow URI); default ``<workdir>/ray_results``."""

    def __post_init__(self) -> None:
        require(
            self.workers_per_trial >= 1,
            "resources.workers_per_trial",
            self.workers_per_trial,
            "use a positive number of workers (at least 1)",
        )
        require(
            self.cpus_per_worker > 0, "resources.cpus_per_worker", self.cpus_per_worker, "use > 0"
        )
        require(
            self.gpus_per_worker >= 0, "resources.gpus_per_worker", self.gpus_per_worker, "use >= 0"
        )
        choice(self.strategy, ("ddp", "fsdp"), "resources.strategy")
        choice(self.placement_strategy, PLACEMENT_STRATEGIES, "resources.placement_strategy")
        require(self.max_failures >= 0, "resources.max_failures", self.max_failures, "use >= 0")


@dataclass(kw_only=True)
class TrackingConfig:
    """MLflow tracking."""

    tracking_uri: str | None = None
    """MLflow tracking URI; ``None`` is ``sqlite:///<workdir>/mlflow.db``."""
    experiment: str | None = None
    """MLflow experiment name; ``None`` uses the experiment config's ``name``."""
    parent_run_id: str | None = None
    """An MLflow run the study's parent run nests under (a sweep's); ``None``: top level."""
