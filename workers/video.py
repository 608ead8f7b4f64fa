"""Video decoding with PyAV, run in the loading stage: random access and range readers.

Frame `i` of a video is the i-th frame in presentation order, as the index pass (`workers.video_index`) numbers
them. Random access (`read_frames`) seeks to the keyframe at or before a frame and decodes forward, mapping each
decoded frame's pts back to its index. The loading stage decodes long runs of frames with `FrameReader`, a plain
class that `pipeline.stages.loading.video` wraps as a Ray actor (one CPU each): every call hands it the next frames
of its range, which it decodes from where the previous call stopped, so no GOP is decoded twice.

A truncated or corrupt file: the frames before the break decode as usual; frames after it, or frames whose
packets fail to decode, come back as errors for those frames alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pipeline.exceptions import FormatError
from workers.decode import ItemError, resize_to
from workers.messages import LoadedBatch
from workers.video_index import VideoIndex, av_error, index_video, open_video, stated_frames

__all__ = ["FrameReader", "VideoIndex", "cached_index", "index_video", "read_frames", "read_video_frame",
           "stated_frames"]

# Decoder threads per reader. Each reader holds one Ray CPU, and parallelism comes from running several readers on
# separate ranges, so one thread each keeps the CPU accounting honest (FFmpeg's frame threads would double-book).
READER_THREADS = 1
# How far back a seek may land short of a frame before reading from the start instead: a seek lands after the
# requested keyframe only in badly indexed files, and one step back is nearly always enough.
SEEK_RETRIES = 3
# Indexes kept per process by `read_frames` (Prediction.load_image on many frames of the same video).
INDEX_CACHE_SIZE = 8


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

    def _ensureopen_video(self) -> None:
        if self._container is None:
            self._container = open_video(self.index.path)
            self._stream = self._container.streams.video[0]
            if self.threads:
                self._stream.codec_context.thread_count = self.threads

    def _decode(self) -> Iterator[tuple[int, Any]]:
        """(frame index, av.VideoFrame or None) from the current position to the end, in presentation order.

        Packets that fail to decode are skipped (their frames come out missing); a demux error ends the stream.
        After a packet fails, or a frame comes out flagged corrupt, the frames that follow are built on damaged
        references (the decoder conceals, it does not refuse): they come out as None until the next keyframe.
        """
        errors = av_error()
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
        self._ensureopen_video()
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
            except av_error() as exc:
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


def read_video_frame(path: str | os.PathLike, frame_idx: int) -> np.ndarray:
    """One frame of a video file, HWC RGB uint8 (for `Prediction.load_image`). Raises `ItemError`."""
    frames = read_frames(path, [frame_idx])
    if frame_idx not in frames:
        raise ItemError(f"frame {frame_idx} of {os.fspath(path)} could not be decoded")
    return frames[frame_idx]


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
