"""Operations on the platform database that take an open connection, so that callers compose several of them in
one transaction:

    with store.write() as conn:
        meta = ops.merge_meta(conn, project_id, prediction_meta)
        ops.set_annotation(conn, image_id, ann)
        ...                                  # e.g. mark a job item done, in the same transaction

Reads work with any connection (`store.read()` or `store.write()`). Unknown ids raise `NotFoundError` naming the
kind and id; bad names and duplicates `InvalidArgumentError`; annotations that do not fit the project meta
`FormatError`.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError
from pipeline.platform import video_rows
from pipeline.platform.store import now

if TYPE_CHECKING:  # imported in the functions: `import pipeline` stays free of numpy until a record is read
    from pipeline.annotation import Annotation, ProjectMeta, VideoAnnotation

__all__ = [
    "check_annotation",
    "check_dataset_name",
    "check_item_name",
    "check_video_fits",
    "find_dataset",
    "free_project_name",
    "get_annotation_text",
    "get_dataset_row",
    "get_video_annotation_text",
    "item_names",
    "get_image_row",
    "get_meta",
    "get_project_row",
    "get_video_row",
    "insert_dataset",
    "insert_image",
    "insert_project",
    "insert_video",
    "merge_meta",
    "put_annotation_json",
    "put_video_annotation_json",
    "set_annotation",
    "set_meta",
    "set_video_annotation",
]

_FORBIDDEN_CHARS = ("/", "\\", "\x00")
RESERVED_DATASET_NAMES = ("meta.json", "key_id_map.json")
"""Names a top-level dataset may not have: its folder would collide with a file at the root of an exported project."""


def dumps(data: Any) -> str:
    """Compact JSON as stored in the database."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def check_item_name(name: Any, kind: str) -> str:
    """`name` if it is usable as a file name in an exported project folder: a non-empty string without '/', '\\'
    or NUL, not starting with '.' (else `InvalidArgumentError`): a name can never make an export escape its folder,
    and never names a hidden file, which file managers, archivers and `import_dir` pass over."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"{kind} name must be a non-empty string; got {name!r}")
    if any(c in name for c in _FORBIDDEN_CHARS):
        raise InvalidArgumentError(f"{kind} name {name!r} may not contain '/', '\\' or NUL")
    if name.startswith("."):
        raise InvalidArgumentError(
            f"{kind} name {name!r} may not start with '.': it would be a hidden file or folder in an exported project"
        )
    if len(name.encode("utf-8")) > 255:
        raise InvalidArgumentError(f"{kind} name is longer than 255 bytes: {name[:40]!r}...")
    return name


def check_dataset_name(name: Any, top_level: bool) -> str:
    """`check_item_name` for a dataset, which at the top level may also not be one of `RESERVED_DATASET_NAMES`."""
    check_item_name(name, "dataset")
    if top_level and name in RESERVED_DATASET_NAMES:
        raise InvalidArgumentError(
            f"dataset name {name!r} is reserved at the top level of a project: an exported project has a file of "
            f"that name there"
        )
    return name


# ---------------------------------------------------------------------------------------------------- lookups


def _row(conn: sqlite3.Connection, table: str, kind: str, item_id: Any) -> sqlite3.Row:
    if isinstance(item_id, bool):
        raise InvalidArgumentError(f"{kind} id must be an integer; got {item_id!r}")
    try:
        item_id = operator.index(item_id)  # NumPy integers too
    except TypeError:
        raise InvalidArgumentError(f"{kind} id must be an integer; got {item_id!r}") from None
    if not 0 < item_id < 2**63:  # SQLite's INTEGER range; ids start at 1
        raise NotFoundError(f"{kind} {item_id} does not exist")
    row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"{kind} {item_id} does not exist")
    return row


def get_project_row(conn: sqlite3.Connection, project_id: int) -> sqlite3.Row:
    return _row(conn, "projects", "project", project_id)


def get_dataset_row(conn: sqlite3.Connection, dataset_id: int) -> sqlite3.Row:
    return _row(conn, "datasets", "dataset", dataset_id)


def get_image_row(conn: sqlite3.Connection, image_id: int) -> sqlite3.Row:
    return _row(conn, "images", "image", image_id)


def get_video_row(conn: sqlite3.Connection, video_id: int) -> sqlite3.Row:
    return _row(conn, "videos", "video", video_id)


# --------------------------------------------------------------------------------------------------- projects


def free_project_name(conn: sqlite3.Connection, name: str) -> str:
    """`name` if no project has it, else the first free of `name (1)`, `name (2)`, ..."""
    # the names that start with "name (" are those from "name (" up to "name )" exclusive (")" follows "(" in the
    # binary collation): a range of the name index, where a LIKE would scan every project's name
    taken = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM projects WHERE name = ? OR (name >= ? AND name < ?)", (name, f"{name} (", f"{name} )")
        )
    }
    if name not in taken:
        return name
    i = 1
    while f"{name} ({i})" in taken:
        i += 1
    return f"{name} ({i})"


def insert_project(conn: sqlite3.Connection, name: str, type: str = "images", meta: ProjectMeta | None = None,
                   description: str = "") -> int:
    """A new project; a name that exists is an `InvalidArgumentError` (see `free_project_name`)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise InvalidArgumentError(f"project name must be a non-empty string; got {name!r}")
    if type not in ("images", "videos"):
        raise InvalidArgumentError(f"project type must be 'images' or 'videos'; got {type!r}")
    if conn.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
        raise InvalidArgumentError(
            f"a project named {name!r} exists; choose another name (project.get_free_name({name!r}) gives one)"
        )
    from pipeline.annotation import ProjectMeta

    meta = _typed(meta or ProjectMeta(), type)
    stamp = now()
    cur = conn.execute(
        "INSERT INTO projects (name, type, description, meta, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (name, type, description, dumps(meta.to_json()), stamp, stamp),
    )
    return int(cur.lastrowid)


