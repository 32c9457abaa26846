"""Security: loopback-only servers, names that cannot become paths elsewhere, checkpoints and
YAML that cannot run code."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from stagetune.cli import main
from stagetune.errors import ConfigError
from tests.conftest import FAST

SRC = Path(__file__).resolve().parents[1] / "src" / "stagetune"


def _fast_args() -> list[str]:
    return [a for o in FAST for a in ("--set", o)]


# ---------------------------------------------------------------------------------------------
# servers bind to 127.0.0.1 unless a host is passed


def _listen_table() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP socket in LISTEN state, from the kernel's
    own tables (/proc/net/tcp and tcp6)."""
    found: dict[int, tuple[str, int]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state != "0A":
                    continue
                ip_hex, port_hex = local.split(":")
                raw = bytes.fromhex(ip_hex)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found[inode] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def listening_addresses(port: int) -> set[str]:
    """Addresses with a socket in LISTEN state on ``port``."""
    return {addr for addr, p in _listen_table().values() if p == port}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory holding a small MLflow SQLite store."""
    from stagetune.results import MlflowTracker

    work = tmp_path_factory.mktemp("ui") / "work"
    tr = MlflowTracker(f"sqlite:///{work / 'mlflow.db'}", "sec", spool_dir=work / "spool")
    tr.start_study(study_name="sec", params={}, tags={})
    tr.end_study()
    return work


@contextlib.contextmanager
def _ui(store: Path, *extra: str) -> Iterator[int]:
    """``stagetune ui`` as a subprocess (own process group); yields its port once it listens."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stagetune.cli",
            "ui",
            "--workdir",
            str(store),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not listening_addresses(port):
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the UI never listened"
            time.sleep(0.3)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)
        # SIGTERM to `stagetune ui` must also stop the server it started (own process group).
        deadline = time.monotonic() + 20
        while listening_addresses(port) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not listening_addresses(port), "stagetune ui left its mlflow server running"


def test_ui_listens_on_loopback_only_by_default(store: Path) -> None:
    with _ui(store) as port:
        assert listening_addresses(port) == {"127.0.0.1"}


@pytest.mark.slow
def test_ui_listens_where_asked(store: Path) -> None:
    with _ui(store, "--host", "0.0.0.0") as port:
        assert listening_addresses(port) == {"0.0.0.0"}


def test_start_ui_defaults_to_loopback(store: Path) -> None:
    from stagetune.results import start_ui

    with start_ui(f"sqlite:///{store / 'mlflow.db'}", port=0) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert server.url.startswith("http://127.0.0.1:")
        assert listening_addresses(port) == {"127.0.0.1"}


# ---------------------------------------------------------------------------------------------
# a local Ray instance listens on loopback only (``--address`` joins a cluster as configured)


