"""The config: its YAML dialect, the numeric bounds every command shares, and error lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagetune.budget import MAX_BUDGET_FACTOR
from stagetune.config import load_config
from stagetune.config.limits import MAX_SEED, MAX_SEEDS, MAX_STEPS, MAX_TRIALS
from stagetune.errors import MAX_SHOWN_CHARS, ConfigError


def _load_yaml(tmp_path: Path, text: str, *overrides: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, overrides=list(overrides))


# -- YAML 1.2 numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lr"),
    [("1e-3", 1e-3), ("5E-4", 5e-4), ("1.0e-3", 1e-3), ("3e-4", 3e-4), ("+2e-2", 2e-2)],
)
def test_exponent_floats_are_numbers_in_yaml(tmp_path: Path, text: str, lr: float) -> None:
    """PyYAML (YAML 1.1) reads 1e-3 as a string, so `train: {lr: 1e-3}` was refused."""
    cfg = _load_yaml(tmp_path, f"train: {{lr: {text}}}\n")
    assert cfg.train.lr == lr  # type: ignore[attr-defined]


def test_yaml_and_set_read_numbers_alike(tmp_path: Path) -> None:
    a = _load_yaml(tmp_path, "train: {lr: 2e-3}\nbudget: {factor: 15e-1}\n")
    b = load_config(overrides=["train.lr=2e-3", "budget.factor=15e-1"])
    assert (a.train.lr, a.budget.factor) == (b.train.lr, b.budget.factor) == (2e-3, 1.5)  # type: ignore[attr-defined]
    # Integers stay integers and words stay words.
    c = _load_yaml(tmp_path, "model: {n_layer: 4}\nname: e5\n")
    assert c.model.n_layer == 4 and c.name == "e5"  # type: ignore[attr-defined]


# -- keys given twice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("train: {lr: 0.1, lr: 0.2}\n", "lr", (1, 1)),
        ("train:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n", "lr", (2, 4)),
        # A second section silently replaced the first one.
        ("train: {lr: 0.1}\nmodel: {n_layer: 2}\ntrain: {batch_size: 4}\n", "train", (1, 3)),
    ],
    ids=["flow", "block", "section"],
)
def test_duplicate_keys_are_refused_with_their_lines(
    tmp_path: Path, text: str, key: str, lines: tuple[int, int]
) -> None:
    with pytest.raises(ConfigError) as err:
        _load_yaml(tmp_path, text)
    msg = str(err.value)
    assert err.value.field == "config" and "\n" not in msg
    assert f"key '{key}' is given twice (line {lines[0]} and line {lines[1]})" in msg


def test_merge_keys_may_override_without_being_duplicates(tmp_path: Path) -> None:
    cfg = _load_yaml(tmp_path, "train:\n  <<: {lr: 0.1, batch_size: 8}\n  lr: 0.2\n")
    assert (cfg.train.lr, cfg.train.batch_size) == (0.2, 8)  # type: ignore[attr-defined]


def test_duplicate_keys_in_a_set_value_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^schedule='\{increments: \[2, 2\], increments: 4\}'"):
        load_config(overrides=["schedule={increments: [2, 2], increments: 4}"])


# -- echoed values are capped ------------------------------------------------------------------


def test_a_huge_value_gives_a_short_error_line(tmp_path: Path) -> None:
    """An unknown key holding a 50 MB value used to print a 50 MB error line (2 MB here: the
    pure-Python YAML parser takes a minute over 50 MB, before any stagetune code runs)."""
    huge = "x" * 2_000_000
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{lr_typo: {huge}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("train.lr_typo='xxx") and "(2,000,000 characters)" in msg
    assert "unknown key" in msg
    assert len(msg) < 4 * MAX_SHOWN_CHARS


def test_huge_lists_and_field_names_are_capped() -> None:
    msg = str(ConfigError("schedule.increments", list(range(10**6)), "fix"))
    assert len(msg) < 4 * MAX_SHOWN_CHARS and msg.endswith("...]: fix")
    msg = str(ConfigError("k" * 10**6, 1, "fix"))
    assert len(msg) < 4 * MAX_SHOWN_CHARS and msg.endswith("=1: fix")
    # A fix that quotes user data (the keys of a JSONL record, say) is cut as well.
    msg = str(ConfigError("data.text_field", "text", f"found {['k' * 10**6]}; name a field"))
    assert len(msg) < 6 * MAX_SHOWN_CHARS and msg.endswith("; name a field")
    # Ordinary values are shown whole.
    assert str(ConfigError("data.source", "/a/b/c.txt", "fix")) == "data.source='/a/b/c.txt': fix"


# -- numeric bounds --------------------------------------------------------------------------

BOUNDS = [
    # (override, field, words of the reason)
    ("budget.factor=1e9", "budget.factor", f"above {MAX_BUDGET_FACTOR:g}× the baseline's compute"),
    ("budget.factor=1e-9", "budget.factor", "the smallest factor that fits is 1"),
    ("budget.factor=0.3", "budget.factor", "leaves the baseline (the reference"),
    ("search.num_trials=1000000000", "search.num_trials", "not a laptop or cluster search"),
    (f"search.num_trials={MAX_TRIALS + 1}", "search.num_trials", f"more than {MAX_TRIALS:,}"),
    (f"search.seeds={MAX_SEEDS + 1}", "search.seeds", "square root"),
    ("search.repeat_top_k=20000", "search.repeat_top_k", "not a laptop or cluster search"),
    (f"schedule.baseline_steps={MAX_STEPS + 1}", "schedule.baseline_steps", "9,536"),
    ("schedule.continual_steps=23999999983", "schedule.continual_steps",
     "more than 100× schedule.baseline_steps=150"),
    ("schedule.continual_multiple=11", "schedule.continual_multiple", "raise budget.factor"),
    (f"train.warmup_steps={MAX_STEPS + 1}", "train.warmup_steps", "optimizer steps"),
    (f"train.checkpoint_every={MAX_STEPS + 1}", "train.checkpoint_every", "optimizer steps"),
    ("train.eval_points=100000", "train.eval_points", "evaluations per run"),
    ("train.seed=-5", "train.seed", "use >= 0"),
    (f"train.seed={MAX_SEED + 1}", "train.seed", f"[0, {MAX_SEED}]"),
    ("search.sampler_seed=-1", "search.sampler_seed", "use >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(("override", "field", "words"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_numeric_bounds(override: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert err.value.field == field
    assert words in str(err.value)


def test_bounds_hold_in_yaml_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a laptop or cluster search"):
        _load_yaml(tmp_path, "search: {num_trials: 1e9}\n")


def test_values_at_the_bounds_are_accepted() -> None:
    cfg = load_config(
        overrides=[
            f"budget.factor={MAX_BUDGET_FACTOR}",
            f"search.num_trials={MAX_TRIALS}",
            f"search.seeds={MAX_SEEDS}",
            f"train.seed={MAX_SEED}",
            f"schedule.baseline_steps={MAX_STEPS}",
            "budget.factor=1",
        ]
    )
    assert cfg.budget.factor == 1.0 and cfg.search.num_trials == MAX_TRIALS


# -- contradictions in the schedule section ---------------------------------------------------


def test_increments_and_a_different_stage_count_contradict() -> None:
    """`--increments 3,3 --stages 3` used to build 2 stages without a word."""
    with pytest.raises(ConfigError, match=r"contradicts schedule\.increments=\[3, 3\]"):
        load_config(overrides=["schedule.increments=[3, 3]", "schedule.num_stages=3"])
    # Agreeing values, or the default stage count, are fine.
    load_config(overrides=["schedule.increments=[3, 3]", "schedule.num_stages=2"])
    load_config(overrides=["schedule.increments=[3, 3]"])


def test_continual_steps_and_a_multiple_contradict() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.continual_steps=10 sets the length"):
        load_config(overrides=["schedule.continual_steps=10", "schedule.continual_multiple=2"])
