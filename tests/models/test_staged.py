"""StagedModel: building, labels, depth bounds, optimizer groups under freezing.

What every family must do (forward parity with Hugging Face, inactive blocks, export, FLOPs)
is the family suite's (tests/models/test_family.py runs it on every registered family).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stagetune.errors import ConfigError
from stagetune.models import build_model
from stagetune.testing.models import VOCAB, tiny_config, tiny_model, token_batch

# ---------------------------------------------------------------------------------------------
# building


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model("gpt2", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_unknown_family_names_the_field() -> None:
    cfg = dataclasses.replace(tiny_config("gpt2"), family="gtp2")  # never through the edge
    with pytest.raises(ConfigError) as err:
        build_model(cfg, vocab_size=VOCAB, seed=0)
    assert err.value.field == "model.family"
    assert "gpt2" in err.value.fix


def test_config_vocab_must_cover_tokenizer() -> None:
    with pytest.raises(ConfigError) as err:
        build_model(tiny_config("gpt2", vocab_size=64), vocab_size=VOCAB, seed=0)
    assert err.value.field == "model.vocab_size"
    assert build_model(tiny_config("gpt2", vocab_size=256), vocab_size=VOCAB, seed=0).vocab_size == 256


# ---------------------------------------------------------------------------------------------
# forward


def test_labels_are_not_shifted_again() -> None:
    m = tiny_model("gpt2")
    x, _ = token_batch()
    _, y = token_batch(seed=1)
    out = m(x, labels=y)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB), y.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="already shifted"):
        m(x, labels=y[:, 1:])


def test_set_active_depth_bounds() -> None:
    m = tiny_model("gpt2")
    for bad in (0, 5, -1):
        with pytest.raises(ValueError):
            m.set_active_depth(bad)
    m.set_active_depth(4)
    assert m.active_depth == 4


# ---------------------------------------------------------------------------------------------
# optimizer groups


def test_parameter_groups_follow_freezing() -> None:
    m = tiny_model("gpt2", tie_embeddings=False)
    m.set_active_depth(2)
    m.configure_phase(trainable_from=1, freeze_policy="new_only")
    trainable = {id(p) for p in m.trainable_parameters()}
    grouped = {id(p) for g in m.parameter_groups(0.1) for p in g["params"]}
    assert grouped == trainable
    everything = {id(p) for g in m.parameter_groups(0.1, trainable_only=False) for p in g["params"]}
    assert everything == {id(p) for p in m.hf_model.parameters()}


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_groups_by_hf_name(tie: bool) -> None:
    """The decay split by Hugging Face parameter names, on both built-in families."""
    for family in ("gpt2", "llama"):
        m = tiny_model(family, tie_embeddings=tie)
        decay, no_decay = m.parameter_groups(0.1)
        names = {id(p): n for n, p in m.hf_model.named_parameters()}
        decay_names = {names[id(p)] for p in decay["params"]}
        no_decay_names = {names[id(p)] for p in no_decay["params"]}
        assert not any("wte" in n or "wpe" in n or "embed" in n for n in decay_names)
        assert not any("ln" in n or "norm" in n or n.endswith("bias") for n in decay_names)
        assert any("wte" in n or "embed_tokens" in n for n in no_decay_names)
        assert ("lm_head.weight" in decay_names) is (not tie)
