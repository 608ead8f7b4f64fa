"""A video's annotation stored in rows: its objects and figures one row each, assembled into the Supervisely video
annotation JSON when it is read.

    video_annotations  one row per annotated video: the "head" (size, description, key, tags, framesCount, any
                       other top-level keys, and the frames that carry keys of their own or no figure), objects_count
    video_objects      one row per object (its JSON), in the order of the annotation's "objects"
    video_figures      one row per figure (its JSON), with its frame and object key, in the order of its frame

Why: a video annotation was one JSON row, so an upload write of 16 frames read, parsed, serialised and stored the
whole annotation, O(everything uploaded so far): 2 s per write at minute 10 of a 30 fps video. In rows a write
inserts the group's objects and figures and touches nothing else (`add_objects`, `add_figures`), `replace` deletes
the figures of its frames (`delete_frames`), and `iou_merge` reads the figures of its frames only
(`figures_on_frames`): O(group) however long the video (docs/PERFORMANCE.md, "Video").

Reading (`read_text`) assembles the same JSON the annotation was written as: the objects in their order, the
frames by index, each frame's figures in their order. Every statement takes the caller's connection, so writes
compose into one transaction (`Store.write`). The annotation checks (classes against the meta, frames within the
video) are the caller's (`pipeline.platform.ops`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["add_figures", "add_objects", "delete_frames", "ensure_head", "figures_on_frames", "get_objects",
           "get_tags", "put_tags", "read_text", "update_objects", "write_json"]

# The top-level keys that live in rows of their own, not in the head.
_ROW_KEYS = ("objects", "frames")


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _now() -> str:
    # the stamp format of pipeline.platform.store.now (not imported: the store imports nothing of the platform)
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _frames_param(frames: Iterable[int]) -> str:
    """A set of frame indices as one JSON array parameter (`IN (SELECT value FROM json_each(?))`): any number of
    frames in one statement, never past SQLite's limit on parameters."""
    return _dumps(sorted({int(f) for f in frames}))


# ------------------------------------------------------------------------------------------------ whole annotation


def write_json(conn: sqlite3.Connection, video_id: int, data: Mapping[str, Any]) -> int:
    """Store `data` (a video annotation's JSON, checked by the caller) as the video's annotation, replacing any;
    returns the number of objects. An object without a key gets one (no figure can refer to it)."""
    import uuid

    conn.execute("DELETE FROM video_figures WHERE video_id = ?", (video_id,))
    conn.execute("DELETE FROM video_objects WHERE video_id = ?", (video_id,))
    head = {k: v for k, v in data.items() if k not in _ROW_KEYS}
    objects = [dict(o, key=o.get("key") or uuid.uuid4().hex) if isinstance(o, dict) else o
               for o in data.get("objects") or ()]
    plain, figures = [], []
    for fr in data.get("frames") or ():
        own = {k: v for k, v in fr.items() if k != "figures"}
        figs = fr.get("figures") or []
        if len(own) > 1 or not figs:  # keys beside "index", or a frame listed without figures: kept as it was
            plain.append(own)
        figures += [(fr["index"], f) for f in figs]
    head["frames"] = plain
    _put_head(conn, video_id, head, len(objects))
    add_objects(conn, video_id, objects, count=False)
    add_figures(conn, video_id, figures)
    return len(objects)


def _put_head(conn: sqlite3.Connection, video_id: int, head: Mapping[str, Any], objects_count: int) -> None:
    conn.execute(
        "INSERT INTO video_annotations (video_id, ann, objects_count, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (video_id) DO UPDATE SET ann = excluded.ann, objects_count = excluded.objects_count, "
        "updated_at = excluded.updated_at",
        (video_id, _dumps(head), int(objects_count), _now()),
    )


