"""Fault: a checkpoint on disk is truncated or altered after it was written.

Injection: the run is interrupted after a few checkpoints (an exception from the session in
process; ``os._exit`` of the trial's Ray worker through Tune), then the newest checkpoint's
files are truncated, bit-flipped, edited or deleted on disk. Detection is by the SHA-256
manifest written last with every checkpoint; the run resumes from the newest checkpoint that
verifies, or fails with one clear line when none does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stagetune.cli import main
from stagetune.data import prepare_data
from stagetune.errors import StagetuneError
from stagetune.schedule import build_schedule
from stagetune.trainables.checkpoint import MANIFEST, CorruptCheckpointError, write_manifest
from stagetune.trainables.loop import StagedTrainer
from stagetune.trainables.rng_state import RNG_FILE
from stagetune.trainables.session import LocalSession, Session
from stagetune.trial import TrialDescription
from tests.faults.conftest import fast_args

CKPT = ["schedule.baseline_steps=24", "train.checkpoint_every=4"]


class _Interrupt(Exception):
    pass


class _DyingSession(LocalSession):
    """Stops the run (like a killed process) right after its ``n``-th checkpoint."""

    def __init__(self, out: Path, n: int) -> None:
        super().__init__(out)
        self.n = n
        self.checkpoints = 0

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            self.checkpoints += 1
            if self.checkpoints >= self.n:
                raise _Interrupt


class _Spec:
    """The configured schedule's trial (what ``stagetune train`` runs) and its study."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.vocab = prepare_data(cfg.data).vocab_size
        schedule = build_schedule(cfg, vocab_size=self.vocab)
        self.trial = TrialDescription.from_config(cfg, schedule=schedule)
        self.schedule = schedule

    def trainer(self, session: Session) -> StagedTrainer:
        return StagedTrainer(self.trial, session, config=self.cfg, vocab_size=self.vocab)


def corrupt(ckpt: Path, how: str) -> None:
    """Damage one checkpoint directory in place."""
    if how == "truncate-weights":
        f = ckpt / "hf" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "flip-optimizer-byte":
        f = ckpt / "optimizer.pt"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
        f.write_bytes(bytes(data))
    elif how == "flip-rng-byte":
        f = ckpt / RNG_FILE
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF  # inside the last generator state
        f.write_bytes(bytes(data))
    elif how == "edit-state":
        f = ckpt / "trainer_state.json"
        state = json.loads(f.read_text())
        state["flops"] *= 2  # plausible JSON, wrong content
        f.write_text(json.dumps(state))
    elif how == "no-manifest":  # a write that died before its manifest
        (ckpt / MANIFEST).unlink()
    elif how == "missing-file":
        (ckpt / "optimizer.pt").unlink()
    else:  # pragma: no cover
        raise ValueError(how)


def _interrupted_run(fast_config: Any, tmp_path: Path) -> tuple[_Spec, Path, list[Path]]:
    torch.set_num_threads(1)
    spec = _Spec(fast_config(*CKPT))
    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        spec.trainer(_DyingSession(out, n=4)).run()
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000008", "step_00000012", "step_00000016"]
    return spec, out, ckpts


