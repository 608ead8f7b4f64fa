"""File kinds, in one table: which extensions are images or videos, for the pipeline and for the Supervisely SDK;
and which strings are URLs.

The pipeline reads every image format Pillow decodes that photos and datasets come in, and every container FFmpeg
demuxes that cameras write. The Supervisely SDK reads fewer (`supervisely/imaging/image.py` SUPPORTED_IMG_EXTS,
`supervisely/video/video.py` ALLOWED_VIDEO_EXTENSIONS): an exported item keeps its name only when the SDK knows
its extension.
"""

from __future__ import annotations

import os

__all__ = [
    "IMAGE_EXTENSIONS", "SDK_IMAGE_EXTENSIONS", "SDK_VIDEO_EXTENSIONS", "URL_PREFIXES", "VIDEO_EXTENSIONS",
    "extension", "is_image_file", "is_url", "is_video_file",
]

# extension -> (the pipeline reads it from folders and lists, the Supervisely SDK reads it)
_IMAGES = {
    ".jpg": (True, True), ".jpeg": (True, True), ".jpe": (True, False), ".jfif": (True, True),
    ".png": (True, True), ".bmp": (True, True), ".gif": (True, False), ".tif": (True, True), ".tiff": (True, True),
    ".webp": (True, True), ".ppm": (True, False), ".pgm": (True, False), ".pbm": (True, False),
    ".mpo": (True, True), ".avif": (False, True), ".heic": (False, True), ".heif": (False, True),
}
_VIDEOS = {
    ".mp4": (True, True), ".m4v": (True, False), ".mov": (True, True), ".avi": (True, True), ".mkv": (True, True),
    ".webm": (True, True), ".mpg": (True, False), ".mpeg": (True, False), ".wmv": (True, True),
    ".flv": (True, True), ".ts": (True, False), ".mts": (True, False), ".3gp": (True, True), ".ogv": (True, False),
}
IMAGE_EXTENSIONS = frozenset(e for e, (ours, _) in _IMAGES.items() if ours)
VIDEO_EXTENSIONS = frozenset(e for e, (ours, _) in _VIDEOS.items() if ours)
SDK_IMAGE_EXTENSIONS = frozenset(e for e, (_, sdk) in _IMAGES.items() if sdk)
SDK_VIDEO_EXTENSIONS = frozenset(e for e, (_, sdk) in _VIDEOS.items() if sdk)

URL_PREFIXES = ("http://", "https://")


def extension(name: str) -> str:
    """".jpg" for "a/B.JPG": the lower-cased extension, with its dot ("" when there is none)."""
    return os.path.splitext(name)[1].lower()


def is_image_file(name: str) -> bool:
    return extension(name) in IMAGE_EXTENSIONS


def is_video_file(name: str) -> bool:
    return extension(name) in VIDEO_EXTENSIONS


def is_url(value: object) -> bool:
    """True for an http(s) URL given as a string (or path-like)."""
    return isinstance(value, str | os.PathLike) and os.fspath(value).startswith(URL_PREFIXES)
