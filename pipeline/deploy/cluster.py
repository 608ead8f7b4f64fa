"""Attaching the driver to Ray: the cluster at an address, or a local Ray started on first use."""

from __future__ import annotations

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
    """Attach to Ray once per process. `address`: None -> `$RAY_ADDRESS`, else a new local Ray."""
    import ray

    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = {"namespace": NAMESPACE, "log_to_driver": True}
        if address:
            _check_reachable(address)
            kwargs["address"] = address
        else:
            # A local Ray for one user: the dashboard is left out to start in seconds (PIPELINE_DASHBOARD=1 keeps it).
            kwargs["include_dashboard"] = os.environ.get("PIPELINE_DASHBOARD") == "1"
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise DeploymentError(f"cannot connect to Ray at {address!r}: {exc}") from None


def node_cpus() -> dict[str, float]:
    """node id -> CPUs, of the alive nodes."""
    import ray

    return {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")}