def listening_sockets(pids: set[int]) -> dict[tuple[str, int], int]:
    """(address, port) -> pid, for every listening TCP socket one of ``pids`` holds open."""
    table = _listen_table()
    out: dict[tuple[str, int], int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # the process ended meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in table:
                        out[table[int(link[8:-1])]] = pid
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket bound to ::ffff:127.0.0.1
    return ip.is_loopback


RAY_SERVERS = {
    "GCS": "/gcs_server ",
    "raylet": "/raylet ",
    "dashboard agent": "ray::DashboardAgent",
    "runtime-env agent": "ray::RuntimeEnvAgent",
}
"""Ray processes that must be listening (on loopback) before the socket table is judged, by
what their command line holds; the driver and a worker are checked by pid."""


def ray_session_listeners(
    root: int,
    *,
    worker_pid: int | None = None,
    alive: Callable[[], bool] = lambda: True,
    timeout: float = 150,
) -> dict[tuple[str, int], str]:
    """Every listening socket of ``root`` (the driver) and the Ray processes below it, once
    each Ray server listens and the table has been steady for a few seconds:
    (address, port) -> who."""
    from tests.loopback_cluster import cmdline, descendants

    deadline = time.monotonic() + timeout
    last: dict[tuple[str, int], str] = {}
    steady = 0
    while time.monotonic() < deadline:
        assert alive(), "the driver exited"
        pids = {root} | descendants(root)
        who = {p: cmdline(p) for p in pids}
        socks = {
            addr: f"pid {pid} {who.get(pid, '')[:60]!r}"
            for addr, pid in listening_sockets(pids).items()
        }
        holders = {int(w.split()[1]) for w in socks.values()}
        ready = (
            all(any(mark in who[p] for p in holders) for mark in RAY_SERVERS.values())
            and root in holders
            and (worker_pid is None or worker_pid in holders)
        )
        steady = steady + 1 if ready and socks == last else 0
        if steady >= 3:
            return socks
        last = socks
        time.sleep(1)
    missing = [n for n, m in RAY_SERVERS.items() if not any(m in w for w in last.values())]
    raise AssertionError(f"Ray never listened fully (missing {missing}): {last}")


def outward_address() -> str | None:
    """The host's non-loopback address Ray would bind without the fix (None: there is none)."""
    from ray._common.network_utils import node_ip_address_from_perspective

    address = node_ip_address_from_perspective()
    return None if is_loopback(address) else str(address)


def assert_loopback_only(socks: dict[tuple[str, int], str]) -> None:
    outside = {addr: who for addr, who in socks.items() if not is_loopback(addr[0])}
    assert not outside, f"listening beyond loopback: {outside}"
    # Whatever serves on these ports (gRPC, the agents' HTTP, Prometheus metrics) must not
    # answer on the host's outward address.
    host = outward_address()
    if host is None:
        return
    for _, port in socks:
        with pytest.raises(urllib.error.URLError) as exc:
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5)
        assert isinstance(exc.value.reason, ConnectionRefusedError), (port, exc.value)


def test_local_ray_listens_on_loopback_only(ray_local: None) -> None:
    """A local Ray instance as stagetune starts one (``start_local``: ``connect()`` without an
    address, and the test session's): every server of it (GCS, raylet, the agents, metrics
    exporters, a core worker, the driver) listens on loopback only, per the kernel's socket
    table, and nothing answers on the host's outward address."""
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    worker = ray.get(ray.remote(lambda: os.getpid()).remote())
    assert_loopback_only(ray_session_listeners(os.getpid(), worker_pid=worker))


@pytest.mark.slow
def test_local_study_listens_on_loopback_only(token_cache: Path, tmp_path: Path) -> None:
    """``stagetune run`` with a trial running: the study's whole Ray session is on loopback.

    Not covered: a trial of several Ray Train workers runs torch.distributed, whose rendezvous
    store (TCPStore, in the rank-0 worker) listens on every interface; torch offers no address
    to bind it to."""
    from tests.faults.conftest import Cli, fast_args, mlflow_trial_runs_sqlite

    cli = Cli(token_cache, tmp_path / "logs")
    work = tmp_path / "work"
    proc = cli.start(
        ["run", "--workdir", str(work), "--trials", "2", "--quiet",
         # Long enough that the trial still trains while the socket table steadies (the
         # driver is stopped by the clean-up, not by the study's end).
         *fast_args("schedule.baseline_steps=20000")],
        name="run",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "RUNNING" not in (mlflow_trial_runs_sqlite(work / "mlflow.db") or {}).values():
            assert proc.poll() is None, cli.output("run")[1][-3000:]
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.5)
        assert_loopback_only(ray_session_listeners(proc.pid, alive=lambda: proc.poll() is None))
    finally:
        cli.cleanup()


# ---------------------------------------------------------------------------------------------
# names never become paths outside their directory

