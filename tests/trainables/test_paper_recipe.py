"""The ``paper`` recipe against a table written from the paper's text (arXiv 2411.18700, as
summarised in DESIGN.md "Background" and docs/paper-recipe.md):

* S stages, each adding L/S layers on top; phase 1 trains only the new layers (the older ones
  frozen; the paper's code leaves embeddings and head trainable), phase 2 all current layers;
  each phase T/(2S) steps (the first stage has no older layers: it trains them all T/S steps);
* continual training of the full model, up to T steps, with a fresh optimizer;
* AdamW (betas 0.9/0.95, wd 0.1 on every >= 2-D tensor, constant lr), no gradient clipping,
  its state kept through growth and unfreezing.

The table below is that text for L = 4, S = 2, T = 24 with the paper's T continual steps. A
real training run (in-process, the smoke-sized ``paper-tiny``) is watched from an optimizer
pre-step hook: which blocks get gradients at each step, what AdamW's state holds, whether the
gradient norm was clipped.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stagetune.config.recipe import PAPER_SETTINGS
from stagetune.data import prepare_data
from stagetune.errors import ConfigError
from stagetune.search_spaces import SpaceContext, get_search_space
from stagetune.trainables.loop import StagedTrainer
from stagetune.trainables.session import LocalSession

T, L, S = 24, 4, 2
HALF = T // (2 * S)
# (phase, steps, blocks that train, embeddings train, AdamW state of the blocks that trained
# before: kept or fresh)
TABLE: list[tuple[str, int, set[int], bool, str]] = [
    ("stage 1", 2 * HALF, {0, 1}, True, "fresh"),
    ("stage 2 phase 1", HALF, {2, 3}, True, "kept"),
    ("stage 2 phase 2", HALF, {0, 1, 2, 3}, True, "kept"),
    ("continual", T, {0, 1, 2, 3}, True, "fresh"),
]


def _paper_trainer(fast_config: Any, tmp_path: Any) -> StagedTrainer:
    cfg = fast_config(f"schedule.baseline_steps={T}", f"model.n_layer={L}", preset="paper-tiny")
    assert cfg.train.recipe == "paper"
    vocab = prepare_data(cfg.data).vocab_size
    ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
    trial = get_search_space("paper").build({"num_stages": S, "continual_multiple": "T"}, ctx)
    return StagedTrainer(trial, LocalSession(tmp_path / "run"), config=cfg, vocab_size=vocab)


@pytest.mark.slow
def test_the_paper_recipe_trains_as_the_paper_says(fast_config: Any, tmp_path: Any) -> None:
    trainer = _paper_trainer(fast_config, tmp_path)
    sched = trainer.schedule
    assert sched.total_steps == sum(row[1] for row in TABLE)
    assert sched.continual_steps == T
    blocks = trainer.model.blocks
    wte = trainer.model.hf_model.get_input_embeddings().weight
    first = next(iter(blocks[0].parameters()))
    seen: list[tuple[set[int], bool, float, float]] = []

    def watch(opt: torch.optim.Optimizer, *_: Any) -> None:
        trained = {
            i for i, b in enumerate(blocks) if any(p.grad is not None for p in b.parameters())
        }
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norm = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        )
        step = float(opt.state[first].get("step", 0)) if first in opt.state else 0.0
        seen.append((trained, wte.grad is not None, step, norm))

    trainer.optimizer.register_step_pre_hook(watch)
    trainer.run()
    assert len(seen) == sched.total_steps
    at = 0
    for name, steps, trained, emb, state in TABLE:
        rows = seen[at : at + steps]
        assert all(r[0] == trained for r in rows), name
        assert all(r[1] == emb for r in rows), name
        # AdamW's step count of block 0 as the phase starts: it continues (kept) or restarts.
        before = rows[0][2]
        if state == "fresh":
            assert before == 0, name
        else:
            assert before == 2 * HALF, name  # block 0 trained only in stage 1 so far
        at += steps
    # No clipping: some step's gradient norm is above the 1.0 stagetune clips to by default,
    # and the loop had nothing to clip it with.
    assert trainer.cfg.train.grad_clip == 0 and max(r[3] for r in seen) > 1.0
    # Weight decay on every >= 2-D tensor (embeddings included), none on 1-D ones.
    decay = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.1
             for p in g["params"]}  # fmt: skip
    for p in trainer.model.hf_model.parameters():
        assert (id(p) in decay) == (p.ndim >= 2)
    assert id(wte) in decay


def test_the_recipe_settings_are_the_papers() -> None:
    """The table of settings ``train.recipe: paper`` holds a config to."""
    settings = {dotted: value for _, _, dotted, value, _ in PAPER_SETTINGS}
    assert settings == {
        "train.grad_clip": 0.0,
        "train.lr_schedule": "constant",
        "train.weight_decay": 0.1,
        "train.beta1": 0.9,
        "train.beta2": 0.95,
        "train.decay_embeddings": True,
        "schedule.optimizer_policy": "carry_then_reset",
        "schedule.phase1_fraction": 0.5,
        "schedule.step_spread": "uniform",
        "schedule.growth": "random",
        "schedule.freeze_policy": "paper",
    }


@pytest.mark.parametrize("preset", ["paper-tiny", "paper-gpt2-124m"])
def test_paper_presets_use_the_recipe_and_refuse_deviations(fast_config: Any, preset: str) -> None:
    assert fast_config(preset=preset).train.recipe == "paper"
    with pytest.raises(ConfigError, match=r"train\.grad_clip.*train\.recipe=stagetune"):
        fast_config("train.grad_clip=1.0", preset=preset)
    # stagetune's options stay available by name, outside the paper's recipe.
    cfg = fast_config("train.grad_clip=1.0", "train.recipe=stagetune", preset=preset)
    assert cfg.train.grad_clip == 1.0