def _typed(meta: ProjectMeta, project_type: str) -> ProjectMeta:
    if meta.project_type == project_type:
        return meta
    from dataclasses import replace

    return replace(meta, project_type=project_type)


def get_meta(conn: sqlite3.Connection, project_id: int) -> ProjectMeta:
    """The project's meta."""
    from pipeline.annotation import ProjectMeta

    row = get_project_row(conn, project_id)
    return ProjectMeta.from_json(json.loads(row["meta"]), where=f"meta of project {project_id}")


def set_meta(conn: sqlite3.Connection, project_id: int, meta: ProjectMeta | dict) -> None:
    """Replace the project's meta (its `project_type` is set to the project's type)."""
    from pipeline.annotation import ProjectMeta

    row = get_project_row(conn, project_id)
    if isinstance(meta, dict):
        meta = ProjectMeta.from_json(meta)
    if not isinstance(meta, ProjectMeta):
        raise InvalidArgumentError(f"meta must be a ProjectMeta or its JSON; got {type(meta).__name__}")
    meta = _typed(meta, row["type"])
    conn.execute(
        "UPDATE projects SET meta = ?, updated_at = ? WHERE id = ?", (dumps(meta.to_json()), now(), project_id)
    )


def merge_meta(conn: sqlite3.Connection, project_id: int, meta: ProjectMeta | dict) -> ProjectMeta:
    """Merge `meta` into the project's meta (see `ProjectMeta.merge`) and return the result. Atomic inside the
    caller's write transaction: another process's merge cannot interleave."""
    from pipeline.annotation import ProjectMeta

    if isinstance(meta, dict):
        meta = ProjectMeta.from_json(meta)
    current = get_meta(conn, project_id)
    merged = current.merge(meta)
    if merged is not current:
        set_meta(conn, project_id, merged)
    return merged


