"""Stage 3, inference: feed batches to the deployment's replicas with a bounded number in flight.

For every batch the scheduler starts its loading (a task placed on the replica's node) and at once queues the
replica call with the loading's ObjectRef as argument; Ray runs the call when the batch is decoded. Up to
`max_in_flight` batches per replica are outstanding, so decoding, transfer and compute overlap while a slow model
never lets decoded images pile up: the bound is the backpressure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.exceptions import RunError
from pipeline.stages.source import Item
from workers.messages import BatchResult, ModelOutput

log = logging.getLogger(__name__)

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


@dataclass
class Batch:
    """A batch of items and how to load it: `submit(node_id) -> ObjectRef[LoadedBatch]`."""

    items: list[Item]
    submit: Callable[[str | None], Any]
    attempts: int = 0
    load_ref: Any = None
    load_by_actor: bool = False  # loaded by a call on an actor (a video reader), not by a task


def batched(items: Iterator[Item], batch_size: int, submit_factory: Callable[[list[Item]], Callable]) -> Iterator[Batch]:
    """Group a stream of items into `Batch`es of `batch_size` (the last may be smaller)."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= batch_size:
            yield Batch(chunk, submit_factory(chunk))
            chunk = []
    if chunk:
        yield Batch(chunk, submit_factory(chunk))


def pick_replica(in_flight: list[int], alive: list[bool], max_in_flight: int) -> int | None:
    """The live replica with the fewest batches in flight, if any has room (ties: the lowest index)."""
    best = None
    for i, (n, ok) in enumerate(zip(in_flight, alive)):
        if ok and n < max_in_flight and (best is None or n < in_flight[best]):
            best = i
    return best


@dataclass
class SchedulerStats:
    submitted: int = 0  # items sent to loading so far
    batches: int = 0
    images: int = 0
    compute_seconds: float = 0.0
    resubmitted: int = 0
    started_at: float = field(default_factory=time.time)


class Scheduler:
    """Runs batches through replicas; calls `on_result(items, BatchResult)` for each, in completion order."""

    def __init__(
        self,
        replicas: list[Any],
        replica_nodes: list[str | None],
        settings: dict[str, Any],
        input_resized: bool,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        stop_event: threading.Event | None = None,
    ):
        self.replicas = list(replicas)
        self.nodes = list(replica_nodes) + [None] * (len(replicas) - len(replica_nodes))
        self.settings = settings
        self.input_resized = input_resized
        self.max_in_flight = max_in_flight
        self.stop_event = stop_event or threading.Event()
        self.stats = SchedulerStats()

    def run(self, batches: Iterator[Batch], on_result: Callable[[list[Item], BatchResult], None],
            before_submit: Callable[[], bool] | None = None) -> None:
        """Drive every batch to a result. `before_submit()` returning False pauses new submissions (the
        consumer is full); results keep being collected."""
        import ray

        in_flight: dict[Any, tuple[Batch, int]] = {}
        counts = [0] * len(self.replicas)
        alive = [True] * len(self.replicas)
        pending: list[Batch] = []  # batches to (re)submit before new ones
        source = iter(batches)
        exhausted = False

        def submit(batch: Batch, r: int) -> None:
            if batch.load_ref is None:
                batch.load_ref = batch.submit(self.nodes[r])
            ref = self.replicas[r].predict.remote(batch.load_ref, self.settings, self.input_resized)
            if batch.attempts == 0:
                self.stats.submitted += len(batch.items)
            batch.attempts += 1
            in_flight[ref] = (batch, r)
            counts[r] += 1

        try:
            while True:
                if self.stop_event.is_set():
                    break
                while before_submit is None or before_submit():
                    r = pick_replica(counts, alive, self.max_in_flight)
                    if r is None:
                        break
                    if pending:
                        submit(pending.pop(0), r)
                        continue
                    if exhausted:
                        break
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        break
                    submit(batch, r)
                if not in_flight:
                    if exhausted and not pending:
                        return
                    if not any(alive):
                        raise RunError("every replica of the deployment died; nothing left to predict with")
                    time.sleep(WAIT_SLICE_S)  # paused by before_submit
                    continue
                refs = list(in_flight)
                ready, rest = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S)
                if ready and rest:  # take every other result that is already there too
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    batch, r = in_flight.pop(ref)
                    counts[r] -= 1
                    result = self._get(ref, batch, r, alive, pending)
                    if result is not None:
                        self.stats.batches += 1
                        self.stats.images += sum(1 for o in result.outputs if o.error is None)
                        self.stats.compute_seconds += result.compute_seconds
                        on_result(batch.items, result)
        finally:
            # A stopped or failed run: cancel the loading tasks only. A replica call whose loading is cancelled
            # fails on the caller's side and never reaches the replica; cancelling replica calls themselves leaves
            # a gap in the actor's call sequence that stalls its next caller for 30 s (Ray's ordered actor queue).
            # At most the calls whose images are already decoded (max_in_flight per replica) still run.
            for batch, _ in in_flight.values():
                if batch.load_by_actor:
                    continue  # the plan ends its readers (VideoLoading.batcher)
                try:
                    ray.cancel(batch.load_ref)
                except Exception:  # already finished or not cancellable: nothing to free
                    pass

    def _answers(self, r: int) -> bool:
        return _probe(self.replicas[r], REPLICA_PROBE_S)

    def _get(self, ref: Any, batch: Batch, r: int, alive: list[bool], pending: list[Batch]) -> BatchResult | None:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            dead = getattr(exc, "actor_id", None)
            if dead and dead != self.replicas[r]._actor_id.hex():
                # the actor that died produced the batch (a video reader), not the replica: only the batch fails
                return _failed(batch, f"loading failed: the reader of this batch died ({type(exc).__name__})")
            # The call failed on the replica even after Ray's restarts and retries (max_task_retries). Often the
            # batch itself is the cause (an image that kills the process): the replica is back, so it stays in
            # the pool and only the batch is retried, MAX_BATCH_ATTEMPTS times at most. A replica that does not
            # answer a probe is gone for good.
            if not self._answers(r):
                alive[r] = False
                log.warning("replica %d is gone (%s); its batches go to the other replicas", r, exc)
            if batch.attempts < MAX_BATCH_ATTEMPTS and any(alive):
                self.stats.resubmitted += 1
                pending.append(batch)
                return None
            return _failed(batch, f"the replica died while predicting this item ({batch.attempts} attempts): "
                                  f"{type(exc).__name__}")
        except ray.exceptions.TaskCancelledError:
            return _failed(batch, "cancelled")
        except ray.exceptions.RayTaskError as exc:
            # The loading task itself crashed (not an item error: those come back inside the batch).
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return _failed(batch, f"loading failed: {first}")


def _probe(replica: Any, timeout: float) -> bool:
    import ray

    try:
        ray.get(replica.ready.remote(), timeout=timeout)
        return True
    except ray.exceptions.GetTimeoutError:
        return True  # still restarting: it will answer (or fail) the next call
    except ray.exceptions.RayActorError:
        return False


def _failed(batch: Batch, error: str) -> BatchResult:
    return BatchResult(
        indices=[it.index for it in batch.items],
        outputs=[ModelOutput.empty(error=error) for _ in batch.items],
        orig_sizes=[None] * len(batch.items),
    )
