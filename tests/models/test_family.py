"""Family adapters: the conformance suite on every registered family, plus each family's facts."""

from __future__ import annotations

import pytest

from stagetune.config import ModelConfig
from stagetune.models import FamilyAdapter, GPT2Adapter, get_family, model_dims, register_family
from stagetune.registry import MODEL_FAMILIES
from stagetune.testing.families import ModelFamilySuite


class TestRegisteredFamilies(ModelFamilySuite):
    @pytest.fixture(params=MODEL_FAMILIES.names())
    def adapter(self, request: pytest.FixtureRequest) -> FamilyAdapter:
        return get_family(request.param)


def test_the_built_in_families() -> None:
    assert MODEL_FAMILIES.names() == ["gpt2", "llama"]
    assert get_family("gpt2").blocks_path == "transformer.h"
    assert get_family("llama").blocks_path == "model.layers"


@pytest.mark.parametrize(
    ("family", "n_embd", "intermediate", "ffn"),
    [
        ("gpt2", 768, None, 3072),  # 4 × n_embd
        ("gpt2", 768, 1000, 1000),
        ("llama", 768, None, 2048),  # 8/3 × n_embd, rounded up to 32
        ("llama", 100, None, 288),
        ("llama", 768, 1000, 1000),
    ],
)
def test_ffn_size_is_the_familys_rule(
    family: str, n_embd: int, intermediate: int | None, ffn: int
) -> None:
    cfg = ModelConfig(family=family, n_embd=n_embd, n_head=4, intermediate_size=intermediate)
    assert get_family(family).ffn_size(cfg) == ffn


def test_block_matmul_params_closed_forms() -> None:
    gpt2 = ModelConfig(family="gpt2", n_embd=768, n_head=12)
    # q, k, v and out projections (4 d²), MLP d → 4d → d (8 d²).
    assert get_family("gpt2").block_matmul_params(gpt2) == 12 * 768**2
    llama = ModelConfig(family="llama", n_embd=64, n_head=4, n_kv_head=2, intermediate_size=256)
    # q and o (2 d²), k and v to 2 heads of 16 (2 · d · 32), gated MLP (3 · d · 256).
    assert get_family("llama").block_matmul_params(llama) == 2 * 64**2 + 2 * 64 * 32 + 3 * 64 * 256


def test_model_dims_asks_the_family() -> None:
    cfg = ModelConfig(family="llama", n_layer=3, n_embd=64, n_head=4, vocab_size=1000)
    dims = model_dims(cfg, vocab_size=500, seq_len=32)
    assert dims == get_family("llama").dims(cfg, vocab_size=500, seq_len=32)
    assert (dims.n_layer, dims.vocab_size, dims.seq_len) == (3, 1000, 32)  # the config's vocab


@pytest.mark.parametrize(
    ("family", "key", "index"),
    [
        ("gpt2", "transformer.h.3.attn.c_attn.weight", 3),
        ("gpt2", "transformer.h.12.ln_1.bias", 12),
        ("gpt2", "transformer.wte.weight", None),
        ("gpt2", "lm_head.weight", None),
        ("llama", "model.layers.0.mlp.down_proj.weight", 0),
        ("llama", "model.norm.weight", None),
        ("llama", "model.layers_x.1.weight", None),
    ],
)
def test_block_index(family: str, key: str, index: int | None) -> None:
    assert get_family(family).block_index(key) == index


def test_register_family() -> None:
    class Renamed(GPT2Adapter):
        name = "gpt2-renamed"

    adapter = Renamed()
    with MODEL_FAMILIES.isolated():
        assert register_family(adapter) is adapter and get_family("gpt2-renamed") is adapter
        with pytest.raises(TypeError, match="not a FamilyAdapter instance"):
            MODEL_FAMILIES.register("bogus", "gpt2")
    assert "gpt2-renamed" not in MODEL_FAMILIES
