"""Causal LMs with a Hugging Face layout for staged training: active depth, growth, freezing.

* :func:`build_model` builds a :class:`StagedModel` from a :class:`~stagetune.config.ModelConfig`
  (GPT-2 or Llama, from configs only, all L blocks present from the start; GPT-2 from our own
  torch-only modules, :mod:`stagetune.models.gpt2_model`, that transformers loads as its own).
* :class:`StagedModel` runs the active blocks, grows with a :class:`GrowthOperator` and freezes
  per phase (:meth:`StagedModel.configure_phase`, by the rules of a
  :class:`~stagetune.freeze.FreezePolicy`).
* Growth operators (``random``, ``copy_top``, ``stack``, ``copy_middle``, ``zero``) and families
  (``gpt2``, ``llama``) are registered in :data:`stagetune.registry.GROWTH_OPERATORS` and
  :data:`stagetune.registry.MODEL_FAMILIES`, the one list of each.
"""

from stagetune.models.family import FamilyAdapter, get_family, model_dims, register_family
from stagetune.models.gpt2 import GPT2Adapter
from stagetune.models.gpt2_model import GPT2LMHeadModel, GPT2Settings
from stagetune.models.growth import (
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
from stagetune.models.output import IGNORE_INDEX, CausalLMOutput
from stagetune.models.staged import StagedModel, build_model

__all__ = [
    "IGNORE_INDEX",
    "CausalLMOutput",
    "CopyMiddle",
    "CopyTop",
    "FamilyAdapter",
    "GPT2Adapter",
    "GPT2LMHeadModel",
    "GPT2Settings",
    "GrowthOperator",
    "LlamaAdapter",
    "RandomInit",
    "Stack",
    "StagedModel",
    "ZeroInit",
    "build_model",
    "get_family",
    "get_growth_operator",
    "model_dims",
    "register_family",
    "register_growth_operator",
]
