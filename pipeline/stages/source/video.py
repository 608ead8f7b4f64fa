"""Video sources: the selected frames of a video file or of a platform video as run items, and how they load.

Stages 1 and 2 for videos, plugged into a `SourcePlan` through its `submit_factory` and `batcher` hooks:

* At plan time (before any work) the video is opened and indexed (`workers.video.index_video`: a demux pass, no
  decoding) and `video_params` becomes a `range` of frame indices (`pipeline.stages.video_params.select_frames`). A file
  that is not a video, or has no video stream, fails here.
* When the run starts, the selection is cut into frame ranges (`split_ranges`: a few per reader, cut at GOP
  starts), dealt round-robin to `lanes` readers, one per loader CPU: lane j decodes ranges j, j + lanes, ... Each
  lane is a `workers.video.FrameReader` Ray actor holding one CPU, and each batch is one `next_batch` call on it;
  calls from the driver run in order, so a reader decodes its range front to back and never decodes a GOP twice.
* Items are made one at a time, lanes interleaved (lane 0's next frame, lane 1's next frame, ...), and the batcher
  groups each lane's items into batches that stay inside one range. The scheduler's in-flight bound therefore
  spreads over all lanes, keeps every reader busy, and is the only thing that decides how many decoded frames
  exist at once: a 10-hour video costs the driver a few batches of item descriptors.

A reader holds its CPU until its last batch is done: the lanes' handles are dropped when the video's last batch
is made, and Ray ends an actor whose handles are gone once its queued calls have run.
"""

from __future__ import annotations

import bisect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.stages.video_params import DEFAULT_VIDEO_PARAMS, select_frames, split_ranges
from pipeline.exceptions import NotFoundError
from pipeline.stages.source import Item, SourcePlan

__all__ = ["VideoFrames", "VideoLoading", "directory_plan_with_videos", "platform_video_plan", "video_file_plan"]

# Ranges per reader: progress moves front to back through the video (what a stopped or crashed run leaves done is
# close to a prefix) while each reader pays a seek into a new range only this many times.
RANGES_PER_READER = 4
# A range holds at least this many selected frames (several batches), so the seek and the partial GOP at its start
# cost little next to the frames it decodes.
MIN_RANGE_FRAMES = 48
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


