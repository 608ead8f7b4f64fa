"""Reading image and video files for the platform: probing on upload, decoding on download.

Every failure of PIL or PyAV becomes a `FormatError` naming the item; neither library's exceptions reach users.
PIL and PyAV are imported on first use, so creating a `Platform` stays cheap.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.exceptions import FormatError, InvalidArgumentError
from workers.formats import SDK_IMAGE_EXTENSIONS, SDK_VIDEO_EXTENSIONS, extension

__all__ = [
    "ImageProbe", "VideoProbe", "decode_image", "encode_array", "has_ext", "item_extensions", "probe_image",
    "probe_video",
]

# PIL format -> the extension blobs get (and exports add when a name has no image extension)
_IMAGE_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "TIFF": "tiff", "GIF": "gif"}
# FFmpeg demuxer -> the extension a video gets when its name has none the SDK reads
_CONTAINER_EXT = {"mov": "mp4", "matroska": "mkv", "avi": "avi", "flv": "flv", "asf": "wmv", "webm": "webm"}


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
    """Check that the file is an image the pipeline decodes, and read its size and format. It is decoded whole, by
    the same function (and pixel limit) as the loading stage's, after its own checksums are verified (PNG chunks;
    a JPEG has none), so a truncated or corrupt file is refused here rather than failing on every read. The size
    is the decoded image's: an EXIF orientation of 5..8 swaps width and height."""
    from workers.decode import ItemError
    from workers.decode import decode_image as decode

    try:
        with open(path, "rb") as f:
            pixels, fmt = decode(f, verify=True)
    except (ItemError, OSError) as exc:
        raise FormatError(f"image {name!r} is not an image the pipeline can read ({_why(exc, path)})") from None
    return ImageProbe(int(pixels.shape[1]), int(pixels.shape[0]), _IMAGE_EXT.get(fmt, fmt.lower() or "bin"))


def decode_image(path: str | os.PathLike, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (the loading stage's decoder)."""
    from workers.decode import ItemError, read_image_file

    if not os.path.exists(path):
        raise FormatError(f"the stored file of image {name!r} is missing: {path}")
    try:
        return np.array(read_image_file(os.fspath(path)))
    except ItemError as exc:
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

    The frames are counted by the predict pipeline's own index (`workers.video_index.index_video`: a demux pass, no
    decoding), so the platform's `frames_count` and the frame indices of predictions always agree."""
    import av

    from workers.video_index import index_video

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FormatError(f"video {name!r} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            fmt = container.format.name.split(",")[0] if container.format else ""
    except FormatError:
        raise
    except Exception as exc:  # av.FFmpegError and friends: the file is not a video PyAV can read
        raise FormatError(f"video {name!r} is not a video PyAV can read ({_why(exc, path)})") from None
    if fmt.endswith("_pipe") or fmt.startswith("image2"):  # FFmpeg reads a PNG or JPEG as a one-frame "video"
        raise FormatError(f"video {name!r} is a still image ({fmt}), not a video")
    frames = index_video(path, name=name).frames_count if width > 0 and height > 0 else 0
    if width <= 0 or height <= 0 or frames <= 0:
        raise FormatError(f"video {name!r} has no frames (size {width}x{height}, {frames} frames)")
    ext = extension(name)[1:] if extension(name) in SDK_VIDEO_EXTENSIONS else _CONTAINER_EXT.get(fmt, fmt or "bin")
    return VideoProbe(frames, fps, int(width), int(height), ext)


def _why(exc: Exception, path: str | os.PathLike) -> str:
    """The library's message, without the path of our staging file (the user knows the item by its name)."""
    return f"{type(exc).__name__}: {exc}".replace(f" '{os.fspath(path)}'", "").replace(os.fspath(path), "the file")


def has_ext(name: str, extensions: frozenset[str]) -> bool:
    return extension(name) in extensions


def item_extensions(project_type: str) -> frozenset[str]:
    """The extensions of the files `import_dir` reads as items of a project of `project_type` ("images" or
    "videos"): the SDK's, plus, for images, every extension of a format PIL opens (an image of a format the SDK does
    not know, e.g. GIF, is exported under its format's extension and must import back)."""
    if project_type != "images":
        return SDK_VIDEO_EXTENSIONS
    from PIL import Image

    opens = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return SDK_IMAGE_EXTENSIONS | opens


def as_stream(source: Any) -> Any:
    """A binary stream for bytes-like input."""
    return io.BytesIO(bytes(source))
