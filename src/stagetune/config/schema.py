"""The typed experiment configuration: keyword-only dataclasses validated on construction.

Every section (:class:`ModelConfig`, :class:`DataConfig`, ...) checks its own values and
:class:`ExperimentConfig` the ones that span sections, so the rest of the code can trust a
config. Errors are :class:`~stagetune.errors.ConfigError` naming the dotted field, the value and
the fix. Names of extensions (``model.family``, ``schedule.growth``, ``data.source``, ...) are
checked at the edge instead (:func:`stagetune.config.names.validate_names`), against their
registries, so that rebuilding a config inside a Ray worker imports no search space or model.
One cohesive module: the schema, each field with its docstring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetune.budget import MAX_BUDGET_FACTOR, MAX_CONTINUAL_MULTIPLE, check_budget_factor
from stagetune.config.checks import bounded as _bounded
from stagetune.config.checks import choice as _choice
from stagetune.config.checks import require as _require
from stagetune.config.limits import (
    EVAL_POINTS_REASON,
    MAX_EVAL_POINTS,
    MAX_LR_FACTOR,
    MAX_REFERENCE_LRS,
    MAX_SEED,
    MAX_SEEDS,
    MAX_STEPS,
    MAX_TRIALS,
    SEED_REASON,
    SEEDS_REASON,
    STEPS_REASON,
    TRIALS_REASON,
)
from stagetune.config.recipe import PAPER_RECIPE, check_paper_recipe
from stagetune.config.runtime import PLACEMENT_STRATEGIES, ResourcesConfig, TrackingConfig
from stagetune.registry import OPTIMIZER_POLICIES, RECIPES

__all__ = [
    "PLACEMENT_STRATEGIES",
    "BudgetConfig",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "ResourcesConfig",
    "ScheduleConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "validate_name",
]

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
"""Attention kernels (``model.attn_implementation``): PyTorch's fused
``scaled_dot_product_attention``, or explicit matmuls (what ``FlopCounterMode`` can count on
the CPU)."""


@dataclass(kw_only=True)
class ModelConfig:
    """The target model: a Hugging Face causal LM built from a config (no hub download)."""

    family: str = "gpt2"
    """Model family: ``gpt2``, ``llama`` or a registered family
    (:data:`stagetune.registry.MODEL_FAMILIES`)."""
    n_layer: int = 6
    """Target depth L: the number of transformer blocks at the end of the schedule."""
    n_embd: int = 128
    """Hidden size."""
    n_head: int = 4
    """Attention heads."""
    n_kv_head: int | None = None
    """Key/value heads (Llama grouped-query attention); ``None`` means ``n_head``."""
    intermediate_size: int | None = None
    """MLP width; ``None`` means the family's default (GPT-2: 4 × ``n_embd``; Llama: 8/3 ×
    ``n_embd`` rounded up to 32)."""
    context_length: int = 128
    """Maximum sequence length the model supports (GPT-2 ``n_positions``)."""
    vocab_size: int | None = None
    """Vocabulary size; ``None`` takes the tokenizer's."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head."""
    dropout: float = 0.0
    """Dropout probability (0 keeps runs deterministic)."""
    attn_implementation: str = "sdpa"
    """Attention kernel: ``sdpa`` or ``eager``."""

    def __post_init__(self) -> None:
        _require(self.n_layer >= 1, "model.n_layer", self.n_layer, "use a depth of at least 1")
        _require(self.n_embd >= 1, "model.n_embd", self.n_embd, "use a positive hidden size")
        _require(self.n_head >= 1, "model.n_head", self.n_head, "use at least one head")
        _require(
            self.n_embd % self.n_head == 0,
            "model.n_head",
            self.n_head,
            f"n_embd={self.n_embd} must be divisible by n_head",
        )
        if self.n_kv_head is not None:
            _require(
                self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
                "model.n_kv_head",
                self.n_kv_head,
                f"use a divisor of n_head={self.n_head}",
            )
        if self.intermediate_size is not None:
            _require(
                self.intermediate_size >= 1,
                "model.intermediate_size",
                self.intermediate_size,
                "use a positive MLP width or null for the default",
            )
        _require(
            self.context_length >= 2,
            "model.context_length",
            self.context_length,
            "use a context length of at least 2",
        )
        if self.vocab_size is not None:
            _require(
                self.vocab_size >= 2,
                "model.vocab_size",
                self.vocab_size,
                "use at least 2 tokens or null to take the tokenizer's size",
            )
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a value in [0, 1)")
        _choice(self.attn_implementation, ATTN_IMPLEMENTATIONS, "model.attn_implementation")

    @property
    def kv_heads(self) -> int:
        """The resolved number of key/value heads."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head


@dataclass(kw_only=True)
class DataConfig:
    """Where tokens come from. Both built-in sources are offline: ``builtin`` (the default) and
    ``pysources`` (the default of ``stagetune sweep``)."""

    source: str = "builtin"
    """``builtin`` (the interpreter's stdlib source, ≈ 11 MiB), ``pysources`` (every ``.py``
    file of the installed environment, ≈ 370 MiB, for long training), the name of a registered
    source (an installed package's ``stagetune.data_sources`` entry point, or
    ``register_source``), or a path / directory / glob of .txt, .jsonl, .parquet, or uint16
    token shards (.bin, .npy). Checked where a config enters
    (:func:`stagetune.config.names.validate_names`)."""
    tokenizer: str = "builtin"
    """``builtin`` (byte-level BPE trained on the corpus and cached) or a tokenizer.json path."""
    vocab_size: int = 1024
    """Vocabulary size of the builtin tokenizer (ignored for a tokenizer.json)."""
    seq_len: int = 64
    """Tokens per training sequence."""
    eval_fraction: float = 0.05
    """Share of the token stream held out (from its end) for evaluation."""
    eval_batches: int = 4
    """Number of fixed eval batches (each ``train.batch_size`` sequences)."""
    text_field: str = "text"
    """Field holding the text in JSONL / Parquet files."""
    max_corpus_mb: float = 6.0
    """Cap on a built-in corpus (``builtin``, ``pysources``; MiB of source text, a hashed sample
    of files). ``stagetune sweep`` raises it to hold its longest training length."""
    cache_dir: str | None = None
    """Where tokenizers and token files are cached; default ``$STAGETUNE_CACHE`` or
    ``~/.cache/stagetune``."""

    def __post_init__(self) -> None:
        _require(
            bool(self.source), "data.source", self.source, "name 'builtin', 'pysources' or a path"
        )
        _require(
            256 <= self.vocab_size <= 65535,
            "data.vocab_size",
            self.vocab_size,
            "use a vocabulary size between 256 and 65535 (tokens are stored as uint16)",
        )
        _require(self.seq_len >= 2, "data.seq_len", self.seq_len, "use at least 2 tokens")
        _require(
            0.0 < self.eval_fraction < 0.5,
            "data.eval_fraction",
            self.eval_fraction,
            "use a fraction in (0, 0.5)",
        )
        _require(self.eval_batches >= 1, "data.eval_batches", self.eval_batches, "use >= 1")
        _require(
            self.max_corpus_mb > 0, "data.max_corpus_mb", self.max_corpus_mb, "use a positive size"
        )
        if self.tokenizer != "builtin":
            _require(
                Path(self.tokenizer).expanduser().is_file(),
                "data.tokenizer",
                self.tokenizer,
                "the file does not exist; point to a tokenizer.json or use 'builtin'",
            )

    def resolved_cache_dir(self) -> Path:
        """The cache directory for tokenizers and token files."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get("STAGETUNE_CACHE")
        if env:
            return Path(env).expanduser()
        return Path.home() / ".cache" / "stagetune"


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings shared by every phase (the paper: AdamW, betas 0.9/0.95, wd 0.1)."""

    batch_size: int = 16
    """Global sequences per optimizer step (across workers and accumulation micro-steps)."""
    grad_accum: int = 1
    """Micro-steps per optimizer step on each worker."""
    lr: float = 1e-3
    """Peak learning rate."""
    lr_schedule: str = "constant"
    """``constant`` (the paper), ``cosine`` (warmup + cosine) or ``wsd`` (warmup-stable-decay)."""
    warmup_steps: int = 0
    """Linear warm-up steps (counted over the whole run)."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak, for cosine and WSD."""
    decay_fraction: float = 0.2
    """WSD: share of the run spent decaying."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping; the paper's code does
    not clip)."""
    decay_embeddings: bool = False
    """Weight decay on the embeddings and a tied LM head too, i.e. on every ≥ 2-D tensor (the
    paper's code); ``False`` decays only the blocks' matrices."""
    recipe: str = "stagetune"
    """``stagetune`` (any combination of options) or ``paper``: the config must then be the
    paper's procedure (no clipping, decay on every ≥ 2-D tensor, optimizer state carried through
    growth and fresh at continual start, phases of T/(2S), random growth, the paper's freeze
    policy); a deviation is refused naming the field, never silently applied. See
    docs/paper-recipe.md."""
    eval_points: int = 12
    """Evaluations evenly spaced in compute over the budget, the same FLOPs for every schedule."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps (0: only at phase boundaries)."""
    seed: int = 0
    """Seed of the data order and of the initialisation."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    dtype: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``float32`` or ``bfloat16``."""
    compile: bool = False
    """``torch.compile`` the training forward/backward, afresh for each phase (the model's
    depth and trainable set change at a phase boundary); the FLOPs accounting is unchanged."""

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "use >= 1")
        _require(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "use >= 1")
        _require(
            self.batch_size % self.grad_accum == 0,
            "train.grad_accum",
            self.grad_accum,
            f"must divide train.batch_size={self.batch_size}",
        )
        _require(self.lr > 0, "train.lr", self.lr, "use a positive learning rate")
        _choice(self.lr_schedule, ("constant", "cosine", "wsd"), "train.lr_schedule")
        _bounded(self.warmup_steps, 0, MAX_STEPS, "train.warmup_steps", STEPS_REASON)
        _require(
            0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", self.min_lr_ratio, "use [0, 1]"
        )
        _require(
            0.0 < self.decay_fraction <= 1.0,
            "train.decay_fraction",
            self.decay_fraction,
            "use (0, 1]",
        )
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "use >= 0")
        _require(0 <= self.beta1 < 1, "train.beta1", self.beta1, "use [0, 1)")
        _require(0 <= self.beta2 < 1, "train.beta2", self.beta2, "use [0, 1)")
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "use >= 0 (0 = off)")
        _bounded(self.eval_points, 2, MAX_EVAL_POINTS, "train.eval_points", EVAL_POINTS_REASON)
        _bounded(self.checkpoint_every, 0, MAX_STEPS, "train.checkpoint_every", STEPS_REASON)
        _bounded(self.seed, 0, MAX_SEED, "train.seed", SEED_REASON)
        _choice(self.device, ("auto", "cpu", "cuda"), "train.device")
        _choice(self.dtype, ("auto", "float32", "bfloat16"), "train.dtype")
        _choice(self.recipe, RECIPES, "train.recipe")


