"""Connecting to Ray: a local instance by default, or an existing cluster by address."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stagetune.config import ResourcesConfig
from stagetune.errors import ConfigError

__all__ = [
    "LOOPBACK",
    "ClusterInfo",
    "check_placeable",
    "connect",
    "max_concurrent_trials",
    "start_local",
]

LOOPBACK = "127.0.0.1"
"""The only address a local Ray instance of stagetune listens on."""

_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_EPS = 1e-6
"""Slack for float sums of resources (Ray itself counts in units of 1e-4): 3 x 0.1 fits 0.3."""


@dataclass(frozen=True, kw_only=True)
class ClusterInfo:
    """What the cluster can ever offer (sum over alive nodes)."""

    cpus: float
    gpus: float
    nodes: int
    max_node_cpus: float
    max_node_gpus: float
    node_cpus: tuple[float, ...] = ()
    """CPUs of each alive node (empty: unknown, the totals are used)."""
    node_gpus: tuple[float, ...] = ()


def _check_address_reachable(address: str) -> None:
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address[len("ray://") :] if address.startswith("ray://") else None
        if target is None:
            return
    else:
        target = address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            "--address", address, "use host:port of a Ray head node, e.g. 127.0.0.1:6379"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(
            "--address",
            address,
            f"cannot reach a Ray head there ({exc.strerror or exc}); start one with "
            "'ray start --head' or drop --address to run locally",
        ) from None
    if address.startswith("ray://"):
        return  # a Ray Client server, not a GCS
    why = _not_a_gcs(f"{host}:{port}")
    if why:
        raise ConfigError(
            "--address",
            address,
            f"something listens there but it is not a Ray head's GCS ({why}); pass the port "
            "'ray start --head' printed (6379 by default) or drop --address to run locally",
        )


def _not_a_gcs(target: str, timeout: float = 5.0) -> str | None:
    """Why ``target`` is not a Ray GCS, or None if one answered.

    ``ray.init`` retries a non-Ray service for minutes before it gives up; one GCS call with a
    deadline tells at once. Any reply of the GCS counts, a refusal for lack of an
    authentication token included: the driver's own token is ``ray.init``'s business.
    """
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
            stub.GetClusterId(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNIMPLEMENTED,
            ):
                detail = (exc.details() or "").split(":")[-1].strip()
                return f"{code.name.lower()}" + (f": {detail[:80]}" if detail else "")
    return None


@contextlib.contextmanager
def _single_machine_ray() -> Iterator[None]:
    """Ray's single-machine mode, while a local instance starts.

    Ray 2.60 binds the GCS, raylet and core-worker gRPC servers to every interface, and its
    agents and metrics exporters to the node's address, unless that address is loopback: then
    all of them listen on 127.0.0.1 only. ``ray.init`` replaces a loopback
    ``_node_ip_address`` by the host's outward address except in single-machine mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and Windows), whose other
    effect is that ``ray start --address`` refuses to add a node. Ray reads the variable when
    it is imported, so the driver's copy of the flag is switched too. Both hold only while the
    instance starts (its processes inherit the variable): a ``ray start`` this process runs
    later, e.g. a test's multi-node cluster, is unaffected.
    """
    from ray._private import ray_constants

    old_env = os.environ.get(_SINGLE_MACHINE_ENV)
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = old_env


def _outward_ip() -> str | None:
    """The address this host routes outward from (what Ray advertises for a driver in cluster
    mode); ``None`` without a route. A UDP ``connect`` sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing decision matters
            return str(s.getsockname()[0])
        except OSError:
            return None


def _loopback_only_head(address: str) -> bool:
    """Whether ``host:port`` names a GCS on this machine's loopback that answers there only.

    A single-machine head (another study's :func:`start_local` instance) binds 127.0.0.1 alone;
    Ray rewrites a 127.0.0.1 bootstrap address to the host's outward address in cluster mode,
    so a driver must join such a head in single-machine mode. A ``ray start`` head binds every
    interface and is joined as a cluster (a Ray Client ``ray://`` address never is local).
    """
    if "://" in address:
        return False
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    outward = _outward_ip()
    if not loopback or outward is None or ipaddress.ip_address(outward).is_loopback:
        return False
    try:
        with socket.create_connection((outward, int(port)), timeout=2):
            return False
    except (OSError, ValueError):
        return True


def start_local(**kwargs: Any) -> None:
    """``ray.init`` a new local Ray instance that listens on loopback only.

    Every server of the instance (GCS, raylet, core workers and the driver, the dashboard and
    runtime-env agents, the metrics exporters) binds 127.0.0.1, and no dashboard is started.
    ``kwargs`` go to ``ray.init`` (``num_cpus``, ``runtime_env``, ...).
    """
    import ray

    with _single_machine_ray():
        ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, **kwargs)


