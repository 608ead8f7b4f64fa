"""Read queries for the web viewer (`pipeline.viewer`); it writes nothing.

Everything here takes an open connection (`store.read()`), like `ops`. Lists are keyset-paginated on ids
(`WHERE id > :after ORDER BY id LIMIT n`, walking the `(dataset_id, id)` indexes), so the page after image 50,000
costs what the first page costs. Filters that must look inside the annotation JSON (class, has predictions) run in
SQLite's JSON functions over a bounded window of ids (`SCAN_WINDOW`) per call: a filter that matches rarely returns
a short page with a cursor to continue from, instead of one slow request that scans a whole dataset.

The runs come from the upload job tables, which `jobs` owns and the upload stage writes: `upload_jobs`,
`upload_job_items` (done), `upload_job_errors` (failed) and `upload_job_runs` (each start or resume). A data dir
without them (no upload yet, or made by an older version) shows no runs or no errors; the viewer never creates
them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from pipeline.exceptions import NotFoundError
from pipeline.platform import jobs, ops

__all__ = [
    "RUN_STALE_S",
    "SCAN_WINDOW",
    "ImagePage",
    "dataset_items",
    "get_run",
    "image_neighbours",
    "image_record",
    "item_errors",
    "job_log_ready",
    "list_datasets",
    "list_projects",
    "list_runs",
    "page_images",
    "page_videos",
    "project_classes",
    "run_errors",
    "video_errors",
    "video_annotation_if_changed",
    "video_record",
]

SCAN_WINDOW = 20_000
"""Ids a filtered page looks at per call at most: SQLite's JSON functions read ~400,000 small annotations/s, so a
call stays near 50 ms however rarely the filter matches."""

RUN_STALE_S = 600.0
"""A run still marked running whose job wrote nothing for this long is shown as interrupted (its process died)."""


def job_log_ready(conn: sqlite3.Connection) -> bool:
    """True when the job-log tables and their index exist (written by uploads of this version on)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    return all(n in names for n in jobs.JOB_LOG_NAMES)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# --------------------------------------------------------------------------------------------------- projects


def project_classes(meta_json: str) -> list[dict[str, Any]]:
    """[{name, shape, color, geometry_config}] of a project's stored meta JSON, in the meta's order."""
    from pipeline.annotation._util import color_for_name

    try:
        classes = json.loads(meta_json).get("classes") or []
    except (ValueError, AttributeError):
        return []
    out = []
    for c in classes:
        if isinstance(c, dict) and isinstance(c.get("title"), str):
            out.append({"name": c["title"], "shape": c.get("shape", ""),
                        "color": c.get("color") or color_for_name(c["title"]),
                        "geometry_config": c.get("geometry_config") or {}})
    return out