@dataclass(kw_only=True)
class ScheduleConfig:
    """The schedule trained by ``stagetune train`` (the search samples its own)."""

    baseline_steps: int = 150
    """T: optimizer steps of the full-depth baseline; stages share T steps between them."""
    num_stages: int = 1
    """S: number of stages (1 is the baseline). With ``increments`` it must be 1 (the default)
    or their count."""
    increments: list[int] | None = None
    """Explicit layer increments Δ_i (must sum to model.n_layer), e.g. [2, 2, 4, 4]."""
    phase1_fraction: float = 0.5
    """Share of each stage's steps spent in phase 1 (the first stage has no older blocks,
    so it trains all its blocks throughout)."""
    step_spread: str = "uniform"
    """How the T stage steps are spread across stages: ``uniform`` or ``depth`` (∝ d_i)."""
    continual_steps: int | None = None
    """Continual training steps at full depth; ``None`` derives them from the budget."""
    continual_multiple: float = 1.0
    """Multiple of the budget-matched continual length (at most 10); only with
    ``continual_steps`` null (set one of the two)."""
    growth: str = "random"
    """Growth operator for new blocks: random, copy_top, stack, copy_middle, zero, or a
    registered one (:data:`stagetune.registry.GROWTH_OPERATORS`)."""
    freeze_policy: str = "new_only"
    """Phase-1 freeze policy: new_only, paper, none (:mod:`stagetune.freeze`)."""
    optimizer_policy: str = "reset"
    """AdamW's state at growth and at the continual start: ``reset`` at both, ``carry``
    through both, or ``carry_then_reset`` (the paper's code: kept through growth and
    unfreezing, a fresh optimizer for continual training)."""

    def __post_init__(self) -> None:
        _bounded(self.baseline_steps, 1, MAX_STEPS, "schedule.baseline_steps", STEPS_REASON)
        _require(self.num_stages >= 1, "schedule.num_stages", self.num_stages, "use >= 1")
        if self.increments is not None:
            _require(
                len(self.increments) >= 1 and all(int(d) >= 1 for d in self.increments),
                "schedule.increments",
                self.increments,
                "list positive layer counts, e.g. [2, 2]",
            )
            # num_stages = 1 is the default: it defers to the increments.
            _require(
                self.num_stages in (1, len(self.increments)),
                "schedule.num_stages",
                self.num_stages,
                f"contradicts schedule.increments={self.increments} ({len(self.increments)} "
                "stages); drop one of the two or make them agree",
            )
        _require(
            0.0 <= self.phase1_fraction < 1.0,
            "schedule.phase1_fraction",
            self.phase1_fraction,
            "use a fraction in [0, 1)",
        )
        _choice(self.step_spread, ("uniform", "depth"), "schedule.step_spread")
        _bounded(
            self.continual_multiple,
            0,
            MAX_CONTINUAL_MULTIPLE,
            "schedule.continual_multiple",
            f"more than {MAX_CONTINUAL_MULTIPLE:g}× the continual length the budget leaves is "
            "another budget; raise budget.factor instead",
        )
        if self.continual_steps is not None:
            _bounded(
                self.continual_steps,
                0,
                MAX_BUDGET_FACTOR * self.baseline_steps,
                "schedule.continual_steps",
                f"more than {MAX_BUDGET_FACTOR:g}× schedule.baseline_steps={self.baseline_steps} "
                "of continual training; to train longer, raise schedule.baseline_steps",
            )
            # 1.0 is the default: a multiple is only meaningful for a derived length.
            _require(
                self.continual_multiple == 1.0,
                "schedule.continual_multiple",
                self.continual_multiple,
                f"applies to the budget-matched length, but schedule.continual_steps="
                f"{self.continual_steps} sets the length; drop one of the two",
            )
        _choice(self.optimizer_policy, OPTIMIZER_POLICIES, "schedule.optimizer_policy")


