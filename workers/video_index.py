"""The index pass of a video (PyAV): which packet is which frame, before anything is decoded.

Frame `i` of a video is the i-th frame in presentation order: the i-th frame FFmpeg presents when it decodes the
whole file. Neither a frame rate nor the decoder's output count says which frame is which when a file has B-frames
or a variable frame rate, so one cheap pass demuxes every packet of the first video stream without decoding it
(`index_video`) and keeps the presentation timestamps (pts), sorted: frame `i` is the frame whose pts is `pts[i]`.
Decoding then maps each decoded frame's pts back to its index, wherever decoding started.

Packets the demuxer marks "discard" are not frames. When an MP4 edit list starts after the first frames (a file
cut with `ffmpeg -ss ... -c copy`, many camera files), the demuxer starts at the keyframe before the edit's start,
since the frames after it are predicted from it, and marks the packets before the start discard: they are decoded
as references and the decoder drops their pictures. The index leaves them out, so frame 0 is the first frame
shown. Whole GOPs before that keyframe the demuxer drops without a trace, yet MP4's frame count (`stream.frames`,
its sample table) counts them, and the discarded packets too: `stated_frames` says how many frames it means.

A truncated or corrupt file is indexed up to the break; `VideoIndex.broken` says why the rest cannot be read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.exceptions import FormatError

__all__ = ["TRUNCATION_SLACK_FRAMES", "VideoIndex", "av_error", "index_video", "open_video", "stated_frames"]

# A container that states a duration this many frames longer than the packets it holds is truncated.
TRUNCATION_SLACK_FRAMES = 2


@dataclass(frozen=True)
class VideoIndex:
    """What the index pass found in the first video stream of `path`.

    pts: (readable,) int64, ascending: the presentation timestamp (in `time_base` units) of frame i is pts[i].
    keyframes: (k,) int64, ascending frame indices of the keyframes (where decoding can start).
    frames_count: how many frames the video has: the frames the container states it presents (`stated_frames`)
        when it states a count, else the readable frames; frames `readable .. frames_count - 1` lie after a break
        in the file and cannot be decoded.
    fps: the average frame rate (frames per second), None when the file states none.
    broken: None for a whole file, else why frames from `readable` on cannot be read.
    """

    path: str
    pts: np.ndarray
    keyframes: np.ndarray
    frames_count: int
    fps: Fraction | None
    time_base: Fraction
    width: int
    height: int
    broken: str | None = None

    @property
    def readable(self) -> int:
        return int(len(self.pts))

    def frame_of_pts(self, pts: int) -> int | None:
        """The index of the frame with this pts, None when no frame of the index has it."""
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and int(self.pts[i]) == pts else None

    def keyframe_at_or_before(self, frame: int) -> int:
        """The last keyframe index <= frame (0 when there is none: decoding starts at the beginning)."""
        j = int(np.searchsorted(self.keyframes, frame, side="right")) - 1
        return int(self.keyframes[j]) if j >= 0 else 0

    def keyframe_before(self, keyframe: int) -> int | None:
        j = int(np.searchsorted(self.keyframes, keyframe, side="left")) - 1
        return int(self.keyframes[j]) if j >= 0 else None

    def missing_reason(self, frame: int) -> str:
        return (f"frame {frame} lies after the point where the video breaks off (frame {self.readable} of "
                f"{self.frames_count}): {self.broken}")


def av_error() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, EOFError, OSError, ValueError)


def open_video(path: str, name: str | None = None) -> Any:
    """av.open, with PyAV's errors turned into a `FormatError` that names the file."""
    import av

    label = name or path
    if not os.path.exists(path):
        raise FormatError(f"video {label!r}: the file does not exist")
    if os.path.isdir(path):
        raise FormatError(f"video {label!r} is a directory, not a video file")
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:  # InvalidDataError and friends: not a container FFmpeg can read
        raise FormatError(f"video {label!r} cannot be opened as a video ({type(exc).__name__}: {exc}); is it a "
                          "video file, and complete? (an MP4 cut short before its index cannot be opened)") from None
    fmt = container.format.name.split(",")[0] if container.format else ""
    if fmt.endswith("_pipe") or fmt.startswith("image2"):  # FFmpeg reads a PNG or JPEG as a one-frame "video"
        container.close()
        raise FormatError(f"video {label!r} is a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise FormatError(f"video {label!r} has no video stream (streams: {', '.join(kinds)})")
    return container


@contextlib.contextmanager
def _demuxer_errors() -> Iterator[list]:
    """Collect FFmpeg's error messages on this thread: (level, source name, message) tuples. A demuxer that meets
    damaged data skips to the next place it can read, and its error message is the only sign of the gap. PyAV
    forwards no FFmpeg messages by default, so the level is raised to ERROR for the duration, then restored."""
    import av.logging

    previous, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same damage seen a second time must be reported a second time
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(skip)


def _container_damage(logs: list, seen: int, format_name: str) -> str | None:
    """The first error the demuxer (not a codec parser) logged since `seen`, if any."""
    for level, source, message in logs[seen:]:
        if level <= 16 and source == format_name:  # 16: AV_LOG_ERROR
            return message.strip()
    return None


def _avi_gap(path: str) -> int | None:
    """In an AVI file, the number of video packets before the first place where the chunk chain is broken (bytes
    between two chunks that do not start another chunk: damage the demuxer skipped), or None if it is unbroken.
    Chunks follow each other (8-byte header, data padded to even length); what lies between two packets' chunks
    must itself be chunks (LIST, JUNK, index), whose ids are four printable characters."""
    import av

    video_packets = 0
    prev_end = None
    with av.open(path) as container, open(path, "rb") as raw:
        video = container.streams.video[0]
        try:
            for pkt in container.demux():
                if pkt.size == 0 or pkt.pos is None or pkt.pos < 0:
                    continue
                if prev_end is not None and pkt.pos > prev_end:  # pos: where the packet's chunk header starts
                    raw.seek(prev_end)
                    fourcc = raw.read(4)
                    if len(fourcc) < 4 or not all(0x20 <= b <= 0x7E for b in fourcc):
                        return video_packets
                prev_end = pkt.pos + 8 + pkt.size + (pkt.size & 1)
                if pkt.stream is video:
                    video_packets += 1
        except av_error():
            return video_packets
    return None


def stated_frames(stream: Any, discarded: int, shown: int, shown_end: int | None, complete: bool = True) -> int:
    """How many frames the container states that `stream` presents; 0 when it states no count (Matroska, WebM).

    `discarded` and `shown` count the packets with data that demuxing the stream gave, marked discard or not, and
    `shown_end` is the latest pts + duration of a shown one (in `stream.time_base`). The container's count
    (`stream.frames`) includes the discarded packets, which are never shown, and in MP4 the samples of the GOPs
    an edit list skips, which the demuxer drops without a trace; a file that breaks off also has fewer packets
    than it states. So when the shown packets are fewer than the count less the discarded ones, they are all the
    frames if they reach the end of the stream's duration (which the edit list states; within half a frame) and
    demuxing met no damage (`complete`), and the file is cut short otherwise.
    """
    declared = int(stream.frames or 0)
    if declared <= 0:
        return 0
    declared = max(declared - discarded, 0)
    if declared > shown and complete and shown_end is not None and stream.duration and stream.time_base:
        start = int(stream.start_time or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        half_frame = float(1 / (2 * Fraction(rate)) / Fraction(stream.time_base)) if rate else 0.0
        if shown_end >= start + int(stream.duration) - half_frame:
            return int(shown)
    return declared


@dataclass
class _Demuxed:
    """What one demux pass of the first video stream read, packet by packet (decode order)."""

    pts: list[int] = field(default_factory=list)
    dts: list[int | None] = field(default_factory=list)
    key: list[bool] = field(default_factory=list)
    discard: list[bool] = field(default_factory=list)  # an edit list hides the packet's frame: a reference only
    shown_end: int | None = None  # the latest pts + duration of a shown packet
    broken: str | None = None
    damaged_at: int | None = None  # packets read before the demuxer skipped damaged data or stopped


def _demux(container: Any, stream: Any) -> _Demuxed:
    """Every packet of `stream` (no decoding); where the file is damaged or cut short, and why."""
    out = _Demuxed()
    format_name = container.format.name if container.format else ""
    with _demuxer_errors() as logs:
        try:
            for pkt in container.demux(stream):
                if out.damaged_at is None:
                    message = _container_damage(logs, 0, format_name)
                    if message is not None:
                        out.damaged_at = len(out.pts)
                        out.broken = f"the container is damaged after packet {out.damaged_at} ({message})"
                if pkt.size == 0:  # the end-of-stream flush packet
                    continue
                pts = pkt.pts if pkt.pts is not None else pkt.dts
                if pts is None:  # a packet with no timestamp at all cannot be placed; FFmpeg drops these too
                    continue
                out.pts.append(int(pts))
                out.dts.append(None if pkt.dts is None else int(pkt.dts))
                out.key.append(bool(pkt.is_keyframe))
                discard = bool(getattr(pkt, "is_discard", False))
                out.discard.append(discard)
                if not discard:
                    end = int(pts) + int(pkt.duration or 0)
                    out.shown_end = end if out.shown_end is None else max(out.shown_end, end)
        except av_error() as exc:
            out.damaged_at = len(out.pts) if out.damaged_at is None else out.damaged_at
            out.broken = (f"the file is corrupt or cut short after packet {len(out.pts)} "
                          f"({type(exc).__name__}: {exc})")
        if out.damaged_at is None:
            message = _container_damage(logs, 0, format_name)  # e.g. "File ended prematurely"
            if message is not None:
                out.damaged_at = len(out.pts)
                out.broken = f"the file is cut short or damaged after packet {out.damaged_at} ({message})"
    return out


def index_video(path: str | os.PathLike, name: str | None = None) -> VideoIndex:
    """Demux every packet of the first video stream (no decoding) and build the `VideoIndex`.

    A file that is not a video, has no video stream or no frames is a `FormatError` naming it (`name`, else the
    path). A file that breaks off part way, or whose container is damaged part way (the demuxer reports it and
    skips ahead), is indexed up to that point, and `broken` says why: frames after it cannot be placed exactly.
    Packets marked discard (see the module's docstring) are not frames.
    """
    path = os.fspath(path)
    label = name or path
    container = open_video(path, name)
    try:
        stream = container.streams.video[0]
        format_name = container.format.name if container.format else ""
        d = _demux(container, stream)
        time_base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else None
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        n_discarded = sum(d.discard)
        declared = stated_frames(stream, n_discarded, len(d.pts) - n_discarded, d.shown_end,
                                 complete=d.broken is None)
        container_us = container.duration  # microseconds, from the header
        start_time = stream.start_time
    finally:
        container.close()
    shown = ~np.asarray(d.discard, dtype=bool)
    if not shown.any():
        raise FormatError(f"video {label!r} has no frames that can be read" + (f" ({d.broken})" if d.broken else ""))
    pts = np.asarray(d.pts, dtype=np.int64)  # of every packet (damaged_at counts packets), shown or not
    n_shown = int(shown.sum())
    by_duration = int(round(container_us / 1_000_000 * float(fps))) if container_us and fps else 0
    if declared <= 0 and by_duration:
        # No stated frame count (Matroska, WebM): a file whose packets end well before its stated duration was
        # cut short; how many frames are missing is the time left times the frame rate.
        first = int(start_time) if start_time is not None else int(pts[shown].min())
        found_s = float((int(pts[shown].max()) - first) * time_base) + float(1 / fps)
        missing = int(round((container_us / 1_000_000 - found_s) * float(fps)))
        if missing > TRUNCATION_SLACK_FRAMES:
            declared = n_shown + missing
    if declared > n_shown and d.broken is None:
        d.damaged_at = len(pts)
        d.broken = f"the file holds {n_shown} of the {declared} frames it states (truncated?)"
        if format_name == "avi":
            # AVI has no timestamps: FFmpeg numbers the chunks it finds, so chunks skipped in the middle shift
            # every later number. Find where the chunk chain breaks.
            gap = _avi_gap(path)
            if gap is not None and gap < len(pts):
                d.damaged_at = gap
                d.broken = (f"the file holds {n_shown} of the {declared} frames it states; its data is damaged "
                            f"after frame {gap}")
    keep = shown & _placeable(pts, d)
    if d.damaged_at is not None:
        declared = max(declared, n_shown, by_duration)
    sorted_pts = np.unique(pts[keep])
    key_pts = np.unique(pts[keep & np.asarray(d.key, dtype=bool)])
    if not len(sorted_pts):
        raise FormatError(f"video {label!r} has no frames that can be read ({d.broken})")
    return VideoIndex(
        path=path,
        pts=sorted_pts.astype(np.int64),
        keyframes=np.searchsorted(sorted_pts, key_pts).astype(np.int64),
        frames_count=max(int(declared), int(len(sorted_pts))),
        fps=fps,
        time_base=Fraction(time_base),
        width=width,
        height=height,
        broken=d.broken,
    )


def _placeable(pts: np.ndarray, d: _Demuxed) -> np.ndarray:
    """Which packets' frames have an exact index: all of them in a whole file. Before damage, packets come in
    decode order with increasing dts, and pts >= dts, so a frame not read before the damage has pts > the dts of
    the last packet read before it. Frames up to the dts of the packet before that one are all known and their
    indices exact (the last packet may itself be cut short, so it is not trusted). Packets after a skipped gap are
    left out: the frames of the gap are unknown, so theirs would be shifted."""
    if d.damaged_at is None:
        return np.ones(len(pts), dtype=bool)
    before = d.damaged_at
    known = [t for t in d.dts[max(0, before - 2):before - 1] if t is not None]
    if before >= 2:
        limit = known[0] if known else int(pts[max(0, before - 8):before].min()) - 1
    else:
        limit = int(pts.min()) - 1
    return (pts <= limit) & (np.arange(len(pts)) < before)
