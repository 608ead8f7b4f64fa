"""The scheduler: pure decisions, and what a batch that kills its replica does to a run."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.prediction import Item
from pipeline.stages.loading.images import ImageLoader
from pipeline.stages.scheduler import RayExecutor, Scheduler, pick_replica
from workers.messages import DecodeOptions


@pytest.mark.parametrize(
    "in_flight, alive, limit, expected",
    [([0, 0], [True, True], 4, 0), ([2, 1], [True, True], 4, 1), ([4, 4], [True, True], 4, None),
     ([0, 3], [False, True], 4, 1), ([1, 1], [False, False], 4, None), ([3, 1, 1], [True, True, True], 4, 1)],
)
def test_pick_replica(in_flight, alive, limit, expected):
    assert pick_replica(in_flight, alive, limit) == expected


def test_batched_sizes():
    items = [Item(index=i, key=str(i), name=str(i)) for i in range(10)]
    sizes = [len(b.items) for b in ImageLoader(DecodeOptions()).batches(iter(items), 4)]
    assert sizes == [4, 4, 2]


@pytest.mark.slow
def test_a_batch_that_kills_its_replica_fails_alone_and_the_replica_stays(ray_session):
    import os

    import ray

    from workers.messages import BatchResult, ModelOutput

    class Fragile:  # a replica that dies on an image whose first pixel is 255
        def predict(self, batch, settings):
            if any(img is not None and img[0, 0, 0] == 255 for img in batch.images):
                os._exit(1)
            return BatchResult(list(batch.indices), [ModelOutput.empty() for _ in batch.indices],
                               list(batch.orig_sizes))

        def ready(self):
            return {"pid": os.getpid()}

    replica = ray.remote(Fragile).options(max_restarts=-1, max_task_retries=2).remote()
    n = 40
    items = []
    for i in range(n):
        img = np.zeros((8, 8, 3), np.uint8)
        img[0, 0, 0] = 255 if i == 13 else 0
        items.append(Item(index=i, key=str(i), name=str(i), image=img))

    results: dict[int, str | None] = {}

    def on_result(batch_items, result):
        for idx, out in zip(result.indices, result.outputs):
            results[idx] = out.error

    scheduler = Scheduler(RayExecutor([replica], [None], {}), 1, max_in_flight=2)
    scheduler.run(ImageLoader(DecodeOptions()).batches(iter(items), 2), on_result)
    assert sorted(results) == list(range(n))  # every item answered, the run went on
    failed = sorted(i for i, e in results.items() if e)
    assert failed == [12, 13]  # the batch of the poison image, and nothing else
    assert "replica died" in results[13]
    assert ray.get(replica.ready.remote())["pid"]  # the replica is back and in service
    ray.kill(replica, no_restart=True)
