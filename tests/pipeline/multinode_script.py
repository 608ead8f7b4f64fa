"""Run by tests/pipeline/test_multinode.py in a subprocess: a local three-node Ray cluster, two CPU replicas, one
prediction run. Prints one JSON line (prefixed MULTINODE_RESULT) with what the test asserts on.

Its own process because it needs its own Ray cluster: the test session already holds a `ray.init`.

    python tests/pipeline/multinode_script.py CHECKPOINT WORKDIR [N_IMAGES]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _wait_until_ray_places_by_affinity(ray, nodes: dict[str, str], timeout_s: float = 90.0) -> tuple[float, list]:
    """Wait until Ray's own scheduler honours a soft node affinity to each worker node: the head's view of a new
    node's resources can lag the node table `wait_for_nodes` reads, and meanwhile a soft affinity falls back to
    the head. Returns (seconds waited, the nodes still missed at the timeout)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    t0 = time.time()
    missing = dict(nodes)
    while missing and time.time() - t0 < timeout_s:
        for node_id in list(missing):
            strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
            if ray.get(where.options(scheduling_strategy=strategy).remote()) == node_id:
                missing.pop(node_id)
        if missing:
            time.sleep(1.0)
    return round(time.time() - t0, 1), sorted(missing.values())


def main(checkpoint: str, workdir: str, n_images: int = 24) -> None:
    import numpy as np
    import ray
    from PIL import Image
    from ray.cluster_utils import Cluster

    work = Path(workdir)
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        p = images / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, size=(64 + 4 * i, 96, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    trace = work / "load_trace"
    trace.mkdir(exist_ok=True)

    t0 = time.time()
    # One CPU per node (the machine has two cores for all three). CPU replicas hold no CPU while they run and
    # are spread over the nodes; each node's CPU runs the loading tasks placed next to its replica.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"node_a": 1})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    timings = {"cluster_s": round(time.time() - t0, 1)}
    try:
        from pipeline.deploy.cluster import NAMESPACE

        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        worker_nodes = {n["NodeID"]: k for n in ray.nodes() if n.get("Alive") for k in n["Resources"]
                        if k in ("node_a", "node_b")}
        timings["probe_s"], probe_misses = _wait_until_ray_places_by_affinity(ray, worker_nodes)

        # Record the node of every loading task: a file per task in a folder all three nodes share (one
        # machine). The product code is untouched; only the function the loading stage submits is wrapped.
        import pipeline.stages.loading.images as loading

        original = loading.load_batch
        trace_dir = str(trace)

        def load_batch_traced(*args, **kwargs):
            import ray as _ray

            node = _ray.get_runtime_context().get_node_id()
            with open(os.path.join(trace_dir, f"{node}.{os.getpid()}.{time.time_ns()}"), "w"):
                pass
            return original(*args, **kwargs)

        loading.load_batch = load_batch_traced
        loading._remote_load = None  # rebuilt from load_batch on first use
        requested: list[str | None] = []  # the node each loading task was asked to run on (the product's choice)
        original_submit = loading.submit_load

        def submit_load_traced(items, options, node_id=None):
            requested.append(node_id)
            return original_submit(items, options, node_id)

        loading.submit_load = submit_load_traced

        import pipeline

        api = pipeline.Api(data_dir=work / "platform")
        t1 = time.time()
        model = api.nn.deploy(checkpoint, device="cpu", replicas=2)
        timings["deploy_s"] = round(time.time() - t1, 1)
        info = model.info()
        t2 = time.time()
        preds = model.predict(input=paths, batch_size=2, progress=False)
        timings["predict_s"] = round(time.time() - t2, 1)
        model.shutdown()

        nodes = {n["NodeID"]: sorted(k for k in n["Resources"] if k in ("node_a", "node_b")) for n in ray.nodes()
                 if n.get("Alive")}
        result = {
            "replica_nodes": [r.get("node_id") for r in info["replicas_info"]],
            "node_labels": {nid: (labels[0] if labels else "head") for nid, labels in nodes.items()},
            "load_nodes": sorted(f.name.split(".")[0] for f in trace.iterdir()),
            "requested_nodes": requested,
            "probe_misses": probe_misses,
            "indices": [p.index for p in preds],
            "sources": [str(p.image_path or p.source) for p in preds],
            "errors": [p.error for p in preds if p.error is not None],
            "paths": paths,
            "timings": timings,
        }
        print("MULTINODE_RESULT " + json.dumps(result), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 24)
