"""Stage 2, loading: decode batches of items in parallel Ray tasks on the cluster's CPUs.

A loading task returns one `LoadedBatch` (uint8 arrays already at the model's input size) into the object store;
the replica that will predict it takes the ObjectRef directly, so pixels never pass through the driver. Each task
is placed, softly, on the node of the replica that will predict its batch, so the batch does not cross the
network.
"""

from __future__ import annotations

from typing import Any

from pipeline.stages.source import Item
from workers.decode import DEFAULT_MAX_PIXELS, DEFAULT_URL_TIMEOUT_S, load_batch
from workers.messages import LoadRequest

# One CPU per loading task: decoding is single-threaded Pillow work. Ray retries a task whose worker died
# (max_retries=3) before the batch's items fail.
LOAD_TASK_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_retries": 3}

_remote_load = None


def _remote():
    global _remote_load
    if _remote_load is None:
        import ray

        _remote_load = ray.remote(**LOAD_TASK_OPTIONS)(load_batch)
    return _remote_load


def request_of(item: Item) -> LoadRequest:
    return LoadRequest(index=item.index, path=item.path, url=item.url, array=item.array, error=item.error)


def submit_load(items: list[Item], img_size: tuple[int, int] | None, settings: dict[str, Any],
                node_id: str | None = None):
    """Start the loading task of one batch; returns the ObjectRef of its `LoadedBatch`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options = {}
    if node_id:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return _remote().options(**options).remote(
        [request_of(it) for it in items],
        img_size,
        int(settings.get("max_pixels", DEFAULT_MAX_PIXELS)),
        float(settings.get("url_timeout", DEFAULT_URL_TIMEOUT_S)),
    )