@dataclass(kw_only=True)
class BudgetConfig:
    """The compute budget: the baseline's training FLOPs × ``factor``."""

    factor: float = 1.0
    """Budget as a multiple of the baseline's training FLOPs (1.0 = equal compute), in
    [1, 100]: the budget must hold the baseline and every schedule's stages (see
    :mod:`stagetune.budget`)."""
    convention: str = "standard"
    """FLOPs convention used for matching: ``standard`` or ``paper``."""

    def __post_init__(self) -> None:
        check_budget_factor(self.factor)


@dataclass(kw_only=True)
class SearchConfig:
    """The schedule search (Ray Tune + Optuna)."""

    space: str = "wide"
    """Search space name: ``wide`` (everything), ``paper`` (the paper's knobs), ``compact``
    (a small finite space) or a registered space (:data:`stagetune.registry.SEARCH_SPACES`)."""
    sampler: str = "auto"
    """Optuna sampler: ``auto`` (NSGA-II when multi-objective, else the space's preferred one:
    brute force over the ``paper`` space's finite grid, TPE elsewhere), ``tpe``, ``nsga2``,
    ``bruteforce``, ``random`` or a registered sampler (:data:`stagetune.registry.SAMPLERS`)."""
    sampler_seed: int | None = None
    """Seed of the sampler; ``None`` uses ``train.seed`` (set it to vary the search alone)."""
    num_trials: int = 8
    """Trials including the baseline."""
    reference_lr_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """The reference sweep: the full-depth schedule trained at ``train.lr`` × each factor,
    before the search, never stopped early; the best of them (lowest final eval loss on the
    study's seed, among every full-depth trial that finished) is the reference every schedule
    is measured against. Factor 1 is the configured baseline, always trained (as the search's
    first trial); ``[1.0]`` turns the sweep off."""
    seeds: int = 3
    """Seeds in all for the confirmation round: after the search, the reference and the
    ``repeat_top_k`` best schedules train again on seeds ``train.seed + 1`` … (1: no round)."""
    repeat_top_k: int = 2
    """How many of the best schedules the confirmation round repeats when ``seeds`` > 1."""
    multi_objective: bool = False
    """Optimise (eval loss, compute) jointly with NSGA-II and report the Pareto set."""
    early_stopping: bool = True
    """ASHA on cumulative training FLOPs."""
    grace_fraction: float = 0.2
    """ASHA grace period as a fraction of the budget's FLOPs (0.2: on the lattice benchmark TPE
    then spent 0.66 of what random search did to find a near-best schedule; 0.34, 0.5 and 0.67
    cut less and cost more, see benchmarks/RESULTS.md)."""
    reduction_factor: int = 2
    """ASHA reduction factor."""
    max_concurrent: int | None = None
    """Concurrent trials; ``None`` derives it from the cluster's resources."""
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    """Points of the space a new study evaluates right after the baseline, each a complete
    mapping of the space's params, e.g. ``{num_stages: 1, lr: 0.004, warmup_steps: 0}``."""

    def __post_init__(self) -> None:
        if self.sampler_seed is not None:
            _bounded(self.sampler_seed, 0, MAX_SEED, "search.sampler_seed", SEED_REASON)
        _bounded(self.num_trials, 1, MAX_TRIALS, "search.num_trials", TRIALS_REASON)
        _require(self.seeds >= 1, "search.seeds", self.seeds, "use a positive number (1: none)")
        _require(self.seeds <= MAX_SEEDS, "search.seeds", self.seeds, SEEDS_REASON)
        _bounded(self.repeat_top_k, 1, MAX_TRIALS, "search.repeat_top_k", TRIALS_REASON)
        _require(
            1 <= len(self.reference_lr_factors) <= MAX_REFERENCE_LRS
            and all(
                isinstance(f, (int, float)) and 0 < f <= MAX_LR_FACTOR
                for f in self.reference_lr_factors
            ),
            "search.reference_lr_factors",
            self.reference_lr_factors,
            f"list 1-{MAX_REFERENCE_LRS} positive multiples of train.lr (at most "
            f"{MAX_LR_FACTOR:g}), e.g. [0.5, 1.0, 2.0]; [1.0] turns the sweep off",
        )
        _require(
            0.0 < self.grace_fraction <= 1.0,
            "search.grace_fraction",
            self.grace_fraction,
            "use (0, 1]",
        )
        _require(
            self.reduction_factor >= 2,
            "search.reduction_factor",
            self.reduction_factor,
            "use >= 2",
        )
        if self.max_concurrent is not None:
            _require(
                self.max_concurrent >= 1, "search.max_concurrent", self.max_concurrent, "use >= 1"
            )
        for i, point in enumerate(self.points_to_evaluate):
            _require(
                isinstance(point, dict) and all(isinstance(k, str) for k in point),
                f"search.points_to_evaluate[{i}]",
                point,
                "expected a mapping of param names to values",
            )
        _require(
            len(self.points_to_evaluate) < self.num_trials,
            "search.points_to_evaluate",
            f"{len(self.points_to_evaluate)} point(s)",
            f"with the baseline they need num_trials >= {len(self.points_to_evaluate) + 1}; "
            "raise search.num_trials or drop points",
        )