@dataclass
class VideoFrames:
    """One video's selected frames as run items: frame `selection[p]` is item `base + p`.

    `fields` are the `Item` fields every frame shares (name, source, path, image_path, video_id, dataset, ...);
    `key_prefix` + ":<frame>" is a frame's job key ("frame:<path>" for files, "video:<id>" for platform videos).
    """

    index: Any  # workers.video.VideoIndex
    selection: range
    key_prefix: str
    fields: dict[str, Any]
    base: int = 0
    lanes: int = 0
    ranges: list[range] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)
    _readers: dict[int, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.selection)

    @property
    def path(self) -> str:
        return self.fields["video_path"]

    def item(self, pos: int) -> Item:
        frame = self.selection[pos]
        return Item(index=self.base + pos, key=f"{self.key_prefix}:{frame}", frame_idx=frame, **self.fields)

    def plan_lanes(self, readers: int) -> None:
        """Cut the selection into ranges and deal them to `readers` lanes."""
        n = len(self.selection)
        wanted = max(1, min(readers * RANGES_PER_READER, n // MIN_RANGE_FRAMES))
        self.ranges = split_ranges(self.selection, self.index.keyframes.tolist(), wanted)
        self.lanes = max(1, min(readers, len(self.ranges)))
        self._starts = [r.start for r in self.ranges]

    def iter_items(self) -> Iterator[Item]:
        """Items lane by lane, one each in turn; within a lane, its ranges in order."""
        if not self.ranges:
            self.plan_lanes(loader_cpus())
        lanes = [_chain_ranges(self.ranges[j::self.lanes]) for j in range(self.lanes)]
        while lanes:
            alive = []
            for lane in lanes:
                pos = next(lane, None)
                if pos is not None:
                    yield self.item(pos)
                    alive.append(lane)
            lanes = alive

    def range_of(self, item: Item) -> int:
        return bisect.bisect_right(self._starts, item.index - self.base) - 1

    def reader(self, lane: int, node_id: str | None) -> Any:
        """The Ray actor that decodes `lane` (started on first use, softly on `node_id`)."""
        handle = self._readers.get(lane)
        if handle is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from workers.video import FrameReader

            options = dict(READER_OPTIONS)
            if node_id:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
            expect = (self.index.readable, self.index.frames_count)
            handle = _remote_reader(FrameReader).options(**options).remote(self.index.path, expect)
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


def _chain_ranges(ranges: list[range]) -> Iterator[int]:
    for r in ranges:
        yield from r


_reader_class = None


def _remote_reader(cls: type) -> Any:
    global _reader_class
    if _reader_class is None:
        import ray

        _reader_class = ray.remote(cls)
    return _reader_class


class VideoLoading:
    """The `submit_factory` and `batcher` of a plan whose items include video frames (image items, if any, load
    as usual). Videos register here when their items start and leave once their last batch is made."""

    def __init__(self) -> None:
        self.videos: dict[str, VideoFrames] = {}

    def frames(self, video: VideoFrames) -> Iterator[Item]:
        self.videos[video.path] = video
        yield from video.iter_items()

    def submit_factory(self, img_size: tuple[int, int] | None, settings: dict[str, Any]) -> Callable:
        from pipeline.stages.loading import submit_load

        def factory(chunk: list[Item]) -> Callable[[str | None], Any]:
            if chunk[0].frame_idx is None:
                return lambda node_id: submit_load(chunk, img_size, settings, node_id)
            video = self.videos[chunk[0].video_path]
            lane = video.range_of(chunk[0]) % video.lanes
            indices = [it.index for it in chunk]
            frames = [it.frame_idx for it in chunk]
            return lambda node_id: video.reader(lane, node_id).next_batch.remote(indices, frames, img_size)

        return factory

    def batcher(self, items: Iterator[Item], batch_size: int, factory: Callable) -> Iterator[Any]:
        """Batches of `batch_size`: image items in runs as they come; a video's frames per lane, each batch inside
        one range and in frame order. Holds at most one unfinished batch per lane."""
        from pipeline.stages.scheduler import Batch

        stopped = False
        try:
            yield from self._batches(items, batch_size, factory, Batch)
        except GeneratorExit:  # the scheduler dropped this generator before its end: stopped or failed
            stopped = True
            raise
        finally:
            # The run is over: every reader's handle goes, so no reader keeps its CPU once its queued calls have
            # run, even while the session is kept. A stopped run's readers are killed at once: their queued calls
            # are not wanted (and cancelling calls queued on an actor would stall it, see Scheduler.run).
            for video in list(self.videos.values()):
                video.release(kill=stopped)
            self.videos.clear()

    def _batches(self, items: Iterator[Item], batch_size: int, factory: Callable, Batch: type) -> Iterator[Any]:
        images: list[Item] = []
        open_: dict[int, list[Item]] = {}  # lane -> items of the current video
        current: VideoFrames | None = None

        def finish_video() -> Iterator[Any]:
            nonlocal current
            if current is None:
                return
            for buf in open_.values():
                if buf:
                    yield Batch(buf, factory(buf), load_by_actor=True)
            open_.clear()
            current.release()
            self.videos.pop(current.path, None)
            current = None

        for item in items:
            if item.frame_idx is None:
                yield from finish_video()
                images.append(item)
                if len(images) >= batch_size:
                    yield Batch(images, factory(images))
                    images = []
                continue
            video = self.videos[item.video_path]
            if video is not current:
                yield from finish_video()
                current = video
            if images:  # a video follows images: the images' last batch goes first
                yield Batch(images, factory(images))
                images = []
            r = video.range_of(item)
            lane = r % video.lanes
            buf = open_.setdefault(lane, [])
            if buf and video.range_of(buf[0]) != r:
                yield Batch(buf, factory(buf), load_by_actor=True)
                buf = open_[lane] = []
            buf.append(item)
            if len(buf) >= batch_size:
                yield Batch(buf, factory(buf), load_by_actor=True)
                open_[lane] = []
        yield from finish_video()
        if images:
            yield Batch(images, factory(images))


# --- plans ---------------------------------------------------------------------------------------------------


def _video_plan(kind: str, description: str, name: str, video: VideoFrames, context: dict[str, Any],
                **plan_kwargs: Any) -> SourcePlan:
    loading = VideoLoading()
    return SourcePlan(
        kind, description, name, lambda: loading.frames(video), lambda: len(video), context=context,
        project_type="videos", submit_factory=loading.submit_factory, batcher=loading.batcher, **plan_kwargs,
    )


def video_file_plan(path: str, args: Any) -> SourcePlan:
    """The frames `args.video_params` selects from the video file at `path` (absolute)."""
    from workers.video import index_video

    index = index_video(path, name=os.path.basename(path))
    params = args.video_params or DEFAULT_VIDEO_PARAMS
    where = f"video {os.path.basename(path)!r}"
    selection = select_frames(params, index.frames_count, index.fps, where)
    _warn_broken(where, index, selection)
    fields = {"name": os.path.basename(path), "source": path, "path": path, "image_path": path, "video_path": path}
    video = VideoFrames(index, selection, f"frame:{path}", fields)
    name = os.path.splitext(os.path.basename(path))[0] or "Predictions"
    context = {"input": path, "frames": len(selection), "video_params": dict(params)}
    return _video_plan("video", f"video {os.path.basename(path)!r} ({len(selection)} frames)", name, video, context)


def platform_video_plan(args: Any, platform: Any) -> SourcePlan:
    """The frames `args.video_params` selects from platform video `args.video_id`."""
    from pipeline.stages.source import _dataset_paths
    from workers.video import index_video

    vid = args.video_id
    try:
        info = platform.video.get(vid)
    except NotFoundError:
        hint = ""
        try:
            image = platform.image.get(vid)
            hint = (f"; {vid} is the id of image {image.name!r} of image project {image.project_id}: pass "
                    f"image_ids=[{vid}] to predict an image")
        except NotFoundError:
            pass
        raise NotFoundError(f"video {vid} does not exist{hint}") from None
    project = platform.project.get(info.project_id)
    ds_paths = _dataset_paths(platform.dataset.list(project.id))
    where = f"video {vid} ({info.name!r})"
    index = index_video(info.path, name=info.name)
    params = args.video_params or DEFAULT_VIDEO_PARAMS
    selection = select_frames(params, index.frames_count, index.fps, where)
    _warn_broken(where, index, selection)
    dataset = ds_paths.get(info.dataset_id, ())
    fields = {"name": info.name, "source": vid, "path": info.path, "video_id": vid, "project_id": info.project_id,
              "dataset_id": info.dataset_id, "video_path": info.path, "dataset": dataset}
    video = VideoFrames(index, selection, f"video:{vid}", fields)
    context = {"video_id": vid, "frames": len(selection), "video_params": dict(params)}
    return _video_plan("platform", f"{where} ({len(selection)} frames)", f"{project.name} (predictions)", video,
                       context, platform_items=True, datasets=[dataset])


def _warn_broken(where: str, index: Any, selection: range) -> None:
    if index.broken is None:
        return
    readable = range(selection.start, max(selection.start, min(selection.stop, index.readable)), selection.step)
    lost = len(selection) - len(readable)
    print(f"{where}: {index.broken}; frames from {index.readable} on cannot be read"
          + (f" ({lost} selected frame(s) will be reported as errors)" if lost else ""), file=sys.stderr)


# --- videos inside a directory -------------------------------------------------------------------------------


def directory_plan_with_videos(root: str, recursive: bool, name: str,
                               walk: Callable[[str, bool], Iterator[tuple[tuple[str, ...], str]]]) -> SourcePlan | None:
    """The plan of a directory that holds videos: its images as usual, and every frame of each video (default
    video_params), in walk order. Says on stderr how many frames it will predict. None when it holds no video."""
    from workers.decode import is_video_file

    n_images, videos, frames, bad = 0, 0, 0, 0
    for _, path in walk(root, recursive):  # names only, plus a demux pass per video for its frame count
        if not is_video_file(path):
            n_images += 1
            continue
        videos += 1
        count, error = _directory_video_frames(path)
        frames += count
        bad += error is not None
    if not videos:
        return None
    print(f"directory: {n_images} images and {videos} videos ({frames} frames)"
          + (f"; {bad} video(s) cannot be read and will be reported as errors" if bad else ""), file=sys.stderr)
    loading = VideoLoading()

    def items() -> Iterator[Item]:
        i = 0
        for parts, path in walk(root, recursive):
            if is_video_file(path):
                for item in _directory_video_items(loading, path, parts, i):
                    yield item
                    i += 1
            else:
                yield Item(index=i, key=f"file:{path}", name=os.path.basename(path), source=path, path=path,
                           image_path=path, dataset=parts)
                i += 1

    total = n_images + frames + bad
    context = {"input": root, "recursive": recursive, "images": n_images, "videos": videos, "frames": frames}
    return SourcePlan("directory", "a directory", name, items, lambda: total, context=context,
                      submit_factory=loading.submit_factory, batcher=loading.batcher)


def _directory_video_frames(path: str) -> tuple[int, str | None]:
    """(frames, None) of a directory's video, or (0, why) when it cannot be read as a video."""
    from pipeline.exceptions import FormatError
    from workers.video import index_video

    try:
        return index_video(path, name=os.path.basename(path)).frames_count, None
    except FormatError as exc:
        return 0, str(exc)


def _directory_video_items(loading: VideoLoading, path: str, parts: tuple[str, ...], base: int) -> Iterator[Item]:
    """The items of one video of a directory (every frame), numbered from `base`; one failed item when the file
    cannot be read as a video."""
    from pipeline.exceptions import FormatError
    from workers.video import index_video

    name = os.path.basename(path)
    try:
        index = index_video(path, name=name)
    except FormatError as exc:
        yield Item(index=base, key=f"file:{path}", name=name, source=path, path=path, image_path=path,
                   dataset=parts, error=str(exc))
        return
    selection = select_frames(None, index.frames_count, index.fps, f"video {name!r}")
    _warn_broken(f"video {name!r}", index, selection)
    fields = {"name": name, "source": path, "path": path, "image_path": path, "video_path": path, "dataset": parts}
    yield from loading.frames(VideoFrames(index, selection, f"frame:{path}", fields, base=base))
