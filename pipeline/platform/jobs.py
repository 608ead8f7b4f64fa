"""The upload jobs' records: one row per job (`upload_jobs`), one per item it has written (`upload_job_items`),
and one per track of a tracked video it has written (`upload_job_tracks`: which video object the track is, so
that the track's later frames, in a later group or a resumed run, join the same object).

An item's row is written in the same transaction as the item's upload, so a job resumed after a crash skips
exactly what is on the platform (`pipeline.stages.upload`). The tables belong to this module, which creates them
on first use (`ensure_tables`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from typing import Any

__all__ = ["JOB_TABLES", "JobRow", "TrackRow", "count_done", "done_keys", "ensure_tables", "first_target",
           "get_job", "get_tracks", "insert_job", "list_jobs", "put_tracks", "record_done"]

JOB_TABLES = """
CREATE TABLE IF NOT EXISTS upload_jobs (
    id                TEXT PRIMARY KEY,
    mode              TEXT NOT NULL,
    source            TEXT NOT NULL,
    target_project_id INTEGER,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    items_done        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS upload_job_items (
    job_id    TEXT NOT NULL REFERENCES upload_jobs(id) ON DELETE CASCADE,
    item_key  TEXT NOT NULL,
    target_id INTEGER,
    done_at   REAL NOT NULL,
    PRIMARY KEY (job_id, item_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upload_job_tracks (
    job_id      TEXT NOT NULL REFERENCES upload_jobs(id) ON DELETE CASCADE,
    video_id    INTEGER NOT NULL,
    track_id    INTEGER NOT NULL,
    object_key  TEXT NOT NULL,              -- the video object the track's figures go to
    score_sum   REAL NOT NULL,              -- over its figures so far: the object's confidence is the mean
    figures     INTEGER NOT NULL,
    first_frame INTEGER NOT NULL,
    last_frame  INTEGER NOT NULL,
    PRIMARY KEY (job_id, video_id, track_id)
) WITHOUT ROWID
"""

JobRow = sqlite3.Row


@dataclass
class TrackRow:
    """A track's video object and its figures so far (scores summed, frames first..last)."""

    object_key: str
    score_sum: float = 0.0
    figures: int = 0
    first_frame: int = 0
    last_frame: int = 0


def ensure_tables(store: Any) -> None:
    """Create the job tables if this data dir has none yet."""
    with store.write() as conn:
        for statement in JOB_TABLES.split(";\n"):
            if statement.strip():
                conn.execute(statement)


def get_job(conn: sqlite3.Connection, job_id: str) -> JobRow | None:
    return conn.execute("SELECT * FROM upload_jobs WHERE id = ?", (job_id,)).fetchone()


def list_jobs(conn: sqlite3.Connection) -> list[JobRow]:
    return conn.execute("SELECT * FROM upload_jobs ORDER BY created_at, id").fetchall()


def insert_job(conn: sqlite3.Connection, job_id: str, mode: str, source: str, target_project_id: int | None) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO upload_jobs (id, mode, source, target_project_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, mode, source, target_project_id, now, now),
    )


def done_keys(conn: sqlite3.Connection, job_id: str) -> set[str]:
    """The keys of the items job `job_id` has written."""
    return {r[0] for r in conn.execute("SELECT item_key FROM upload_job_items WHERE job_id = ?", (job_id,))}


def first_target(conn: sqlite3.Connection, job_id: str) -> int | None:
    """The target id of some item the job wrote (a video job's video), None before its first."""
    row = conn.execute("SELECT target_id FROM upload_job_items WHERE job_id = ? LIMIT 1", (job_id,)).fetchone()
    return row[0] if row else None


def record_done(conn: sqlite3.Connection, job_id: str, done: Iterable[tuple[str, int | None]]) -> int:
    """Record (item key, target id) pairs as done by the job, inside the caller's transaction; returns how many."""
    now = time.time()
    rows = [(job_id, key, target, now) for key, target in done]
    conn.executemany("INSERT INTO upload_job_items (job_id, item_key, target_id, done_at) VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def count_done(conn: sqlite3.Connection, job_id: str, n: int) -> None:
    """Add `n` to the job's count of items done (in the transaction that recorded them)."""
    if n:
        conn.execute("UPDATE upload_jobs SET updated_at = ?, items_done = items_done + ? WHERE id = ?",
                     (time.time(), n, job_id))


def get_tracks(conn: sqlite3.Connection, job_id: str, video_id: int, track_ids: Iterable[int]) -> dict[int, TrackRow]:
    """{track id: its row} for the `track_ids` of video `video_id` that job `job_id` has written before."""
    ids = json.dumps(sorted({int(t) for t in track_ids}))
    rows = conn.execute(
        "SELECT track_id, object_key, score_sum, figures, first_frame, last_frame FROM upload_job_tracks "
        "WHERE job_id = ? AND video_id = ? AND track_id IN (SELECT value FROM json_each(?))", (job_id, video_id, ids))
    return {r[0]: TrackRow(*r[1:]) for r in rows}


def put_tracks(conn: sqlite3.Connection, job_id: str, video_id: int, tracks: Mapping[int, TrackRow]) -> None:
    """Insert or update the rows of `tracks`, inside the caller's transaction (with the figures they count)."""
    conn.executemany(
        "INSERT INTO upload_job_tracks (job_id, video_id, track_id, object_key, score_sum, figures, first_frame, "
        "last_frame) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, video_id, track_id) DO UPDATE SET "
        "object_key = excluded.object_key, score_sum = excluded.score_sum, figures = excluded.figures, "
        "first_frame = excluded.first_frame, last_frame = excluded.last_frame",
        [(job_id, video_id, int(t), *astuple(row)) for t, row in tracks.items()])
