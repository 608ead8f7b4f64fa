"""Image items (files, URLs, arrays, platform blobs) decoded by Ray tasks, one task per batch.

A loading task returns one `LoadedBatch` into the object store; the replica that will predict it takes the
ObjectRef directly, so pixels never pass through the driver. Each task is placed, softly, on the node of the
replica that will predict its batch, so the batch does not cross the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.prediction import Item
from pipeline.stages.loading.batch import Batch
from workers.decode import load_batch
from workers.messages import DecodeOptions, LoadRequest

__all__ = ["LOAD_TASK_OPTIONS", "ImageLoader", "load_request", "submit_load"]

# One CPU per loading task: decoding is single-threaded Pillow work. Ray retries a task whose worker died
# (max_retries=3) before the batch's items fail.
LOAD_TASK_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_retries": 3}

_remote_load = None


def _remote() -> Any:
    global _remote_load
    if _remote_load is None:
        import ray

        _remote_load = ray.remote(**LOAD_TASK_OPTIONS)(load_batch)
    return _remote_load


def load_request(item: Item) -> LoadRequest:
    return LoadRequest(index=item.index, path=item.path, url=item.url, array=item.image, error=item.error)


def submit_load(items: list[Item], options: DecodeOptions, node_id: str | None = None) -> Any:
    """Start the loading task of one batch; returns the ObjectRef of its `LoadedBatch`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    placement = {}
    if node_id:
        placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return _remote().options(**placement).remote([load_request(it) for it in items], options)


class ImageLoader:
    """Consecutive runs of `batch_size` image items, each batch decoded by one loading task."""

    def __init__(self, options: DecodeOptions):
        self.options = options

    def items(self, stream: Iterator[Any]) -> Iterator[Item]:
        return iter(stream)

    def batch(self, items: list[Item]) -> Batch:
        return Batch(items, lambda node_id: submit_load(items, self.options, node_id))

    def batches(self, items: Iterator[Item], batch_size: int) -> Iterator[Batch]:
        chunk: list[Item] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= batch_size:
                yield self.batch(chunk)
                chunk = []
        if chunk:
            yield self.batch(chunk)

    def close(self, stopped: bool = False) -> None:
        return None
