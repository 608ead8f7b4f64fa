"""Video frames decoded by reader actors, each decoding its ranges of one video front to back.

When a video's frames come up, its selection is cut into frame ranges (`split_ranges`: a few per reader, cut at GOP
starts), dealt round-robin to `lanes` readers, one per loader CPU: lane j decodes ranges j, j + lanes, ... Each lane
is a `workers.video.FrameReader` Ray actor holding one CPU, and each batch is one `next_batch` call on it; calls from
the driver run in order, so a reader decodes its range front to back and never decodes a GOP twice.

Items are made one at a time, lanes interleaved (lane 0's next frame, lane 1's next frame, ...), and the batches of
each lane stay inside one range. The scheduler's in-flight bound therefore spreads over all lanes, keeps every
reader busy, and is the only thing that decides how many decoded frames exist at once: a 10-hour video costs the
driver a few batches of item descriptors. Image items of the same plan (a directory with images and videos) load
as usual, by loading tasks.

A reader holds its CPU until its last batch is done: the lanes' handles are dropped when the video's last batch is
made, and Ray ends an actor whose handles are gone once its queued calls have run.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from pipeline.prediction import Item
from pipeline.stages.loading.batch import Batch
from pipeline.stages.loading.images import ImageLoader
from pipeline.stages.reorder import rounds_in_step
from pipeline.stages.source.video import VideoFrames
from pipeline.stages.video_params import split_ranges
from workers.messages import DecodeOptions

__all__ = ["MAX_READERS", "READER_OPTIONS", "TRACKED_RANGE_MAX", "TRACKED_RANGE_MIN", "Tracking", "VideoLanes",
           "VideoLoader", "loader_cpus", "tracked_range_frames"]

# Ranges per reader: progress moves front to back through the video (what a stopped or crashed run leaves done is
# close to a prefix) while each reader pays a seek into a new range only this many times.
RANGES_PER_READER = 4
# A range holds at least this many selected frames (several batches), so the seek and the partial GOP at its start
# cost little next to the frames it decodes.
MIN_RANGE_FRAMES = 48
# A tracked video's ranges: about one GOP, within these bounds (selected frames). The upper one is 10 s at 30 fps,
# the longest GOP common encoders make by default; a longer GOP is cut inside (its head decoded by two ranges).
TRACKED_RANGE_MIN = 32
TRACKED_RANGE_MAX = 300
# At most this many readers for one video, whatever the cluster has: beyond it, a video's frames are spread so thin
# that each reader's ranges are mostly seeks.
MAX_READERS = 64
# One CPU per reader (its decoder runs single-threaded); a reader that crashes is restarted and its calls retried,
# which is safe because every call names the frames it wants.
READER_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_restarts": 2, "max_task_retries": 2}


def loader_cpus() -> int:
    """How many readers a video gets: the CPUs free in the Ray cluster now (at least 1)."""
    import ray

    free = int(ray.available_resources().get("CPU", 0) + 1e-9)
    return max(1, min(MAX_READERS, free))


_reader_class = None


def _remote_reader() -> Any:
    global _reader_class
    if _reader_class is None:
        import ray

        from workers.video import FrameReader

        _reader_class = ray.remote(FrameReader)
    return _reader_class


def tracked_range_frames(video: VideoFrames) -> int:
    """The length of a tracked video's ranges, in selected frames: the fewest whole groups of pictures (the median
    distance between keyframes, over the stride) that make at least TRACKED_RANGE_MIN frames, so that ranges start
    at keyframes and no GOP is decoded twice; at most TRACKED_RANGE_MAX: short ranges keep the frames waiting in
    the reorder buffer few (see `VideoLanes`)."""
    keyframes = np.asarray(video.index.keyframes)
    gop = float(np.median(np.diff(keyframes))) if len(keyframes) > 1 else float(video.index.frames_count)
    gop = max(1, round(gop / video.selection.step))
    return int(min(TRACKED_RANGE_MAX, gop * math.ceil(TRACKED_RANGE_MIN / gop)))  # whole GOPs, if they fit


class VideoLanes:
    """One video's frames dealt to reader lanes: its ranges, its readers, the order its items are read in.

    `tracked`: the video's frames feed a tracker, which takes them in order through a reorder buffer
    (pipeline.stages.reorder). Its ranges are short (`tracked_range_frames`) and its items come one round of
    `lanes` ranges at a time (`rounds_in_step`), so the frames that can finish ahead of the first one still missing
    are at most `lanes x range_len` plus those in flight: the buffer's bound. Untracked, a lane runs through its
    few long ranges on its own (fewer seeks), and lanes drift apart freely."""

    def __init__(self, video: VideoFrames, readers: int, tracked: bool = False):
        self.video = video
        self.tracked = tracked
        n = len(video.selection)
        if tracked:
            wanted = max(1, math.ceil(n / tracked_range_frames(video)))
        else:
            wanted = max(1, min(readers * RANGES_PER_READER, n // MIN_RANGE_FRAMES))
        self.ranges = split_ranges(video.selection, video.index.keyframes.tolist(), wanted)
        self.lanes = max(1, min(readers, len(self.ranges)))
        self.range_len = max((len(r) for r in self.ranges), default=0)  # the longest, for the reorder bound
        self._starts = [r.start for r in self.ranges]
        self._readers: dict[int, Any] = {}

    def items(self) -> Iterator[Item]:
        """Items lane by lane, one each in turn; within a lane, its ranges in order (tracked: round by round)."""
        if self.tracked:
            for _, pos in rounds_in_step(self.ranges, self.lanes):
                yield self.video.item(pos)
            return
        lanes = [_chain(self.ranges[j::self.lanes]) for j in range(self.lanes)]
        while lanes:
            alive = []
            for lane in lanes:
                pos = next(lane, None)
                if pos is not None:
                    yield self.video.item(pos)
                    alive.append(lane)
            lanes = alive

    def range_of(self, item: Item) -> int:
        return bisect.bisect_right(self._starts, self.video.position(item)) - 1

    def reader(self, lane: int, node_id: str | None) -> Any:
        """The Ray actor that decodes `lane` (started on first use, softly on `node_id`)."""
        handle = self._readers.get(lane)
        if handle is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options = dict(READER_OPTIONS)
            if node_id:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
            index = self.video.index
            handle = _remote_reader().options(**options).remote(index.path, (index.readable, index.frames_count))
            self._readers[lane] = handle
        return handle

    def release(self, kill: bool = False) -> None:
        """Drop the readers' handles: each reader ends once the calls queued on it have run, or at once with
        `kill`."""
        if kill:
            import ray

            for handle in self._readers.values():
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:  # already gone (ended, or its creation never completed)
                    pass
        self._readers.clear()


def _chain(ranges: list[range]) -> Iterator[int]:
    for r in ranges:
        yield from r


class Tracking(Protocol):
    def open(self, video: VideoFrames, lanes: int, range_len: int) -> None:
        """A tracked video's items start: `lanes` readers, ranges of at most `range_len` selected frames."""


