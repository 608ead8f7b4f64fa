"""Stage 3, inference: feed batches to the deployment's replicas with a bounded number in flight.

For every batch the scheduler starts its loading (a task placed on the replica's node) and at once queues the
replica call with the loading's ObjectRef as argument; Ray runs the call when the batch is decoded. Up to
`max_in_flight` batches per replica are outstanding, so decoding, transfer and compute overlap while a slow model
never lets decoded images pile up: the bound is the backpressure.

Three parts: `ReplicaPool` holds the pool's state and makes its decisions (which replica next, which is gone, what
to resubmit) as plain Python; an `Executor` is the seam to the cluster (`RayExecutor` submits, waits and gets with
Ray; tests give a fake one); `Scheduler.run` is the loop that joins them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.exceptions import RunError
from pipeline.prediction import Item
from pipeline.stages.loading import Batch
from workers.messages import BatchResult, ModelOutput

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT", "BatchFailed", "Executor", "RayExecutor", "ReplicaGone", "ReplicaPool", "Scheduler",
    "pick_replica",
]

# Per replica: one batch computing, one queued on the actor so it never idles between calls, two decoding ahead
# (a GPU model at ~250 images/s finishes a batch of 16 in about the time one CPU decodes it).
DEFAULT_MAX_IN_FLIGHT = 4
# A batch whose replica died for good is resubmitted to another replica this many times before its items fail.
MAX_BATCH_ATTEMPTS = 3
# How long a replica whose call failed has to answer a probe before it counts as gone for good (a restart of a
# replica reloads its model: seconds on CPU, longer for a big model on a cold GPU node).
REPLICA_PROBE_S = 60.0
# How often the loop wakes to check for stop() while waiting on results, seconds.
WAIT_SLICE_S = 0.2


def pick_replica(in_flight: list[int], alive: list[bool], max_in_flight: int) -> int | None:
    """The live replica with the fewest batches in flight, if any has room (ties: the lowest index)."""
    best = None
    for i, (n, ok) in enumerate(zip(in_flight, alive)):
        if ok and n < max_in_flight and (best is None or n < in_flight[best]):
            best = i
    return best


class ReplicaGone(Exception):
    """The replica's call failed even after Ray's restarts and retries (`Executor.get`)."""


class BatchFailed(Exception):
    """The batch failed without its replica being at fault (its loading crashed, a reader died, or it was
    cancelled); the message is every item's error."""


class Executor(Protocol):
    """The scheduler's seam to the cluster: one replica call per batch, waits on the calls, their results."""

    def submit(self, batch: Batch, replica: int) -> Any:
        """Start `batch`'s loading (once) and queue its call on `replica`; returns a handle to wait on."""

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles whose result is ready (waiting up to `timeout` s for the first)."""

    def get(self, handle: Any, batch: Batch, replica: int) -> BatchResult:
        """The result; raises `ReplicaGone` or `BatchFailed`."""

    def answers(self, replica: int) -> bool:
        """Whether `replica` is alive (or still restarting)."""

    def cancel_loading(self, batch: Batch) -> None:
        """Cancel the batch's loading, if it is a task that has not finished."""


@dataclass
class SchedulerStats:
    submitted: int = 0  # items sent to loading so far (status()["submitted"])
    compute_seconds: float = 0.0  # replica time spent predicting (the benchmarks' busy fraction)
    resubmitted: int = 0  # batches sent again after their replica failed (status()["resubmitted"])


class ReplicaPool:
    """Which replica takes the next batch, which are gone, and which batches wait to be resubmitted: state and
    decisions, no Ray."""

    def __init__(self, replicas: int, max_in_flight: int):
        self.counts = [0] * replicas
        self.alive = [True] * replicas
        self.max_in_flight = max_in_flight
        self.pending: list[Batch] = []  # batches to (re)submit before new ones
        self.in_flight: dict[Any, tuple[Batch, int]] = {}

    def pick(self) -> int | None:
        return pick_replica(self.counts, self.alive, self.max_in_flight)

    def started(self, handle: Any, batch: Batch, replica: int) -> None:
        batch.attempts += 1
        self.in_flight[handle] = (batch, replica)
        self.counts[replica] += 1

    def finished(self, handle: Any) -> tuple[Batch, int]:
        batch, replica = self.in_flight.pop(handle)
        self.counts[replica] -= 1
        return batch, replica

    def replica_failed(self, batch: Batch, replica: int, answers: bool) -> bool:
        """A call failed on `replica`. Often the batch itself is the cause (an image that kills the process): a
        replica that still answers stays in the pool and only the batch is retried, `MAX_BATCH_ATTEMPTS` times at
        most; one that does not answer is gone for good. Returns whether the batch is resubmitted."""
        if not answers and self.alive[replica]:  # said once per replica, not for each batch it held
            self.alive[replica] = False
            if any(self.alive):
                log.warning("replica %d is gone; its batches go to the other replicas", replica)
            else:
                log.warning("replica %d is gone, and it was the last one", replica)
        if batch.attempts < MAX_BATCH_ATTEMPTS and any(self.alive):
            self.pending.append(batch)
            return True
        return False

    @property
    def any_alive(self) -> bool:
        return any(self.alive)


