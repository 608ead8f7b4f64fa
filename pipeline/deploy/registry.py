"""The deployment registry: a named, detached Ray actor that owns every deployment of the cluster.

Why an actor and not Ray Serve: a deployment here is a fixed set of replica actors fed by the pipeline's own
scheduler (batches, in-flight limits, node-local loading), which needs direct actor handles; Serve would add an
HTTP/handle layer, its own batching and a controller per cluster for nothing we use. The registry gives the three
things Serve would: small integer task ids unique in the cluster (its methods run one at a time, so allocation
is atomic), a lookup any driver can do by name, and ownership of the checkpoint bytes so that Ray can restart a
crashed replica after the driver that deployed it has exited.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["REGISTRY_NAME", "DeploymentRegistry", "get_registry", "replica_name"]

REGISTRY_NAME = "deployment-registry"


def replica_name(task_id: int, index: int) -> str:
    return f"replica-{task_id}-{index}"


class DeploymentRegistry:
    """Plain class; wrapped with `ray.remote` by `get_registry`."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.records: dict[int, dict[str, Any]] = {}
        self.weights: dict[int, Any] = {}  # task id -> ObjectRef of the checkpoint bytes, owned here
        self.next_id = 1
        self._recover()

    def _recover(self) -> None:
        # After a restart of the registry itself: find replicas still alive and continue numbering after them.
        import ray
        from ray.util import list_named_actors

        for entry in list_named_actors(all_namespaces=True):
            if entry.get("namespace") != self.namespace or not entry["name"].startswith("replica-"):
                continue
            try:
                tid = int(entry["name"].split("-")[1])
            except (IndexError, ValueError):
                continue
            self.next_id = max(self.next_id, tid + 1)
            try:
                handle = ray.get_actor(entry["name"], namespace=self.namespace)
                info = ray.get(handle.info.remote(), timeout=30)
            except Exception:
                continue
            rec = self.records.setdefault(
                tid,
                {"task_id": tid, "spec": info["spec"], "device": info["device"], "replica_names": [],
                 "status": "running", "created_at": time.time(), "resources": {}},
            )
            rec["replica_names"].append(entry["name"])

    def deploy(self, spec: dict, weights: list, device: str, replicas: int, options: dict, threads: int | None,
               placement: list | None = None):
        """Start `replicas` replica actors and record the deployment; returns its record (status "starting").
        `placement[i]`: the node id replica i should run on (soft: elsewhere if that node is gone), or None."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from workers.replica import Replica

        tid = self.next_id
        self.next_id += 1
        weights_ref = None
        if weights:
            data = ray.get(weights[0])
            weights_ref = ray.put(data)  # owned by the registry: outlives the deploying driver
            self.weights[tid] = weights_ref
        # The replica fetches its weights from here (`weights_of`) rather than taking them as a constructor
        # argument: Ray re-runs the constructor on restart, and its arguments would have to outlive their owner.
        actor_cls = ray.remote(Replica)
        names = []
        for i in range(replicas):
            name = replica_name(tid, i)
            node = placement[i] if placement else None
            where = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)} if node else {}
            actor_cls.options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                **options,
                **where,
            ).remote(spec, device, threads, name, tid, registry=(REGISTRY_NAME, self.namespace))
            names.append(name)
        record = {
            "task_id": tid,
            "spec": spec,
            "device": device,
            "replica_names": names,
            "status": "starting",
            "created_at": time.time(),
            "resources": dict(options),
        }
        self.records[tid] = record
        return record

    def weights_of(self, task_id: int) -> list:
        """[ObjectRef of the checkpoint bytes] (empty for a pretrained model); wrapped so Ray passes the ref."""
        ref = self.weights.get(task_id)
        return [ref] if ref is not None else []

    def set_status(self, task_id: int, status: str, replicas_info: list | None = None) -> None:
        if task_id in self.records:
            self.records[task_id]["status"] = status
            if replicas_info is not None:
                self.records[task_id]["replicas_info"] = replicas_info

    def get(self, task_id: int) -> dict | None:
        return self.records.get(task_id)

    def list(self) -> list[dict]:
        return [self.records[k] for k in sorted(self.records)]

    def find(self, identity: str, device: str) -> dict | None:
        for tid in sorted(self.records):
            rec = self.records[tid]
            if rec["spec"].get("identity") == identity and rec["device"] == device and rec["status"] == "running":
                return rec
        return None

    def remove(self, task_id: int) -> bool:
        import ray

        rec = self.records.pop(task_id, None)
        self.weights.pop(task_id, None)
        if rec is None:
            return False
        for name in rec["replica_names"]:
            try:
                ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
            except ValueError:
                pass  # already gone
        return True


def get_registry():
    """The cluster's registry actor, created on first use (one per cluster, whoever asks first)."""
    import ray

    from pipeline.deploy.cluster import NAMESPACE

    cls = ray.remote(DeploymentRegistry)
    return cls.options(
        name=REGISTRY_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,  # bookkeeping only: it must never hold a CPU the replicas or loaders need
        max_restarts=-1,
        max_concurrency=1,
    ).remote(NAMESPACE)
