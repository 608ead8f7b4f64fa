"""Video decoding with PyAV, run in the loading stage: the index pass, random access, and range readers.

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

Random access (`read_frames`) seeks to the keyframe at or before a frame and decodes forward. The loading stage
decodes long runs of frames with `FrameReader`, a plain class that `pipeline.stages.source.video` wraps as a Ray actor
(one CPU each): every call hands it the next frames of its range, which it decodes from where the previous call
stopped, so no GOP is decoded twice.

A truncated or corrupt file: the frames before the break decode as usual; frames after it, or frames whose
packets fail to decode, come back as errors for those frames alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.exceptions import FormatError
from workers.decode import ItemError, resize_to
from workers.messages import LoadedBatch

__all__ = ["FrameReader", "VideoIndex", "index_video", "read_frames"]

# Decoder threads per reader. Each reader holds one Ray CPU, and parallelism comes from running several readers on
# separate ranges, so one thread each keeps the CPU accounting honest (FFmpeg's frame threads would double-book).
READER_THREADS = 1
# How far back a seek may land short of a frame before reading from the start instead: a seek lands after the
# requested keyframe only in badly indexed files, and one step back is nearly always enough.
SEEK_RETRIES = 3
# A container that states a duration this many frames longer than the packets it holds is truncated.
TRUNCATION_SLACK_FRAMES = 2
# Indexes kept per process by `read_frames` (Prediction.load_image on many frames of the same video).
INDEX_CACHE_SIZE = 8


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


def _av_error() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, EOFError, OSError, ValueError)


def _open(path: str, name: str | None = None) -> Any:
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
        except _av_error():
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


def index_video(path: str | os.PathLike, name: str | None = None) -> VideoIndex:
    """Demux every packet of the first video stream (no decoding) and build the `VideoIndex`.

    A file that is not a video, has no video stream or no frames is a `FormatError` naming it (`name`, else the
    path). A file that breaks off part way, or whose container is damaged part way (the demuxer reports it and
    skips ahead), is indexed up to that point, and `broken` says why: frames after it cannot be placed exactly.
    Packets marked discard (see the module's docstring) are not frames.
    """
    path = os.fspath(path)
    label = name or path
    container = _open(path, name)
    broken = None
    damaged_at: int | None = None  # packets read before the demuxer skipped damaged data
    pts_l: list[int] = []
    dts_l: list[int | None] = []
    key_l: list[bool] = []
    discard_l: list[bool] = []  # an edit list hides the packet's frame: decoded as a reference, never shown
    shown_end: int | None = None  # the latest pts + duration of a shown packet
    try:
        stream = container.streams.video[0]
        format_name = container.format.name if container.format else ""
        with _demuxer_errors() as logs:
            try:
                for pkt in container.demux(stream):
                    if damaged_at is None:
                        message = _container_damage(logs, 0, format_name)
                        if message is not None:
                            damaged_at = len(pts_l)
                            broken = f"the container is damaged after packet {damaged_at} ({message})"
                    if pkt.size == 0:  # the end-of-stream flush packet
                        continue
                    pts = pkt.pts if pkt.pts is not None else pkt.dts
                    if pts is None:  # a packet with no timestamp at all cannot be placed; FFmpeg drops these too
                        continue
                    pts_l.append(int(pts))
                    dts_l.append(None if pkt.dts is None else int(pkt.dts))
                    key_l.append(bool(pkt.is_keyframe))
                    discard = bool(getattr(pkt, "is_discard", False))
                    discard_l.append(discard)
                    if not discard:
                        end = int(pts) + int(pkt.duration or 0)
                        shown_end = end if shown_end is None else max(shown_end, end)
            except _av_error() as exc:
                damaged_at = len(pts_l) if damaged_at is None else damaged_at
                broken = f"the file is corrupt or cut short after packet {len(pts_l)} ({type(exc).__name__}: {exc})"
            if damaged_at is None:
                message = _container_damage(logs, 0, format_name)  # e.g. "File ended prematurely"
                if message is not None:
                    damaged_at = len(pts_l)
                    broken = f"the file is cut short or damaged after packet {damaged_at} ({message})"
        time_base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else None
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        n_discarded = sum(discard_l)
        declared = stated_frames(stream, n_discarded, len(pts_l) - n_discarded, shown_end, complete=broken is None)
        container_us = container.duration  # microseconds, from the header
        start_time = stream.start_time
    finally:
        container.close()
    shown = ~np.asarray(discard_l, dtype=bool)
    if not shown.any():
        raise FormatError(f"video {label!r} has no frames that can be read" + (f" ({broken})" if broken else ""))

    pts = np.asarray(pts_l, dtype=np.int64)  # of every packet (damaged_at counts packets), shown or not
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
    if declared > n_shown and broken is None:
        damaged_at = len(pts)
        broken = f"the file holds {n_shown} of the {declared} frames it states (truncated?)"
        if format_name == "avi":
            # AVI has no timestamps: FFmpeg numbers the chunks it finds, so chunks skipped in the middle shift
            # every later number. Find where the chunk chain breaks.
            gap = _avi_gap(path)
            if gap is not None and gap < len(pts):
                damaged_at = gap
                broken = (f"the file holds {n_shown} of the {declared} frames it states; its data is damaged "
                          f"after frame {gap}")
    keep = np.ones(len(pts), dtype=bool)
    if damaged_at is not None:
        # Packets come in decode order with increasing dts, and pts >= dts, so a frame not read before the damage
        # has pts > the dts of the last packet read before it. Frames up to the dts of the packet before that one
        # are all known and their indices exact (the last packet may itself be cut short, so it is not trusted).
        # Packets after a skipped gap are left out: the frames of the gap are unknown, so theirs would be shifted.
        before = damaged_at
        known = [d for d in dts_l[max(0, before - 2):before - 1] if d is not None]
        if before >= 2:
            limit = known[0] if known else int(pts[max(0, before - 8):before].min()) - 1
        else:
            limit = int(pts.min()) - 1
        keep = (pts <= limit) & (np.arange(len(pts)) < before)
        declared = max(declared, n_shown, by_duration)
    keep &= shown  # a discarded packet's frame is never shown: it is no frame, and decoding never starts there
    keys = np.asarray(key_l, dtype=bool)
    sorted_pts = np.unique(pts[keep])
    key_pts = np.unique(pts[keep & keys])
    keyframes = np.searchsorted(sorted_pts, key_pts).astype(np.int64)
    if not len(sorted_pts):
        raise FormatError(f"video {label!r} has no frames that can be read ({broken})")
    return VideoIndex(
        path=path,
        pts=sorted_pts.astype(np.int64),
        keyframes=keyframes,
        frames_count=max(int(declared), int(len(sorted_pts))),
        fps=fps,
        time_base=Fraction(time_base),
        width=width,
        height=height,
        broken=broken,
    )


class _Decoder:
    """Decodes one video forward from keyframes and hands out the frames asked for, in ascending order.

    It keeps its container open between calls: a frame after the last one handed out is reached by decoding on,
    unless a keyframe lies between them (then seeking there is cheaper).
    """

    def __init__(self, index: VideoIndex, threads: int | None = READER_THREADS):
        self.index = index
        self.threads = threads
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[tuple[int, Any]] | None = None
        self._last = -1  # index of the last frame taken from `_frames`
        self._peek: tuple[int, Any] | None = None
        self.seeks = 0

    def close(self) -> None:
        self._frames = None
        self._peek = None
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken container: nothing more to free
                pass
        self._container = self._stream = None

    def _ensure_open(self) -> None:
        if self._container is None:
            self._container = _open(self.index.path)
            self._stream = self._container.streams.video[0]
            if self.threads:
                self._stream.codec_context.thread_count = self.threads

    def _decode(self) -> Iterator[tuple[int, Any]]:
        """(frame index, av.VideoFrame or None) from the current position to the end, in presentation order.

        Packets that fail to decode are skipped (their frames come out missing); a demux error ends the stream.
        After a packet fails, or a frame comes out flagged corrupt, the frames that follow are built on damaged
        references (the decoder conceals, it does not refuse): they come out as None until the next keyframe.
        """
        errors = _av_error()
        stream = self._stream
        packets = self._container.demux(stream)
        flushed = False
        prev = None
        damaged = False

        def placed(frames: Iterable[Any]) -> Iterator[tuple[int, Any]]:
            nonlocal prev, damaged
            for fr in frames:
                if fr.is_corrupt:
                    damaged = True
                elif fr.key_frame:
                    damaged = False
                idx = self._index_of(fr, prev)
                if idx is not None:
                    prev = idx
                    yield idx, None if damaged else fr

        while True:
            try:
                pkt = next(packets)
            except StopIteration:
                break
            except errors:
                break
            if pkt.size == 0:
                flushed = True
            try:
                frames = pkt.decode()
            except errors:
                damaged = True
                continue
            yield from placed(frames)
        if not flushed:
            try:
                yield from placed(stream.codec_context.decode(None))
            except errors:
                pass

    def _index_of(self, frame: Any, prev: int | None) -> int | None:
        if frame.pts is None:  # a decoder that drops timestamps: the frame after the previous one
            return None if prev is None else prev + 1
        return self.index.frame_of_pts(int(frame.pts))

    def _seek(self, keyframe: int) -> None:
        self._ensure_open()
        self.seeks += 1
        self._peek = None
        self._last = -1
        if keyframe <= 0:
            self._container.seek(int(self.index.pts[0]), stream=self._stream, backward=True, any_frame=False)
        else:
            self._container.seek(int(self.index.pts[keyframe]), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._decode()

    def _next(self) -> tuple[int, Any] | None:
        if self._peek is not None:
            item, self._peek = self._peek, None
            return item
        if self._frames is None:
            return None
        item = next(self._frames, None)
        if item is None:
            self._frames = None
        return item

    def _position_for(self, target: int) -> None:
        """Seek unless decoding on from here reaches `target` without passing a keyframe."""
        kf = self.index.keyframe_at_or_before(target)
        if (self._frames is not None or self._peek is not None) and self._last < target and kf <= self._last + 1:
            return
        attempt = kf
        for _ in range(SEEK_RETRIES):
            self._seek(attempt)
            first = self._next()
            if first is None or first[0] <= target:
                self._peek = first
                return
            # the seek landed after the frame: step back one keyframe
            earlier = self.index.keyframe_before(attempt)
            if earlier is None:
                break
            attempt = earlier
        self._seek(0)

    def frames(self, wanted: Iterable[int]) -> Iterator[tuple[int, Any]]:
        """(frame, HWC RGB uint8 array or ItemError) for each of `wanted` (ascending, unique frame indices)."""
        for target in wanted:
            if target < 0 or target >= self.index.frames_count:
                yield target, ItemError(f"frame {target} is outside the video (0..{self.index.frames_count - 1})")
                continue
            if target >= self.index.readable:
                yield target, ItemError(self.index.missing_reason(target))
                continue
            try:
                self._position_for(target)
                got = None
                while True:
                    item = self._next()
                    if item is None:
                        break
                    idx, fr = item
                    if idx < target:
                        self._last = idx
                        continue
                    if idx > target:
                        self._peek = item  # the target never came out: keep this one for the next target
                        break
                    self._last = idx
                    got = fr.to_ndarray(format="rgb24") if fr is not None else _DAMAGED
                    break
            except FormatError as exc:
                self.close()
                yield target, ItemError(str(exc))
                continue
            except _av_error() as exc:
                self.close()
                yield target, ItemError(f"frame {target} could not be decoded ({type(exc).__name__}: {exc})")
                continue
            if got is None:
                yield target, ItemError(f"frame {target} could not be decoded: its data is missing or corrupt")
            elif got is _DAMAGED:
                yield target, ItemError(f"frame {target} is damaged: it was decoded from corrupt data (it, or a "
                                        "frame it is predicted from, did not decode cleanly)")
            else:
                yield target, got


_DAMAGED = object()  # a frame the decoder produced from damaged data

_cache_lock = threading.Lock()
_index_cache: OrderedDict[tuple[str, int, int], VideoIndex] = OrderedDict()


def cached_index(path: str) -> VideoIndex:
    """`index_video(path)`, remembered per process while the file's size and mtime stay the same."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _index_cache:
            _index_cache.move_to_end(key)
            return _index_cache[key]
    index = index_video(path)
    with _cache_lock:
        _index_cache[key] = index
        while len(_index_cache) > INDEX_CACHE_SIZE:
            _index_cache.popitem(last=False)
    return index


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """{frame index: HWC RGB uint8} for the `indices` of the video at `path` that decode; frames that cannot be
    read (outside the video, after a break in the file, corrupt) are left out. Raises `FormatError` for a file
    that is not a readable video."""
    path = os.fspath(path)
    index = cached_index(path)
    decoder = _Decoder(index, threads=None)  # one-off reads: let FFmpeg pick its threads
    try:
        return {i: arr for i, arr in decoder.frames(sorted(set(int(i) for i in indices)))
                if isinstance(arr, np.ndarray)}
    finally:
        decoder.close()


class FrameReader:
    """Decodes frames of one video for the loading stage: a plain class, made a Ray actor (one CPU) by
    `pipeline.stages.source.video`. Calls that continue where the previous one stopped decode on without seeking.

    It indexes the file itself (a demux pass, cheap next to decoding) rather than receiving the driver's index, so
    the actor's arguments stay a few bytes and a restarted reader needs nothing from the object store. `expect`
    (readable, frames_count) is what the driver's index found: a file that changed since fails every frame.
    """

    def __init__(self, path: str, expect: tuple[int, int] | None = None):
        self._error: str | None = None
        self._decoder: _Decoder | None = None
        try:
            index = index_video(path)
        except FormatError as exc:
            self._error = str(exc)
            return
        if expect is not None and (index.readable, index.frames_count) != tuple(expect):
            self._error = (f"{path} changed while it was being predicted ({index.readable} readable frames of "
                           f"{index.frames_count} now; {expect[0]} of {expect[1]} before)")
            return
        self._decoder = _Decoder(index)

    def next_batch(self, indices: list[int], frames: list[int], img_size: tuple[int, int] | None) -> LoadedBatch:
        """Decode `frames` (ascending frame indices) into a `LoadedBatch` for items `indices` (run positions):
        images resized to `img_size` (h, w), original sizes, and an error for each frame that did not decode."""
        t0 = time.perf_counter()
        n = len(frames)
        images: list[np.ndarray | None] = [None] * n
        sizes: list[tuple[int, int] | None] = [None] * n
        errors: list[str | None] = [None] * n
        pos = {f: i for i, f in enumerate(frames)}
        if self._decoder is None:
            return LoadedBatch(indices=list(indices), images=images, orig_sizes=sizes, errors=[self._error] * n)
        try:
            for frame, got in self._decoder.frames(frames):
                i = pos[frame]
                if isinstance(got, ItemError):
                    errors[i] = str(got)
                else:
                    sizes[i] = (int(got.shape[0]), int(got.shape[1]))
                    images[i] = resize_to(got, img_size)
        except Exception as exc:  # anything unexpected fails this batch's remaining frames, not the reader
            self._decoder.close()
            for i in range(n):
                if images[i] is None and errors[i] is None:
                    errors[i] = f"cannot decode: {type(exc).__name__}: {exc}"
        return LoadedBatch(indices=list(indices), images=images, orig_sizes=sizes, errors=errors,
                           decode_seconds=time.perf_counter() - t0)

    def stats(self) -> dict[str, Any]:
        return {"seeks": self._decoder.seeks if self._decoder else 0, "pid": os.getpid(), "error": self._error}