def _project_dict(row: sqlite3.Row, counts: dict[str, dict[int, int]]) -> dict[str, Any]:
    pid = row["id"]
    return {
        "id": pid, "name": row["name"], "type": row["type"], "description": row["description"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "datasets": counts["datasets"].get(pid, 0), "items": counts["items"].get(pid, 0),
        "objects": counts["objects"].get(pid, 0), "classes": project_classes(row["meta"]),
    }


def _grouped(conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> dict[int, int]:
    return {int(r[0]): int(r[1]) for r in conn.execute(sql, args)}


def list_projects(conn: sqlite3.Connection, project_id: int | None = None) -> list[dict[str, Any]]:
    """Every project (or the one `project_id`) with its counts of datasets, items and objects, and its classes.
    One grouped query per count, whatever the number of projects."""
    where, args = ("WHERE id = ?", (project_id,)) if project_id is not None else ("", ())
    rows = conn.execute(f"SELECT * FROM projects {where} ORDER BY id", args).fetchall()
    if project_id is not None and not rows:
        raise NotFoundError(f"project {project_id} does not exist")
    pw, pargs = ("WHERE project_id = ?", (project_id,)) if project_id is not None else ("", ())
    iw = "WHERE i.project_id = ?" if project_id is not None else ""
    counts = {
        "datasets": _grouped(conn, f"SELECT project_id, COUNT(*) FROM datasets {pw} GROUP BY project_id", pargs),
        "items": _grouped(conn, f"SELECT project_id, COUNT(*) FROM images {pw} GROUP BY project_id", pargs),
        "objects": _grouped(
            conn, f"SELECT i.project_id, SUM(a.objects_count) FROM annotations a JOIN images i ON i.id = a.image_id "
            f"{iw} GROUP BY i.project_id", pargs),
    }
    for pid, n in _grouped(conn, f"SELECT project_id, COUNT(*) FROM videos {pw} GROUP BY project_id", pargs).items():
        counts["items"][pid] = counts["items"].get(pid, 0) + n
    video_objects = _grouped(
        conn, f"SELECT i.project_id, SUM(a.objects_count) FROM video_annotations a JOIN videos i ON i.id = a.video_id "
        f"{iw} GROUP BY i.project_id", pargs)
    for pid, n in video_objects.items():
        counts["objects"][pid] = counts["objects"].get(pid, 0) + n
    return [_project_dict(r, counts) for r in rows]


# --------------------------------------------------------------------------------------------------- datasets


def list_datasets(conn: sqlite3.Connection, project_id: int) -> list[dict[str, Any]]:
    """The project's datasets, each parent before its children, with `depth`, `path` ("train/hard") and `items`
    (its own images or videos, not its children's)."""
    project = ops.get_project_row(conn, project_id)
    table = "images" if project["type"] == "images" else "videos"
    counts = _grouped(conn, f"SELECT dataset_id, COUNT(*) FROM {table} WHERE project_id = ? GROUP BY dataset_id",
                      (project_id,))
    rows = conn.execute("SELECT * FROM datasets WHERE project_id = ? ORDER BY id", (project_id,)).fetchall()
    children: dict[int | None, list[sqlite3.Row]] = {}
    for r in rows:
        children.setdefault(r["parent_id"], []).append(r)
    out: list[dict[str, Any]] = []
    stack: list[tuple[sqlite3.Row, int, str]] = [(r, 0, r["name"]) for r in reversed(children.get(None, []))]
    while stack:
        r, depth, path = stack.pop()
        out.append({"id": r["id"], "name": r["name"], "parent_id": r["parent_id"], "project_id": project_id,
                    "depth": depth, "path": path, "items": counts.get(r["id"], 0), "created_at": r["created_at"]})
        stack.extend((c, depth + 1, f"{path}/{c['name']}") for c in reversed(children.get(r["id"], [])))
    return out


def dataset_items(conn: sqlite3.Connection, dataset_id: int, count: bool = True) -> dict[str, Any]:
    """A dataset's record with its project (id, name, type, classes), `path` and `items` count (None when not
    `count`: counting walks the dataset's index, some milliseconds at 100,000 images)."""
    ds = ops.get_dataset_row(conn, dataset_id)
    project = ops.get_project_row(conn, ds["project_id"])
    table = "images" if project["type"] == "images" else "videos"
    items = None
    if count:
        items = int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE dataset_id = ?", (dataset_id,)).fetchone()[0])
    path, parent = [ds["name"]], ds["parent_id"]
    while parent is not None:
        prow = ops.get_dataset_row(conn, parent)
        path.insert(0, prow["name"])
        parent = prow["parent_id"]
    return {"id": ds["id"], "name": ds["name"], "parent_id": ds["parent_id"], "path": "/".join(path),
            "items": items, "created_at": ds["created_at"],
            "project": {"id": project["id"], "name": project["name"], "type": project["type"],
                        "classes": project_classes(project["meta"])}}


# ----------------------------------------------------------------------------------------------------- images

_IMAGE_COLUMNS = "i.id, i.name, i.width, i.height, i.hash, i.ext, i.size, i.created_at, a.ann, a.objects_count"
_HAS_CLASS = ("EXISTS (SELECT 1 FROM json_each(a.ann, '$.objects') o "
              "WHERE json_extract(o.value, '$.classTitle') IN ({marks}))")
_HAS_PREDICTION = ("EXISTS (SELECT 1 FROM json_each(a.ann, '$.objects') o, json_each(o.value, '$.tags') t "
                   "WHERE json_extract(t.value, '$.name') = 'confidence')")
# failed in some job and not uploaded by a later resume of that job
_HAS_ERROR = ("EXISTS (SELECT 1 FROM upload_job_errors e WHERE e.item_key = 'image:' || i.id AND NOT EXISTS "
              "(SELECT 1 FROM upload_job_items d WHERE d.job_id = e.job_id AND d.item_key = e.item_key))")


class ImagePage:
    """One page of a dataset's images: `rows` (id, name, width, height, hash, ext, size, created_at, ann (JSON text
    or None), objects_count); `next_after` the cursor of the next call (None: the dataset ends here);
    `scanned_to` the last id this call looked at (a filtered page may be short and still not the last)."""

    __slots__ = ("rows", "next_after", "scanned_to")

    def __init__(self, rows: list[sqlite3.Row], next_after: int | None, scanned_to: int | None):
        self.rows, self.next_after, self.scanned_to = rows, next_after, scanned_to


def _image_filters(classes: Sequence[str], predicted: bool | None, errors: bool | None,
                   with_errors_table: bool) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if classes:
        clauses.append(_HAS_CLASS.format(marks=", ".join("?" * len(classes))))
        args.extend(classes)
    if predicted is not None:
        clauses.append(_HAS_PREDICTION if predicted else f"NOT {_HAS_PREDICTION}")
    if errors is not None:
        if not with_errors_table:  # no job ever logged an error: nothing has errors
            clauses.append("0" if errors else "1")
        else:
            clauses.append(_HAS_ERROR if errors else f"NOT {_HAS_ERROR}")
    return clauses, args


def page_images(conn: sqlite3.Connection, dataset_id: int, after: int = 0, limit: int = 100,
                classes: Sequence[str] = (), predicted: bool | None = None, errors: bool | None = None,
                window: int = SCAN_WINDOW) -> ImagePage:
    """The images of a dataset with id > `after`, by id, at most `limit`, with their annotation JSON.

    Filters: `classes` (an object of any of them), `predicted` (True: an object with a `confidence` tag; False:
    none), `errors` (True: failed in an upload job and not uploaded since). With a filter only `window` ids are
    looked at per call; the page may then be short, and `next_after` says where to go on."""
    ops.get_dataset_row(conn, dataset_id)
    with_errors = errors is not None and _has_table(conn, "upload_job_errors") and _has_table(conn, "upload_job_items")
    clauses, fargs = _image_filters(classes, predicted, errors, with_errors)
    base = (f"SELECT {_IMAGE_COLUMNS} FROM images i LEFT JOIN annotations a ON a.image_id = i.id "
            "WHERE i.dataset_id = ? AND i.id > ?")
    if not clauses:
        rows = conn.execute(f"{base} ORDER BY i.id LIMIT ?", (dataset_id, after, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1]["id"] if rows else None
        return ImagePage(rows, last if more else None, last)
    # the window's last id, and whether any id follows it (else the dataset ends within this window)
    edge = conn.execute(
        "SELECT id FROM images WHERE dataset_id = ? AND id > ? ORDER BY id LIMIT 2 OFFSET ?",
        (dataset_id, after, window - 1),
    ).fetchall()
    window_end = edge[0][0] if edge else None
    beyond = len(edge) > 1
    bound = " AND i.id <= ?" if window_end is not None else ""
    bargs = [window_end] if window_end is not None else []
    rows = conn.execute(
        f"{base}{bound} AND {' AND '.join(clauses)} ORDER BY i.id LIMIT ?",
        (dataset_id, after, *bargs, *fargs, limit + 1),
    ).fetchall()
    if len(rows) > limit:
        rows = rows[:limit]
        return ImagePage(rows, rows[-1]["id"], rows[-1]["id"])
    return ImagePage(rows, window_end if beyond else None, window_end)


def image_record(conn: sqlite3.Connection, image_id: int) -> dict[str, Any]:
    """An image's row, its annotation JSON text (None: never annotated) and its project's meta JSON and type."""
    row = ops.get_image_row(conn, image_id)
    ann = conn.execute("SELECT ann, updated_at FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
    project = ops.get_project_row(conn, row["project_id"])
    ds = ops.get_dataset_row(conn, row["dataset_id"])
    return {"row": row, "ann": ann["ann"] if ann else None, "ann_updated_at": ann["updated_at"] if ann else None,
            "project": project, "dataset": ds}


def image_neighbours(conn: sqlite3.Connection, image_id: int, dataset_id: int) -> tuple[int | None, int | None]:
    """(previous, next) image ids of the dataset around `image_id`."""
    prev = conn.execute("SELECT MAX(id) FROM images WHERE dataset_id = ? AND id < ?", (dataset_id, image_id)).fetchone()
    nxt = conn.execute("SELECT MIN(id) FROM images WHERE dataset_id = ? AND id > ?", (dataset_id, image_id)).fetchone()
    return prev[0], nxt[0]


# ----------------------------------------------------------------------------------------------------- videos


def page_videos(conn: sqlite3.Connection, dataset_id: int, after: int = 0,
                limit: int = 100) -> tuple[list[sqlite3.Row], int | None]:
    """The videos of a dataset with id > `after`, by id (with `objects_count`), and the next cursor or None."""
    ops.get_dataset_row(conn, dataset_id)
    rows = conn.execute(
        "SELECT v.*, a.objects_count FROM videos v LEFT JOIN video_annotations a ON a.video_id = v.id "
        "WHERE v.dataset_id = ? AND v.id > ? ORDER BY v.id LIMIT ?",
        (dataset_id, after, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["id"] if more else None)


def video_record(conn: sqlite3.Connection, video_id: int) -> dict[str, Any]:
    """A video's row, its project and dataset rows and the `updated_at` of its annotation (None: none)."""
    row = ops.get_video_row(conn, video_id)
    ann = conn.execute("SELECT updated_at FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    return {"row": row, "project": ops.get_project_row(conn, row["project_id"]),
            "dataset": ops.get_dataset_row(conn, row["dataset_id"]), "ann_updated_at": ann[0] if ann else None}


def video_annotation_if_changed(conn: sqlite3.Connection, video_id: int, known: str | None) -> tuple[str | None, str | None]:
    """(updated_at, annotation JSON text) of a video, the text None when `updated_at` equals `known` (the caller's
    cached copy is current) or the video has no annotation."""
    row = conn.execute("SELECT updated_at FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    if row is None:
        return None, None
    if row[0] == known:
        return known, None
    return row[0], ops.get_video_annotation_text(conn, video_id)  # assembled from its rows (video_rows)


# ------------------------------------------------------------------------------------------------------- runs

_RUN_COLUMNS = (
    "j.rowid AS seq, j.id, j.mode, j.source, j.target_project_id, j.created_at, j.updated_at, j.items_done, "
    "p.name AS target_project_name, p.type AS target_project_type"
)


def _failed_count(conn: sqlite3.Connection, job_id: str, log: bool) -> int:
    if not log:
        return 0
    return int(conn.execute(
        "SELECT COUNT(*) FROM upload_job_errors e WHERE e.job_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM upload_job_items d WHERE d.job_id = e.job_id AND d.item_key = e.item_key)",
        (job_id,),
    ).fetchone()[0])


def _run_dict(conn: sqlite3.Connection, row: sqlite3.Row, log: bool, now: float) -> dict[str, Any]:
    runs = []
    if log:
        runs = [dict(r) for r in conn.execute(
            "SELECT run, started_at, ended_at, state, items_total, items_skipped, message FROM upload_job_runs "
            "WHERE job_id = ? ORDER BY run", (row["id"],))]
    out = {k: row[k] for k in ("id", "mode", "source", "target_project_id", "target_project_name",
                               "target_project_type", "created_at", "updated_at", "items_done")}
    out["items_failed"] = _failed_count(conn, row["id"], log)
    out["runs"] = runs
    last = runs[-1] if runs else None
    out["started_at"] = row["created_at"]
    out["ended_at"] = last["ended_at"] if last else None
    out["items_skipped"] = last["items_skipped"] if last else 0
    out["items_total"] = (last["items_total"] + last["items_skipped"]
                          if last and last["items_total"] is not None else None)
    out["state"] = _state(last, row["updated_at"], now)
    out["message"] = last["message"] if last else ""
    return out


def _state(last: dict[str, Any] | None, updated_at: float, now: float) -> str:
    """running / done / stopped / failed from the last run's row; "interrupted" for a run marked running whose job
    wrote nothing for `RUN_STALE_S`; without run rows (jobs of versions that did not log runs) "running" while
    the job wrote within the last minute, else "unknown"."""
    if last is None:
        return "running" if now - float(updated_at) < 60.0 else "unknown"
    if last["state"] == "running" and now - max(float(updated_at), float(last["started_at"])) > RUN_STALE_S:
        return "interrupted"
    return str(last["state"])


def list_runs(conn: sqlite3.Connection, before: int | None = None,
              limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Upload jobs, newest first (keyset on the job's rowid: `before` is the previous page's cursor), with counts
    done / failed / skipped, start, end and state. ([], None) when no upload ever ran."""
    if not _has_table(conn, "upload_jobs"):
        return [], None
    log = job_log_ready(conn)
    where, args = ("WHERE j.rowid < ?", [before]) if before is not None else ("", [])
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM upload_jobs j LEFT JOIN projects p ON p.id = j.target_project_id {where} "
        "ORDER BY j.rowid DESC LIMIT ?", (*args, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    now = time.time()
    return [_run_dict(conn, r, log, now) for r in rows], (rows[-1]["seq"] if more else None)


def get_run(conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    """One upload job as `list_runs` gives it, with its runs; `NotFoundError` if there is none of that id."""
    row = None
    if _has_table(conn, "upload_jobs"):
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM upload_jobs j LEFT JOIN projects p ON p.id = j.target_project_id "
            "WHERE j.id = ?", (job_id,),
        ).fetchone()
    if row is None:
        raise NotFoundError(f"upload job {job_id!r} does not exist")
    return _run_dict(conn, row, job_log_ready(conn), time.time())


def run_errors(conn: sqlite3.Connection, job_id: str, after: str = "",
               limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
    """The failed items of a job (not uploaded by a later resume), by item key after `after`, with their errors;
    `image_id` / `video_id` when the key names a platform item. Returns (errors, next cursor or None)."""
    get_run(conn, job_id)
    if not job_log_ready(conn):
        return [], None
    rows = conn.execute(
        "SELECT item_key, error, at FROM upload_job_errors e WHERE e.job_id = ? AND e.item_key > ? AND NOT EXISTS "
        "(SELECT 1 FROM upload_job_items d WHERE d.job_id = e.job_id AND d.item_key = e.item_key) "
        "ORDER BY e.item_key LIMIT ?", (job_id, after, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    # A job that created a video from a file keys its frames "frame:<path>:<i>"; they are frames of the one video
    # it made (the target of its done items).
    made = _created_video(conn, job_id) if any(r["item_key"].startswith("frame:") for r in rows) else None
    out = [_error_dict(r, made) for r in rows]
    return out, (rows[-1]["item_key"] if more else None)


def _created_video(conn: sqlite3.Connection, job_id: str) -> int | None:
    """The video a job made from a file (`create`), None when it made none: the target of its done frame items."""
    row = conn.execute("SELECT target_id FROM upload_job_items WHERE job_id = ? AND item_key >= 'frame:' AND "
                       "item_key < 'frame;' LIMIT 1", (job_id,)).fetchone()
    return row[0] if row else None


def video_errors(conn: sqlite3.Connection, video_id: int, project_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The errors of a video's frames, newest first: those of jobs that predicted the platform video
    ("video:<id>:<frame>") and those of the job that created it from a file ("frame:<path>:<frame>", found among
    the jobs that uploaded into its project)."""
    out = item_errors(conn, f"video:{video_id}:", prefix=True, limit=limit)
    if not job_log_ready(conn) or not _has_table(conn, "upload_job_items"):
        return out
    makers = [r[0] for r in conn.execute("SELECT id FROM upload_jobs WHERE target_project_id = ? AND mode = 'create'",
                                         (project_id,)) if _created_video(conn, r[0]) == video_id]
    for job_id in makers:
        rows = conn.execute(
            "SELECT e.job_id, e.item_key, e.error, e.at FROM upload_job_errors e WHERE e.job_id = ? AND "
            "e.item_key >= 'frame:' AND e.item_key < 'frame;' AND NOT EXISTS (SELECT 1 FROM upload_job_items d "
            "WHERE d.job_id = e.job_id AND d.item_key = e.item_key) ORDER BY e.at DESC LIMIT ?", (job_id, limit),
        ).fetchall()
        out += [{"job_id": r["job_id"], **_error_dict(r, video_id)} for r in rows]
    return sorted(out, key=lambda e: e["at"], reverse=True)[:limit]


def _error_dict(row: sqlite3.Row, made_video: int | None = None) -> dict[str, Any]:
    """An error record; `image_id` / `video_id` when its key names a platform item, or (`made_video`) when it is
    a frame of the video its job created from a file."""
    out = {"item_key": row["item_key"], "error": row["error"], "at": row["at"]}
    kind, _, rest = row["item_key"].partition(":")
    ident = rest.split(":", 1)[0]
    if kind in ("image", "video") and ident.isdigit():
        out[f"{kind}_id"] = int(ident)
    elif kind == "frame" and made_video is not None:
        out["video_id"] = made_video
    return out


def item_errors(conn: sqlite3.Connection, item_key: str, prefix: bool = False,
                limit: int = 20) -> list[dict[str, Any]]:
    """The errors (not undone by a later resume) of the item `item_key` in every job, newest first; `prefix`:
    of every key starting with it (a video's frames: "video:<id>:")."""
    if not job_log_ready(conn) or not _has_table(conn, "upload_job_items"):
        return []
    if prefix:  # the keys in [prefix, prefix with its last character incremented): an index range
        where, args = "e.item_key >= ? AND e.item_key < ?", (item_key, item_key[:-1] + chr(ord(item_key[-1]) + 1))
    else:
        where, args = "e.item_key = ?", (item_key,)
    rows = conn.execute(
        f"SELECT e.job_id, e.item_key, e.error, e.at FROM upload_job_errors e WHERE {where} AND NOT EXISTS "
        "(SELECT 1 FROM upload_job_items d WHERE d.job_id = e.job_id AND d.item_key = e.item_key) "
        "ORDER BY e.at DESC LIMIT ?", (*args, limit),
    ).fetchall()
    return [{"job_id": r["job_id"], **_error_dict(r)} for r in rows]
