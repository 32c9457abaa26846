"""The freeze-policy contract, as a pytest suite (subclass it; override ``policy``).

A :class:`~stagetune.freeze.FreezePolicy` says two things about phase 1 of a stage: which
parameters train (its ``requires_grad`` rules) and what work a step does
(:meth:`~stagetune.freeze.FreezePolicy.phase1_work`, which the FLOPs accounting counts). The
suite checks both on real models and checks that they agree: the new blocks and the head path
train, the frozen blocks get no gradient and do not move under AdamW, autograd runs through
the frozen prefix exactly when the work says so, and ``FlopCounterMode`` measures what
:func:`stagetune.compute.step_flops` counts. A policy without phase 1 must refuse one.
"""

from __future__ import annotations

import pytest
import torch

from stagetune.compute import step_flops
from stagetune.freeze import FreezePolicy, StepWork
from stagetune.models import StagedModel
from stagetune.testing.models import SEQ, count_flops, tiny_model, token_batch

__all__ = ["FreezePolicySuite"]

_OLD, _NEW = 2, 4
"""Phase 1 of the suites' stage: blocks [0, 2) frozen, blocks [2, 4) new."""


class FreezePolicySuite:
    """Tests every freeze policy passes. Override :meth:`policy`."""

    @pytest.fixture
    def policy(self) -> FreezePolicy:
        """The policy under test."""
        raise NotImplementedError("override the `policy` fixture with your FreezePolicy")

    @pytest.fixture(params=["gpt2", "llama"])
    def family(self, request: pytest.FixtureRequest) -> str:
        """The model family the policy freezes."""
        return str(request.param)

    @staticmethod
    def phase1_model(policy: FreezePolicy, family: str, *, tie: bool) -> StagedModel:
        """Stage 2 of a 4-block model in phase 1: blocks 0-1 old, blocks 2-3 new."""
        m = tiny_model(family, tie_embeddings=tie)
        m.set_active_depth(_OLD)
        m.grow(_NEW, "random", seed=1)
        m.configure_phase(trainable_from=_OLD, freeze_policy=policy)
        return m

    def test_declares_its_rules(self, policy: FreezePolicy) -> None:
        assert isinstance(policy.name, str) and policy.name
        assert isinstance(policy.has_phase1, bool)
        assert isinstance(policy.embeddings_train, bool)
        assert isinstance(policy.prefix_without_grad, bool)

    def test_every_active_block_trains_outside_phase1(
        self, policy: FreezePolicy, family: str
    ) -> None:
        m = tiny_model(family, tie_embeddings=False)
        m.set_active_depth(3)
        m.configure_phase(trainable_from=0, freeze_policy=policy)
        inactive = {id(p) for p in m.blocks[3].parameters()}
        active = [p for p in m.hf_model.parameters() if id(p) not in inactive]
        assert all(p.requires_grad for p in active)
        assert not any(p.requires_grad for p in m.blocks[3].parameters())
        x, y = token_batch()
        m(x, labels=y).loss.backward()
        assert all(p.grad is not None for p in active)

    def test_phase1_work_adds_up(self, policy: FreezePolicy) -> None:
        if not policy.has_phase1:
            with pytest.raises(ValueError, match="no phase 1"):
                policy.phase1_work(depth=_NEW, prev_depth=_OLD)
            return
        work = policy.phase1_work(depth=_NEW, prev_depth=_OLD)
        assert isinstance(work, StepWork)
        assert work.active_depth == _NEW and work.trainable_blocks == _NEW - _OLD
        assert work.forward_only_blocks + work.activation_grad_blocks == _OLD

    def test_phase1_trains_the_new_blocks_and_the_head(
        self, policy: FreezePolicy, family: str
    ) -> None:
        if not policy.has_phase1:
            m = tiny_model(family)
            m.set_active_depth(_OLD)
            m.grow(_NEW, "random", seed=1)
            with pytest.raises(ValueError, match="trainable_from must be 0"):
                m.configure_phase(trainable_from=_OLD, freeze_policy=policy)
            return
        m = self.phase1_model(policy, family, tie=False)
        hf = m.hf_model
        frozen = list(m.blocks[:_OLD].parameters())
        new = list(m.blocks[_OLD:_NEW].parameters())
        head = [*m.family.final_norm(hf).parameters(), m.family.lm_head(hf).weight]
        embeddings = [p for mod in m.family.embedding_modules(hf) for p in mod.parameters()]
        assert all(p.requires_grad for p in new + head)
        assert not any(p.requires_grad for p in frozen)
        assert all(p.requires_grad is policy.embeddings_train for p in embeddings)
        before = [p.detach().clone() for p in frozen]
        # Every parameter goes to AdamW (with weight decay): frozen ones must still not move.
        opt = torch.optim.AdamW(m.parameter_groups(0.1, trainable_only=False), lr=1e-2)
        for step in range(2):
            x, y = token_batch(step)
            opt.zero_grad(set_to_none=True)
            m(x, labels=y).loss.backward()
            opt.step()
        for p, b in zip(frozen, before):
            assert p.grad is None and torch.equal(p, b)
        assert all(p.grad is not None for p in new + head)

    @pytest.mark.parametrize("tie", [True, False])
    def test_autograd_runs_through_the_prefix_as_the_work_says(
        self, policy: FreezePolicy, family: str, tie: bool
    ) -> None:
        if not policy.has_phase1:
            pytest.skip(f"{policy.name} has no phase 1")
        m = self.phase1_model(policy, family, tie=tie)
        seen: list[torch.Tensor] = []
        m.blocks[_OLD].register_forward_pre_hook(lambda _mod, args: seen.append(args[0]))
        x, y = token_batch()
        m(x, labels=y).loss.backward()
        work = policy.phase1_work(depth=_NEW, prev_depth=_OLD)
        through = work.activation_grad_blocks > 0
        assert seen and all(h.requires_grad is through for h in seen)

    @pytest.mark.parametrize("tie", [True, False])
    def test_phase1_flops_match_the_counter(
        self, policy: FreezePolicy, family: str, tie: bool
    ) -> None:
        if not policy.has_phase1:
            pytest.skip(f"{policy.name} has no phase 1")
        m = self.phase1_model(policy, family, tie=tie)
        x, y = token_batch()
        measured = count_flops(lambda: m(x, labels=y).loss.backward())
        work = policy.phase1_work(depth=_NEW, prev_depth=_OLD)
        analytic = step_flops(m.dims(SEQ), work, tokens=x.numel())
        assert analytic == pytest.approx(measured, rel=0.02)