# --------------------------------------------------------------------------------------------------- datasets


def insert_dataset(conn: sqlite3.Connection, project_id: int, name: str, parent_id: int | None = None) -> int:
    """A new dataset; a name taken under the same parent, or reserved (`check_dataset_name`), is an
    `InvalidArgumentError`."""
    check_dataset_name(name, parent_id is None)
    get_project_row(conn, project_id)
    if parent_id is not None:
        parent = get_dataset_row(conn, parent_id)
        if parent["project_id"] != project_id:
            raise InvalidArgumentError(f"dataset {parent_id} is in project {parent['project_id']}, not {project_id}")
    if conn.execute(
        "SELECT 1 FROM datasets WHERE project_id = ? AND COALESCE(parent_id, 0) = ? AND name = ?",
        (project_id, parent_id or 0, name),
    ).fetchone():
        where = f"dataset {parent_id}" if parent_id else f"project {project_id}"
        raise InvalidArgumentError(f"{where} already has a dataset named {name!r}")
    cur = conn.execute(
        "INSERT INTO datasets (project_id, parent_id, name, created_at) VALUES (?, ?, ?, ?)",
        (project_id, parent_id, name, now()),
    )
    return int(cur.lastrowid)


def _item_dataset(conn: sqlite3.Connection, dataset_id: int, project_type: str, name: str, kind: str) -> sqlite3.Row:
    ds = get_dataset_row(conn, dataset_id)
    project = get_project_row(conn, ds["project_id"])
    if project["type"] != project_type:
        raise InvalidArgumentError(
            f"dataset {dataset_id} is in a project of {project['type']}; a {kind} goes into a project of {project_type}"
        )
    table = "images" if kind == "image" else "videos"
    if conn.execute(f"SELECT 1 FROM {table} WHERE dataset_id = ? AND name = ?", (dataset_id, name)).fetchone():
        raise InvalidArgumentError(f"dataset {dataset_id} already has a {kind} named {name!r}; choose another name")
    return ds


# ----------------------------------------------------------------------------------------------------- images


def insert_image(conn: sqlite3.Connection, dataset_id: int, name: str, width: int, height: int, sha256: str,
                 size: int, ext: str) -> int:
    """A new image row for an already stored blob; returns its id."""
    check_item_name(name, "image")
    ds = _item_dataset(conn, dataset_id, "images", name, "image")
    cur = conn.execute(
        "INSERT INTO images (dataset_id, project_id, name, width, height, hash, size, ext, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (dataset_id, ds["project_id"], name, int(width), int(height), sha256, int(size), ext, now()),
    )
    return int(cur.lastrowid)


def check_annotation(ann: Annotation, meta: ProjectMeta, img_size: tuple[int, int] | None = None,
                     where: str = "annotation") -> None:
    """`FormatError` unless every class and tag of `ann` is in `meta` (classes taking their geometries, tag values
    fitting) and, given `img_size` (height, width), the annotation is of that size."""
    if img_size is not None and tuple(ann.img_size) != tuple(img_size):
        raise FormatError(
            f"{where}: annotation size {ann.img_size[0]}x{ann.img_size[1]} (height x width) differs from the "
            f"image's {img_size[0]}x{img_size[1]}"
        )
    for i, label in enumerate(ann.labels):
        _check_class(meta, label.obj_class.name, label.geometry.geometry_type, f"{where}: object {i}")
        _check_tags(meta, label.tags, f"{where}: object {i}")
    _check_tags(meta, ann.img_tags, f"{where}: image tags")


def _check_class(meta: ProjectMeta, name: str, geometry_type: str, where: str) -> None:
    cls = meta.get_obj_class(name)
    if cls is None:
        raise FormatError(f"{where}: class {name!r} is not in the project meta (set it with add_to_meta=True)")
    if not cls.accepts(geometry_type):
        raise FormatError(f"{where}: class {name!r} is a {cls.shape} class in the project meta; got a {geometry_type}")


