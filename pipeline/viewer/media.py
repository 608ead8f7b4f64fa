"""Files the viewer sends: stored blobs, thumbnails (made once, cached on disk) and video frames (decoded on demand).

A blob is found from its database record only (content hash and extension, both checked for shape), never from a
path in the request. Thumbnails live beside the blobs, content-addressed like them, so a thumbnail is made once
per distinct file whatever the number of records sharing it:

    <data_dir>/thumbs/<hash[:2]>/<hash>-<side>.jpg        an image's thumbnail
    <data_dir>/thumbs/<hash[:2]>/<hash>-f0-<side>.jpg     a video's (its first frame)

A blob missing on disk is a `NotFoundError`, a file that does not decode a `FormatError`; both name the item.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pipeline.exceptions import FormatError, NotFoundError

__all__ = ["MEDIA_TYPES", "THUMB_SIDE", "blob_file", "frame_jpeg", "image_thumbnail", "video_thumbnail"]

THUMB_SIDE = 256  # pixels, the longer side: the grid's cells are 200-ish CSS pixels, sharp on most screens
JPEG_QUALITY = 85
MEDIA_TYPES = {
    "jpg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "webp": "image/webp", "tiff": "image/tiff",
    "gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska", "avi": "video/x-msvideo",
    "mov": "video/quicktime",
}
_HASH = re.compile(r"^[0-9a-f]{64}$")
_EXT = re.compile(r"^[a-z0-9]{0,10}$")


def blob_file(store: Any, row: Any, kind: str) -> Path:
    """The stored file of an image or video record (`row` with id, name, hash, ext). The hash and extension come
    from the database; they are checked for shape anyway, so no record can name a path outside the blob store."""
    sha, ext = str(row["hash"]), str(row["ext"])
    if not _HASH.match(sha) or not _EXT.match(ext):
        raise FormatError(f"{kind} {row['id']} has a malformed content hash or extension in the database")
    path = store.blob_path(sha, ext)
    if not path.is_file():
        raise NotFoundError(
            f"the file of {kind} {row['id']} ({row['name']!r}) is missing from the blob store (sha256 {sha[:12]}...)"
        )
    return path


def _thumb_path(data_dir: Path, sha: str, suffix: str) -> Path:
    return data_dir / "thumbs" / sha[:2] / f"{sha}{suffix}-{THUMB_SIDE}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: two requests making the same thumbnail at
    once each write a whole file, and a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".thumb-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jpeg(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def image_thumbnail(store: Any, row: Any) -> Path:
    """The cached thumbnail of an image record (made on first use): JPEG, longer side `THUMB_SIDE` at most,
    EXIF orientation applied, so it has the aspect of the record's width x height."""
    thumb = _thumb_path(store.data_dir, str(row["hash"]), "")
    if thumb.is_file():
        return thumb
    src = blob_file(store, row, "image")
    from PIL import Image, ImageOps

    try:
        with Image.open(src) as img:
            img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at 1/2..1/8 scale, much faster
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            data = _jpeg(img)
    except Exception as exc:  # PIL raises many types; the blob was readable when uploaded
        raise FormatError(f"image {row['id']} ({row['name']!r}) could not be decoded: {type(exc).__name__}: {exc}") from None
    _write_atomic(thumb, data)
    return thumb


def _decode_frame(path: Path, row: Any, frame: int) -> Any:
    from workers.video import read_frames

    try:
        frames = read_frames(path, [frame])
    except Exception as exc:  # FormatError for a file that is not a video; PyAV errors on damaged files
        raise FormatError(f"video {row['id']} ({row['name']!r}) cannot be decoded: {exc}") from None
    if frame not in frames:
        raise FormatError(
            f"frame {frame} of video {row['id']} ({row['name']!r}) cannot be decoded (damaged or missing in the file)"
        )
    return frames[frame]


def frame_jpeg(store: Any, row: Any, frame: int, side: int | None = None) -> bytes:
    """Frame `frame` (0-based, presentation order, as the pipeline counts frames) of a video record as JPEG,
    decoded with `workers.video.read_frames`; `side` shrinks it to fit that square."""
    from PIL import Image

    if not 0 <= frame < int(row["frames_count"]):
        raise NotFoundError(f"video {row['id']} has frames 0..{int(row['frames_count']) - 1}; there is no frame {frame}")
    arr = _decode_frame(blob_file(store, row, "video"), row, frame)
    img = Image.fromarray(arr)
    if side:
        img.thumbnail((side, side))
    return _jpeg(img)


def video_thumbnail(store: Any, row: Any) -> Path:
    """The cached thumbnail of a video record: its first frame, longer side `THUMB_SIDE` at most."""
    thumb = _thumb_path(store.data_dir, str(row["hash"]), "-f0")
    if not thumb.is_file():
        _write_atomic(thumb, frame_jpeg(store, row, 0, THUMB_SIDE))
    return thumb
