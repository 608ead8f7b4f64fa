"""Reading image and video files for the platform: probing on upload, decoding on download.

Every failure of PIL or PyAV becomes a `FormatError` naming the item; neither library's exceptions reach users.
PIL and PyAV are imported on first use, so creating a `Platform` stays cheap.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = [
    "ImageProbe", "VideoProbe", "decode_image", "encode_array", "item_extensions", "probe_image", "probe_video",
]

# PIL format -> the extension blobs get (and exports add when a name has no image extension)
_IMAGE_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "TIFF": "tiff", "GIF": "gif"}
# FFmpeg demuxer -> the extension a video gets when its name has none the SDK reads
_CONTAINER_EXT = {"mov": "mp4", "matroska": "mkv", "avi": "avi", "flv": "flv", "asf": "wmv", "webm": "webm"}
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees: width and height trade places

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".mpo", ".bmp", ".png", ".webp", ".tiff", ".tif", ".jfif", ".avif", ".heic",
                    ".heif")
"""Extensions the Supervisely SDK reads as images (`supervisely/imaging/image.py`, SUPPORTED_IMG_EXTS)."""
VIDEO_EXTENSIONS = (".avi", ".mp4", ".3gp", ".flv", ".webm", ".wmv", ".mov", ".mkv")
"""Extensions the Supervisely SDK reads as videos (`supervisely/video/video.py`, ALLOWED_VIDEO_EXTENSIONS)."""


@dataclass(frozen=True)
class ImageProbe:
    width: int  # pixels, after EXIF orientation
    height: int
    ext: str


@dataclass(frozen=True)
class VideoProbe:
    frames_count: int
    fps: float
    width: int
    height: int
    ext: str


def probe_image(path: str | os.PathLike, name: str) -> ImageProbe:
    """Check that the file is an image PIL decodes, and read its size and format. The whole image is decoded
    (`img.load()`; `Image.verify()` alone checks PNG chunks but no JPEG data), so a truncated or corrupt file is
    refused here rather than failing on every read. The size is the one `decode_image` returns: an EXIF orientation
    of 5..8 swaps width and height."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            width, height, fmt = img.size[0], img.size[1], img.format or ""
            orientation = img.getexif().get(0x0112, 1)
            img.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise FormatError(f"image {name!r} is not an image PIL can read ({_why(exc, path)})") from None
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return ImageProbe(int(width), int(height), _IMAGE_EXT.get(fmt, fmt.lower() or "bin"))


def decode_image(path: str | os.PathLike, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FormatError(f"the stored file of image {name!r} is missing: {path}") from None
    except Exception as exc:
        raise FormatError(f"image {name!r} could not be decoded ({_why(exc, path)})") from None


def encode_array(image: np.ndarray, name: str) -> bytes:
    """PNG bytes of an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray uint8 array."""
    from PIL import Image

    if image.dtype != np.uint8:
        raise InvalidArgumentError(f"image {name!r}: an array image must be uint8; got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))) or 0 in image.shape:
        raise InvalidArgumentError(f"image {name!r}: an array image must be (H, W, 3) RGB or (H, W); got {image.shape}")
    arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def probe_video(path: str | os.PathLike, name: str) -> VideoProbe:
    """Frames count, fps (`average_rate`), width and height (pixels) of the first video stream, read with PyAV.
    A file that is not a video, or has no video stream, is a `FormatError`.

    The frames are those FFmpeg presents, counted as the predict pipeline's index counts them
    (`workers.video.index_video`), so frame indices agree: packets marked discard (an MP4 edit list that starts
    after the first frames) are no frames, and MP4's stated count, which includes them and the GOPs such an edit
    list skips, is read with `workers.video.stated_frames`. MP4 files, and files that state no count, are demuxed
    for it (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FormatError(f"video {name!r} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            frames = int(stream.frames or 0)
            demuxer = container.format.name.split(",") if container.format else []
            if frames <= 0:
                frames = _count_frames(container, stream, catch=False)
            elif "mov" in demuxer:  # the only demuxer that marks video packets discard (MP4 edit lists)
                frames = _count_frames(container, stream, catch=True)
            fmt = demuxer[0] if demuxer else ""
    except FormatError:
        raise
    except Exception as exc:  # av.FFmpegError and friends: the file is not a video PyAV can read
        raise FormatError(f"video {name!r} is not a video PyAV can read ({_why(exc, path)})") from None
    if fmt.endswith("_pipe") or fmt.startswith("image2"):  # FFmpeg reads a PNG or JPEG as a one-frame "video"
        raise FormatError(f"video {name!r} is a still image ({fmt}), not a video")
    if width <= 0 or height <= 0 or frames <= 0:
        raise FormatError(f"video {name!r} has no frames (size {width}x{height}, {frames} frames)")
    suffix = Path(name).suffix.lower()
    ext = suffix[1:] if suffix in VIDEO_EXTENSIONS else _CONTAINER_EXT.get(fmt, fmt or "bin")
    return VideoProbe(frames, fps, int(width), int(height), ext)


def _count_frames(container: Any, stream: Any, catch: bool) -> int:
    """The frames of `stream` FFmpeg presents, by demuxing it: the stated count as `stated_frames` reads it, else
    the packets not marked discard. With `catch`, a demux error ends the count and the stated count stands."""
    from workers.video import stated_frames

    discarded = shown = 0
    shown_end = None
    complete = True
    try:
        for packet in container.demux(stream):
            if not packet.size:  # the end-of-stream flush packet
                continue
            if getattr(packet, "is_discard", False):
                discarded += 1
                continue
            shown += 1
            if packet.pts is not None:
                end = int(packet.pts) + int(packet.duration or 0)
                shown_end = end if shown_end is None else max(shown_end, end)
    except Exception:  # av.FFmpegError and friends: the file breaks off or is damaged here
        if not catch:
            raise
        complete = False
    return stated_frames(stream, discarded, shown, shown_end, complete) or shown


def _why(exc: Exception, path: str | os.PathLike) -> str:
    """The library's message, without the path of our staging file (the user knows the item by its name)."""
    return f"{type(exc).__name__}: {exc}".replace(f" '{os.fspath(path)}'", "").replace(os.fspath(path), "the file")


def has_ext(name: str, extensions: tuple[str, ...] | frozenset[str]) -> bool:
    return Path(name).suffix.lower() in extensions


def item_extensions(project_type: str) -> frozenset[str]:
    """The extensions of the files `import_dir` reads as items of a project of `project_type` ("images" or
    "videos"): the SDK's, plus, for images, every extension of a format PIL opens (an image of a format the SDK does
    not know, e.g. GIF, is exported under its format's extension and must import back)."""
    if project_type != "images":
        return frozenset(VIDEO_EXTENSIONS)
    from PIL import Image

    opens = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(IMAGE_EXTENSIONS) | opens


def as_stream(source: Any) -> Any:
    """A binary stream for bytes-like input."""
    return io.BytesIO(bytes(source))