class RayExecutor:
    """`Executor` on Ray: loading tasks (or reader calls) placed on the replica's node, replica actor calls."""

    def __init__(self, replicas: list[Any], nodes: list[str | None], settings: dict[str, Any]):
        self.replicas = list(replicas)
        self.nodes = list(nodes) + [None] * (len(replicas) - len(nodes))
        self.settings = settings

    def submit(self, batch: Batch, replica: int) -> Any:
        if batch.load_ref is None:
            batch.load_ref = batch.submit(self.nodes[replica])
        return self.replicas[replica].predict.remote(batch.load_ref, self.settings)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        import ray

        ready, rest = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:  # take every other result that is already there too
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def get(self, handle: Any, batch: Batch, replica: int) -> BatchResult:
        import ray

        try:
            return ray.get(handle)
        except ray.exceptions.RayActorError as exc:
            dead = getattr(exc, "actor_id", None)
            if dead and dead != self.replicas[replica]._actor_id.hex():
                # the actor that died produced the batch (a video reader), not the replica: only the batch fails
                raise BatchFailed(f"loading failed: the reader of this batch died ({type(exc).__name__})") from None
            raise ReplicaGone(type(exc).__name__) from None
        except ray.exceptions.TaskCancelledError:
            raise BatchFailed("cancelled") from None
        except ray.exceptions.RayTaskError as exc:
            # The loading task itself crashed (not an item error: those come back inside the batch).
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise BatchFailed(f"loading failed: {first}") from None

    def answers(self, replica: int) -> bool:
        import ray

        try:
            ray.get(self.replicas[replica].ready.remote(), timeout=REPLICA_PROBE_S)
            return True
        except ray.exceptions.GetTimeoutError:
            return True  # still restarting: it will answer (or fail) the next call
        except ray.exceptions.RayActorError:
            return False

    def cancel_loading(self, batch: Batch) -> None:
        # Only loading tasks. A replica call whose loading is cancelled fails on the caller's side and never reaches
        # the replica; cancelling replica calls themselves leaves a gap in the actor's call sequence that stalls
        # its next caller for 30 s (Ray's ordered actor queue). A video reader's calls are ended with the reader
        # (`VideoLoader.close`).
        import ray

        if batch.load_by_actor or batch.load_ref is None:
            return
        try:
            ray.cancel(batch.load_ref)
        except Exception:  # already finished or not cancellable: nothing to free
            pass


class Scheduler:
    """Runs batches through replicas; calls `on_result(items, BatchResult)` for each, in completion order."""

    def __init__(self, executor: Executor, replicas: int, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 stop_event: threading.Event | None = None):
        self.executor = executor
        self.pool = ReplicaPool(replicas, max_in_flight)
        self.stop_event = stop_event or threading.Event()
        self.stats = SchedulerStats()

    def _submit(self, batch: Batch, replica: int) -> None:
        handle = self.executor.submit(batch, replica)
        if batch.attempts == 0:
            self.stats.submitted += len(batch.items)
        self.pool.started(handle, batch, replica)

    def _fill(self, source: Iterator[Batch], before_submit: Callable[[], bool] | None) -> bool:
        """Submit until every replica is full, the consumer is, or the batches run out; True once they have.
        A batch to resubmit is no new work: it goes even while the consumer is full (a reorder buffer may be
        waiting for exactly that batch's frames)."""
        while True:
            r = self.pool.pick()
            if r is None:
                return False
            if self.pool.pending:
                self._submit(self.pool.pending.pop(0), r)
                continue
            if before_submit is not None and not before_submit():
                return False
            batch = next(source, None)
            if batch is None:
                return True
            self._submit(batch, r)

    def _collect(self, handle: Any, on_result: Callable[[list[Item], BatchResult], None]) -> None:
        batch, r = self.pool.finished(handle)
        try:
            result = self.executor.get(handle, batch, r)
        except BatchFailed as exc:
            result = failed_result(batch, str(exc))
        except ReplicaGone as exc:
            if self.pool.replica_failed(batch, r, self.executor.answers(r)):
                self.stats.resubmitted += 1
                return
            result = failed_result(batch, f"the replica died while predicting this item ({batch.attempts} "
                                          f"attempts): {exc}")
        self.stats.compute_seconds += result.compute_seconds
        on_result(batch.items, result)

    def run(self, batches: Iterator[Batch], on_result: Callable[[list[Item], BatchResult], None],
            before_submit: Callable[[], bool] | None = None) -> None:
        """Drive every batch to a result. `before_submit()` returning False pauses new submissions (the
        consumer is full); results keep being collected."""
        source = iter(batches)
        exhausted = False
        try:
            while not self.stop_event.is_set():
                if not exhausted:
                    exhausted = self._fill(source, before_submit)
                elif self.pool.pending:
                    self._fill(iter(()), before_submit)
                if not self.pool.in_flight:
                    if exhausted and not self.pool.pending:
                        return
                    if not self.pool.any_alive:
                        raise RunError("every replica of the deployment died; nothing left to predict with")
                    time.sleep(WAIT_SLICE_S)  # paused by before_submit
                    continue
                for handle in self.executor.wait(list(self.pool.in_flight), WAIT_SLICE_S):
                    self._collect(handle, on_result)
        finally:
            # A stopped or failed run: cancel the loading still running. At most the calls whose images are
            # already decoded (max_in_flight per replica) still run.
            for batch, _ in self.pool.in_flight.values():
                self.executor.cancel_loading(batch)


def failed_result(batch: Batch, error: str) -> BatchResult:
    """Every item of `batch` failed with `error`."""
    return BatchResult(
        indices=[it.index for it in batch.items],
        outputs=[ModelOutput.empty(error=error) for _ in batch.items],
        orig_sizes=[None] * len(batch.items),
    )
