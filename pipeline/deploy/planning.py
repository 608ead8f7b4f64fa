"""Pure decisions of a deployment: the device, how many replicas with which Ray resources, and on which nodes.

No Ray here: `pipeline.deploy.nn` asks the cluster and calls these. Table-tested in tests/pipeline/test_nn_plan.py.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from pipeline.exceptions import DeploymentError, InvalidArgumentError

__all__ = ["ReplicaPlan", "check_deploy_args", "plan_replicas", "resolve_device", "spread_nodes"]


def resolve_device(device: str | None, cluster_gpus: float) -> str:
    """`None` -> "cuda" when the cluster has GPUs, else "cpu". Asking for CUDA without GPUs is an error."""
    if device is None:
        return "cuda" if cluster_gpus > 0 else "cpu"
    d = str(device).lower()
    if d in ("gpu", "cuda") or d.startswith("cuda:"):
        if cluster_gpus <= 0:
            raise DeploymentError(
                f"device={device!r} but the Ray cluster has no GPUs; use device='cpu' (or None to choose "
                "automatically), or attach to a cluster with GPU nodes"
            )
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise InvalidArgumentError(f"device must be None, 'cpu' or 'cuda'; got {device!r}")


def _positive_number(name: str, value: Any) -> None:
    # NaN passes `value <= 0` (every comparison with NaN is False) and infinity is no amount of GPUs or seconds
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0; got {value!r}")


def check_deploy_args(replicas: Any, gpus_per_replica: Any, timeout: Any = None) -> None:
    """The numbers of a `deploy()`, checked before anything is started: `replicas` None or an int >= 1,
    `gpus_per_replica` a finite number > 0 (GPUs), `timeout` None or a finite number > 0 (seconds)."""
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
        raise InvalidArgumentError(f"replicas must be a positive int or None; got {replicas!r}")
    _positive_number("gpus_per_replica", gpus_per_replica)
    if timeout is not None:
        _positive_number("timeout", timeout)


@dataclass(frozen=True)
class ReplicaPlan:
    replicas: int
    options: dict[str, Any]  # ray actor options besides name/namespace/lifetime
    threads: int | None  # torch threads per replica (CPU replicas)


def plan_replicas(
    device: str,
    replicas: int | None,
    gpus_per_replica: float,
    cluster_gpus: float,
    max_node_cpus: float,
) -> ReplicaPlan:
    """How many replicas and with which Ray resources.

    GPU: one replica per `gpus_per_replica` GPUs of the cluster by default; each holds `num_gpus` and one CPU.
    CPU: one replica by default, with Ray's default actor resources: a free CPU to be placed, none held while it
    runs. Loading tasks must always be schedulable, and a CPU replica that held a CPU could starve them (two
    deployments on a 2-CPU machine would hold both); its torch threads share the node's cores with the loaders
    instead. `spread_nodes` chooses its node (Ray would not spread actors that hold nothing).
    """
    check_deploy_args(replicas, gpus_per_replica)
    # Restarts: a crashed replica comes back (-1: always); a call that was running on it is retried on the
    # restarted actor (twice), after which its batch's items fail with the error instead of looping forever.
    base = {"max_restarts": -1, "max_task_retries": 2}
    if device == "cuda":
        fit = int(cluster_gpus // gpus_per_replica + 1e-9)
        n = replicas if replicas is not None else max(1, fit)
        if n * gpus_per_replica > cluster_gpus + 1e-9:
            raise DeploymentError(
                f"{n} replicas x {gpus_per_replica} GPU need {n * gpus_per_replica:g} GPUs; the cluster has "
                f"{cluster_gpus:g}. Lower replicas or gpus_per_replica."
            )
        return ReplicaPlan(n, {**base, "num_gpus": gpus_per_replica, "num_cpus": 1}, None)
    n = replicas if replicas is not None else 1
    threads = max(1, int(max_node_cpus // n)) if max_node_cpus else None
    return ReplicaPlan(n, dict(base), threads)


def spread_nodes(node_cpus: dict[str, float], replicas: int) -> list[str | None]:
    """A node for each CPU replica: round-robin over the nodes with CPUs, most CPUs first (ties by id), so
    replicas land on different nodes while there are nodes to spare. [None] * replicas when no node has a CPU."""
    nodes = sorted((nid for nid, cpus in node_cpus.items() if cpus > 0), key=lambda nid: (-node_cpus[nid], nid))
    if not nodes:
        return [None] * replicas
    return [nodes[i % len(nodes)] for i in range(replicas)]
