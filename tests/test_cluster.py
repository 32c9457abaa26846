"""Joining a Ray cluster: what can ever be placed, how many trials fit, clear errors, two nodes.

The fast tests need no cluster (or only the session's local Ray). The slow one starts a real
two-node cluster on loopback (``tests/loopback_cluster.py``) and checks that ``stagetune run
--address`` spreads its trials over both nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stagetune.cli import main
from stagetune.config import ResourcesConfig
from stagetune.errors import ConfigError
from stagetune.orchestration.cluster import (
    ClusterInfo,
    check_placeable,
    connect,
    max_concurrent_trials,
)
from tests.conftest import FAST
from tests.faults.conftest import Cli, cli_env, fast_args, tune_results
from tests.loopback_cluster import LoopbackCluster, free_port


def _info(*node_cpus: float, node_gpus: tuple[float, ...] = ()) -> ClusterInfo:
    gpus = node_gpus or (0.0,) * len(node_cpus)
    return ClusterInfo(
        cpus=sum(node_cpus),
        gpus=sum(gpus),
        nodes=len(node_cpus),
        max_node_cpus=max(node_cpus),
        max_node_gpus=max(gpus),
        node_cpus=tuple(node_cpus),
        node_gpus=tuple(gpus),
    )


def _res(**kw: Any) -> ResourcesConfig:
    return ResourcesConfig(**kw)


# -- what can ever be placed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("res", "info", "field", "needle"),
    [
        (_res(workers_per_trial=3), _info(2), "resources.workers_per_trial", "need 3 CPUs"),
        (_res(workers_per_trial=4, cpus_per_worker=1), _info(1, 1), "resources.workers_per_trial",
         "the cluster has 2"),
        (_res(cpus_per_worker=3), _info(2, 2), "resources.cpus_per_worker", "largest: 2"),
        (_res(gpus_per_worker=1), _info(4), "resources.gpus_per_worker", "gpus_per_worker=0"),
        (_res(gpus_per_worker=2), _info(4, 4, node_gpus=(1, 1)), "resources.gpus_per_worker",
         "no node has that many GPUs"),
        (_res(workers_per_trial=2, placement_strategy="STRICT_SPREAD"), _info(4),
         "resources.placement_strategy", "the cluster has 1"),
    ],
    ids=["workers", "workers-two-nodes", "cpus-per-node", "no-gpus", "gpus-per-node",
         "strict-spread"],
)  # fmt: skip
def test_check_placeable_refuses_what_can_never_run(
    res: ResourcesConfig, info: ClusterInfo, field: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        check_placeable(res, info)
    assert err.value.field == field
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("res", "info"),
    [
        (_res(workers_per_trial=2), _info(1, 1)),  # workers spread over two nodes
        (_res(workers_per_trial=2, placement_strategy="STRICT_SPREAD"), _info(1, 1)),
        (_res(workers_per_trial=3, cpus_per_worker=0.1), _info(0.3)),  # float sums
        (_res(gpus_per_worker=0.5, workers_per_trial=2), _info(2, node_gpus=(1,))),
    ],
)
def test_check_placeable_accepts_what_fits(res: ResourcesConfig, info: ClusterInfo) -> None:
    check_placeable(res, info)


@pytest.mark.parametrize(
    ("res", "info", "expected"),
    [
        (_res(), _info(2), 2),
        (_res(workers_per_trial=2), _info(2), 1),
        (_res(workers_per_trial=2, cpus_per_worker=0.5), _info(2), 2),
        (_res(), _info(1.5, 1.5), 2),  # one-worker trials are placed whole on one node
        (_res(cpus_per_worker=0.1), _info(0.3), 3),
        (_res(gpus_per_worker=1), _info(8, 8, node_gpus=(1, 2)), 3),
        (_res(workers_per_trial=2, gpus_per_worker=1), _info(8, node_gpus=(3,)), 1),
        (_res(cpus_per_worker=4), _info(2), 1),  # never below one
    ],
)
def test_max_concurrent_trials(res: ResourcesConfig, info: ClusterInfo, expected: int) -> None:
    assert max_concurrent_trials(res, info) == expected


def test_max_concurrent_trials_without_per_node_info_uses_totals() -> None:
    info = ClusterInfo(cpus=3, gpus=0, nodes=2, max_node_cpus=1.5, max_node_gpus=0)
    assert max_concurrent_trials(_res(), info) == 3


# -- connecting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["nohost", "127.0.0.1:port", ":6379"])
def test_connect_refuses_a_malformed_address(address: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        connect(address)


def test_connect_refuses_an_unreachable_address(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError) as err:
        connect(address)
    assert err.value.field == "--address" and "cannot reach a Ray head" in str(err.value)
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ConfigError, match="cannot reach a Ray head"):
        connect(None)


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server on loopback: a port that answers, but not as Ray."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # the CLI's stderr is checked
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_connect_refuses_a_service_that_is_not_ray_at_once(http_server: str) -> None:
    """ray.init would retry such an address for minutes (measured: > 5 min)."""
    import time

    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        connect(http_server)
    assert time.monotonic() - t0 < 15
    assert err.value.field == "--address" and "not a Ray head's GCS" in str(err.value)
    assert "6379" in str(err.value)


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fast_flags(*extra: str) -> list[str]:
    out: list[str] = []
    for o in (*FAST, *extra):
        out += ["--set", o]
    return out


def test_cli_unreachable_address_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    work = tmp_path / "work"
    line = _one_line_exit_2(
        ["run", "--address", address, "--workdir", str(work), *_fast_flags()], capsys
    )
    assert "--address" in line and address in line and "ray start --head" in line
    assert not work.exists()
    out = tmp_path / "out"
    line = _one_line_exit_2(
        ["train", "--workers", "2", "--out", str(out), "--workdir", str(work),
         *_fast_flags(f"resources.address={address}")],
        capsys,
    )  # fmt: skip
    assert "--address" in line and address in line
    assert not out.exists() and not work.exists()


def test_cli_address_of_a_non_ray_service_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], http_server: str
) -> None:
    work = tmp_path / "work"
    line = _one_line_exit_2(
        ["run", "--address", http_server, "--workdir", str(work), *_fast_flags()], capsys
    )
    assert "--address" in line and http_server in line and "not a Ray head's GCS" in line
    assert not work.exists()


@pytest.mark.parametrize("command", ["run", "train"])
def test_cli_more_workers_than_the_cluster_exits_2_and_creates_nothing(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    work = tmp_path / "work"
    flags = ["--workers-per-trial", "8"] if command == "run" else ["--workers", "8"]
    extra = ["--out", str(tmp_path / "out")] if command == "train" else []
    line = _one_line_exit_2(
        [command, *flags, *extra, "--workdir", str(work), *_fast_flags()], capsys
    )
    assert "resources.workers_per_trial=8" in line and "need 8 CPUs" in line, line
    assert "cluster has 2" in line
    assert not work.exists() and not (tmp_path / "out").exists()


# -- a real two-node cluster ----------------------------------------------------------------------


@pytest.fixture
def cli(token_cache: Path, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(token_cache, tmp_path / "logs")
    yield c
    c.cleanup()


@pytest.mark.slow
def test_run_with_address_places_trials_on_both_nodes(
    cli: Cli, token_cache: Path, tmp_path: Path
) -> None:
    cluster = LoopbackCluster(cli_env(token_cache), tmp_path / "cluster-logs")
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        nodes = cluster.wait_nodes()
        workdir = tmp_path / "work"
        # Two one-CPU trials at once on two one-CPU nodes: one per node. Long enough that the
        # first is still running when the second starts.
        rc = cli.run(
            ["run", "--address", cluster.address, "--space", "compact", "--trials", "2",
             "--workdir", str(workdir), "--json",
             *fast_args("name=two-nodes", "schedule.baseline_steps=300",
                        "search.early_stopping=false")],
            name="two-nodes", timeout=400, **cluster.auth_env(),
        )  # fmt: skip
        out, err = cli.output("two-nodes")
        assert rc == 0, err[-4000:]
    finally:
        cluster.shutdown()

    summary = json.loads(out)
    assert summary, out[-2000:]
    results = tune_results(workdir / "ray_results" / "two-nodes")
    assert len(results) == 2
    placed = {trial: {r["node_id"] for r in recs} for trial, recs in results.items()}
    # Each trial trained on one node, and together they used both.
    assert all(len(ids) == 1 for ids in placed.values()), placed
    assert set().union(*placed.values()) == set(nodes.values()), (placed, nodes)
    # On one host every node has the same IP: only the node id tells them apart.
    assert len({recs[-1]["node_ip"] for recs in results.values()}) == 1
    for trial, recs in results.items():
        assert recs[-1]["status"] == "finished", trial
