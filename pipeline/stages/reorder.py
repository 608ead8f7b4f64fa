"""Frames of a video back in selection order: the bounded reorder buffer in front of a tracker.

Why it is needed: a video's frames reach the collector out of order. Several readers (lanes) decode different
ranges of the video at once, several batches are in flight on several replicas, and results come back in
completion order. A tracker must see a video's frames in order, so the collector puts each frame's prediction into
its video's `ReorderBuffer` under its position in the video's selection (`item.index - video.base`) and gets back
the frames that are now next in order (possibly none, possibly many).

The bound. A buffer holds the frames that arrived before an earlier frame did: nothing else. It never holds more
than `capacity` frames: a push that would hold more raises `ReorderOverflowError` (a `RunError`) instead of
growing, so a bug in the feeding side shows up as a clear error, not as memory that grows with the video. How
many frames can be waiting depends on how the frames are fed, and `reorder_capacity` computes it:

* In flight: the scheduler keeps at most `max_in_flight` batches of `batch_size` frames per replica outstanding,
  `S = max_in_flight * replicas` batches. Frames that completed while an earlier frame is still out can only come
  from these batches, or from batches submitted after them.
* The lanes: lane j decodes ranges j, j + L, j + 2L, ... (L lanes). While the first frame not yet released (the
  frontier) sits in range r, the other lanes decode ranges r + 1 .. r + L - 1, all later in the video, so up to
  `(L - 1) * range_len` frames can complete ahead of it and wait. With today's untracked layout ranges are a
  quarter of a reader's share of the video (`len / (4 L)`): that term grows with the video, which is why a tracked
  video needs short ranges (`range_len` = a few batches, ideally one group of pictures) AND a feeding order that
  keeps the lanes in step: the item generator finishes the L ranges of one round before it starts the next round
  (`rounds_in_step`).
* Backpressure: without it a slow replica lets the others complete frames far beyond the frontier (a replica that
  restarts takes up to a minute), so `should_pause()` is the scheduler's `before_submit` seam: it returns True
  while `held >= pause_at`. With rounds kept in step, while the frontier's own round is still being generated the
  held frames all lie inside that round (`< L * range_len`), so `pause_at = L * range_len` never pauses before the
  frontier's batch is submitted (no deadlock). Once paused, only the `S * batch_size` frames already in flight can
  still land, hence `capacity = L * range_len + S * batch_size`.

What it costs: the held frames are predictions (boxes, scores, classes, and masks for mask models), not images.
With boxes only a frame is well under a kilobyte; a mask model's frames carry (N, H, W) masks at the original size
(about 9 MB for ten objects on a 1280x720 frame), so `capacity` x that is the memory bound to plan for.

Several videos: `ReorderBuffers` keeps one buffer per video key and drops it when the video ends (`finish`).
An item that failed (its frame did not decode, the replica died) is pushed like any other: it is released in its
place, so the order advances past it; what the tracker does with it is the caller's business (`VideoTracker.skip`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from pipeline.exceptions import InvalidArgumentError, RunError

__all__ = ["ReorderBuffer", "ReorderBuffers", "ReorderOverflowError", "reorder_capacity", "rounds_in_step"]

T = TypeVar("T")


class ReorderOverflowError(RunError):
    """A reorder buffer was asked to hold more frames than its stated capacity."""


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def reorder_capacity(max_in_flight: int, batch_size: int, replicas: int, lanes: int, range_len: int) -> int:
    """Frames a video's `ReorderBuffer` may have to hold, for a scheduler with `max_in_flight` batches of
    `batch_size` frames per replica on `replicas` replicas, and a video dealt to `lanes` readers in ranges of at
    most `range_len` selected frames, rounds kept in step (see the module doc):
    `lanes * range_len + max_in_flight * replicas * batch_size`. Pause new submissions at
    `lanes * range_len` held frames (`ReorderBuffer(capacity, pause_at=...)`).

    Example: 4 per replica x 2 replicas x 16 frames + 8 lanes x 64 frames = 640 frames."""
    s = _count("max_in_flight", max_in_flight, 1) * _count("replicas", replicas, 1)
    return _count("lanes", lanes, 1) * _count("range_len", range_len, 1) + s * _count("batch_size", batch_size, 1)


def rounds_in_step(ranges: Sequence[range], lanes: int) -> Iterator[tuple[int, int]]:
    """`(lane, position)` in the order a tracked video's items must be made: ranges dealt round-robin to `lanes`
    (range r to lane r % lanes), one round (`lanes` consecutive ranges) at a time, one position per lane in turn
    within a round. Unlike today's untracked order (lanes run through all their ranges independently, so a lane
    with shorter ranges drifts ahead without limit), no lane starts round t + 1 before every lane finished round t:
    what `reorder_capacity` assumes."""
    lanes = _count("lanes", lanes, 1)
    for first in range(0, len(ranges), lanes):
        its = [(first + j, iter(ranges[first + j])) for j in range(min(lanes, len(ranges) - first))]
        while its:
            alive = []
            for r, it in its:
                pos = next(it, None)
                if pos is not None:
                    yield r % lanes, pos
                    alive.append((r, it))
            its = alive


class ReorderBuffer(Generic[T]):
    """One video's items, released strictly in selection order (positions 0, 1, 2, ...).

    `push(pos, item)` returns the items now next in order: `[item]` and whatever was waiting behind it when `pos`
    is the next position, `[]` when an earlier position is still missing. At most `capacity` items are ever held;
    one more is a `ReorderOverflowError`. `total` (the number of selected frames, when known) makes a position
    past the end an error and tells `done`. `pause_at` (default `capacity`) is where `should_pause()` turns True.
    """

    def __init__(self, capacity: int, total: int | None = None, pause_at: int | None = None,
                 name: str = "the video") -> None:
        self.capacity = _count("capacity", capacity, 1)
        self.total = None if total is None else _count("total", total, 0)
        self.pause_at = self.capacity if pause_at is None else _count("pause_at", pause_at, 1)
        if self.pause_at > self.capacity:
            raise InvalidArgumentError(f"pause_at ({pause_at}) must not exceed capacity ({capacity})")
        self.name = name
        self.next_pos = 0
        self.peak = 0  # the most items held at once: what a run really needed
        self._held: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def done(self) -> bool:
        """Every position of the video was released (only when `total` is known)."""
        return self.total is not None and self.next_pos >= self.total

    def should_pause(self) -> bool:
        """True while new batches of this video should wait (held >= pause_at): the scheduler's backpressure."""
        return len(self._held) >= self.pause_at

    def push(self, pos: int, item: T) -> list[T]:
        """Add the item at selection position `pos`; returns the items released by it, in order."""
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise RunError(f"{self.name}: a frame's position must be an int >= 0; got {pos!r}")
        if pos < self.next_pos or pos in self._held:
            raise RunError(f"{self.name}: the frame at position {pos} arrived twice")
        if self.total is not None and pos >= self.total:
            raise RunError(f"{self.name}: position {pos} is past the end of the selection ({self.total} frames)")
        if pos != self.next_pos:
            if len(self._held) >= self.capacity:
                raise ReorderOverflowError(
                    f"{self.name}: {len(self._held)} frames are waiting for frame position {self.next_pos} and "
                    f"position {pos} would be one more than the reorder buffer's capacity of {self.capacity}; "
                    "the frames are fed further ahead of the frontier than the scheduler's in-flight bound "
                    "allows (see pipeline.stages.reorder)"
                )
            self._held[pos] = item
            self.peak = max(self.peak, len(self._held))
            return []
        out = [item]
        self.next_pos += 1
        while self.next_pos in self._held:
            out.append(self._held.pop(self.next_pos))
            self.next_pos += 1
        return out

    def missing(self, limit: int = 10) -> list[int]:
        """Up to `limit` positions before the last held (or before `total`) that have not arrived."""
        end = self.total if self.total is not None else (max(self._held) + 1 if self._held else self.next_pos)
        out = []
        for p in range(self.next_pos, end):
            if p not in self._held:
                out.append(p)
                if len(out) >= limit:
                    break
        return out

    def finish(self) -> None:
        """The video's last item was pushed: raise `RunError` when frames are still held or missing."""
        if self._held or (self.total is not None and self.next_pos < self.total):
            gaps = self.missing()
            raise RunError(f"{self.name} ended with {len(self._held)} frame(s) held and position(s) "
                           f"{gaps} never delivered; released up to position {self.next_pos}")