@pytest.mark.parametrize(
    "how",
    [
        "truncate-weights",
        "flip-optimizer-byte",
        "flip-rng-byte",
        "edit-state",
        "no-manifest",
        "missing-file",
    ],
)
def test_corrupt_newest_checkpoint_resumes_from_previous_good(
    how: str, fast_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, out, ckpts = _interrupted_run(fast_config, tmp_path)
    corrupt(ckpts[-1], how)
    caplog.clear()

    session = LocalSession(out)
    trainer = spec.trainer(session)
    result = trainer.run()
    printed = caplog.text
    assert trainer.resumed_from_step == 12, "resumed from the previous good checkpoint"
    assert f"skipping corrupt checkpoint: checkpoint {ckpts[-1]}" in printed
    assert "resuming from the previous good checkpoint" in printed
    assert result.status == "finished" and result.steps == spec.schedule.total_steps

    # The same losses as a run that was never interrupted.
    ref = LocalSession(tmp_path / "ref")
    spec.trainer(ref).run()
    by_step = {r["step"]: r for r in ref.records}
    for rec in session.records:
        assert rec["eval_loss"] == pytest.approx(by_step[rec["step"]]["eval_loss"], abs=1e-6)
        assert rec["flops"] == by_step[rec["step"]]["flops"]


def test_checkpoint_without_rng_state_resumes_with_a_note(
    fast_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint written before stagetune saved generator states still resumes."""
    spec, out, ckpts = _interrupted_run(fast_config, tmp_path)
    for c in ckpts:  # what an older stagetune wrote: no RNG file, a manifest without it
        (c / RNG_FILE).unlink()
        write_manifest(c)
    caplog.clear()
    trainer = spec.trainer(LocalSession(out))
    result = trainer.run()
    printed = caplog.text
    assert trainer.resumed_from_step == 16 and result.status == "finished"
    notes = [line for line in printed.splitlines() if "RNG state" in line]
    assert len(notes) == 1 and str(ckpts[-1]) in notes[0], printed
    assert "skipping corrupt" not in printed


def test_a_tampered_rng_state_is_refused(fast_config: Any, tmp_path: Path) -> None:
    """A generator state of the wrong size, with the manifest rewritten to match, is refused
    before anything is restored."""
    from safetensors.torch import save_file

    spec, out, ckpts = _interrupted_run(fast_config, tmp_path)
    for c in ckpts:
        save_file({"rank0.cpu": torch.zeros(7, dtype=torch.uint8)}, str(c / RNG_FILE))
        write_manifest(c)
    with pytest.raises(CorruptCheckpointError) as err:
        spec.trainer(LocalSession(out)).run()
    assert f"{RNG_FILE} entry 'rank0.cpu' is no generator state" in str(err.value)


def test_no_valid_checkpoint_left_fails_with_a_clear_message(
    fast_config: Any, tmp_path: Path
) -> None:
    spec, out, ckpts = _interrupted_run(fast_config, tmp_path)
    for c, how in zip(ckpts, ["truncate-weights", "flip-optimizer-byte", "no-manifest"]):
        corrupt(c, how)
    with pytest.raises(CorruptCheckpointError) as err:
        spec.trainer(LocalSession(out)).run()
    msg = str(err.value)
    assert msg.startswith("no valid checkpoint left to resume from (3 found, all corrupt)")
    for c in ckpts:
        assert str(c) in msg
    assert "fails its checksum" in msg and "no manifest.json" in msg


def test_train_resume_with_only_corrupt_checkpoints_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--workdir", str(tmp_path / "work"), "--json",
            *fast_args(*CKPT)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 3
    for c in ckpts:
        corrupt(c, "truncate-weights")
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("stagetune: error: no valid checkpoint left to resume from")


@pytest.mark.slow
def test_corrupt_checkpoint_through_tune(ray_local: None, fast_config: Any, tmp_path: Path) -> None:
    """A trial's worker dies right after a checkpoint, which is then found damaged (both Tune's
    copy and the local one); Tune retries the trial, which resumes from the previous good one."""
    from ray import tune

    from stagetune.orchestration.trainable import StudyContext
    from stagetune.search_spaces import SpaceContext, get_search_space

    cfg = fast_config(*CKPT)
    vocab = prepare_data(cfg.data).vocab_size
    study = StudyContext.create(cfg, vocab_size=vocab, train_storage=str(tmp_path / "train"))
    ctx = SpaceContext.from_config(cfg, vocab_size=vocab)
    point = get_search_space(cfg.search.space).baseline_point(ctx)
    marker = tmp_path / "crashed-once"

    exp_dir = tmp_path / "ray" / "corrupt"

    def flaky(config: dict[str, Any], study: StudyContext, marker: str, exp_dir: str) -> None:
        # Defined here so Ray ships it by value to the trial's worker.
        from stagetune.orchestration.trainable import describe_trial, train_trial
        from stagetune.trainables.loop import StagedTrainer
        from stagetune.trainables.session import TuneSession

        if Path(marker).exists():  # the retry: stagetune's own trainable, unchanged
            train_trial(config, study)
            return
        Path(marker).write_text("1")

        class DieAfterFourthCheckpoint(TuneSession):
            n = 0

            def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
                super().report(metrics, checkpoint_dir)
                if checkpoint_dir is None:
                    return
                self.n += 1
                if self.n < 4:
                    return
                # Tune's persisted copy lives in the trial's directory in storage.
                tune_copy = sorted(Path(exp_dir).glob("*/checkpoint_*"))[-1]
                for ck in (Path(checkpoint_dir), tune_copy):
                    f = ck / "hf" / "model.safetensors"
                    f.write_bytes(f.read_bytes()[:100])
                os._exit(1)  # the worker dies with its newest checkpoint torn

        trial = describe_trial(config, study, name="flaky")
        StagedTrainer(
            trial,
            DieAfterFourthCheckpoint(),
            config=study.experiment(),
            vocab_size=study.vocab_size,
        ).run()

    trainable = tune.with_resources(
        tune.with_parameters(flaky, study=study, marker=str(marker), exp_dir=str(exp_dir)),
        {"CPU": 1},
    )
    grid = tune.Tuner(
        trainable,
        param_space=point,
        run_config=tune.RunConfig(
            name="corrupt",
            storage_path=str(tmp_path / "ray"),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    ).fit()
    assert marker.exists()
    result = grid[0]
    assert result.error is None, result.error
    assert result.metrics["status"] == "finished"
    recs = [json.loads(x) for x in (Path(result.path) / "result.json").read_text().splitlines()]
    pids = list(dict.fromkeys(r["pid"] for r in recs))
    assert len(pids) == 2, "one crash, one retry"
    first = [r["step"] for r in recs if r["pid"] == pids[0]]
    retry = [r["step"] for r in recs if r["pid"] == pids[1]]
    assert first[-1] == 16  # died right after the checkpoint of step 16
    # Step 16's checkpoint is torn: the retry resumed from step 12, not from scratch.
    assert retry[0] == 16 and min(retry) > 12, (first, retry)
    assert retry[-1] == 24


def test_corrupt_checkpoint_error_is_a_user_error() -> None:
    assert issubclass(CorruptCheckpointError, StagetuneError)
