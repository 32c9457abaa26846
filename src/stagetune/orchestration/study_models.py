"""A finished study's answer as models a user can pick up: the reference's and the best
schedule's trained models, each a directory ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load directly (:mod:`stagetune.trainables.export`).

The trial exported for a recipe is its run on the study's own seed, from the newest of Tune's
checkpoints of that trial that verifies. A study whose Tune storage is remote (``s3://``...) has
no local checkpoints: nothing is exported and the caller says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stagetune.metrics import STATUS_FINISHED
from stagetune.results.matched import Outcome
from stagetune.trainables.checkpoint import HF_DIR, find_latest_valid, newest_first
from stagetune.trainables.export import export_model

__all__ = ["export_study_models"]

log = logging.getLogger(__name__)


def _trial_checkpoint(storage_root: Path, trial_id: str) -> Path | None:
    """The newest verified checkpoint Tune kept of ``trial_id`` (any phase's experiment)."""
    trial_dirs = [d for d in storage_root.glob(f"*/*_{trial_id}_*") if d.is_dir()]
    candidates = [c for d in trial_dirs for c in d.glob("checkpoint_*") if (c / HF_DIR).is_dir()]
    best, skipped = find_latest_valid(newest_first(candidates))
    for why in skipped:
        log.warning("not exported: %s", why)
    return best


def export_study_models(
    outcomes: Sequence[Outcome],
    *,
    storage_root: Path,
    out: Path,
    seed: str,
    tokenizer_json: Path | None,
    eot_id: int | None,
) -> dict[str, Path]:
    """Export the reference's and the best incremental schedule's model (their finished run on
    ``seed``) under ``out``; returns ``{"reference": dir, "best": dir}`` for those exported.

    ``outcomes`` are :func:`~stagetune.results.matched.compute_matched`'s: the reference
    first, then best to worst (the best schedule is the first that is not full depth).
    """
    picks: dict[str, Outcome] = {}
    if outcomes:
        picks["reference"] = outcomes[0]
    best = next((o for o in outcomes[1:] if not o.is_full_depth), None)
    if best is not None:
        picks["best"] = best
    exported: dict[str, Path] = {}
    for role, outcome in picks.items():
        runs = [t for t in outcome.trials if t.status == STATUS_FINISHED]
        run = next((t for t in runs if t.seed == seed), runs[0] if runs else None)
        if run is None:
            continue
        ckpt = _trial_checkpoint(storage_root, run.trial_id)
        if ckpt is None:
            log.warning("no checkpoint of trial %s (%s) to export", run.trial_id, outcome.label)
            continue
        exported[role] = export_model(
            ckpt, out / role, tokenizer_json=tokenizer_json, eot_id=eot_id
        )
    return exported
