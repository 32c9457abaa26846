"""StagedModel: building, forward parity with Hugging Face, depth, optimizer groups, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from stagetune.compute import ModelDims
from stagetune.config import ModelConfig
from stagetune.errors import ConfigError
from stagetune.models import IGNORE_INDEX, StagedModel, build_model

VOCAB = 128
SEQ = 16


def tiny(family: str = "gpt2", **overrides: Any) -> ModelConfig:
    """A tiny config of either family (Llama with grouped-query attention)."""
    kw: dict[str, Any] = {
        "family": family,
        "n_layer": 4,
        "n_embd": 32,
        "n_head": 4,
        "context_length": SEQ,
        "attn_implementation": "eager",
    }
    if family == "llama":
        kw["n_kv_head"] = 2
    kw.update(overrides)
    return ModelConfig(**kw)


def make(family: str = "gpt2", seed: int = 0, **overrides: Any) -> StagedModel:
    return build_model(tiny(family, **overrides), vocab_size=VOCAB, seed=seed)


def tokens(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=g)


# ---------------------------------------------------------------------------------------------
# building


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_build_is_deterministic_in_seed(family: str) -> None:
    a, b, c = make(family, seed=1), make(family, seed=1), make(family, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make("gpt2", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_build_structure(family: str) -> None:
    m = make(family, n_layer=5)
    assert m.num_layers == 5 == len(m.blocks)
    assert m.active_depth == 5
    assert m.vocab_size == VOCAB
    assert m.hf_model.config._attn_implementation == "eager"
    assert make(family, attn_implementation="sdpa").hf_model.config._attn_implementation == "sdpa"
    assert m.tied_embeddings  # the ModelConfig default
    assert not make(family, tie_embeddings=False).tied_embeddings


def test_unknown_family_names_the_field() -> None:
    cfg = tiny("gpt2")
    cfg.family = "gtp2"  # bypasses ModelConfig's own validation on purpose
    with pytest.raises(ConfigError) as err:
        build_model(cfg, vocab_size=VOCAB, seed=0)
    assert err.value.field == "model.family"
    assert "gpt2" in err.value.fix


def test_config_vocab_must_cover_tokenizer() -> None:
    with pytest.raises(ConfigError) as err:
        build_model(tiny("gpt2", vocab_size=64), vocab_size=VOCAB, seed=0)
    assert err.value.field == "model.vocab_size"
    assert build_model(tiny("gpt2", vocab_size=256), vocab_size=VOCAB, seed=0).vocab_size == 256


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dims(family: str) -> None:
    m = make(family)
    cfg = m.config
    assert m.dims(SEQ) == ModelDims.from_model_config(cfg, vocab_size=VOCAB, seq_len=SEQ)


# ---------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forward_matches_hf_at_full_depth(family: str, attn: str) -> None:
    m = make(family, attn_implementation=attn)
    x = tokens()
    ours = m(x)
    ref = m.hf_model(x)
    torch.testing.assert_close(ours.logits, ref.logits)
    assert ours.loss is None
    # Our labels are pre-shifted; HF shifts internally. Same targets -> same mean loss.
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, :-1] = x[:, 1:]
    torch.testing.assert_close(m(x, labels=y).loss, m.hf_model(x, labels=x).loss)


def test_labels_are_not_shifted_again() -> None:
    m = make("gpt2")
    x = tokens()
    y = tokens(seed=1)
    out = m(x, labels=y)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB), y.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="already shifted"):
        m(x, labels=y[:, 1:])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inactive_blocks_do_not_run(family: str) -> None:
    m = make(family)
    m.set_active_depth(2)
    x = tokens()
    before = m(x).logits
    with torch.no_grad():
        for p in m.blocks[2].parameters():
            p.add_(1.0)
    torch.testing.assert_close(m(x).logits, before)
    ran: list[int] = []
    for i, block in enumerate(m.blocks):
        block.register_forward_pre_hook(lambda *_a, i=i: ran.append(i))
    m(x)
    assert ran == [0, 1]


def test_set_active_depth_bounds() -> None:
    m = make("gpt2")
    for bad in (0, 5, -1):
        with pytest.raises(ValueError):
            m.set_active_depth(bad)
    m.set_active_depth(4)
    assert m.active_depth == 4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inactive_blocks_get_no_gradient(family: str) -> None:
    m = make(family)
    m.set_active_depth(3)
    x = tokens()
    m(x, labels=x).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.blocks[3].parameters())
    assert all(p.grad is not None for p in m.blocks[2].parameters())


# ---------------------------------------------------------------------------------------------
# optimizer groups


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_parameter_groups(family: str, tie: bool) -> None:
    m = make(family, tie_embeddings=tie)
    groups = m.parameter_groups(0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.hf_model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any("wte" in n or "wpe" in n or "embed" in n for n in decay_names)
    assert not any("ln" in n or "norm" in n or n.endswith("bias") for n in decay_names)
    assert any("wte" in n or "embed_tokens" in n for n in no_decay_names)
    assert ("lm_head.weight" in decay_names) is (not tie)
    # Every trainable parameter exactly once.
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(m.trainable_parameters())
    torch.optim.AdamW(groups, lr=1e-3)


def test_parameter_groups_follow_freezing() -> None:
    m = make("gpt2", tie_embeddings=False)
    m.set_active_depth(2)
    m.configure_phase(trainable_from=1, freeze_policy="new_only")
    trainable = {id(p) for p in m.trainable_parameters()}
    grouped = {id(p) for g in m.parameter_groups(0.1) for p in g["params"]}
    assert grouped == trainable
    everything = {id(p) for g in m.parameter_groups(0.1, trainable_only=False) for p in g["params"]}
    assert everything == {id(p) for p in m.hf_model.parameters()}


# ---------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize(
    ("family", "tie"), [("gpt2", True), ("gpt2", False), ("llama", False), ("llama", True)]
)
def test_save_pretrained_round_trip_at_intermediate_depth(
    family: str, tie: bool, tmp_path: Path
) -> None:
    m = make(family, tie_embeddings=tie)
    m.set_active_depth(2)
    m.grow(3, "copy_top", seed=0)
    m.eval()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    # The adapter itself is restored after saving.
    assert m.num_layers == 4 and m.hf_model.config.num_hidden_layers == 4
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded.eval()
    assert loaded.config.num_hidden_layers == 3
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, m(x).logits)
