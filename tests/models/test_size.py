"""Parameter counts for the regime: GPT-2 124M has the well-known 85.1 M non-embedding
parameters (12 blocks × 7,087,872 + the final LayerNorm), counted on the meta device."""

from __future__ import annotations

from stagetune.config import load_config
from stagetune.models.size import param_counts


def test_gpt2_124m_parameter_counts() -> None:
    cfg = load_config(preset="paper-gpt2-124m")
    counts = param_counts(cfg.model, vocab_size=50257)
    # Token (50,304 × 768, padded) and position (1,024 × 768) embeddings; the head is tied.
    assert counts.non_embedding == 12 * 7_087_872 + 2 * 768 == 85_056_000
    assert counts.total == counts.non_embedding + (50_304 + 1_024) * 768
    # 524,288 tokens a step × 9,536 steps ≈ 5.0 B tokens: the paper's ≈ 60 per parameter.
    tokens = cfg.schedule.baseline_steps * cfg.train.batch_size * cfg.data.seq_len
    assert 55 < tokens / counts.non_embedding < 65
