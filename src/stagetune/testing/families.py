"""The model-family contract, as a pytest suite (subclass it; override ``adapter``).

A :class:`~stagetune.models.FamilyAdapter` tells the staged model where a causal LM with a
Hugging Face layout keeps its parts and how many FLOPs a block costs. The suite builds a tiny
model of the family (:func:`stagetune.testing.models.tiny_config`; override ``model_config`` for
other shapes) and checks: deterministic building, the staged forward pass equal to the built
model's own at full depth (GPT-2's modules are our own: ``tests/models/test_gpt2_model.py``
also holds them equal to transformers'), inactive blocks neither running nor training, the
block index of every state-dict key, optimizer groups, the export at an intermediate depth,
and the FLOPs model (:meth:`FamilyAdapter.dims`) against ``torch.utils.flop_counter`` on the
real model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from stagetune.compute import StepWork, forward_flops, step_flops
from stagetune.config import ModelConfig
from stagetune.models import IGNORE_INDEX, FamilyAdapter, StagedModel, build_model
from stagetune.testing.models import SEQ, VOCAB, count_flops, tiny_config, token_batch

__all__ = ["ModelFamilySuite"]

# The analytic model counts matmuls only; the counter agrees to well within this.
_FLOPS_REL_TOL = 0.02


class ModelFamilySuite:
    """Tests every model family passes. Override :meth:`adapter` (and, for other shapes,
    :meth:`model_config`); the adapter must be registered under its name."""

    @pytest.fixture
    def adapter(self) -> FamilyAdapter:
        """The family adapter under test (registered, so ``model.family`` can name it)."""
        raise NotImplementedError("override the `adapter` fixture with your FamilyAdapter")

    @pytest.fixture
    def model_config(self, adapter: FamilyAdapter) -> ModelConfig:
        """A tiny config of the family (4 blocks: the tests grow and truncate it)."""
        return tiny_config(adapter.name)

    @staticmethod
    def build(cfg: ModelConfig, *, seed: int = 0, **changes: Any) -> StagedModel:
        """``cfg`` with ``changes``, built at full depth."""
        return build_model(dataclasses.replace(cfg, **changes), vocab_size=VOCAB, seed=seed)

    def test_adapter_names(self, adapter: FamilyAdapter, model_config: ModelConfig) -> None:
        assert isinstance(adapter.name, str) and adapter.name == model_config.family
        assert isinstance(adapter.blocks_path, str) and adapter.blocks_path

    def test_build_is_deterministic_in_seed(self, model_config: ModelConfig) -> None:
        a, b = self.build(model_config, seed=1), self.build(model_config, seed=1)
        c = self.build(model_config, seed=2)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)

    def test_build_structure(self, model_config: ModelConfig) -> None:
        m = self.build(model_config)
        assert m.num_layers == model_config.n_layer == len(m.blocks)
        assert m.active_depth == model_config.n_layer
        assert m.vocab_size == VOCAB
        for attn in ("sdpa", "eager"):
            built = self.build(model_config, attn_implementation=attn)
            assert built.hf_model.config._attn_implementation == attn
        assert m.tied_embeddings == model_config.tie_embeddings
        untied = self.build(model_config, tie_embeddings=not model_config.tie_embeddings)
        assert untied.tied_embeddings != m.tied_embeddings

    @pytest.mark.parametrize("attn", ["sdpa", "eager"])
    def test_forward_matches_hf_at_full_depth(self, model_config: ModelConfig, attn: str) -> None:
        m = self.build(model_config, attn_implementation=attn)
        x, _ = token_batch()
        ours = m(x)
        torch.testing.assert_close(ours.logits, m.hf_model(x).logits)
        assert ours.loss is None
        # Our labels are pre-shifted; HF shifts internally. Same targets -> same mean loss.
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, :-1] = x[:, 1:]
        torch.testing.assert_close(m(x, labels=y).loss, m.hf_model(x, labels=x).loss)

    def test_inactive_blocks_neither_run_nor_train(self, model_config: ModelConfig) -> None:
        m = self.build(model_config)
        m.set_active_depth(2)
        x, y = token_batch()
        before = m(x).logits
        with torch.no_grad():
            for p in m.blocks[2].parameters():
                p.add_(1.0)
        torch.testing.assert_close(m(x).logits, before)
        ran: list[int] = []
        for i, block in enumerate(m.blocks):
            block.register_forward_pre_hook(lambda *_a, i=i: ran.append(i))
        m(x, labels=y).loss.backward()
        assert ran == [0, 1]
        assert all(p.grad is None and not p.requires_grad for p in m.blocks[2].parameters())
        assert all(p.grad is not None for p in m.blocks[1].parameters())

    def test_block_index_of_every_key(self, adapter: FamilyAdapter, model_config: ModelConfig) -> None:
        m = self.build(model_config)
        in_block = {
            f"{adapter.blocks_path}.{i}.{key}": i
            for i, block in enumerate(m.blocks)
            for key in block.state_dict()
        }
        for key in m.hf_model.state_dict():
            assert adapter.block_index(key) == in_block.get(key), key

    def test_parts(self, adapter: FamilyAdapter, model_config: ModelConfig) -> None:
        m = self.build(model_config, tie_embeddings=False)
        hf = m.hf_model
        x, _ = token_batch()
        hidden, ctx = adapter.embed(hf, x)
        assert hidden.shape == (*x.shape, model_config.n_embd) and isinstance(ctx, dict)
        out = adapter.run_block(adapter.blocks(hf)[0], hidden, ctx)
        assert out.shape == hidden.shape
        assert adapter.embedding_modules(hf) and adapter.final_norm(hf) is not None
        assert adapter.lm_head(hf).weight.shape == (VOCAB, model_config.n_embd)
        # Zeroing the residual output projections makes a block the identity.
        block = adapter.blocks(hf)[0]
        with torch.no_grad():
            for proj in adapter.residual_output_projections(block):
                for p in proj.parameters():
                    p.zero_()
            torch.testing.assert_close(adapter.run_block(block, hidden, ctx), hidden)

    @pytest.mark.parametrize("tie", [True, False])
    def test_parameter_groups(self, model_config: ModelConfig, tie: bool) -> None:
        m = self.build(model_config, tie_embeddings=tie)
        groups = m.parameter_groups(0.1)
        decay, no_decay = groups
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(p.ndim >= 2 for p in decay["params"])
        embeddings = {
            id(p) for mod in m.family.embedding_modules(m.hf_model) for p in mod.parameters()
        }
        assert not embeddings & {id(p) for p in decay["params"]}
        head = m.family.lm_head(m.hf_model).weight
        assert (id(head) in {id(p) for p in decay["params"]}) is (not tie)
        # Every trainable parameter exactly once.
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) == len(m.trainable_parameters())
        torch.optim.AdamW(groups, lr=1e-3)

    @pytest.mark.parametrize("tie", [True, False])
    def test_save_pretrained_at_intermediate_depth(
        self, model_config: ModelConfig, tie: bool, tmp_path: Path
    ) -> None:
        m = self.build(model_config, tie_embeddings=tie)
        m.set_active_depth(2)
        m.grow(3, "copy_top", seed=0)
        m.eval()
        m.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
        # The adapter itself is restored after saving.
        n = model_config.n_layer
        assert m.num_layers == n and m.hf_model.config.num_hidden_layers == n
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
        loaded.eval()
        assert loaded.config.num_hidden_layers == 3
        x, _ = token_batch()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, m(x).logits)

    def test_block_matmul_params_are_the_block_weights(
        self, adapter: FamilyAdapter, model_config: ModelConfig
    ) -> None:
        m = self.build(model_config)
        # Norm weights and biases are vectors: a block's matrices are its matmul weights.
        matrices = sum(p.numel() for p in m.blocks[0].parameters() if p.ndim == 2)
        assert adapter.block_matmul_params(model_config) == matrices
        dims = adapter.dims(model_config, vocab_size=VOCAB, seq_len=SEQ)
        assert dims == m.dims(SEQ) and dims.n_layer == model_config.n_layer

    @pytest.mark.parametrize("depth", [1, 4])
    def test_forward_flops_match_the_counter(self, model_config: ModelConfig, depth: int) -> None:
        m = self.build(model_config)
        m.set_active_depth(depth)
        m.eval()
        x, _ = token_batch()

        def forward() -> None:
            with torch.no_grad():
                m(x)

        analytic = forward_flops(m.dims(SEQ), depth=depth, tokens=x.numel())
        assert analytic == pytest.approx(count_flops(forward), rel=_FLOPS_REL_TOL)

    def test_training_step_flops_match_the_counter(self, model_config: ModelConfig) -> None:
        m = self.build(model_config)
        x, y = token_batch()
        measured = count_flops(lambda: m(x, labels=y).loss.backward())
        work = StepWork.all_trainable(model_config.n_layer)
        analytic = step_flops(m.dims(SEQ), work, tokens=x.numel())
        assert analytic == pytest.approx(measured, rel=_FLOPS_REL_TOL)
