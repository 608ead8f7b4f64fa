"""Pure decisions about video frames: which frames `video_params` selects, and how the selection is cut into
ranges that readers decode in parallel.

No PyAV, no Ray: `pipeline.stages.source.video` calls these with what the index pass of `workers.video` found.
Table-tested in tests/pipeline/test_video_params.py.

    video_params = {"stride": 1, "start_frame": 0, "end_frame": None, "num_frames": None, "duration": None}

The frames predicted are `start_frame, start_frame + stride, ...`, stopping at the first of `end_frame` (exclusive),
`start_frame + duration * fps`, the `num_frames`-th selected frame and the end of the video. Frame indices count
from 0 in presentation order.
"""

from __future__ import annotations

import bisect
import difflib
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from workers.formats import is_url, is_video_file

__all__ = ["DEFAULT_VIDEO_PARAMS", "check_video_params", "select_frames", "split_ranges"]

DEFAULT_VIDEO_PARAMS: dict[str, Any] = {"stride": 1, "start_frame": 0, "end_frame": None, "num_frames": None,
                                        "duration": None}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_video_params(params: Any, args: Any = None) -> dict[str, Any] | None:
    """`video_params` checked on its own (and against the kind of source in `args`, a `PredictArgs`, when given):
    None stays None, else a dict with every key, defaults filled in. Unknown keys, wrong types and values that can
    never select a frame are `InvalidArgumentError`s, raised before any work. Whether `start_frame` lies inside
    the video is checked by `select_frames`, once the video is open."""
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InvalidArgumentError(f"video_params must be a dict (keys {', '.join(DEFAULT_VIDEO_PARAMS)}); "
                                   f"got {type(params).__name__}")
    unknown = [k for k in params if k not in DEFAULT_VIDEO_PARAMS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), list(DEFAULT_VIDEO_PARAMS), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidArgumentError(f"unknown video_params key(s) {', '.join(hints)}; the keys are "
                                   f"{', '.join(DEFAULT_VIDEO_PARAMS)}")
    # None means "the default" for every key (a YAML config may spell a key out as null)
    out = {k: DEFAULT_VIDEO_PARAMS[k] if params.get(k) is None else params[k] for k in DEFAULT_VIDEO_PARAMS}
    stride, start, end, num, duration = (out[k] for k in DEFAULT_VIDEO_PARAMS)
    if not _is_int(stride) or stride < 1:
        raise InvalidArgumentError(f"video_params['stride'] must be an int >= 1 (1 = every frame); got {stride!r}")
    if not _is_int(start) or start < 0:
        raise InvalidArgumentError(f"video_params['start_frame'] must be an int >= 0 (a frame index); got {start!r}")
    if end is not None:
        if not _is_int(end) or end < 0:
            raise InvalidArgumentError(f"video_params['end_frame'] must be None or an int >= 0 (exclusive); got {end!r}")
        if end <= start:
            raise InvalidArgumentError(
                f"video_params['end_frame'] ({end}) must be after start_frame ({start}): it is exclusive, so "
                f"end_frame={end} with start_frame={start} selects no frame"
            )
    if num is not None and (not _is_int(num) or num < 1):
        raise InvalidArgumentError(f"video_params['num_frames'] must be None or an int >= 1; got {num!r}")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration) \
                or duration <= 0:
            raise InvalidArgumentError(f"video_params['duration'] must be None or a number of seconds > 0; "
                                       f"got {duration!r}")
    if args is not None:
        _check_source(args)
    return out


def _check_source(args: Any) -> None:
    """video_params only means something for one video: a video file or a `video_id`."""

    if args.video_id is not None:
        return
    value = args.input
    if isinstance(value, str | os.PathLike) and not is_url(value):
        text = os.fspath(value)
        if os.path.isdir(text):
            raise InvalidArgumentError(
                "video_params applies to one video (a video file or video_id); the videos of a directory are "
                "predicted whole. Pass the video file itself to choose its frames"
            )
        if is_video_file(text):
            return
    given = args.source_name if args.from_platform else "an input that is not a video file"
    raise InvalidArgumentError(f"video_params applies to a video file or video_id; got {given}")


def _exact(value: int | float | Fraction) -> Fraction:
    """A number as an exact fraction; floats by their shortest decimal form, so 0.1 s x 30 fps is exactly 3."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


def select_frames(params: dict[str, Any] | None, frames_count: int, fps: float | Fraction | None,
                  where: str = "the video") -> range:
    """The frame indices `params` selects from a video of `frames_count` frames at `fps` frames per second, as a
    `range` (never a list: a 10-hour video's selection costs nothing to hold). `InvalidArgumentError` when
    `start_frame` is past the last frame, or `duration` is given for a video that states no frame rate."""
    p = {**DEFAULT_VIDEO_PARAMS, **(params or {})}
    start, stride = p["start_frame"], p["stride"]
    if frames_count < 1:
        raise InvalidArgumentError(f"{where} has no frames")
    if start >= frames_count:
        raise InvalidArgumentError(
            f"video_params['start_frame'] is {start}, beyond the end of {where} ({frames_count} frames: "
            f"0..{frames_count - 1})"
        )
    stop = frames_count
    if p["end_frame"] is not None:
        stop = min(stop, p["end_frame"])
    if p["duration"] is not None:
        if not fps or fps <= 0:
            raise InvalidArgumentError(f"video_params['duration'] needs a frame rate, and {where} states none; "
                                       "use end_frame or num_frames instead")
        # frames f with f < start + duration * fps, computed exactly
        stop = min(stop, math.ceil(start + _exact(p["duration"]) * _exact(fps)))
    selection = range(start, max(start, stop), stride)
    if p["num_frames"] is not None:
        selection = selection[: p["num_frames"]]
    return selection


def split_ranges(selection: range, keyframes: Sequence[int], n_ranges: int) -> list[range]:
    """Cut the positions `range(len(selection))` into at most `n_ranges` consecutive ranges of about equal length,
    moving each cut to the nearest position that starts a GOP (the first selected frame at or after a keyframe,
    `keyframes` being ascending frame indices) when one lies within half a range of it: a range that begins there
    never decodes frames of the GOP before it, so no GOP is decoded twice. Cuts with no GOP start that near stay
    where they are (that GOP's head is decoded by both ranges). Returns ranges of positions (indices into
    `selection`), in order, none empty."""
    n = len(selection)
    if n == 0:
        return []
    n_ranges = max(1, min(int(n_ranges), n))
    if n_ranges == 1:
        return [range(0, n)]
    start, step = selection.start, selection.step
    # positions where a GOP starts: the first selected frame at or after each keyframe (position 0 excluded)
    starts = sorted({-((start - k) // step) for k in keyframes if start < k <= selection[-1]})
    length = n / n_ranges
    cuts: list[int] = []
    for i in range(1, n_ranges):
        ideal = round(i * length)
        cut = ideal
        j = bisect.bisect_left(starts, ideal)
        near = [starts[m] for m in (j - 1, j) if 0 <= m < len(starts)]
        if near:
            best = min(near, key=lambda s: (abs(s - ideal), s))
            if abs(best - ideal) <= length / 2:
                cut = best
        if 0 < cut < n and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    bounds = [0, *cuts, n]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
