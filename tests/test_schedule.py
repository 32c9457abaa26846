"""Schedules: their shape, phases and builders, and the schedule a config describes."""

from __future__ import annotations

import pytest

from stagetune.config import load_config
from stagetune.errors import ConfigError
from stagetune.schedule import (
    Schedule,
    Stage,
    build_schedule,
    even_increments,
    from_increments,
    split_steps,
)


def test_paper_schedule_shape() -> None:
    """The paper's schedule: L/S layers a stage, each phase T/(2S) steps, its freeze policy."""
    s = from_increments(
        even_increments(12, 4), stage_steps=9536, freeze_policy="paper", growth="random"
    )
    assert s.depths == [3, 6, 9, 12] and s.increments == [3, 3, 3, 3]
    assert s.freeze_policy == "paper" and s.growth == "random"
    # Each phase T/(2S) steps; stage 1 has no older blocks, so both its phases train everything.
    assert [st.steps for st in s.stages] == [2384] * 4
    assert all(st.phase1_steps == 1192 for st in s.stages[1:])


def test_builders_validate_and_split_exactly() -> None:
    assert split_steps(10, [1, 1, 1]) == [4, 3, 3] or sum(split_steps(10, [1, 1, 1])) == 10
    assert sum(split_steps(97, [2, 4, 6, 8])) == 97
    assert even_increments(12, 5) == [2, 2, 2, 3, 3]
    s = from_increments([2, 2, 4, 4], stage_steps=100, phase1_fraction=0.25, step_spread="depth")
    assert s.depths == [2, 4, 8, 12] and s.stage_steps == 100
    assert s.stages[0].phase1_steps == 0
    with pytest.raises(ConfigError, match=r"schedule\.stages"):
        Schedule(num_layers=4, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=5),))
    with pytest.raises(ConfigError, match="rise strictly"):
        Schedule(
            num_layers=4,
            stages=(
                Stage(depth=2, phase1_steps=0, phase2_steps=5),
                Stage(depth=2, phase1_steps=1, phase2_steps=1),
            ),
        )
    with pytest.raises(ConfigError, match="at least one step"):
        Schedule(num_layers=2, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=0),))
    with pytest.raises(ConfigError, match=r"schedule\.growth"):
        Schedule(
            num_layers=2, stages=(Stage(depth=2, phase1_steps=0, phase2_steps=1),), growth="clone"
        )


def test_phases_and_serialisation_round_trip() -> None:
    s = from_increments(
        [1, 3], stage_steps=10, continual_steps=3, growth="zero", freeze_policy="new_only"
    )
    kinds = [(p.kind, p.depth, p.prev_depth, p.steps) for p in s.phases()]
    assert kinds == [
        ("phase2", 1, 0, 5),
        ("phase1", 4, 1, 2),
        ("phase2", 4, 1, 3),
        ("continual", 4, 4, 3),
    ]
    assert Schedule.from_dict(s.to_dict()) == s
    assert s.phases()[1].trainable_from == 1 and s.phases()[2].trainable_from == 0


def test_build_schedule_from_config() -> None:
    cfg = load_config(
        overrides=[
            "model.n_layer=4",
            "schedule.increments=[1, 3]",
            "schedule.continual_multiple=0.5",
        ]
    )
    s = build_schedule(cfg, vocab_size=2048)
    assert s.increments == [1, 3]
    full = build_schedule(
        load_config(overrides=["model.n_layer=4", "schedule.increments=[1, 3]"]), vocab_size=2048
    ).continual_steps
    assert s.continual_steps == round(0.5 * full)
    assert build_schedule(load_config(), vocab_size=2048).is_baseline
