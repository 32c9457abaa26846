"""The sweep's plan: fixed points of the wide space, lengths in tokens per parameter."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.models.size import param_counts
from stagetune.orchestration.sweep_plan import (
    corpus_cap_mb,
    parse_floats,
    parse_sizes,
    plan_studies,
    schedule_count,
    study_points,
)
from stagetune.search_spaces import SpaceContext, get_search_space

VOCAB = 512


def _plan(cfg, tpp, sizes=((4, 32),), points_for=study_points):  # type: ignore[no-untyped-def]
    return plan_studies(
        cfg,
        sweep="sw",
        tokens_per_param=tpp,
        sizes=sizes,
        seeds=3,
        vocab_size=VOCAB,
        points_for=points_for,
        tracking={"tracking_uri": "sqlite:////tmp/x.db", "experiment": "sw"},
        study_dir=lambda name: f"/tmp/sw/{name}",
    )


def test_points_are_the_paper_s2_s4_gstack_and_reference_lrs() -> None:
    cfg = load_config(preset="smoke", overrides=["model.n_layer=8"])
    points = study_points(cfg)
    # the full-depth lrs are the study's own reference sweep, not fixed points
    assert all(p["num_stages"] > 1 for p in points)
    (study,) = _plan(cfg, (1.0,))
    assert study.config["search"]["reference_lr_factors"] == [0.5, 1.0, 2.0]
    space = get_search_space("wide")
    ctx = SpaceContext.from_config(cfg, vocab_size=VOCAB)
    built = [space.build(p, ctx).schedule for p in points if p["num_stages"] > 1]
    paper = [s for s in built if s.freeze_policy == "paper"]
    assert sorted(s.num_stages for s in paper) == [2, 4]
    assert all(s.growth == "random" and len(set(s.increments)) == 1 for s in paper)
    (gstack,) = [s for s in built if s.growth == "stack"]
    assert gstack.increments == [2, 6] and gstack.freeze_policy == "none"
    # budget-matched continual training: every schedule spends the baseline's compute
    assert all(s.continual_steps > 0 for s in built)


def test_schedules_get_the_reference_s_lr_tuning() -> None:
    cfg = load_config(preset="smoke", overrides=["model.n_layer=8"])
    plain = study_points(cfg)
    tuned = study_points(cfg, lr_factors=(1.0, 0.5, 2.0))
    # every schedule at every multiple of its lr, nothing else changed
    assert len(tuned) == 3 * len(plain)
    assert sorted({p["lr"] for p in tuned}) == [cfg.train.lr * f for f in (0.5, 1.0, 2.0)]
    assert schedule_count(tuned) == schedule_count(plain) == len(plain)
    (study,) = _plan(
        cfg, (1.0,), sizes=((8, 32),), points_for=lambda c: study_points(c, lr_factors=(1, 0.5, 2))
    )
    search = study.config["search"]
    assert search["num_trials"] == len(tuned) + 1
    # the confirmation round repeats as many incremental points as there are schedules
    assert search["repeat_top_k"] == len(plain)


def test_lengths_become_baseline_steps_of_the_right_tokens_per_param() -> None:
    cfg = load_config(preset="smoke")
    studies = _plan(cfg, (0.5, 1.0))
    n = param_counts(cfg.model, vocab_size=VOCAB).non_embedding
    assert [s.non_embedding_params for s in studies] == [n, n]
    per_step = cfg.train.batch_size * cfg.data.seq_len
    for s in studies:
        assert s.baseline_steps == round(s.tokens_per_param * n / per_step)
        assert s.actual_tokens_per_param == pytest.approx(s.tokens_per_param, rel=0.05)
        search = s.config["search"]
        assert search["num_trials"] == len(search["points_to_evaluate"]) + 1
        assert search["early_stopping"] is False and search["seeds"] == 3
    assert [s.name for s in studies] == ["sw-L4d32-tpp0.5", "sw-L4d32-tpp1"]
    two = _plan(cfg, (0.5,), sizes=((4, 32), (2, 64)))
    assert [s.size for s in two] == ["L4d32", "L2d64"]


def test_too_short_a_length_is_refused_with_the_least_that_fits() -> None:
    with pytest.raises(ConfigError, match="--tokens-per-param") as exc:
        _plan(load_config(preset="smoke"), (0.001,))
    assert "use at least" in str(exc.value)


def test_parsers_and_corpus_cap() -> None:
    assert parse_floats("0.3,3,30", "--x") == (0.3, 3.0, 30.0)
    with pytest.raises(ConfigError, match="--x"):
        parse_floats("0.3,-1", "--x")
    assert parse_sizes("4x128,6X64") == ((4, 128), (6, 64))
    with pytest.raises(ConfigError, match="--sizes"):
        parse_sizes("4-128")
    # 30 tokens/param of 1.2M parameters: 36M tokens ≈ 83 MiB of source before the margin
    assert corpus_cap_mb(36e6, 0.05) == 128
    assert corpus_cap_mb(1000, 0.05) == 1


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--tokens-per-param", "0.3,-1"], "--tokens-per-param"),
        (["--seeds", "1"], "--seeds"),
        (["--target-params", "1e6"], "--target-params"),
        (["--resume", "--sizes", "4x32"], "--sizes"),
        (["--resume"], "--resume"),
    ],
)
def test_bad_sweep_flags_are_one_line_exit_2_nothing_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
    from stagetune.cli import main

    work = tmp_path / "sweep"
    preset = [] if "--resume" in args else ["--preset", "smoke"]
    assert main(["sweep", *preset, "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stagetune: error: {flag}") and "\n" not in err
    assert not work.exists()