def _check_tags(meta: ProjectMeta, tags: Iterable[Any], where: str) -> None:
    for tag in tags:
        tag_meta = meta.get_tag_meta(tag.name)
        if tag_meta is None:
            raise FormatError(f"{where}: tag {tag.name!r} is not in the project meta (set it with add_to_meta=True)")
        try:
            tag_meta.check_value(tag.value)
        except InvalidArgumentError as exc:
            raise FormatError(f"{where}: {exc}") from None


def set_annotation(conn: sqlite3.Connection, image_id: int, ann: Annotation | dict, *, meta: ProjectMeta | None = None,
                   add_to_meta: bool = False) -> None:
    """Store the annotation of an image, replacing any.

    It is checked against the project's meta (`meta` if the caller already holds it) and the image size
    (`FormatError` if it does not fit); `add_to_meta=True` first merges its classes and tags into the meta.
    """
    from pipeline.annotation import Annotation

    row = get_image_row(conn, image_id)
    if isinstance(ann, dict):
        ann = Annotation.from_json(ann, None if add_to_meta else (meta or get_meta(conn, row["project_id"])))
    if not isinstance(ann, Annotation):
        raise InvalidArgumentError(f"annotation must be an Annotation or its JSON; got {type(ann).__name__}")
    if add_to_meta:
        meta = merge_meta(conn, row["project_id"], ann.required_meta())
    elif meta is None:
        meta = get_meta(conn, row["project_id"])
    check_annotation(ann, meta, (row["height"], row["width"]), f"image {image_id} ({row['name']!r})")
    put_annotation_json(conn, image_id, ann.to_json(), len(ann.labels))


def get_annotation_text(conn: sqlite3.Connection, image_id: int) -> str | None:
    """The stored annotation JSON of an image as text (None when it has none), for callers that merge into it."""
    row = conn.execute("SELECT ann FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
    return row[0] if row else None


def get_video_annotation_text(conn: sqlite3.Connection, video_id: int) -> str | None:
    """The stored annotation JSON of a video as text (None when it has none), assembled from its rows
    (`pipeline.platform.video_rows`)."""
    return video_rows.read_text(conn, video_id)


def find_dataset(conn: sqlite3.Connection, project_id: int, parent_id: int | None, name: str) -> int | None:
    """The id of the dataset `name` under `parent_id` (None: at the top) of a project, if it exists."""
    row = conn.execute(
        "SELECT id FROM datasets WHERE project_id = ? AND COALESCE(parent_id, 0) = ? AND name = ?",
        (project_id, parent_id or 0, name),
    ).fetchone()
    return row[0] if row else None


def item_names(conn: sqlite3.Connection, dataset_id: int) -> set[str]:
    """The names of a dataset's images."""
    return {r[0] for r in conn.execute("SELECT name FROM images WHERE dataset_id = ?", (dataset_id,))}


def put_annotation_json(conn: sqlite3.Connection, image_id: int, data: dict[str, Any], objects_count: int) -> None:
    """Store an image's annotation JSON as it is: for callers that checked it already (the upload stage appends
    checked objects to an annotation that was valid when stored, without decoding its bitmaps again)."""
    conn.execute(
        "INSERT INTO annotations (image_id, ann, objects_count, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (image_id) DO UPDATE SET ann = excluded.ann, objects_count = excluded.objects_count, "
        "updated_at = excluded.updated_at",
        (image_id, dumps(data), int(objects_count), now()),
    )


# ----------------------------------------------------------------------------------------------------- videos


def insert_video(conn: sqlite3.Connection, dataset_id: int, name: str, frames_count: int, fps: float, width: int,
                 height: int, sha256: str, size: int, ext: str) -> int:
    """A new video row for an already stored blob; returns its id."""
    check_item_name(name, "video")
    ds = _item_dataset(conn, dataset_id, "videos", name, "video")
    cur = conn.execute(
        "INSERT INTO videos (dataset_id, project_id, name, frames_count, fps, width, height, hash, size, ext, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (dataset_id, ds["project_id"], name, int(frames_count), float(fps), int(width), int(height), sha256,
         int(size), ext, now()),
    )
    return int(cur.lastrowid)