class ReorderBuffers(Generic[T]):
    """One `ReorderBuffer` per video, for a run that predicts several videos at once (`key` = the video's path or
    id). `open` a video before its first push (its capacity and total), `finish` it after its last."""

    def __init__(self) -> None:
        self._buffers: dict[Hashable, ReorderBuffer[T]] = {}

    def open(self, key: Hashable, capacity: int, total: int | None = None, pause_at: int | None = None) -> None:
        if key in self._buffers:
            raise RunError(f"video {key!r} is already open in the reorder buffers")
        self._buffers[key] = ReorderBuffer(capacity, total, pause_at, name=f"video {key!r}")

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buffers

    def __getitem__(self, key: Hashable) -> ReorderBuffer[T]:
        return self._buffers[key]

    def push(self, key: Hashable, pos: int, item: T) -> list[T]:
        buf = self._buffers.get(key)
        if buf is None:
            raise RunError(f"a frame of video {key!r} arrived, but that video is not open (or already finished)")
        return buf.push(pos, item)

    def finish(self, key: Hashable) -> None:
        """Close video `key` (its buffer goes, so memory does not grow with the number of videos)."""
        buf = self._buffers.pop(key)
        buf.finish()

    @property
    def held(self) -> int:
        """Items held over all open videos."""
        return sum(b.held for b in self._buffers.values())

    def should_pause(self) -> bool:
        """True while any open video's buffer wants new submissions to wait (`before_submit` returns not this)."""
        return any(b.should_pause() for b in self._buffers.values())