def connect(address: str | None, *, num_cpus: int | None = None) -> ClusterInfo:
    """``ray.init`` once: join ``address`` (or ``$RAY_ADDRESS``) as configured there, else start
    a local instance on loopback only (:func:`start_local`)."""
    import ray

    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr:
        _check_address_reachable(addr)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
        if addr:
            kwargs["address"] = addr
        elif num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        # Workers must not re-run the project's runtime env; the package is installed.
        try:
            if addr and _loopback_only_head(addr):
                with _single_machine_ray():
                    ray.init(_node_ip_address=LOOPBACK, **kwargs)
            elif addr:
                ray.init(**kwargs)
            else:
                start_local(**kwargs)
        except (ConnectionError, RuntimeError) as exc:
            if not addr:
                raise
            # Something answers there, but not a Ray head this driver may join (another
            # service, another Ray version, a cluster with token authentication and no token).
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(
                "--address",
                addr,
                f"cannot join a Ray cluster there ({first}); check the head's address, its Ray "
                "version and RAY_AUTH_TOKEN, or drop --address to run locally",
            ) from None
    return cluster_info()


def cluster_info() -> ClusterInfo:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes]
    gpus = [float(n["Resources"].get("GPU", 0)) for n in nodes]
    return ClusterInfo(
        cpus=sum(cpus),
        gpus=sum(gpus),
        nodes=len(nodes),
        max_node_cpus=max(cpus, default=0.0),
        max_node_gpus=max(gpus, default=0.0),
        node_cpus=tuple(cpus),
        node_gpus=tuple(gpus),
    )


def check_placeable(res: ResourcesConfig, info: ClusterInfo) -> None:
    """Refuse a trial shape the cluster can never place (before anything starts)."""
    need_cpu = res.workers_per_trial * res.cpus_per_worker
    if need_cpu > info.cpus + _EPS:
        raise ConfigError(
            "resources.workers_per_trial",
            res.workers_per_trial,
            f"{res.workers_per_trial} workers × {res.cpus_per_worker} CPUs need {need_cpu:g} CPUs "
            f"but the cluster has {info.cpus:g}; lower workers_per_trial or cpus_per_worker",
        )
    if res.cpus_per_worker > info.max_node_cpus + _EPS:
        raise ConfigError(
            "resources.cpus_per_worker",
            res.cpus_per_worker,
            f"no node has that many CPUs (largest: {info.max_node_cpus:g}); lower it",
        )
    if (
        res.placement_strategy == "STRICT_SPREAD"
        and res.workers_per_trial > 1
        and res.workers_per_trial > info.nodes
    ):
        raise ConfigError(
            "resources.placement_strategy",
            res.placement_strategy,
            f"STRICT_SPREAD puts each of the {res.workers_per_trial} workers on its own node "
            f"but the cluster has {info.nodes}; use SPREAD or PACK",
        )
    need_gpu = res.workers_per_trial * res.gpus_per_worker
    if need_gpu > info.gpus + _EPS:
        raise ConfigError(
            "resources.gpus_per_worker",
            res.gpus_per_worker,
            f"trials need {need_gpu:g} GPUs but the cluster has {info.gpus:g}; "
            "set gpus_per_worker=0 to train on CPUs",
        )
    if res.gpus_per_worker > info.max_node_gpus + _EPS:
        raise ConfigError(
            "resources.gpus_per_worker",
            res.gpus_per_worker,
            f"no node has that many GPUs (largest: {info.max_node_gpus:g}); lower it",
        )


def _fits(capacity: float, need: float) -> int:
    return int(capacity / need + _EPS) if need > 0 else 1 << 30


def max_concurrent_trials(res: ResourcesConfig, info: ClusterInfo) -> int:
    """How many trials fit side by side (at least 1).

    A one-worker trial is one bundle, placed whole on one node, so its count is summed node by
    node (two nodes of 1.5 CPUs hold two 1-CPU trials, not three). The workers of a larger
    trial may spread over nodes, so the totals bound it.
    """
    cpw, gpw = res.cpus_per_worker, res.gpus_per_worker
    if res.workers_per_trial == 1 and info.node_cpus:
        gpus = info.node_gpus or (0.0,) * len(info.node_cpus)
        n = sum(
            min(_fits(c, cpw), _fits(g, gpw) if gpw > 0 else 1 << 30)
            for c, g in zip(info.node_cpus, gpus, strict=True)
        )
    else:
        n = _fits(info.cpus, res.workers_per_trial * cpw)
        if gpw > 0:
            n = min(n, _fits(info.gpus, res.workers_per_trial * gpw))
    return max(1, n)