def read_text(conn: sqlite3.Connection, video_id: int) -> str | None:
    """The video's annotation JSON as text (None when it has none), assembled from its rows without parsing
    them: the objects in the order they were added, the frames by index, a frame's figures in their order."""
    row = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    if row is None:
        return None
    head = json.loads(row[0])
    own = {int(fr["index"]): fr for fr in head.pop("frames", None) or ()}
    objects = ",".join(r[0] for r in conn.execute(
        "SELECT obj FROM video_objects WHERE video_id = ? ORDER BY id", (video_id,)))
    frames: list[tuple[int, str]] = []
    current, figs = None, []

    def close() -> None:
        extra = own.pop(current, None)
        text = f'{{"index":{current},"figures":[{",".join(figs)}]}}' if extra is None else _frame_text(extra, figs)
        frames.append((current, text))

    for frame, fig in conn.execute(
            "SELECT frame, fig FROM video_figures WHERE video_id = ? ORDER BY frame, id", (video_id,)):
        if frame != current:
            if current is not None:
                close()
            current, figs = frame, []
        figs.append(fig)
    if current is not None:
        close()
    if own:  # frames listed without figures: in index order among the others
        frames = sorted(frames + [(i, _frame_text(fr, [])) for i, fr in own.items()], key=lambda x: x[0])
    parts = [_dumps(head)[1:-1]] if head else []
    parts += [f'"objects":[{objects}]', f'"frames":[{",".join(t for _, t in frames)}]']
    return "{" + ",".join(parts) + "}"


def _frame_text(own: Mapping[str, Any], figures: list[str]) -> str:
    return "{" + _dumps(dict(own))[1:-1] + f',"figures":[{",".join(figures)}]' + "}"


# ------------------------------------------------------------------------------------------------------ writes


