"""A trained model as a directory anyone can pick up: ``from_pretrained(dir)`` for the model and
``AutoTokenizer.from_pretrained(dir)`` for its tokenizer, nothing else needed.

A training checkpoint holds far more (optimizer, counters, generator states, a manifest) and
keeps the model in a subfolder; its format belongs to the training loop and may change. The
export copies the model's files out of the newest checkpoint that verifies, and saves the
tokenizer the data was encoded with beside them as a ``PreTrainedTokenizerFast`` whose special
tokens are the end-of-text token (GPT-2's convention: it begins, ends and pads sequences).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from stagetune.errors import StagetuneError
from stagetune.trainables.checkpoint import HF_DIR, find_latest_valid, newest_first

__all__ = ["EXPORT_DIR", "export_model", "latest_checkpoint"]

EXPORT_DIR: Final = "final"
"""Where ``stagetune train`` exports its final model, under its output directory."""


def latest_checkpoint(roots: Iterable[Path]) -> Path:
    """The newest checkpoint that verifies, among the ``step_*`` (stagetune's) and
    ``checkpoint_*`` (Ray Train's) directories under ``roots``.

    Raises:
        StagetuneError: none verifies (the reasons of the ones skipped are named).
    """
    found = [
        p
        for root in roots
        if root.is_dir()
        for pattern in ("step_*", "checkpoint_*")
        for p in root.glob(pattern)
        if p.is_dir()
    ]
    best, skipped = find_latest_valid(newest_first(found))
    if best is None:
        why = "; ".join(skipped) or "there is none"
        raise StagetuneError(f"no valid checkpoint to export ({why})")
    return best


def export_model(
    checkpoint: Path, out: Path, *, tokenizer_json: Path | None, eot_id: int | None
) -> Path:
    """Write ``checkpoint``'s model and the tokenizer to ``out`` (replaced if present).

    ``tokenizer_json``: the ``tokenizer.json`` the data was encoded with (``None``: data given
    as token shards without one; only the model is exported). ``eot_id``: its end-of-text id.
    Returns ``out``.
    """
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint / HF_DIR, tmp)
    if tokenizer_json is not None:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
        if eot_id is not None:
            eot = tok.convert_ids_to_tokens(eot_id)
            tok.add_special_tokens(
                {"eos_token": eot, "bos_token": eot, "unk_token": eot, "pad_token": eot}
            )
        tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
