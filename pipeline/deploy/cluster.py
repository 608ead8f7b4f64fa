"""Attaching the driver to Ray: the cluster at an address, or a local Ray started on first use."""

from __future__ import annotations

import logging
import os
import socket
import threading
from urllib.parse import urlparse

from pipeline.exceptions import DeploymentError

__all__ = ["CONNECT_TIMEOUT_S", "NAMESPACE", "ensure_ray", "node_cpus"]

# Every named actor of the project (the registry, the replicas) lives in this namespace, whatever namespace the
# driver itself joined, so any driver attached to the cluster finds them.
NAMESPACE = "cv-pipeline"
# How long to wait for a TCP answer from a given Ray address before saying it is unreachable; ray.init itself
# would retry for a minute or more.
CONNECT_TIMEOUT_S = 10.0

_lock = threading.Lock()
log = logging.getLogger(__name__)


def _check_reachable(address: str) -> None:
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise DeploymentError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise DeploymentError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); check the address, or leave it unset to "
            "start a local Ray"
        ) from None


def ensure_ray(address: str | None = None) -> None:
    """Attach to Ray once per process. `address`: None -> `$RAY_ADDRESS`, else a new local Ray (never a cluster
    that `ray start` runs on this machine: give its address, e.g. "auto", to use one)."""
    import ray

    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = {"namespace": NAMESPACE, "log_to_driver": True}
        if address and address != "local":
            _check_reachable(address)
            kwargs["address"] = address
        else:
            # A local Ray of this process's own. Explicitly "local": without an address, ray.init attaches to the
            # cluster a `ray start` on this machine left its address for (/tmp/ray/ray_current_cluster), even one
            # long gone (it then retries for seconds) or another user's. The dashboard is left out to start in
            # seconds (PIPELINE_DASHBOARD=1 keeps it).
            kwargs["address"] = "local"
            kwargs["include_dashboard"] = os.environ.get("PIPELINE_DASHBOARD") == "1"
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise DeploymentError(f"cannot connect to Ray at {address!r}: {exc}") from None
        if not address or address == "local":
            _watch_local_ray()


def _watch_local_ray() -> None:
    """When this process started the local Ray it is attached to (not when `ray.init()` found one that
    `ray start` runs), start the watchdog that kills that Ray's processes once this process is gone, however it
    ends (pipeline/deploy/reaper.py). Never for a cluster at an address."""
    import ray

    try:
        node = ray._private.worker._global_node
        started_here = node is not None and bool(node.all_processes)  # empty when ray.init only connected
        session_dir = node.get_session_dir_path() if started_here else None
    except AttributeError:  # Ray's internals moved: Ray's own fate-sharing still applies; say what is missing
        log.warning("cannot find the local Ray's session: its processes are not watched after this process ends")
        return
    if session_dir:
        from pipeline.deploy.reaper import start_watchdog

        start_watchdog(session_dir, os.path.dirname(ray.__file__))


def node_cpus() -> dict[str, float]:
    """node id -> CPUs, of the alive nodes."""
    import ray

    return {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")}
