"""Faults below the driver: a Ray Train worker killed mid-trial, a whole node lost mid-search.

Both run the real ``stagetune run`` CLI as a subprocess (its own process group, see
``tests/faults/conftest.py``) and inject the fault the way it happens in production: SIGKILL to
one process, or to every process of a node at once. Outcomes are read back from Tune's result
files, MLflow's store and Optuna's storage.

- Worker killed: a study of two identical two-worker trials (the ``compact`` space on a
  one-layer model has a single point, the baseline) runs side by side. Rank 0 of one trial is
  SIGKILLed once Train has registered a checkpoint. Ray Train restarts the worker group
  (``FailureConfig``) from that checkpoint; the other trial is the uninterrupted reference.
- Node lost: a two-node cluster on loopback (``tests/loopback_cluster.py``), one one-CPU
  trial per node. The second node is SIGKILLed (raylet, agents, workers) while its trial runs;
  Tune retries the trial (``FailureConfig``) on the head from its latest checkpoint.
- One trial across nodes: the same cluster, one two-worker trial with
  ``resources.placement_strategy=STRICT_SPREAD`` (one worker per node). The non-head node is
  SIGKILLed after Train registered a checkpoint and a replacement node joins; Ray Train
  restarts the worker group across the head and the new node from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stagetune.results.tracking.runs import mlflow_step
from tests.faults.conftest import Cli, cli_env, fast_args, mlflow_children, tune_results
from tests.loopback_cluster import LoopbackCluster, cmdline, descendants

EVAL_EVERY = 20  # steps between records (train.eval_points spread over the baseline's steps)
BUDGET_S = 420.0
"""Wall-clock limit of one study here: about 2.5 minutes on an idle two-core machine, but the
CI machine may be shared, so the limit is generous (a hang still fails well before pytest's)."""

# The preemption watcher (one more actor process per Train run, slow to start on a busy
# machine) has nothing to watch on one host. Train's 2 s worker poll is kept: a run then
# reports at most every 2 s, which leaves the fault time to land mid-run.
TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _runs_by_trial(uri: str, experiment: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for run in mlflow_children(uri, experiment):
        out.setdefault(run.data.tags["stagetune.trial_id"], []).append(run)
    return out


def _fail_with_logs(cli: Cli, name: str, why: str) -> None:
    out, err = cli.output(name)
    pytest.fail(f"{why}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-4000:]}")


# ---------------------------------------------------------------------------------------------
# 1. one Ray Train worker killed


def test_train_workers_resume_only_from_checkpoints_every_rank_sees(tmp_path: Path) -> None:
    """Rank 0's local history may be ahead of what Train registered (a worker died between
    writing a checkpoint and Train taking the report): it must not be a restore candidate, or
    rank 0 resumes at a later step than the others and DDP pairs different steps (found by
    the SIGKILL test below: wrong losses, then a hang)."""
    import ray.train

    from stagetune.trainables.session import TrainWorkerSession

    def ckpt(step: int) -> Any:
        d = tmp_path / "train" / f"checkpoint_{step}"
        d.mkdir(parents=True)
        return ray.train.Checkpoint.from_directory(str(d))

    registered = [ckpt(4), ckpt(8)]
    train = SimpleNamespace(
        get_checkpoint=lambda: registered[-1],
        get_all_reported_checkpoints=lambda timeout_s=None: [
            SimpleNamespace(checkpoint=c) for c in registered
        ],
    )
    (tmp_path / "local" / "rank0" / "step_00000012").mkdir(parents=True)  # ahead of Train
    candidates = []
    for rank in (0, 1):
        session = object.__new__(TrainWorkerSession)  # outside a Train run: no __init__
        session._train = train  # type: ignore[assignment]
        session.rank, session.world_size = rank, 2
        session._root = tmp_path / "local" / f"rank{rank}"
        candidates.append(session.restore_candidates())
    newest_first = [Path(registered[1].path), Path(registered[0].path)]
    assert candidates[0] == candidates[1] == newest_first


WORKER_KILL = [
    "name=worker-kill",
    "model.n_layer=1",  # the compact space then holds one point: both trials are the baseline
    "schedule.baseline_steps=160",
    f"train.eval_points={160 // EVAL_EVERY}",
    "train.checkpoint_every=40",  # records at 20, 40c, 60, 80c, ...: some after no checkpoint
    "search.early_stopping=false",
    "resources.cpus_per_worker=0.5",  # two 2-worker trials side by side on two cores
]


def _registered_checkpoint(
    cli: Cli, proc: Any, workdir: Path, name: str, timeout: float
) -> tuple[Path, dict[str, Any]]:
    """Wait until Ray Train has registered a checkpoint of a run in ``workdir`` (its
    controller's ``checkpoint_manager_snapshot.json``); returns the snapshot and the metrics of
    the newest checkpoint. Fails the test (with ``name``'s logs) when the study ends, the trial
    finishes first, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail_with_logs(cli, name, f"the study ended (rc {proc.returncode}) before the fault")
        for snap in sorted(workdir.glob("ray_train/train_*/checkpoint_manager_snapshot.json")):
            try:
                registered = json.loads(snap.read_text())["checkpoint_results"]
            except (OSError, ValueError, KeyError):
                continue  # being written
            if not registered:
                continue
            metrics = registered[-1]["metrics"]
            if metrics["step"] >= metrics["total_steps"]:
                _fail_with_logs(cli, name, "the trial finished before the fault")
            return snap, metrics
        time.sleep(0.1)
    _fail_with_logs(cli, name, "no checkpoint was registered in time: fault never injected")
    raise AssertionError  # unreachable


def _kill_rank0_after_checkpoint(
    cli: Cli, proc: Any, workdir: Path, timeout: float
) -> tuple[str, int]:
    """SIGKILL rank 0 of the first trial whose Ray Train run has registered a checkpoint.

    Train's own snapshot (``checkpoint_manager_snapshot.json``, written by its controller as it
    registers a checkpoint) is read rather than Tune's results, which reach the driver late on
    a busy machine. Its metrics name rank 0's process (``worker_pid``). Returns (trial, pid).
    """
    snap, metrics = _registered_checkpoint(cli, proc, workdir, "worker-kill", timeout)
    pid = int(metrics["worker_pid"])
    # Only a Train worker of this very run (a descendant of the CLI process).
    assert pid in descendants(proc.pid), f"pid {pid} is not part of this study"
    assert cmdline(pid).startswith("ray::RayTrainWorker"), cmdline(pid)
    os.kill(pid, signal.SIGKILL)
    return snap.parent.name.removeprefix("train_"), pid


@pytest.mark.slow
def test_worker_sigkill_restarts_from_checkpoint_and_matches(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    args = ["run", "--space", "compact", "--trials", "2", "--workers-per-trial", "2",
            "--workdir", str(workdir), "--quiet", *fast_args(*WORKER_KILL)]  # fmt: skip
    t0 = time.monotonic()
    proc = cli.start(args, name="worker-kill", **TRAIN_ENV)
    exp_dir = workdir / "ray_results" / "worker-kill"
    killed_trial, killed_pid = _kill_rank0_after_checkpoint(cli, proc, workdir, BUDGET_S - 60)
    try:
        rc = proc.wait(max(30.0, BUDGET_S - (time.monotonic() - t0)))
    except Exception:
        _fail_with_logs(cli, "worker-kill", "the study did not finish after the fault")
    if rc != 0:
        _fail_with_logs(cli, "worker-kill", f"stagetune run exited {rc}")

    results = tune_results(exp_dir)
    assert set(results) >= {killed_trial} and len(results) == 2, sorted(results)
    (ref_trial,) = set(results) - {killed_trial}
    killed, ref = results[killed_trial], results[ref_trial]
    ref_steps = [r["step"] for r in ref]
    assert ref_steps == list(range(EVAL_EVERY, 161, EVAL_EVERY)), ref_steps
    assert [r["worker_pid"] for r in ref] == [ref[0]["worker_pid"]] * len(ref)

    # The Tune trial itself never restarted (same trial process); its Train worker group did.
    assert {r["pid"] for r in killed} == {killed[0]["pid"]}
    pids = list(dict.fromkeys(r["worker_pid"] for r in killed))
    assert len(pids) == 2 and pids[0] == killed_pid, pids
    before = [r for r in killed if r["worker_pid"] == killed_pid]
    after = [r for r in killed if r["worker_pid"] != killed_pid]
    assert killed.index(after[0]) == len(before), "records of the two worker groups interleave"

    # Restored from the newest checkpoint Train had registered, not from step 0: the new
    # workers' first record is the first evaluation after that checkpoint.
    ckpt_step = max(r["step"] for r in before if r.get("checkpoint_path"))
    first_after = after[0]["step"]
    assert first_after == min(s for s in ref_steps if s > ckpt_step), (ckpt_step, first_after)
    after_steps = [r["step"] for r in after]
    assert after_steps == sorted(set(after_steps)) and after_steps[-1] == 160, after_steps
    assert sorted({r["step"] for r in killed}) == ref_steps

    # Same training as the uninterrupted run, record by record (re-reported steps included).
    ref_loss = {r["step"]: r["eval_loss"] for r in ref}
    for r in killed:
        assert r["eval_loss"] == pytest.approx(ref_loss[r["step"]], abs=1e-4), r["step"]
    assert killed[-1]["status"] == ref[-1]["status"] == "finished"
    assert abs(killed[-1]["eval_loss"] - ref[-1]["eval_loss"]) <= 1e-4

    # MLflow: one child run per trial; the killed trial's run continued, no step twice or missing.
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = _runs_by_trial(uri, "worker-kill")
    assert sorted(runs) == sorted(results) and all(len(v) == 1 for v in runs.values()), runs
    client = MlflowClient(uri)
    hist: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for trial_id, (run,) in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["stagetune.status"] == "finished"
        hist[trial_id] = {k: _history(client, run.info.run_id, k) for k in ("eval_loss", "flops")}
        for key, points in hist[trial_id].items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), f"{trial_id} {key}: duplicated steps {steps}"
    for key in ("eval_loss", "flops"):
        got, want = hist[killed_trial][key], hist[ref_trial][key]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-4), key
    # The run holds what the first worker group reported and what the second one did.
    steps_logged = {s for s, _ in hist[killed_trial]["eval_loss"]}
    assert mlflow_step(before[0]) in steps_logged
    assert mlflow_step(after[-1]) in steps_logged


# ---------------------------------------------------------------------------------------------
# 2. a node lost mid-search


NODE_LOST = [
    "name=node-lost",
    "schedule.baseline_steps=1500",  # ~20 s of training: time for the fault to land mid-trial
    "train.eval_points=6",
    "train.checkpoint_every=100",
    "search.early_stopping=false",
]
NODE_LOST_TRIALS = 2  # one per node: the second node's trial is retried after the head's


def _kill_node_when_its_trial_checkpointed(
    cli: Cli, proc: Any, cluster: LoopbackCluster, exp_dir: Path, timeout: float
) -> tuple[str, int]:
    """SIGKILL the second node once Tune holds a checkpoint of a trial running there.

    Tune holds it once its driver took the result that carried it (the result is then in the
    trial's ``result.json``): that checkpoint, or a newer one Tune took before it noticed the
    loss, is what a retry resumes from. Returns (the trial id, the checkpoint's step).
    """
    node = cluster.nodes[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail_with_logs(
                cli, "node-lost", f"the study ended (rc {proc.returncode}) before the fault"
            )
        for trial_id, recs in tune_results(exp_dir).items():
            held = [
                r for r in recs if r.get("node_id") == node.node_id and r.get("checkpoint_dir_name")
            ]
            if held:
                if recs[-1].get("status") == "finished":
                    _fail_with_logs(cli, "node-lost", "the trial finished before the fault")
                cluster.kill_node(node)
                return trial_id, held[-1]["step"]
        time.sleep(0.1)
    _fail_with_logs(cli, "node-lost", "Tune held no checkpoint from the second node in time")
    raise AssertionError  # unreachable


@pytest.mark.slow
def test_node_lost_trials_retry_on_head_and_study_completes(
    cli: Cli, token_cache: Path, tmp_path: Path
) -> None:
    cluster = LoopbackCluster(cli_env(token_cache), tmp_path / "cluster-logs")
    try:
        head = cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        ids = cluster.wait_nodes()
        assert len(set(ids.values())) == 2

        workdir = tmp_path / "work"
        args = ["run", "--address", cluster.address, "--space", "compact",
                "--trials", str(NODE_LOST_TRIALS), "--workdir", str(workdir), "--quiet",
                *fast_args(*NODE_LOST)]  # fmt: skip
        t0 = time.monotonic()
        proc = cli.start(args, name="node-lost", **cluster.auth_env())
        exp_dir = workdir / "ray_results" / "node-lost"
        lost_trial, ckpt_step = _kill_node_when_its_trial_checkpointed(
            cli, proc, cluster, exp_dir, BUDGET_S - 60
        )
        try:
            rc = proc.wait(max(30.0, BUDGET_S - (time.monotonic() - t0)))
        except Exception:
            _fail_with_logs(cli, "node-lost", "the study did not finish after the node was lost")
        if rc != 0:
            _fail_with_logs(cli, "node-lost", f"stagetune run exited {rc}")
    finally:
        cluster.shutdown()

    lost_node = cluster.nodes[1].node_id
    results = tune_results(exp_dir)
    assert len(results) == NODE_LOST_TRIALS and lost_trial in results, (lost_trial, list(results))
    recs = results[lost_trial]
    # Whatever Tune heard from the lost node, the rest came from a new trial process on the
    # head, the only node left ...
    before = [r for r in recs if r["node_id"] == lost_node]
    after = recs[len(before) :]
    assert before == recs[: len(before)] and after, "the lost trial never ran again"
    assert {r["node_id"] for r in after} == {head.node_id}
    assert {r["worker_pid"] for r in after}.isdisjoint({r["worker_pid"] for r in before})
    # ... resumed from the checkpoint Tune held when the node was lost (or a newer one), not
    # from step 0.
    assert after[0]["step"] > ckpt_step, (ckpt_step, [r["step"] for r in recs])
    assert [r["step"] for r in after] == sorted({r["step"] for r in after})
    for trial_id, trial_recs in results.items():
        assert trial_recs[-1].get("status") == "finished", (trial_id, trial_recs[-1])

    # MLflow: every trial closed as finished, one run each; the lost trial's run continued.
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = _runs_by_trial(uri, "node-lost")
    assert sorted(runs) == sorted(results) and all(len(v) == 1 for v in runs.values()), runs
    for trial_id, (run,) in runs.items():
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        assert run.data.tags["stagetune.status"] == "finished", trial_id
    client = MlflowClient(uri)
    steps = [s for s, _ in _history(client, runs[lost_trial][0].info.run_id, "eval_loss")]
    assert steps == sorted({mlflow_step(r) for r in recs}), steps

    # Optuna holds every trial, none left running.
    study = optuna.load_study(study_name="node-lost", storage=f"sqlite:///{workdir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == NODE_LOST_TRIALS, states
    assert all(s == optuna.trial.TrialState.COMPLETE for s in states), states


# ---------------------------------------------------------------------------------------------
# 3. one trial's workers on two nodes, the non-head node lost


ACROSS_NODES = [
    "name=across-nodes",
    "model.n_layer=1",  # the compact space's single point: one baseline trial
    "schedule.baseline_steps=160",
    f"train.eval_points={160 // EVAL_EVERY}",
    "train.checkpoint_every=40",
    "search.early_stopping=false",
    "resources.cpus_per_worker=1",
    "resources.placement_strategy=STRICT_SPREAD",  # one worker per node
]
TRAIN_WORKER = "ray::RayTrainWorker"


def _workers_on(node: Any) -> list[int]:
    """The Ray Train worker processes a node runs (its raylet's children)."""
    return [p for p in node.tree() if cmdline(p).startswith(TRAIN_WORKER)]


def _kill_worker_node_after_checkpoint(
    cli: Cli, proc: Any, cluster: LoopbackCluster, workdir: Path, timeout: float
) -> int:
    """Once Ray Train has registered a checkpoint, check that each node runs one of the trial's
    two workers and SIGKILL the non-head node. Returns the checkpoint's step."""
    _snap, metrics = _registered_checkpoint(cli, proc, workdir, "across-nodes", timeout)
    per_node = [len(_workers_on(n)) for n in cluster.nodes]
    assert per_node == [1, 1], f"workers per node (head, node1): {per_node}"
    cluster.kill_node(cluster.nodes[1])
    return int(metrics["step"])


@pytest.mark.slow
def test_trial_across_two_nodes_survives_losing_one(
    cli: Cli, token_cache: Path, tmp_path: Path
) -> None:
    """A two-worker trial with one worker per node (``STRICT_SPREAD``) loses the non-head node
    after a checkpoint; a replacement node joins (what an autoscaler does) and Ray Train
    restarts the worker group on it from the checkpoint: the trial ends at its full step count
    with one MLflow run holding every evaluation once."""
    cluster = LoopbackCluster(cli_env(token_cache), tmp_path / "cluster-logs")
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_nodes()
        workdir = tmp_path / "work"
        args = ["run", "--address", cluster.address, "--space", "compact", "--trials", "1",
                "--workers-per-trial", "2", "--workdir", str(workdir), "--quiet",
                *fast_args(*ACROSS_NODES)]  # fmt: skip
        t0 = time.monotonic()
        proc = cli.start(args, name="across-nodes", **cluster.auth_env(), **TRAIN_ENV)
        ckpt_step = _kill_worker_node_after_checkpoint(cli, proc, cluster, workdir, BUDGET_S - 90)
        replacement = cluster.add_node(num_cpus=1)
        cluster.wait_nodes()
        try:
            rc = proc.wait(max(30.0, BUDGET_S - (time.monotonic() - t0)))
        except Exception:
            _fail_with_logs(cli, "across-nodes", "the study did not finish after the node loss")
        if rc != 0:
            _fail_with_logs(cli, "across-nodes", f"stagetune run exited {rc}")
        assert replacement.node_id
    finally:
        cluster.shutdown()

    results = tune_results(workdir / "ray_results" / "across-nodes")
    assert len(results) == 1, sorted(results)
    ((trial_id, recs),) = results.items()
    want_steps = list(range(EVAL_EVERY, 161, EVAL_EVERY))
    assert sorted({r["step"] for r in recs}) == want_steps
    assert recs[-1]["step"] == recs[-1]["total_steps"] == 160
    assert recs[-1]["status"] == "finished"
    # A new worker group took over from the checkpoint, not from step 0.
    pids = list(dict.fromkeys(r["worker_pid"] for r in recs))
    assert len(pids) >= 2, pids
    after = [r for r in recs if r["worker_pid"] == pids[-1]]
    assert after[0]["step"] == min(s for s in want_steps if s > ckpt_step), (
        ckpt_step,
        [r["step"] for r in recs],
    )

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = _runs_by_trial(uri, "across-nodes")
    assert list(runs) == [trial_id] and len(runs[trial_id]) == 1, runs
    (run,) = runs[trial_id]
    assert run.info.status == "FINISHED" and run.data.tags["stagetune.status"] == "finished"
    steps = [s for s, _ in _history(MlflowClient(uri), run.info.run_id, "eval_loss")]
    assert steps == sorted({mlflow_step(r) for r in recs if r.get("eval_loss") is not None}), steps
