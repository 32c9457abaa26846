"""A real multi-node Ray cluster on one host, for tests: ``ray start`` once per node, on loopback.

Every node is a ``ray start --block`` subprocess in its own process group, with its own ports
(GCS, node manager, object manager, agents, metrics: all picked free, none of Ray's fixed
defaults, so it coexists with other Ray instances on the machine). Worker nodes share the head's
temp dir (Ray gives a joining node the head's session directory), a short private one so
socket paths stay under the kernel's limit. The cluster uses token authentication with its own
random token, passed through the environment only (``~/.ray/auth_token`` is never touched).

Nothing here calls ``ray stop``: that stops *every* Ray process of the user on the machine.
Teardown kills exactly the process trees this class started, plus any process whose command
line names this cluster's temp dir, and checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoopbackCluster", "Node", "descendants", "free_port", "is_alive"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- /proc helpers (Linux): the process tree a node started ------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or ``None`` when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[1])


def is_alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Node:
    """One ``ray start --block`` process and the ports it was given."""

    name: str
    proc: subprocess.Popen[Any]
    node_manager_port: int
    node_id: str = ""
    killed: bool = False
    started_pids: set[int] = field(default_factory=set)
    args: list[str] = field(default_factory=list)
    """What ``ray start`` was given besides the per-start ports (to start the node again)."""

    def tree(self) -> set[int]:
        return ({self.proc.pid} | descendants(self.proc.pid)) if is_alive(self.proc.pid) else set()


class LoopbackCluster:
    """Head plus worker nodes on 127.0.0.1; ``env()`` is what a driver needs to join it."""

    def __init__(self, base_env: dict[str, str], logdir: Path) -> None:
        # Short and private: Ray's socket paths live under it (limit ~107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="st-ray-", dir="/tmp"))
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(32)
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.nodes: list[Node] = []
        self._env = dict(base_env)
        self._env.pop("RAY_ADDRESS", None)
        self._env.update(self.auth_env())

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver process that joins this cluster."""
        return {**self._env, **extra}

    # -- nodes -------------------------------------------------------------------------------------
    def _ports(self) -> list[str]:
        return [
            "--node-ip-address", "127.0.0.1",
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--disable-usage-stats",
        ]  # fmt: skip

    def _start(self, name: str, args: list[str]) -> Node:
        nm_port = free_port()
        # Appends: a node started again keeps the first attempt's output above its own.
        log = open(self.logdir / f"ray-{name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args,
                 "--node-manager-port", str(nm_port), *self._ports()],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        node = Node(name=name, proc=proc, node_manager_port=nm_port, args=list(args))
        self.nodes.append(node)
        return node

    def start_head(self, *, num_cpus: int = 1) -> Node:
        head = self._start(
            "head",
            [
                "--head",
                "--port", str(self.gcs_port),
                "--num-cpus", str(num_cpus),
                "--temp-dir", str(self.temp_dir),
                "--include-dashboard", "false",
                "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if head.proc.poll() is not None:
                raise RuntimeError(f"ray head exited: {self.log('head')[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.gcs_port), 1),
            ):
                return head
            time.sleep(0.5)
        raise RuntimeError(f"ray head did not open its GCS port: {self.log('head')[-2000:]}")

    def add_node(self, *, num_cpus: int = 1) -> Node:
        return self._start(
            f"node{len(self.nodes)}",
            ["--address", self.address, "--num-cpus", str(num_cpus)],
        )

    def log(self, name: str) -> str:
        p = self.logdir / f"ray-{name}.log"
        return p.read_text(errors="replace") if p.is_file() else ""

    def wait_nodes(self, *, timeout: float = 150) -> dict[str, str]:
        """Wait until every started node is alive in the GCS; fills ``Node.node_id``.

        A worker node whose ``ray start`` gave up (its raylet did not register within Ray's
        fixed 30 s, e.g. on a loaded machine or a port taken between ``free_port`` and the
        bind) is started once more, with fresh ports, before this fails.
        """
        try:
            return self._wait_nodes(timeout)
        except RuntimeError:
            gave_up = [
                n for n in self.nodes
                if n.name != "head" and not n.killed and n.proc.poll() is not None
            ]  # fmt: skip
            if not gave_up:
                raise
        for node in gave_up:
            self.nodes.remove(node)
            self._start(node.name, node.args)
        return self._wait_nodes(timeout)

    def _wait_nodes(self, timeout: float) -> dict[str, str]:
        want = {n.node_manager_port: n for n in self.nodes if not n.killed}
        script = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            f"want = set({sorted(want)!r})\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    alive = {n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}\n"
            "    if want <= set(alive) or time.monotonic() > deadline:\n"
            "        break\n"
            "    time.sleep(0.5)\n"
            "print(json.dumps(alive))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot query the cluster: {out.stderr[-2000:]}")
        alive = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
        missing = [n.name for p, n in want.items() if p not in alive]
        if missing:
            logs = "\n".join(self.log(m)[-1500:] for m in missing)
            raise RuntimeError(f"nodes {missing} did not join within {timeout}s:\n{logs}")
        for port, node in want.items():
            node.node_id = alive[port]
        return {n.name: n.node_id for n in want.values()}

    # -- faults and teardown -----------------------------------------------------------------------
    def kill_node(self, node: Node) -> set[int]:
        """SIGKILL everything the node runs at once (its raylet, agents, workers): a lost node."""
        pids = node.tree()
        _kill_all(pids)
        node.proc.wait(30)
        node.killed = True
        deadline = time.monotonic() + 30
        while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return pids

    def _ours(self) -> set[int]:
        tag = str(self.temp_dir)
        return {p for p in _all_pids() if p != os.getpid() and tag in cmdline(p)}

    def shutdown(self) -> None:
        """Kill every process of this cluster and remove its temp dir; raises if any survives."""
        deadline = time.monotonic() + 60
        left: set[int] = set()
        while time.monotonic() < deadline:
            left = set()
            for node in self.nodes:
                left |= node.tree()
            left |= self._ours()
            left = {p for p in left if is_alive(p)}
            if not left:
                break
            _kill_all(left)
            for node in self.nodes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(0.1)
            time.sleep(0.3)
        # Keep Ray's logs (workers' stdout/stderr included) for a post-mortem.
        for logs in self.temp_dir.glob("session_*/logs"):
            if not logs.parent.is_symlink():
                with contextlib.suppress(OSError, shutil.Error):
                    shutil.copytree(
                        logs, self.logdir / f"ray-{logs.parent.name}", dirs_exist_ok=True
                    )
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if left:
            raise RuntimeError(f"cluster processes survived SIGKILL: {sorted(left)}")
