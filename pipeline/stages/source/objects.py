"""Object-store sources: a prefix (`s3://bucket/prefix/`, `gs://...`, `hdfs://...`: any URI `pyarrow.fs` opens)
walked like a local directory, or single objects. Nothing here reads an object: a loading task opens each one
itself (`workers/objects.py`), so the driver lists names and never moves pixels.

The walk is the local one's (`files.walk`): one "folder" level at a time (a `FileSelector` that is not recursive:
S3 and GCS list one prefix level with the "/" delimiter, page by page, inside pyarrow), names sorted, a folder's
files before its sub-folders, depth first; hidden names (".x") skipped; image and video extensions only
(`workers/formats.py`). The driver holds the names of the folder levels on the walk's path, never the whole store:
pyarrow's Python API returns one level's listing as one list, so a single level of a million objects is held (about
400 bytes each at the peak, `benchmarks/listing.py`) while it is walked; split such a flat prefix into
sub-prefixes to bound it lower.

Every check that can fail is made before any work: a scheme pyarrow does not know, a bucket that does not exist,
credentials the store refuses, a prefix with nothing under it. An object that vanishes after it was listed, or
cannot be read, is that item's error (in the loading task).

Videos are not read from object stores: the frame index (`workers/video_index.py`) is one demux pass over every
packet of the file, made in the driver before planning, which would pull the whole video through the driver; the
reader actors then seek by keyframe, one ranged request per seek. Copy videos to a local or shared volume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pipeline.exceptions import InvalidArgumentError, RunError
from pipeline.prediction import Item
from pipeline.stages.source.plan import SourcePlan
from workers.formats import is_image_file, is_video_file
from workers.objects import ObjectError, child_uri, display_uri, filesystem, store_error

__all__ = ["VIDEO_REFUSAL", "check_store", "object_item", "object_plan", "walk_store"]

VIDEO_REFUSAL = ("videos are not read from object stores (the frame index is a pass over the whole file in the "
                 "driver); copy the video to a local or shared volume and pass its path")


def _open(uri: str) -> tuple[Any, str]:
    try:
        return filesystem(uri)
    except ObjectError as exc:
        if "a URI with a password is refused" in str(exc):  # the URI is fine but for its secret: no other hint
            raise InvalidArgumentError(f"input {exc}") from None
        raise InvalidArgumentError(f"input {exc}; give an s3://, gs://, hdfs:// (or another pyarrow.fs) URI, a "
                                   "local path or an http(s) URL") from None


def _bucket_check(fs: Any, path: str, uri: str) -> None:
    """S3 and GCS: the bucket exists and the credentials may see it."""
    if fs.type_name not in ("s3", "gcs"):
        return
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except Exception as exc:
        raise InvalidArgumentError(f"input {store_error(exc, display_uri(uri))}") from None
    if info.type.name == "NotFound":
        raise InvalidArgumentError(f"input {display_uri(uri)}: the bucket {bucket!r} does not exist (or these "
                                   "credentials may not see it)")


def check_store(uri: str) -> tuple[Any, str]:
    """(FileSystem, path) of `uri`, once its store opens and its bucket exists; `InvalidArgumentError` else."""
    fs, path = _open(uri)
    _bucket_check(fs, path, uri)
    return fs, path


def _info(fs: Any, path: str, uri: str) -> Any:
    try:
        return fs.get_file_info(path)
    except Exception as exc:
        raise InvalidArgumentError(f"input {store_error(exc, display_uri(uri))}") from None


def _list(fs: Any, folder: str) -> list[tuple[str, bool]]:
    """(name, is a folder) of one level under `folder`, sorted by name."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def walk_store(fs: Any, root: str, recursive: bool) -> Iterator[tuple[tuple[str, ...], str]]:
    """(relative folder parts, object path) of image and video objects under `root`, in the local walk's order
    (`pipeline.stages.source.files.walk`). A listing that fails mid-walk ends the run (`RunError`): skipping the
    folder would silently drop its items."""
    stack: list[tuple[str, tuple[str, ...]]] = [(root.rstrip("/"), ())]
    while stack:
        folder, parts = stack.pop()
        try:
            entries = _list(fs, folder)
        except Exception as exc:
            raise RunError(f"listing the store failed: {store_error(exc, folder)}") from None
        subdirs = []
        for name, is_dir in entries:
            if name.startswith("."):
                continue  # hidden objects and prefixes, as on a local disk
            if is_dir:
                if recursive:
                    subdirs.append((f"{folder}/{name}", parts + (name,)))
            elif is_image_file(name) or is_video_file(name):
                yield parts, f"{folder}/{name}"
        stack.extend(reversed(subdirs))


def object_item(index: int, uri: str, dataset: tuple[str, ...] = (), source: Any = None) -> Item:
    """The item of the object at `uri`: read by its loading task; a video is refused as its error."""
    shown = display_uri(uri)
    name = os.path.basename(shown.rstrip("/")) or f"object_{index:06d}.jpg"
    error = VIDEO_REFUSAL if is_video_file(name) else None
    return Item(index=index, key=f"uri:{shown}", name=name, source=shown if source is None else source,
                url=None if error else uri, image_url=uri, dataset=dataset, error=error)


def object_plan(uri: str, recursive: bool) -> SourcePlan:
    """The plan of `uri`: one object, or every image under a prefix. Checked before any work (see above)."""
    import pyarrow.fs as pafs

    fs, path = check_store(uri)
    info = _info(fs, path, uri)
    shown = display_uri(uri)
    if info.type == pafs.FileType.File:
        if is_video_file(path):
            raise InvalidArgumentError(f"input {shown}: {VIDEO_REFUSAL}")
        item = object_item(0, uri)
        return SourcePlan("files", "an object", os.path.splitext(item.name)[0] or "Predictions",
                          lambda: iter([item]), lambda: 1, context={"input": shown})
    if info.type != pafs.FileType.Directory:
        raise InvalidArgumentError(f"input {shown}: no object or prefix of that name exists")
    try:
        _list(fs, path)  # listing is allowed: refused credentials fail here, before any work
    except Exception as exc:
        raise InvalidArgumentError(f"input {store_error(exc, shown)}") from None
    name = os.path.basename(path.rstrip("/")) or "Predictions"

    def items() -> Iterator[Item]:
        for i, (parts, obj) in enumerate(walk_store(fs, path, recursive)):
            yield object_item(i, child_uri(uri, path, obj), dataset=parts)

    return SourcePlan("directory", "an object-store prefix", name, items,
                      lambda: sum(1 for _ in walk_store(fs, path, recursive)),
                      context={"input": shown, "recursive": recursive})
