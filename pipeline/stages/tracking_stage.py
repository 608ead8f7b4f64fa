"""Stage 4b, tracking (`video_params={"tracker": ...}` / `tracking=True`): between the collector and the upload,
each video's predictions are put back in frame order and linked into tracks; `Prediction.track_ids` is filled.

    collector --(completion order)--> TrackingStage: per video, ReorderBuffer -> VideoTracker --(frame order)--> upload

* One `TrackedVideo` (reorder buffer + tracker, pipeline/stages/tracking.py) per video, opened by the loader when
  the video's items start (`open`) and closed once its last frame is through, so a directory's videos are tracked
  one after another, two at once where one's last batches overlap the next one's first.
* The bound. The loader lays a tracked video out in short ranges, read round by round (`VideoLanes(tracked=True)`),
  and the scheduler's `before_submit` (`gate`) pauses new batches while a buffer holds `pause_at = lanes x
  range_len` frames, so a buffer never holds more than `capacity = lanes x range_len + max_in_flight x replicas x
  batch_size` predictions (`reorder_capacity`; pipeline/stages/reorder.py says why). More is a
  `ReorderOverflowError`, never memory that grows with the video.
* Resume (an upload job run again with its `job_id`): a video the job finished is skipped whole (`skip_done`); an
  unfinished one is predicted and tracked again from its first frame, so its track ids come out as in the first
  run, and the frames the job had written are dropped after tracking (neither written again nor handed to the
  reader). The upload joins the later frames of a track to the object the first run made for it
  (`upload_job_tracks`). What that costs: the done part of the unfinished video is predicted again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.exceptions import RunError
from pipeline.prediction import Prediction
from pipeline.stages.reorder import reorder_capacity
from pipeline.stages.source.video import VideoFrames
from pipeline.stages.tracking import TrackedVideo, TrackingConfig

__all__ = ["TrackingStage"]


class TrackingStage:
    """Tracks the videos of one run. Called with each batch's predictions (the collector's sink); hands the
    frames now in order, with their `track_ids`, and every other prediction as it came, to `sink`.

    `in_flight_batches`: the scheduler's bound on batches outstanding (max_in_flight x replicas); `done_keys`:
    the item keys a resumed upload job has written (their predictions are not passed on)."""

    def __init__(self, config: TrackingConfig, sink: Callable[[list[Prediction]], None], batch_size: int,
                 in_flight_batches: int, done_keys: set[str] | frozenset[str] = frozenset()):
        self.config = config
        self.sink = sink
        self.batch_size = batch_size
        self.in_flight_batches = in_flight_batches
        self.done_keys = done_keys
        self.peak = 0  # the most frames any buffer held at once in this run (what the bound had to cover)
        self.capacities: dict[str, int] = {}  # video path -> its buffer's capacity, as stated when it opened
        self._videos: dict[str, tuple[VideoFrames, TrackedVideo]] = {}

    # -- the loader's side ------------------------------------------------------------------------------------
    def skip_done(self, stream: Iterator[Any]) -> Iterator[Any]:
        """The plan's stream without the videos a resumed job wrote completely (every selected frame done)."""
        for entry in stream:
            if isinstance(entry, VideoFrames) and self.done_keys and all(
                    f"{entry.key_prefix}:{frame}" in self.done_keys for frame in entry.selection):
                continue
            yield entry

    def open(self, video: VideoFrames, lanes: int, range_len: int) -> None:
        """A video's items start: its reorder buffer (bound from its layout) and tracker."""
        if video.path in self._videos:
            raise RunError(f"video {video.path!r} appears twice in one tracked run")
        capacity = reorder_capacity(self.in_flight_batches, self.batch_size, 1, lanes, max(range_len, 1))
        tracked = self.config.video(video.index.fps, video.selection.step, capacity, total=len(video),
                                    pause_at=lanes * max(range_len, 1), name=f"video {video.fields['name']!r}")
        self.capacities[video.path] = capacity
        self._videos[video.path] = (video, tracked)

    # -- the scheduler's side ---------------------------------------------------------------------------------
    def should_pause(self) -> bool:
        """True while some video's buffer wants new batches to wait."""
        return any(t.buffer.should_pause() for _, t in self._videos.values())

    def gate(self, has_room: Callable[[], bool], busy: Callable[[], Any]) -> Callable[[], bool]:
        """The scheduler's `before_submit`: `has_room()` (the reader's backpressure) and no buffer full. A full
        buffer with nothing in flight (`busy()` false) would wait forever: it cannot happen while the loader keeps
        rounds in step, and if it did, letting the next batch through turns the hang into the buffer's overflow
        error (its capacity is enforced), which names the video."""
        return lambda: has_room() and (not self.should_pause() or not busy())

    # -- the collector's side ---------------------------------------------------------------------------------
    def __call__(self, preds: list[Prediction]) -> None:
        out: list[Prediction] = []
        for p in preds:
            if p.frame_idx is None:
                out.append(p)
                continue
            entry = self._videos.get(p.item.video_path)
            if entry is None:
                raise RunError(f"a frame of {p.item.video_path!r} arrived, but that video is not open for tracking")
            video, tracked = entry
            dets = None if p.error is not None else (p.boxes, p.scores, p.class_ids)
            released = tracked.push(video.position(p.item), p, dets)
            self.peak = max(self.peak, tracked.buffer.peak)
            if tracked.buffer.done:
                released += tracked.finish()
                del self._videos[video.path]
            out += self._passed_on(released)
        if out:
            self.sink(out)

    def _passed_on(self, released: list[tuple[Prediction, Any]]) -> list[Prediction]:
        out = []
        for q, ids in released:
            if q.key in self.done_keys:
                continue  # written by the run this one resumes: tracked again, not written again
            out.append(replace(q, track_ids=ids if ids is not None else np.full(len(q), -1, np.int64)))
        return out

    def close(self, complete: bool = True) -> None:
        """The run is over. `complete`: every video must have come through whole (else a `RunError` names what
        is missing); a stopped or failed run drops the frames still waiting."""
        videos, self._videos = self._videos, {}
        if complete:
            out = []
            for _, tracked in videos.values():
                out += self._passed_on(tracked.finish())
            if out:
                self.sink(out)

    @classmethod
    def for_run(cls, args: Any, uploader: Any, sink: Callable[[list[Prediction]], None], batch_size: int,
                in_flight_batches: int) -> TrackingStage | None:
        """The run's tracking stage, or None when `args.tracking` asks for none."""
        if args.tracking is None:
            return None
        target = getattr(uploader, "target", None)
        done = target.done_keys if target is not None else frozenset()
        return cls(args.tracking, sink, batch_size, in_flight_batches, done)