def ensure_head(conn: sqlite3.Connection, video_id: int, height: int, width: int, frames_count: int) -> bool:
    """Give the video an empty annotation (its size and frame count) if it has none; True when one was made."""
    if conn.execute("SELECT 1 FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone():
        return False
    from pipeline.annotation import VideoAnnotation

    head = VideoAnnotation((height, width), frames_count).to_json()
    _put_head(conn, video_id, {k: v for k, v in head.items() if k not in _ROW_KEYS}, 0)
    return True


def get_tags(conn: sqlite3.Connection, video_id: int) -> list[dict[str, Any]]:
    """The video's tags (their JSON: on the whole video, or on a `frameRange`), from its head (which must exist)."""
    row = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    return list(json.loads(row[0]).get("tags") or [])


def put_tags(conn: sqlite3.Connection, video_id: int, tags: Iterable[Mapping[str, Any]]) -> None:
    """Replace the video's tags (checked by the caller); the head's other keys stay as they are."""
    row = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    head = json.loads(row[0])
    head["tags"] = [dict(t) for t in tags]
    conn.execute("UPDATE video_annotations SET ann = ?, updated_at = ? WHERE video_id = ?",
                 (_dumps(head), _now(), video_id))


def add_objects(conn: sqlite3.Connection, video_id: int, objects: Iterable[Mapping[str, Any]],
                count: bool = True) -> int:
    """Append objects (their JSON, each with its key) to the video's annotation (whose head must exist);
    returns how many."""
    rows = [(video_id, o["key"], _dumps(o)) for o in objects]
    conn.executemany("INSERT INTO video_objects (video_id, key, obj) VALUES (?, ?, ?)", rows)
    if count and rows:
        conn.execute("UPDATE video_annotations SET objects_count = objects_count + ?, updated_at = ? "
                     "WHERE video_id = ?", (len(rows), _now(), video_id))
    return len(rows)


def update_objects(conn: sqlite3.Connection, video_id: int, objects: Iterable[Mapping[str, Any]]) -> None:
    """Replace the JSON of objects the annotation holds (matched by key): e.g. a track's confidence tag."""
    conn.executemany("UPDATE video_objects SET obj = ? WHERE video_id = ? AND key = ?",
                     [(_dumps(o), video_id, o["key"]) for o in objects])


def get_objects(conn: sqlite3.Connection, video_id: int, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{key: the object's JSON} for those of `keys` that are objects of the video's annotation."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    return {k: json.loads(obj) for k, obj in conn.execute(
        "SELECT key, obj FROM video_objects WHERE video_id = ? AND key IN (SELECT value FROM json_each(?))",
        (video_id, _dumps(keys)))}


def add_figures(conn: sqlite3.Connection, video_id: int, figures: Iterable[tuple[int, Mapping[str, Any]]]) -> int:
    """Append figures, (frame index, figure JSON with its objectKey) each, after those already on their frames;
    returns how many. The caller has checked their objects exist."""
    rows = [(video_id, int(frame), fig["objectKey"], _dumps(fig)) for frame, fig in figures]
    conn.executemany("INSERT INTO video_figures (video_id, frame, object_key, fig) VALUES (?, ?, ?, ?)", rows)
    if rows:
        conn.execute("UPDATE video_annotations SET updated_at = ? WHERE video_id = ?", (_now(), video_id))
    return len(rows)


def figures_on_frames(conn: sqlite3.Connection, video_id: int, frames: Iterable[int],
                      ) -> dict[int, list[tuple[str | None, dict[str, Any]]]]:
    """{frame: [(its object's classTitle, the figure's JSON), ...]} for the figures on `frames` only (what
    `iou_merge` compares predictions with). A figure whose object is missing has classTitle None."""
    out: dict[int, list[tuple[str | None, dict[str, Any]]]] = {}
    for frame, fig, title in conn.execute(
            "SELECT f.frame, f.fig, json_extract(o.obj, '$.classTitle') FROM video_figures f "
            "LEFT JOIN video_objects o ON o.video_id = f.video_id AND o.key = f.object_key "
            "WHERE f.video_id = ? AND f.frame IN (SELECT value FROM json_each(?)) ORDER BY f.frame, f.id",
            (video_id, _frames_param(frames))):
        out.setdefault(frame, []).append((title, json.loads(fig)))
    return out


def delete_frames(conn: sqlite3.Connection, video_id: int, frames: Iterable[int]) -> bool:
    """Remove the figures on `frames`, and the objects left with no figure by that (objects that had none stay);
    True when anything was removed."""
    param = _frames_param(frames)
    # no DISTINCT in SQL: with it SQLite walks the object-key index over the whole video instead of the frames'
    lost = sorted({r[0] for r in conn.execute(
        "SELECT object_key FROM video_figures WHERE video_id = ? AND frame IN (SELECT value FROM json_each(?))",
        (video_id, param))})
    if not lost:
        head = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
        return bool(head) and _drop_plain_frames(conn, video_id, json.loads(head[0]), param)
    conn.execute("DELETE FROM video_figures WHERE video_id = ? AND frame IN (SELECT value FROM json_each(?))",
                 (video_id, param))
    gone = conn.execute(
        "DELETE FROM video_objects WHERE video_id = ? AND key IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
        "(SELECT 1 FROM video_figures f WHERE f.video_id = video_objects.video_id AND f.object_key = "
        "video_objects.key)", (video_id, _dumps(lost))).rowcount
    conn.execute("UPDATE video_annotations SET objects_count = objects_count - ?, updated_at = ? WHERE video_id = ?",
                 (gone, _now(), video_id))
    head = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
    _drop_plain_frames(conn, video_id, json.loads(head[0]), param)
    return True


def _drop_plain_frames(conn: sqlite3.Connection, video_id: int, head: dict[str, Any], param: str) -> bool:
    """The head's own frame entries on the deleted frames go too (as the frames did in the one-row format)."""
    drop = set(json.loads(param))
    frames = head.get("frames") or []
    kept = [fr for fr in frames if fr.get("index") not in drop]
    if len(kept) == len(frames):
        return False
    head["frames"] = kept
    conn.execute("UPDATE video_annotations SET ann = ?, updated_at = ? WHERE video_id = ?",
                 (_dumps(head), _now(), video_id))
    return True
