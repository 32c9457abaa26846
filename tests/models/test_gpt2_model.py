"""Our torch-only GPT-2 against transformers' ``GPT2LMHeadModel``: same weights for a seed, same
logits, loss, gradients and FLOPs, checkpoints both ways, and a training run that never imports
transformers (why the copy exists: a Ray Train worker is a fresh process every trial)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from stagetune.config import ModelConfig
from stagetune.models import GPT2LMHeadModel, get_family
from stagetune.testing.models import VOCAB, count_flops, tiny_config, token_batch

from ..conftest import FAST

GPT2 = get_family("gpt2")


def _pair(cfg: ModelConfig, seed: int = 3) -> tuple[GPT2LMHeadModel, Any]:
    """Ours and transformers' model of ``cfg``, each built from the same global RNG state."""
    torch.manual_seed(seed)
    ours = GPT2.build(cfg, vocab_size=VOCAB)
    torch.manual_seed(seed)
    theirs = GPT2.model_class()(GPT2.build_hf_config(cfg, vocab_size=VOCAB))
    return ours, theirs


SHAPES = [
    pytest.param({}, id="tied-eager"),
    pytest.param({"tie_embeddings": False}, id="untied"),
    pytest.param({"attn_implementation": "sdpa", "dropout": 0.1}, id="sdpa-dropout"),
    pytest.param({"intermediate_size": 48, "n_layer": 3, "n_head": 2}, id="narrow-mlp"),
]


@pytest.mark.parametrize("changes", SHAPES)
def test_same_seed_same_weights(changes: dict[str, Any]) -> None:
    ours, theirs = _pair(tiny_config("gpt2", **changes))
    mine, hf = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == hf.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], hf[key], rtol=0, atol=0, msg=key)
    tied = ours.lm_head.weight is ours.transformer.wte.weight
    assert tied == changes.get("tie_embeddings", True)
    # transformers' accessors, which code written against its models calls.
    assert ours.get_input_embeddings() is ours.transformer.wte
    assert ours.get_output_embeddings() is ours.lm_head


@pytest.mark.parametrize("changes", SHAPES)
def test_same_logits_loss_and_gradients(changes: dict[str, Any]) -> None:
    # Training mode: with dropout the two must draw the same masks from the same state.
    ours, theirs = _pair(tiny_config("gpt2", **{"dropout": 0.1, **changes}))
    x, _ = token_batch()
    outs = []
    for model in (ours, theirs):
        model.train()
        torch.manual_seed(11)
        out = model(x, labels=x)
        out.loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=0, atol=0)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=0, atol=0)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=0, msg=name)


def test_same_flops_as_transformers() -> None:
    ours, theirs = _pair(tiny_config("gpt2"))
    x, _ = token_batch()
    counts = [count_flops(lambda m=m: m(x, labels=x).loss.backward()) for m in (ours, theirs)]
    assert counts[0] == counts[1] > 0


def test_reinitialising_a_module_draws_as_transformers_does() -> None:
    """``random`` growth re-initialises a block module by module with ``_init_weights``."""
    ours, theirs = _pair(tiny_config("gpt2"))
    for model in (ours, theirs):
        torch.manual_seed(7)
        block = model.transformer.h[1]
        for module in reversed(list(block.modules())):
            model._init_weights(module)
    for key, value in ours.transformer.h[1].state_dict().items():
        torch.testing.assert_close(value, theirs.transformer.h[1].state_dict()[key], msg=key)


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoints_load_both_ways(tmp_path: Path, tie: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_config("gpt2", tie_embeddings=tie, dropout=0.1)
    ours, theirs = _pair(cfg)
    ours.eval()
    x, _ = token_batch()
    ours.save_pretrained(tmp_path / "ours")
    # Eager on both sides (tiny_config's kernel): transformers would load it with sdpa.
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours(x).logits, rtol=0, atol=0)
    # The config transformers reads back is the one it would have built itself.
    read = AutoConfig.from_pretrained(tmp_path / "ours")
    built = GPT2.build_hf_config(cfg, vocab_size=VOCAB)
    for field in json.loads((tmp_path / "ours" / "config.json").read_text()):
        if field not in ("architectures", "dtype"):
            assert getattr(read, field) == getattr(built, field), field
    assert read.architectures == ["GPT2LMHeadModel"]
    # transformers' own checkpoint (what earlier stagetune versions wrote) loads into ours.
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = GPT2.build(cfg, vocab_size=VOCAB).eval()
    missing, unexpected = fresh.load_state_dict(
        load_file(str(tmp_path / "theirs" / "model.safetensors")), strict=False
    )
    assert not unexpected and missing == (["lm_head.weight"] if tie else [])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, theirs.eval()(x).logits, rtol=0, atol=0)


def test_settings_refuse_what_the_modules_cannot_run() -> None:
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        flash = dataclasses.replace(tiny_config("gpt2"), attn_implementation="flash")
        GPT2.settings(flash, vocab_size=8)
    shape = GPT2.settings(tiny_config("gpt2"), vocab_size=8)
    with pytest.raises(ValueError, match="not divisible by n_head=3"):
        dataclasses.replace(shape, n_head=3)


def test_a_gpt2_training_run_never_imports_transformers(tmp_path: Path) -> None:
    """Everything a worker does for a trial (its entry modules, data, the loop with growth,
    freezing and checkpoints), in a fresh interpreter: transformers stays unimported."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import stagetune.trainables.launcher, stagetune.orchestration.trainable
        from stagetune.config import load_config
        from stagetune.data import prepare_data
        from stagetune.schedule import build_schedule
        from stagetune.trainables.loop import StagedTrainer
        from stagetune.trainables.session import LocalSession
        from stagetune.trial import TrialDescription

        cfg = load_config(overrides={[*FAST, f"workdir={tmp_path / 'work'}", "schedule.growth=random"]!r})
        vocab = prepare_data(cfg.data).vocab_size
        trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))
        session = LocalSession(Path({str(tmp_path / "run")!r}))
        StagedTrainer(trial, session, config=cfg, vocab_size=vocab).run()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "transformers")
        print(json.dumps({{"records": len(session.records), "transformers": loaded}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["records"] > 0
    assert result["transformers"] == []
    checkpoints = sorted((tmp_path / "run").rglob("config.json"))
    assert checkpoints, "the run wrote no checkpoint"
