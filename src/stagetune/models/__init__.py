"""HF causal-LM adapter for staged training: active depth, growth operators, freezing.

* :func:`build_model` builds a :class:`StagedModel` from a :class:`~stagetune.config.ModelConfig`
  (GPT-2 or Llama, from configs only, all L blocks present from the start).
* :class:`StagedModel` runs the active blocks, grows with a :class:`GrowthOperator` and freezes
  per phase (:meth:`StagedModel.configure_phase`).
* Growth operators live in :data:`GROWTH_OPERATORS` (``random``, ``copy_top``, ``stack``,
  ``copy_middle``, ``zero``); families in :data:`FAMILIES` (``gpt2``, ``llama``).
"""

from stagetune.models.family import FAMILIES, FamilyAdapter, get_family, register_family
from stagetune.models.gpt2 import GPT2Adapter
from stagetune.models.growth import (
    GROWTH_OPERATORS,
    CopyMiddle,
    CopyTop,
    GrowthOperator,
    RandomInit,
    Stack,
    ZeroInit,
    get_growth_operator,
    register_growth_operator,
)
from stagetune.models.llama import LlamaAdapter
from stagetune.models.staged import FREEZE_POLICIES, IGNORE_INDEX, StagedModel, build_model

__all__ = [
    "FAMILIES",
    "FREEZE_POLICIES",
    "GROWTH_OPERATORS",
    "IGNORE_INDEX",
    "CopyMiddle",
    "CopyTop",
    "FamilyAdapter",
    "GPT2Adapter",
    "GrowthOperator",
    "LlamaAdapter",
    "RandomInit",
    "Stack",
    "StagedModel",
    "ZeroInit",
    "build_model",
    "get_family",
    "get_growth_operator",
    "register_family",
    "register_growth_operator",
]