BAD_NAMES = ["../evil", "a/b", "..", ".hidden", "a\\b", "x" * 129, "", "nul\x00byte", "~root"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
@pytest.mark.parametrize("field", ["name", "tracking.experiment"])
def test_study_and_experiment_names_are_validated_before_use(
    name: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "deep" / "work"
    config = tmp_path / "c.yaml"
    import yaml

    section, _, key = field.rpartition(".")
    config.write_text(yaml.safe_dump({section: {key: name}} if section else {key: name}))
    assert main(["run", "--config", str(config), "--workdir", str(work), *_fast_args()]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{field}=" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.yaml"]


def test_report_and_tracker_names_are_validated(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from stagetune.results import MlflowTracker

    assert main(["report", "--workdir", str(tmp_path / "w"), "--experiment", "../../etc"]) == 2
    assert "--experiment='../../etc'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}", "../x", spool_dir=tmp_path / "spool")
    tr = MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}", "ok", spool_dir=tmp_path / "spool")
    with pytest.raises(ConfigError):
        tr.start_study(study_name="a/b", params={}, tags={})
    tr.start_study(study_name="s", params={}, tags={})
    for bad in ("../t", "a/b", "_study"):  # trial ids name spool files
        with pytest.raises(ConfigError):
            tr.start_trial(trial_id=bad, params={}, tags={})
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "t.jsonl").exists()


def test_tampered_study_file_name_is_refused_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from stagetune.config import config_to_dict, load_config

    work = tmp_path / "work"
    work.mkdir()
    data = config_to_dict(load_config())
    data["name"] = "../../escaped"
    (work / "study.json").write_text(json.dumps(data))
    assert main(["run", "--resume", "--workdir", str(work)]) == 2
    assert "name='../../escaped'" in capsys.readouterr().err
    assert not (tmp_path.parent / "escaped").exists()


# ---------------------------------------------------------------------------------------------
# checkpoints load with weights_only=True


class _Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _poison(ckpt: Path, marker: Path) -> None:
    """Replace the optimizer state by a pickled payload and rewrite the manifest to match
    (whoever can write the file can write its checksum too)."""
    from stagetune.trainables.checkpoint import write_manifest

    torch.save({"state": {}, "param_groups": [], "evil": _Payload(marker)}, ckpt / "optimizer.pt")
    write_manifest(ckpt)


def _train_with_checkpoints(fast_config: Any, out: Path) -> Any:
    """Trains the configured schedule into ``out``; returns a trainer factory for that run."""
    from stagetune.data import prepare_data
    from stagetune.schedule import build_schedule
    from stagetune.trainables.loop import StagedTrainer
    from stagetune.trainables.session import LocalSession
    from stagetune.trial import TrialDescription

    cfg = fast_config("schedule.baseline_steps=12", "train.checkpoint_every=4")
    vocab = prepare_data(cfg.data).vocab_size
    trial = TrialDescription.from_config(cfg, schedule=build_schedule(cfg, vocab_size=vocab))

    def trainer(session: Any) -> StagedTrainer:
        return StagedTrainer(trial, session, config=cfg, vocab_size=vocab)

    trainer(LocalSession(out)).run()
    return trainer


def test_pickled_object_in_checkpoint_is_refused(fast_config: Any, tmp_path: Path) -> None:
    from stagetune.trainables.checkpoint import CorruptCheckpointError, read_checkpoint
    from stagetune.trainables.session import LocalSession

    out = tmp_path / "run"
    trainer_for = _train_with_checkpoints(fast_config, out)
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    marker = tmp_path / "code-ran"
    _poison(ckpts[-1], marker)

    with pytest.raises(CorruptCheckpointError, match=r"optimizer.pt refused .*weights_only=True"):
        read_checkpoint(ckpts[-1])
    assert not marker.exists()
    # A resume skips it like any corrupt checkpoint and takes the previous good one...
    trainer = trainer_for(LocalSession(out))
    trainer.run()
    assert trainer.resumed_from_step == 8 and not marker.exists()
    # ...and with nothing else left it refuses to go on, without running the payload.
    for c in sorted((out / "checkpoints").glob("step_*")):
        _poison(c, marker)
    with pytest.raises(CorruptCheckpointError, match="no valid checkpoint left"):
        trainer_for(LocalSession(out)).run()
    assert not marker.exists()


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((f.name, text[m.start() : i]))
    assert calls, "expected the checkpoint loader"
    for name, call in calls:
        assert "weights_only=True" in call, (name, call)


# ---------------------------------------------------------------------------------------------
# YAML through safe_load


