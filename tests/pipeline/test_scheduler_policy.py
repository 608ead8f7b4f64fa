"""The scheduler's policies without Ray: a fake `Executor` decides which calls fail, when, and how."""

from __future__ import annotations

import threading

import pytest

from pipeline.exceptions import RunError
from pipeline.prediction import Item
from pipeline.stages.loading import Batch
from pipeline.stages.scheduler import MAX_BATCH_ATTEMPTS, BatchFailed, ReplicaGone, ReplicaPool, Scheduler
from workers.messages import BatchResult, ModelOutput


class FakeExecutor:
    """Answers each call at once; `fail(batch_index, attempt, replica)` picks the exception of a call, if any.
    `alive[r]` is what a probe of replica r says."""

    def __init__(self, replicas: int, fail=None):
        self.fail = fail or (lambda index, attempt, replica: None)
        self.alive = [True] * replicas
        self.calls: list[tuple[int, int]] = []  # (first item of the batch, replica)
        self.cancelled: list[int] = []
        self.max_seen = 0
        self._handles = 0
        self.outstanding: dict[int, tuple] = {}

    def submit(self, batch, replica):
        self._handles += 1
        self.calls.append((batch.items[0].index, replica))
        self.outstanding[self._handles] = (batch, replica, batch.attempts + 1)
        self.max_seen = max(self.max_seen, len(self.outstanding))
        return self._handles

    def wait(self, handles, timeout):
        return handles[:1]

    def get(self, handle, batch, replica):
        _, _, attempt = self.outstanding.pop(handle)
        exc = self.fail(batch.items[0].index, attempt, replica)
        if exc is not None:
            raise exc
        return BatchResult([it.index for it in batch.items], [ModelOutput.empty() for _ in batch.items],
                           [(1, 1)] * len(batch.items), replica=str(replica))

    def answers(self, replica):
        return self.alive[replica]

    def cancel_loading(self, batch):
        self.cancelled.append(batch.items[0].index)


def batches(n: int, size: int = 2):
    for start in range(0, n, size):
        yield Batch([Item(index=i, key=str(i), name=str(i)) for i in range(start, min(n, start + size))],
                    submit=lambda node: None)


def run(executor, n=10, replicas=2, max_in_flight=2, stop=None):
    results: dict[int, str | None] = {}

    def on_result(items, result):
        for idx, out in zip(result.indices, result.outputs):
            results[idx] = out.error

    Scheduler(executor, replicas, max_in_flight, stop_event=stop).run(batches(n), on_result)
    return results


def test_every_item_gets_one_result_and_the_in_flight_bound_holds():
    ex = FakeExecutor(2)
    results = run(ex, n=20, replicas=2, max_in_flight=3)
    assert sorted(results) == list(range(20)) and not any(results.values())
    assert ex.max_seen <= 2 * 3


def test_a_batch_whose_call_fails_on_a_replica_that_answers_is_retried_there_and_then_fails_alone():
    ex = FakeExecutor(1, fail=lambda index, attempt, replica: ReplicaGone("RayActorError") if index == 4 else None)
    results = run(ex, n=10, replicas=1)
    assert [i for i, e in results.items() if e] == [4, 5]
    assert "replica died" in results[4] and f"({MAX_BATCH_ATTEMPTS} attempts)" in results[4]
    assert sum(1 for index, _ in ex.calls if index == 4) == MAX_BATCH_ATTEMPTS


def test_a_dead_replica_leaves_the_pool_and_its_batch_goes_to_another():
    def fail(index, attempt, replica):
        return ReplicaGone("RayActorError") if replica == 0 and index >= 4 else None

    ex = FakeExecutor(2, fail=fail)
    ex.alive[0] = False
    results = run(ex, n=12, replicas=2)
    assert sorted(results) == list(range(12)) and not any(results.values())
    # replica 0 got what was in flight on it when its first call failed (max_in_flight), and nothing after
    assert sum(1 for index, r in ex.calls if r == 0 and index >= 4) <= 2


def test_every_replica_dead_ends_the_run():
    ex = FakeExecutor(2, fail=lambda index, attempt, replica: ReplicaGone("RayActorError"))
    ex.alive = [False, False]
    with pytest.raises(RunError, match="every replica of the deployment died"):
        run(ex, n=10, replicas=2)


def test_a_batch_failure_that_is_not_the_replicas_fails_the_batch_only():
    ex = FakeExecutor(2, fail=lambda index, attempt, replica: BatchFailed("loading failed: boom") if index == 2
                      else None)
    results = run(ex, n=6)
    assert {i: e for i, e in results.items() if e} == {2: "loading failed: boom", 3: "loading failed: boom"}
    assert sum(1 for index, _ in ex.calls if index == 2) == 1  # not retried


def test_a_resubmission_goes_while_the_consumer_is_full():
    """A reorder buffer waiting for the frames of a batch whose replica died pauses new work (`before_submit`
    False): the batch's resubmission is not new work and must still go, or the run would wait forever."""
    ex = FakeExecutor(2, fail=lambda index, attempt, replica: ReplicaGone("RayActorError") if index == 0 and
                      attempt == 1 else None)
    results: dict[int, str | None] = {}
    waiting = {"for_first": True}

    def on_result(items, result):
        for idx, out in zip(result.indices, result.outputs):
            results[idx] = out.error
        waiting["for_first"] = 0 not in results

    # after the first batch was submitted the consumer is full until batch 0's frames arrive
    Scheduler(ex, 2, 2).run(batches(6), on_result, before_submit=lambda: not (waiting["for_first"] and ex.calls))
    assert sorted(results) == list(range(6)) and not any(results.values())
    assert [index for index, _ in ex.calls[:2]] == [0, 0]  # batch 0, then batch 0 again before anything new


def test_stop_cancels_the_loading_of_what_is_in_flight():
    stop = threading.Event()

    class Stopping(FakeExecutor):
        def get(self, handle, batch, replica):
            stop.set()  # the reader stops after the first result
            return super().get(handle, batch, replica)

    ex = Stopping(2)
    results = run(ex, n=40, replicas=2, max_in_flight=2, stop=stop)
    assert len(results) == 2  # the first batch only
    assert len(ex.cancelled) == len(ex.outstanding) > 0  # what was still in flight had its loading cancelled


def test_pool_picks_the_least_loaded_live_replica():
    pool = ReplicaPool(3, max_in_flight=2)
    pool.alive[0] = False
    b = next(batches(2))
    assert pool.pick() == 1
    pool.started("h1", b, 1)
    assert pool.pick() == 2
    pool.started("h2", b, 2)
    pool.started("h3", b, 1)
    assert pool.pick() == 2
    pool.started("h4", b, 2)
    assert pool.pick() is None
    assert pool.finished("h3") == (b, 1) and pool.pick() == 1