class VideoLoader:
    """Loads a plan whose stream holds videos (`VideoFrames`), and image items as `ImageLoader` does. Videos
    register when their items start and leave once their last batch is made. With `tracking` (the run's tracking
    stage) every video is laid out for tracking (`VideoLanes(tracked=True)`) and announced to it."""

    def __init__(self, options: DecodeOptions, readers: int | None = None, tracking: Tracking | None = None):
        self.img_size = options.resize  # frames are decoded whole by PyAV; only an exact size is applied
        self.images = ImageLoader(options)
        self.readers = readers
        self.tracking = tracking
        self.videos: dict[str, VideoLanes] = {}

    def items(self, stream: Iterator[Any]) -> Iterator[Item]:
        for entry in stream:
            if isinstance(entry, VideoFrames):
                lanes = VideoLanes(entry, self.readers or loader_cpus(), tracked=self.tracking is not None)
                if self.tracking is not None:
                    self.tracking.open(entry, lanes.lanes, lanes.range_len)
                self.videos[entry.path] = lanes
                yield from lanes.items()
            else:
                yield entry

    def _frames_batch(self, lanes: VideoLanes, chunk: list[Item]) -> Batch:
        lane = lanes.range_of(chunk[0]) % lanes.lanes
        indices = [it.index for it in chunk]
        frames = [it.frame_idx for it in chunk]
        return Batch(chunk, lambda node_id: lanes.reader(lane, node_id).next_batch.remote(indices, frames,
                                                                                         self.img_size),
                     load_by_actor=True)

    def batches(self, items: Iterator[Item], batch_size: int) -> Iterator[Batch]:
        """Batches of `batch_size`: image items in runs as they come; a video's frames per lane, each batch inside
        one range and in frame order. Holds at most one unfinished batch per lane."""
        images: list[Item] = []
        open_: dict[int, list[Item]] = {}  # lane -> items of the current video
        current: VideoLanes | None = None

        def finish_video() -> Iterator[Batch]:
            nonlocal current
            if current is None:
                return
            for buf in open_.values():
                if buf:
                    yield self._frames_batch(current, buf)
            open_.clear()
            current.release()
            self.videos.pop(current.video.path, None)
            current = None

        for item in items:
            if item.frame_idx is None:
                yield from finish_video()
                images.append(item)
                if len(images) >= batch_size:
                    yield self.images.batch(images)
                    images = []
                continue
            lanes = self.videos[item.video_path]
            if lanes is not current:
                yield from finish_video()
                current = lanes
            if images:  # a video follows images: the images' last batch goes first
                yield self.images.batch(images)
                images = []
            r = lanes.range_of(item)
            buf = open_.setdefault(r % lanes.lanes, [])
            if buf and lanes.range_of(buf[0]) != r:
                yield self._frames_batch(lanes, buf)
                buf = open_[r % lanes.lanes] = []
            buf.append(item)
            if len(buf) >= batch_size:
                yield self._frames_batch(lanes, buf)
                open_[r % lanes.lanes] = []
        yield from finish_video()
        if images:
            yield self.images.batch(images)

    def close(self, stopped: bool = False) -> None:
        """The run is over: every reader's handle goes, so no reader keeps its CPU once its queued calls have run,
        even while the session is kept. A stopped run's readers are killed at once: their queued calls are not
        wanted (and cancelling calls queued on an actor would stall it, see `Scheduler.run`)."""
        for lanes in list(self.videos.values()):
            lanes.release(kill=stopped)
        self.videos.clear()
