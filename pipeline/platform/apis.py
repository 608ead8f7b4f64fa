"""The platform's sub-APIs: `project`, `dataset`, `image`, `video`, `annotation` (as `Api(...).project` etc.).

Each call is one transaction. Unknown ids raise `NotFoundError` ("image 42 does not exist"), bad arguments
`InvalidArgumentError`, unreadable files and annotations that do not fit the project meta `FormatError`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.exceptions import InvalidArgumentError, NotFoundError
from pipeline.platform import ops
from pipeline.platform.infos import DatasetInfo, ImageInfo, ProjectInfo, VideoInfo
from pipeline.platform.store import Store

if TYPE_CHECKING:
    import numpy as np

    from pipeline.annotation import Annotation, ProjectMeta, VideoAnnotation
    from pipeline.platform.gc import GcReport

__all__ = ["AnnotationApi", "DatasetApi", "ImageApi", "Platform", "ProjectApi", "VideoApi"]


class Platform:
    """The embedded platform under `data_dir`: `project`, `dataset`, `image`, `video` and `annotation` sub-APIs
    over one `store`. Creating it opens nothing; the database is created on the first call."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir)
        self.project = ProjectApi(self)
        self.dataset = DatasetApi(self)
        self.image = ImageApi(self)
        self.video = VideoApi(self)
        self.annotation = AnnotationApi(self)

    def __repr__(self) -> str:
        return f"Platform({str(self.data_dir)!r})"

    def collect_garbage(self, min_age_s: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Remove the stored files and thumbnails no image or video uses any more (deleted items keep their files,
        which others may share) and the leftovers of interrupted writes, each older than `min_age_s`; `dry_run`
        only counts them. Returns what was removed (`pipeline.platform.gc`)."""
        from pipeline.platform.gc import collect_garbage

        return collect_garbage(self.store, min_age_s, dry_run)


class _SubApi:
    def __init__(self, platform: Platform):
        self._platform = platform
        self._store = platform.store

    def _image_info(self, row: Any) -> ImageInfo:
        return ImageInfo.from_row(row, self._store.blobs_root)

    def _video_info(self, row: Any) -> VideoInfo:
        return VideoInfo.from_row(row, self._store.blobs_root)


# ------------------------------------------------------------------------------------------------------ project


class ProjectApi(_SubApi):
    """Projects: containers of datasets, of images or of videos, with a `ProjectMeta` (classes and tags)."""

    def create(self, name: str, type: str = "images", description: str = "") -> ProjectInfo:
        """A new, empty project; `type` "images" or "videos". A name in use is an `InvalidArgumentError`."""
        with self._store.write() as conn:
            project_id = ops.insert_project(conn, name, type, description=description)
            return ProjectInfo.from_row(ops.get_project_row(conn, project_id))

    def get_free_name(self, name: str) -> str:
        """`name` if no project has it, else `name (1)`, `name (2)`, ..."""
        with self._store.read() as conn:
            return ops.free_project_name(conn, name)

    def get_by_name(self, name: str) -> ProjectInfo | None:
        """The project named `name`, or None."""
        with self._store.read() as conn:
            row = conn.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
        return ProjectInfo.from_row(row) if row else None

    def list(self) -> list[ProjectInfo]:
        """Every project, by id."""
        with self._store.read() as conn:
            return [ProjectInfo.from_row(r) for r in conn.execute("SELECT * FROM projects ORDER BY id")]

    def get(self, id: int) -> ProjectInfo:
        with self._store.read() as conn:
            return ProjectInfo.from_row(ops.get_project_row(conn, id))

    def get_meta(self, id: int) -> ProjectMeta:
        """The project's classes and tag metas."""
        with self._store.read() as conn:
            return ops.get_meta(conn, id)

    def update_meta(self, id: int, meta: ProjectMeta | dict) -> None:
        """Replace the project's meta (annotations are not touched)."""
        with self._store.write() as conn:
            ops.set_meta(conn, id, meta)

    def merge_meta(self, id: int, meta: ProjectMeta | dict) -> ProjectMeta:
        """Add the classes and tags of `meta` that the project lacks, atomically (see `ProjectMeta.merge`: a class
        of the same name and another shape is a `FormatError`); returns the merged meta."""
        with self._store.write() as conn:
            return ops.merge_meta(conn, id, meta)

    def delete(self, id: int) -> None:
        """Delete the project with its datasets, items and annotations (stored files stay: they may be shared)."""
        with self._store.write() as conn:
            ops.get_project_row(conn, id)
            conn.execute("DELETE FROM projects WHERE id = ?", (id,))

    def stats(self, id: int) -> dict[str, int]:
        """{"datasets", "items" (images or videos), "objects" (labels, or video objects)} of the project."""
        with self._store.read() as conn:
            row = ops.get_project_row(conn, id)
            items, anns = ("images", "annotations") if row["type"] == "images" else ("videos", "video_annotations")
            key = "image_id" if row["type"] == "images" else "video_id"
            datasets = conn.execute("SELECT COUNT(*) FROM datasets WHERE project_id = ?", (id,)).fetchone()[0]
            count = conn.execute(f"SELECT COUNT(*) FROM {items} WHERE project_id = ?", (id,)).fetchone()[0]
            objects = conn.execute(
                f"SELECT COALESCE(SUM(a.objects_count), 0) FROM {anns} a JOIN {items} i ON i.id = a.{key} "
                "WHERE i.project_id = ?", (id,),
            ).fetchone()[0]
        return {"datasets": int(datasets), "items": int(count), "objects": int(objects)}

    def import_dir(self, path: str | os.PathLike) -> int:
        """Import a Supervisely project folder as a new project; returns its id. See `project_dir.import_dir`."""
        from pipeline.platform.project_dir import import_dir

        return import_dir(self._platform, path)

    def export_dir(self, project_id: int, path: str | os.PathLike) -> None:
        """Write the project as a Supervisely project folder at `path`. See `project_dir.export_dir`."""
        from pipeline.platform.project_dir import export_dir

        export_dir(self._platform, project_id, path)


# ------------------------------------------------------------------------------------------------------ dataset


class DatasetApi(_SubApi):
    """Datasets of a project; a dataset may be nested in another (`parent_id`)."""

    def create(self, project_id: int, name: str, parent_id: int | None = None) -> DatasetInfo:
        """A new dataset; a name already used under the same parent is an `InvalidArgumentError`."""
        with self._store.write() as conn:
            dataset_id = ops.insert_dataset(conn, project_id, name, parent_id)
            return DatasetInfo.from_row(ops.get_dataset_row(conn, dataset_id))

    def get_or_create(self, project_id: int, name: str, parent_id: int | None = None) -> DatasetInfo:
        """The dataset `name` under `parent_id` (top level when None), created if missing."""
        with self._store.write() as conn:
            row = conn.execute(
                "SELECT * FROM datasets WHERE project_id = ? AND COALESCE(parent_id, 0) = ? AND name = ?",
                (project_id, parent_id or 0, name),
            ).fetchone()
            if row is None:
                row = ops.get_dataset_row(conn, ops.insert_dataset(conn, project_id, name, parent_id))
            return DatasetInfo.from_row(row)

    def list(self, project_id: int) -> list[DatasetInfo]:
        """Every dataset of the project, nested ones included, depth first: each parent before its children."""
        with self._store.read() as conn:
            ops.get_project_row(conn, project_id)
            rows = [DatasetInfo.from_row(r) for r in
                    conn.execute("SELECT * FROM datasets WHERE project_id = ? ORDER BY id", (project_id,))]
        children: dict[int | None, list[DatasetInfo]] = {}
        for ds in rows:
            children.setdefault(ds.parent_id, []).append(ds)
        out: list[DatasetInfo] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            ds = stack.pop()
            out.append(ds)
            stack.extend(reversed(children.get(ds.id, [])))
        return out

    def get(self, id: int) -> DatasetInfo:
        with self._store.read() as conn:
            return DatasetInfo.from_row(ops.get_dataset_row(conn, id))


# -------------------------------------------------------------------------------------------------------- image


class ImageApi(_SubApi):
    """Images: uploaded once, stored by content hash, read back as arrays or bytes."""

    def upload(self, dataset_id: int, name: str, image: str | os.PathLike | np.ndarray | bytes) -> ImageInfo:
        """Store an image in a dataset of an images project and return its record.

        `image` is a file path, an (H, W, 3) RGB / (H, W) gray uint8 array (stored as PNG), or the file's bytes.
        The file is checked with PIL (a corrupt image is a `FormatError` naming `name`) and stored as it is. A name
        already in the dataset is an `InvalidArgumentError`; a path that does not exist a `NotFoundError`.
        """
        from pipeline.platform import media

        ops.check_item_name(name, "image")
        with self._store.read() as conn:  # fail before copying anything when the target is wrong
            ops._item_dataset(conn, dataset_id, "images", name, "image")
        with self._stream(image, name) as src:
            sha256, size, probe = self._store.store_blob(src, lambda tmp: media.probe_image(tmp, name))
        with self._store.write() as conn:
            image_id = ops.insert_image(conn, dataset_id, name, probe.width, probe.height, sha256, size, probe.ext)
            return self._image_info(ops.get_image_row(conn, image_id))

    def _stream(self, image: Any, name: str) -> BinaryIO:
        """A binary stream of the image's file content (the caller closes it)."""
        import numpy as np

        from pipeline.platform import media

        if isinstance(image, (str, os.PathLike)):
            try:
                return open(image, "rb")  # noqa: SIM115 - the caller's `with` closes it
            except FileNotFoundError:
                raise NotFoundError(f"image file {str(image)!r} does not exist") from None
            except IsADirectoryError:
                raise InvalidArgumentError(f"image {name!r}: {str(image)!r} is a directory, not an image file") from None
        if isinstance(image, np.ndarray):
            return io.BytesIO(media.encode_array(image, name))
        if isinstance(image, (bytes, bytearray, memoryview)):
            return media.as_stream(image)
        raise InvalidArgumentError(
            f"image {name!r}: expected a path, a uint8 array or bytes; got {type(image).__name__}"
        )

    def list(self, dataset_id: int) -> list[ImageInfo]:
        """The images of one dataset (not of its nested datasets), by id."""
        with self._store.read() as conn:
            ops.get_dataset_row(conn, dataset_id)
            rows = conn.execute("SELECT * FROM images WHERE dataset_id = ? ORDER BY id", (dataset_id,)).fetchall()
        return [self._image_info(r) for r in rows]

    def iterate(self, dataset_id: int | None = None, project_id: int | None = None,
                batch: int = 1000) -> Iterator[ImageInfo]:
        """The images of a dataset or a whole project, by id, lazily: `batch` rows are read at a time (keyset
        pagination on the id), so a project of any size is never loaded at once. Images added while iterating
        appear if their id is past the current page."""
        column, value = self._scope(dataset_id, project_id)
        if batch < 1:
            raise InvalidArgumentError(f"batch must be >= 1; got {batch}")
        return self._pages(column, value, batch)

    def _pages(self, column: str, value: int, batch: int) -> Iterator[ImageInfo]:
        last = 0
        while True:
            with self._store.read() as conn:
                rows = conn.execute(
                    f"SELECT * FROM images WHERE {column} = ? AND id > ? ORDER BY id LIMIT ?", (value, last, batch)
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._image_info(row)
            last = rows[-1]["id"]

    def _scope(self, dataset_id: int | None, project_id: int | None) -> tuple[str, int]:
        if (dataset_id is None) == (project_id is None):
            raise InvalidArgumentError("give exactly one of dataset_id or project_id")
        with self._store.read() as conn:
            if dataset_id is not None:
                ops.get_dataset_row(conn, dataset_id)
                return "dataset_id", dataset_id
            ops.get_project_row(conn, project_id)  # type: ignore[arg-type]
            return "project_id", project_id  # type: ignore[return-value]

    def count(self, dataset_id: int | None = None, project_id: int | None = None) -> int:
        """How many images a dataset (not counting nested ones) or a project has."""
        column, value = self._scope(dataset_id, project_id)
        with self._store.read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM images WHERE {column} = ?", (value,)).fetchone()[0])

    def get(self, id: int) -> ImageInfo:
        with self._store.read() as conn:
            return self._image_info(ops.get_image_row(conn, id))

    def get_by_name(self, dataset_id: int, name: str) -> ImageInfo | None:
        """The image `name` of the dataset, or None."""
        with self._store.read() as conn:
            ops.get_dataset_row(conn, dataset_id)
            row = conn.execute("SELECT * FROM images WHERE dataset_id = ? AND name = ?", (dataset_id, name)).fetchone()
        return self._image_info(row) if row else None

    def download(self, id: int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB, EXIF orientation applied (H, W = `height`, `width` of its record)."""
        from pipeline.platform import media

        info = self.get(id)
        return media.decode_image(info.path, info.name)

    def download_bytes(self, id: int) -> bytes:
        """The stored file, byte for byte."""
        from pipeline.exceptions import FormatError

        info = self.get(id)
        try:
            return Path(info.path).read_bytes()
        except OSError as exc:
            raise FormatError(f"the stored file of image {id} ({info.name!r}) cannot be read: {exc}") from None

    def delete(self, id: int) -> None:
        """Delete the image and its annotation."""
        with self._store.write() as conn:
            ops.get_image_row(conn, id)
            conn.execute("DELETE FROM images WHERE id = ?", (id,))


# -------------------------------------------------------------------------------------------------- annotation


class AnnotationApi(_SubApi):
    """Image annotations, checked against the project meta on the way in."""

    def get(self, image_id: int) -> Annotation:
        """The image's annotation; an empty one of the image's size when none was set."""
        return self.get_many([image_id])[image_id]

    def get_many(self, image_ids: Iterable[int]) -> dict[int, Annotation]:
        """{image_id: Annotation} for the given images (read in one snapshot); an unknown id is a `NotFoundError`."""
        from pipeline.annotation import Annotation

        ids = list(image_ids)
        out: dict[int, Annotation] = {}
        metas: dict[int, ProjectMeta] = {}
        with self._store.read() as conn:
            for image_id in ids:
                row = ops.get_image_row(conn, image_id)
                ann_row = conn.execute("SELECT ann FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
                if ann_row is None:
                    out[image_id] = Annotation((row["height"], row["width"]))
                    continue
                if row["project_id"] not in metas:
                    metas[row["project_id"]] = ops.get_meta(conn, row["project_id"])
                out[image_id] = _parse(Annotation, json.loads(ann_row["ann"]), metas[row["project_id"]])
        return out

    def set(self, image_id: int, ann: Annotation | dict, *, add_to_meta: bool = False) -> None:
        """Replace the image's annotation. Its classes and tags must be in the project meta and its size the
        image's (`FormatError`); `add_to_meta=True` first merges the missing classes and tags into the meta."""
        with self._store.write() as conn:
            ops.set_annotation(conn, image_id, ann, add_to_meta=add_to_meta)

    def set_many(self, pairs: Iterable[tuple[int, Annotation | dict]], *, add_to_meta: bool = False) -> None:
        """`set` for many (image_id, annotation) pairs in one transaction: all are stored, or none."""
        with self._store.write() as conn:
            for image_id, ann in pairs:
                ops.set_annotation(conn, image_id, ann, add_to_meta=add_to_meta)


def _parse(cls: Any, data: dict, meta: ProjectMeta) -> Any:
    """Parse stored JSON with the project meta (so labels get the meta's classes and colours); if the meta was
    edited since and no longer has a class the annotation uses, fall back to classes built from the JSON."""
    from pipeline.exceptions import FormatError

    try:
        return cls.from_json(data, meta)
    except FormatError:
        return cls.from_json(data, None)


# -------------------------------------------------------------------------------------------------------- video


class VideoApi(_SubApi):
    """Videos and their annotations (objects, and figures per frame)."""

    def upload(self, dataset_id: int, name: str, path: str | os.PathLike) -> VideoInfo:
        """Store a video file in a dataset of a videos project; frames count, fps and size are read with PyAV. A
        file that is not a video, or has no video stream, is a `FormatError` naming `name`."""
        from pipeline.platform import media

        ops.check_item_name(name, "video")
        with self._store.read() as conn:
            ops._item_dataset(conn, dataset_id, "videos", name, "video")
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the blob is stored
        except FileNotFoundError:
            raise NotFoundError(f"video file {str(path)!r} does not exist") from None
        with f:
            sha256, size, probe = self._store.store_blob(f, lambda tmp: media.probe_video(tmp, name))
        with self._store.write() as conn:
            video_id = ops.insert_video(conn, dataset_id, name, probe.frames_count, probe.fps, probe.width,
                                        probe.height, sha256, size, probe.ext)
            return self._video_info(ops.get_video_row(conn, video_id))

    def list(self, dataset_id: int) -> list[VideoInfo]:
        """The videos of one dataset, by id."""
        with self._store.read() as conn:
            ops.get_dataset_row(conn, dataset_id)
            rows = conn.execute("SELECT * FROM videos WHERE dataset_id = ? ORDER BY id", (dataset_id,)).fetchall()
        return [self._video_info(r) for r in rows]

    def get(self, id: int) -> VideoInfo:
        with self._store.read() as conn:
            return self._video_info(ops.get_video_row(conn, id))

    def count(self, dataset_id: int | None = None, project_id: int | None = None) -> int:
        """How many videos a dataset or a project has."""
        if (dataset_id is None) == (project_id is None):
            raise InvalidArgumentError("give exactly one of dataset_id or project_id")
        with self._store.read() as conn:
            if dataset_id is not None:
                ops.get_dataset_row(conn, dataset_id)
                sql, value = "SELECT COUNT(*) FROM videos WHERE dataset_id = ?", dataset_id
            else:
                ops.get_project_row(conn, project_id)  # type: ignore[arg-type]
                sql, value = "SELECT COUNT(*) FROM videos WHERE project_id = ?", project_id
            return int(conn.execute(sql, (value,)).fetchone()[0])

    def delete(self, id: int) -> None:
        """Delete the video and its annotation."""
        with self._store.write() as conn:
            ops.get_video_row(conn, id)
            conn.execute("DELETE FROM videos WHERE id = ?", (id,))

    def get_annotation(self, video_id: int) -> VideoAnnotation:
        """The video's annotation; an empty one (its size and frames count) when none was set."""
        from pipeline.annotation import VideoAnnotation

        with self._store.read() as conn:
            row = ops.get_video_row(conn, video_id)
            text = ops.get_video_annotation_text(conn, video_id)
            if text is None:
                return VideoAnnotation((row["height"], row["width"]), row["frames_count"])
            meta = ops.get_meta(conn, row["project_id"])
        return _parse(VideoAnnotation, json.loads(text), meta)

    def set_annotation(self, video_id: int, ann: VideoAnnotation | dict, *, add_to_meta: bool = False) -> None:
        """Replace the video's annotation; checked against the project meta like `annotation.set`."""
        with self._store.write() as conn:
            ops.set_video_annotation(conn, video_id, ann, add_to_meta=add_to_meta)
