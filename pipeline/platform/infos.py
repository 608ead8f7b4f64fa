"""The records the platform returns: small frozen dataclasses, one per kind of thing stored.

Times are ISO 8601 UTC strings ("2024-05-01T12:00:00.123Z"); sizes are bytes; width/height are pixels.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetInfo", "ImageInfo", "ProjectInfo", "VideoInfo"]


@dataclass(frozen=True)
class ProjectInfo:
    """A project: `type` is "images" or "videos"."""

    id: int
    name: str
    type: str
    created_at: str
    updated_at: str
    description: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ProjectInfo:
        return cls(row["id"], row["name"], row["type"], row["created_at"], row["updated_at"], row["description"])


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of a project; `parent_id` is the dataset it is nested in (None at the top level)."""

    id: int
    project_id: int
    parent_id: int | None
    name: str
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DatasetInfo:
        return cls(row["id"], row["project_id"], row["parent_id"], row["name"], row["created_at"])


@dataclass(frozen=True)
class ImageInfo:
    """An image. `width`/`height` are pixels as `image.download` returns it (EXIF orientation applied); `hash` is
    the sha256 hex of the file; `path` the absolute path of the stored file (workers read it from there); `ext`
    its format's extension ("png", "jpg", ...)."""

    id: int
    dataset_id: int
    project_id: int
    name: str
    width: int
    height: int
    hash: str
    size: int
    path: str
    ext: str
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row, blobs_dir: Path) -> ImageInfo:
        path = str(blob_path(blobs_dir, row["hash"], row["ext"]))
        return cls(
            row["id"], row["dataset_id"], row["project_id"], row["name"], row["width"], row["height"],
            row["hash"], row["size"], path, row["ext"], row["created_at"],
        )


@dataclass(frozen=True)
class VideoInfo:
    """A video: `frames_count` frames at `fps` frames per second, `width` x `height` pixels; `hash`, `size`, `path`
    as for images."""

    id: int
    dataset_id: int
    project_id: int
    name: str
    frames_count: int
    fps: float
    width: int
    height: int
    hash: str
    size: int
    path: str
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row, blobs_dir: Path) -> VideoInfo:
        path = str(blob_path(blobs_dir, row["hash"], row["ext"]))
        return cls(
            row["id"], row["dataset_id"], row["project_id"], row["name"], row["frames_count"], row["fps"],
            row["width"], row["height"], row["hash"], row["size"], path, row["created_at"],
        )


def blob_path(blobs_dir: Path, sha256: str, ext: str) -> Path:
    """Where the blob of content hash `sha256` lives: `<blobs>/<hash[:2]>/<hash>.<ext>`."""
    return blobs_dir / sha256[:2] / f"{sha256}.{ext}" if ext else blobs_dir / sha256[:2] / sha256