@dataclass(kw_only=True)
class ExperimentConfig:
    """Everything one study needs."""

    name: str = "stagetune-default"
    """Study name (also the MLflow experiment and the Optuna study); letters, digits, -_. only."""
    workdir: str = "stagetune-work"
    """Work directory: MLflow store, Optuna storage, Ray results, reports."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        validate_name(self.name, "name")
        if self.tracking.experiment is not None:
            validate_name(self.tracking.experiment, "tracking.experiment")
        _require(
            self.data.seq_len <= self.model.context_length,
            "data.seq_len",
            self.data.seq_len,
            f"must not exceed model.context_length={self.model.context_length}; "
            "shorten the sequences or raise the context length",
        )
        if self.schedule.increments is not None:
            total = sum(self.schedule.increments)
            _require(
                total == self.model.n_layer,
                "schedule.increments",
                self.schedule.increments,
                f"increments sum to {total} but model.n_layer={self.model.n_layer}; "
                "make them add up to the model depth",
            )
        else:
            _require(
                self.schedule.num_stages <= self.model.n_layer,
                "schedule.num_stages",
                self.schedule.num_stages,
                f"use at most model.n_layer={self.model.n_layer} stages",
            )
        if self.train.recipe == PAPER_RECIPE:
            check_paper_recipe(self)
        world = self.resources.workers_per_trial
        _require(
            self.train.batch_size % (world * self.train.grad_accum) == 0,
            "train.batch_size",
            self.train.batch_size,
            f"must be divisible by workers_per_trial × grad_accum = {world * self.train.grad_accum}",
        )

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment name."""
        return self.tracking.experiment or self.name

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI (SQLite in the work directory by default)."""
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.workdir_path / 'mlflow.db'}"


def validate_name(name: str, field_name: str) -> None:
    """Names become file and study names: refuse separators, traversal and odd characters."""
    ok = (
        bool(name)
        and len(name) <= 128
        and name not in {".", ".."}
        and all(ch.isalnum() or ch in "-_." for ch in name)
        and not name.startswith(".")
    )
    _require(
        ok,
        field_name,
        name,
        "use 1-128 letters, digits, '-', '_' or '.', not starting with '.' (no path separators)",
    )