def test_python_yaml_tags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.mkdir ['{marker}']\n")
    assert main(["estimate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert (
        "unsupported YAML tag at line 1" in lines[0] and "python/object/apply:os.mkdir" in lines[0]
    )
    assert not marker.exists()
    # The same through --set: the value stays a plain string and is refused as a name.
    assert main(["estimate", "--set", f"name=!!python/object/apply:os.mkdir ['{marker}']"]) == 2
    assert "name=" in capsys.readouterr().err
    assert not marker.exists()


def test_no_unsafe_yaml_loader_in_the_code() -> None:
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        assert (
            "yaml.load(" not in text and "unsafe_load" not in text and "FullLoader" not in text
        ), f


# ---------------------------------------------------------------------------------------------
# --resume never unpickles a file stagetune did not sign
#
# What a resume (and `report`/`ui`) reads back from the work directory, and how:
#   study.json                      JSON (config_from_dict validates every field and name)
#   optuna.db, mlflow.db            SQLite: Optuna's RDB storage, MLflow's store
#   mlflow_spool/*.jsonl            JSON lines
#   ray_train/ (Ray Train V2)       JSON; Ray Train reads no pickle back
#   <trial>/stagetune_checkpoints/  safetensors + torch.load(weights_only=True) + SHA-256 manifest
#   ray_results/<name>/ (Ray Tune)  pickles, unpickled by Tuner.restore: tuner.pkl; the newest
#                                   experiment_state-*.json (cloudpickled fields), and
#                                   search_gen_state-*.json, searcher-state-*.pkl,
#                                   callback-states-*.pkl (every top-level *.json and *.pkl);
#                                   <trial>/error.pkl. Signed (HMAC-SHA256, per-user key outside
#                                   the work directory) and verified before Tune reads anything:
#                                   stagetune.orchestration.integrity.
#   <trial>/params.pkl              written by Tune's JSON logger, never read back.


def _payload(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_Payload(marker))


def _cloudpickled_field(marker: Path) -> dict[str, str]:
    """How Tune's JSON embeds a pickle (``TuneFunctionEncoder``): hex under CLOUDPICKLE_FALLBACK."""
    return {"_type": "CLOUDPICKLE_FALLBACK", "value": _payload(marker).hex()}


def _newest(exp: Path, pattern: str) -> Path:
    return max(exp.glob(pattern))


def _tune_state_with_payload(exp: Path, marker: Path) -> dict[str, Any]:
    import json

    state = json.loads(_newest(exp, "experiment_state-*.json").read_text())
    state["runner_data"]["_stopper"] = _cloudpickled_field(marker)
    return state


def _replace(pattern: str) -> Any:
    def tamper(exp: Path, marker: Path) -> None:
        _newest(exp, pattern).write_bytes(_payload(marker))

    return tamper


def _tamper_experiment_state(exp: Path, marker: Path) -> None:
    import json

    state = _tune_state_with_payload(exp, marker)
    _newest(exp, "experiment_state-*.json").write_text(json.dumps(state))


def _plant_newer_experiment_state(exp: Path, marker: Path) -> None:
    import json

    # Tune restores from the newest snapshot by name: this one would be it.
    state = _tune_state_with_payload(exp, marker)
    (exp / "experiment_state-9999-12-31_23-59-59.json").write_text(json.dumps(state))


def _plant_callback_state(exp: Path, marker: Path) -> None:
    # Tune restores callback state from any callback-states-*.pkl it finds.
    session = _newest(exp, "searcher-state-*.pkl").stem.removeprefix("searcher-state-")
    (exp / f"callback-states-{session}.pkl").write_bytes(_payload(marker))


def _plant_error_pickle(exp: Path, marker: Path) -> None:
    trial = next(p for p in sorted(exp.iterdir()) if p.is_dir())
    (trial / "error.pkl").write_bytes(_payload(marker))


def _resign_manifest_without_key(exp: Path, marker: Path) -> None:
    """Replace tuner.pkl and make the manifest list the new digest (its MAC left as it was)."""
    import hashlib
    import json

    data = _payload(marker)
    (exp / "tuner.pkl").write_bytes(data)
    signed = exp.parents[1] / "tune_signed"
    digest = hashlib.sha256(data).hexdigest()
    (signed / "blobs" / digest).write_bytes(data)
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["files"]["tuner.pkl"] = [digest]
    (signed / "manifest.json").write_text(json.dumps(manifest))


def _sign_with_another_key(exp: Path, marker: Path) -> None:
    """Replace tuner.pkl and sign everything anew, with a key that is not the user's."""
    from stagetune.orchestration.integrity import TuneStateSigner

    (exp / "tuner.pkl").write_bytes(_payload(marker))
    signer = TuneStateSigner(
        experiment_uri=str(exp), workdir=exp.parents[1], name=exp.name, key=os.urandom(32)
    )
    signer.sign_tuner()


def _remove_signatures(exp: Path, marker: Path) -> None:
    import shutil

    (exp / "tuner.pkl").write_bytes(_payload(marker))
    shutil.rmtree(exp.parents[1] / "tune_signed")


def _alter_signed_copy(exp: Path, marker: Path) -> None:
    """The signed copy a resume would put back in place (the digest names the blob)."""
    import json

    signed = exp.parents[1] / "tune_signed"
    files = json.loads((signed / "manifest.json").read_text())["files"]
    name = _newest(exp, "searcher-state-*.pkl").name
    (signed / "blobs" / files[name][0]).write_bytes(_payload(marker))


TAMPERING = {
    "tuner.pkl replaced": _replace("tuner.pkl"),
    "experiment_state: a cloudpickled field replaced": _tamper_experiment_state,
    "search_gen_state replaced": _replace("search_gen_state-*.json"),
    "searcher-state replaced": _replace("searcher-state-*.pkl"),
    "newer experiment_state planted": _plant_newer_experiment_state,
    "callback-states planted": _plant_callback_state,
    "trial error.pkl planted": _plant_error_pickle,
    "manifest edited without the key": _resign_manifest_without_key,
    "signed with another key": _sign_with_another_key,
    "signatures removed": _remove_signatures,
    "signed copy altered": _alter_signed_copy,
}

SIGNED_NAME = "signed"


@pytest.fixture(scope="module")
def signed_study(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The work directory of a finished two-trial study (its Tune state signed as it ran)."""
    work = tmp_path_factory.mktemp("signed") / "work"
    args = ["run", "--workdir", str(work), "--trials", "2", "--quiet", *_fast_args(),
            "--set", f"name={SIGNED_NAME}"]  # fmt: skip
    assert main(args) == 0
    return work


def _copy_study(work: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of the study's work directory; returns it and its Tune experiment directory."""
    import shutil

    shutil.copytree(work, dest, symlinks=True)
    return dest, dest / "ray_results" / SIGNED_NAME


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("tamper", list(TAMPERING), ids=list(TAMPERING))
def test_resume_refuses_tampered_tune_state(
    tamper: str, signed_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, exp = _copy_study(signed_study, tmp_path / "work")
    marker = tmp_path / "code-ran"
    TAMPERING[tamper](exp, marker)
    before = _tree(work)

    assert main(["run", "--resume", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert "--resume=" in err and "nothing was loaded" in err
    assert not marker.exists(), "code from the work directory ran"
    assert _tree(work) == before, "a refused resume changed the work directory"


def _signer(work: Path) -> Any:
    from stagetune.orchestration.integrity import TuneStateSigner, load_key

    return TuneStateSigner(
        experiment_uri=str(work / "ray_results" / SIGNED_NAME),
        workdir=work,
        name=SIGNED_NAME,
        key=load_key(workdir=work, create=False),
    )


def _signed_versions(work: Path, name: str) -> list[bytes]:
    """Every signed version of ``name`` still kept, newest first."""
    import json

    signed = work / "tune_signed"
    files = json.loads((signed / "manifest.json").read_text())["files"]
    return [(signed / "blobs" / d).read_bytes() for d in files[name]]


@pytest.mark.slow
def test_a_killed_drivers_tune_state_is_accepted_and_put_back(
    signed_study: Path, tmp_path: Path
) -> None:
    """What a SIGKILL can leave in the experiment directory (Tune copies its snapshot there
    after stagetune signed it): an older signed snapshot, a copy cut short, or no copy yet.
    Each is accepted and replaced by the last signed version before Tune reads it."""
    for case in ("older", "cut short", "missing"):
        work, exp = _copy_study(signed_study, tmp_path / case.replace(" ", "-"))
        state = _newest(exp, "experiment_state-*.json")
        versions = _signed_versions(work, state.name)
        assert len(versions) > 1, "the study should have snapshotted more than once"
        if case == "older":
            state.write_bytes(versions[1])
        elif case == "cut short":
            state.write_bytes(versions[0][: len(versions[0]) // 2])
        else:
            state.unlink()
        assert _signer(work).restore_verified(), case
        assert state.read_bytes() == versions[0], case


@pytest.mark.slow
def test_resume_of_a_signed_study_completes_and_keeps_signing(
    signed_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from stagetune.orchestration.integrity import key_file

    work, exp = _copy_study(signed_study, tmp_path / "work")
    state = _newest(exp, "experiment_state-*.json")
    state.write_bytes(state.read_bytes()[:100])  # a copy the kill cut short
    code = main(["run", "--resume", "--workdir", str(work), "--quiet",
                 "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    # The resumed run signed its own snapshot too; the key never entered the work directory.
    files = json.loads((work / "tune_signed" / "manifest.json").read_text())["files"]
    assert len([f for f in files if f.startswith("experiment_state-")]) == 2
    assert _signer(work).restore_verified()
    key = key_file().read_bytes().strip()
    leaked = [name for name, data in _tree(work).items() if key in data]
    assert not leaked, f"the signing key was written to {leaked}"


def _loose_key(path: Path) -> None:
    path.write_text("k" * 64)
    path.chmod(0o644)


def _short_key(path: Path) -> None:
    path.write_text("short")
    path.chmod(0o600)


def _foreign_key(path: Path) -> None:
    path.write_text("k" * 64)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)


KEY_PROBLEMS = {
    "open to group and others": (_loose_key, "chmod 600"),
    "too short": (_short_key, "at least 32"),
    "another user's": (_foreign_key, "belongs to uid 65534"),
}


@pytest.mark.parametrize("problem", list(KEY_PROBLEMS), ids=list(KEY_PROBLEMS))
def test_unsafe_signing_key_is_refused_before_anything_starts(
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stagetune.orchestration.integrity import KEY_ENV

    make, needle = KEY_PROBLEMS[problem]
    if problem == "another user's" and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    key = tmp_path / "key"
    make(key)
    monkeypatch.setenv(KEY_ENV, str(key))
    work = tmp_path / "work"
    assert main(["run", "--workdir", str(work), *_fast_args()]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{KEY_ENV}='{key}'" in err and needle in err, err
    assert not work.exists()


@pytest.mark.slow
def test_resume_with_a_loose_signing_key_is_refused(
    signed_study: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    from stagetune.orchestration.integrity import KEY_ENV, key_file

    work, _ = _copy_study(signed_study, tmp_path / "work")
    key = tmp_path / "key"
    shutil.copyfile(key_file(), key)  # the key that signed the study, readable by all
    key.chmod(0o644)
    monkeypatch.setenv(KEY_ENV, str(key))
    before = _tree(work)
    assert main(["run", "--resume", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "chmod 600" in err, err
    assert _tree(work) == before


def test_signing_key_is_created_private_and_outside_the_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    from stagetune.orchestration.integrity import KEY_ENV, load_key

    key = tmp_path / "config" / "stagetune" / "key"
    monkeypatch.setenv(KEY_ENV, str(key))
    first = load_key(workdir=tmp_path / "work", create=True)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(first) >= 32 and load_key(workdir=tmp_path / "work", create=True) == first
    with pytest.raises(ConfigError, match="outside the work directory"):
        load_key(workdir=tmp_path / "config", create=True)
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="no signing key there"):
        load_key(workdir=tmp_path / "work", create=False)
