"""Video sources: the frames `video_params` selects from a video file, a platform video, or the videos of a
directory, as run items.

At plan time (before any work) the video is opened and indexed (`workers.video_index.index_video`: a demux pass, no
decoding) and `video_params` becomes a `range` of frame indices (`pipeline.stages.video_params.select_frames`). A
file that is not a video, or has no video stream, fails here. A video stands in the plan's stream as one
`VideoFrames`: which frames, and the item of each; the loading stage decides the order they are read in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.exceptions import FormatError, NotFoundError
from pipeline.prediction import Item
from pipeline.stages.source.plan import SourcePlan, dataset_paths, file_item
from pipeline.stages.video_params import DEFAULT_VIDEO_PARAMS, select_frames
from workers.formats import is_video_file
from workers.video_index import VideoIndex, index_video

__all__ = ["VideoFrames", "directory_plan_with_videos", "platform_video_plan", "video_file_plan"]


@dataclass
class VideoFrames:
    """One video's selected frames as run items: frame `selection[p]` is item `base + p`.

    `fields` are the `Item` fields every frame shares (name, source, path, image_path, video_id, dataset, ...);
    `key_prefix` + ":<frame>" is a frame's job key ("frame:<path>" for files, "video:<id>" for platform videos).
    """

    index: VideoIndex
    selection: range
    key_prefix: str
    fields: dict[str, Any]
    base: int = 0

    def __len__(self) -> int:
        return len(self.selection)

    @property
    def path(self) -> str:
        return self.fields["video_path"]

    def item(self, pos: int) -> Item:
        frame = self.selection[pos]
        return Item(index=self.base + pos, key=f"{self.key_prefix}:{frame}", frame_idx=frame, **self.fields)

    def position(self, item: Item) -> int:
        """Where `item` lies in the selection (the inverse of `item`)."""
        return item.index - self.base


def _video_plan(kind: str, description: str, name: str, video: VideoFrames, context: dict[str, Any],
                **plan_kwargs: Any) -> SourcePlan:
    return SourcePlan(kind, description, name, lambda: iter([video]), lambda: len(video), context=context,
                      project_type="videos", has_videos=True, **plan_kwargs)


def video_file_plan(path: str, args: Any) -> SourcePlan:
    """The frames `args.video_params` selects from the video file at `path` (absolute)."""
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


def _platform_video(platform: Any, vid: int) -> Any:
    """The platform video `vid`; a missing id that is an image's says so."""
    try:
        return platform.video.get(vid)
    except NotFoundError:
        hint = ""
        try:
            image = platform.image.get(vid)
            hint = (f"; {vid} is the id of image {image.name!r} of image project {image.project_id}: pass "
                    f"image_ids=[{vid}] to predict an image")
        except NotFoundError:
            pass
        raise NotFoundError(f"video {vid} does not exist{hint}") from None


def platform_video_plan(args: Any, platform: Any) -> SourcePlan:
    """The frames `args.video_params` selects from platform video `args.video_id`."""
    vid = args.video_id
    info = _platform_video(platform, vid)
    project = platform.project.get(info.project_id)
    ds_paths = dataset_paths(platform.dataset.list(project.id))
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


def _warn_broken(where: str, index: VideoIndex, selection: range) -> None:
    if index.broken is None:
        return
    readable = range(selection.start, max(selection.start, min(selection.stop, index.readable)), selection.step)
    lost = len(selection) - len(readable)
    print(f"{where}: {index.broken}; frames from {index.readable} on cannot be read"
          + (f" ({lost} selected frame(s) will be reported as errors)" if lost else ""), file=sys.stderr)


# --- videos inside a directory -------------------------------------------------------------------------------

Walk = Callable[[str, bool], Iterator[tuple[tuple[str, ...], str]]]


def directory_plan_with_videos(root: str, recursive: bool, name: str, walk: Walk) -> SourcePlan | None:
    """The plan of a directory that holds videos: its images as usual, and every frame of each video (default
    video_params), in walk order. Says on stderr how many frames it will predict. None when it holds no video."""
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
    def n(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    print(f"directory: {n(n_images, 'image')} and {n(videos, 'video')} ({n(frames, 'frame')})"
          + (f"; {n(bad, 'video')} cannot be read and will be reported as errors" if bad else ""), file=sys.stderr)

    def items() -> Iterator[Item | VideoFrames]:
        i = 0
        for parts, path in walk(root, recursive):
            if is_video_file(path):
                entry = _directory_video(path, parts, i)
                i += len(entry) if isinstance(entry, VideoFrames) else 1
                yield entry
            else:
                yield file_item(i, path, dataset=parts)
                i += 1

    total = n_images + frames + bad
    context = {"input": root, "recursive": recursive, "images": n_images, "videos": videos, "frames": frames}
    return SourcePlan("directory", "a directory", name, items, lambda: total, context=context, has_videos=True)


def _directory_video_frames(path: str) -> tuple[int, str | None]:
    """(frames, None) of a directory's video, or (0, why) when it cannot be read as a video."""
    try:
        return index_video(path, name=os.path.basename(path)).frames_count, None
    except FormatError as exc:
        return 0, str(exc)


def _directory_video(path: str, parts: tuple[str, ...], base: int) -> VideoFrames | Item:
    """One video of a directory (every frame), numbered from `base`; one failed item when the file cannot be read
    as a video."""
    name = os.path.basename(path)
    try:
        index = index_video(path, name=name)
    except FormatError as exc:
        return file_item(base, path, dataset=parts, error=str(exc))
    selection = select_frames(None, index.frames_count, index.fps, f"video {name!r}")
    _warn_broken(f"video {name!r}", index, selection)
    fields = {"name": name, "source": path, "path": path, "image_path": path, "video_path": path, "dataset": parts}
    return VideoFrames(index, selection, f"frame:{path}", fields, base=base)