def check_video_fits(ann: VideoAnnotation, img_size: tuple[int, int], frames_count: int,
                     where: str = "video annotation") -> None:
    """`FormatError` unless `ann` is of the video's size `img_size` (height, width), and neither its figures nor its
    `framesCount` go past the video's `frames_count` frames."""
    if tuple(ann.img_size) != tuple(img_size):
        raise FormatError(
            f"{where}: annotation size {ann.img_size[0]}x{ann.img_size[1]} (height x width) differs from the "
            f"video's {img_size[0]}x{img_size[1]}"
        )
    last = max((fr.index for fr in ann.frames), default=-1)
    if last >= frames_count:
        raise FormatError(f"{where}: the annotation has figures on frame {last}; the video has {frames_count} frames")
    if ann.frames_count > frames_count:
        raise FormatError(
            f"{where}: the annotation's framesCount is {ann.frames_count}; the video has {frames_count} frames"
        )


def check_video_tags(tags: Iterable[Any], meta: ProjectMeta, where: str = "video annotation") -> None:
    """`FormatError` unless every tag is in `meta` and its value fits."""
    _check_tags(meta, tags, f"{where}: video tags")


def check_video_annotation(ann: VideoAnnotation, meta: ProjectMeta, where: str = "video annotation") -> None:
    """`FormatError` unless every class and tag of `ann` is in `meta` and fits."""
    for obj in ann.objects:
        if meta.get_obj_class(obj.obj_class.name) is None:
            _check_class(meta, obj.obj_class.name, obj.obj_class.shape, f"{where}: object {obj.key}")
        _check_tags(meta, obj.tags, f"{where}: object {obj.key}")
    for fig in ann.figures:
        _check_class(meta, fig.video_object.obj_class.name, fig.geometry.geometry_type,
                     f"{where}: frame {fig.frame_index} figure {fig.key}")
    _check_tags(meta, ann.tags, f"{where}: video tags")


def set_video_annotation(conn: sqlite3.Connection, video_id: int, ann: VideoAnnotation | dict, *,
                         meta: ProjectMeta | None = None, add_to_meta: bool = False) -> None:
    """Store the annotation of a video, replacing any; checked against the project meta like `set_annotation`,
    and against the video (`check_video_fits`: its size, its frames within the video's)."""
    from pipeline.annotation import VideoAnnotation

    row = get_video_row(conn, video_id)
    if isinstance(ann, dict):
        ann = VideoAnnotation.from_json(ann, None if add_to_meta else (meta or get_meta(conn, row["project_id"])))
    if not isinstance(ann, VideoAnnotation):
        raise InvalidArgumentError(f"annotation must be a VideoAnnotation or its JSON; got {type(ann).__name__}")
    if add_to_meta:
        meta = merge_meta(conn, row["project_id"], ann.required_meta())
    elif meta is None:
        meta = get_meta(conn, row["project_id"])
    where = f"video {video_id} ({row['name']!r})"
    check_video_annotation(ann, meta, where)
    check_video_fits(ann, (row["height"], row["width"]), row["frames_count"], where)
    video_rows.write_json(conn, video_id, ann.to_json())


def put_video_annotation_json(conn: sqlite3.Connection, video_id: int, data: dict[str, Any]) -> int:
    """Store a video's annotation JSON as it is, replacing any, for callers that checked it already (an imported
    project folder); returns its number of objects. Row by row: `pipeline.platform.video_rows`."""
    return video_rows.write_json(conn, video_id, data)
