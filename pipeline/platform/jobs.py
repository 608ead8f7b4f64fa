"""The upload jobs' records, the only place that writes them:

    upload_jobs        one row per job (mode, source, target project, items done)
    upload_job_items   one row per item the job has written
    upload_job_errors  one row per item of the job that failed, with its error (loading, inference or the upload
                       itself); an item that a later resume uploads is done, not failed (`upload_job_items` wins)
    upload_job_runs    one row per run of the job (its start, then each resume): started, ended, state, how many
                       items it was to process and how many earlier runs had done (skipped)
    upload_job_tracks  one row per track of a tracked video the job has written: which video object the track
                       is, so that its later frames (a later group, a resumed run) join the same object

An item's row, done or failed, is written in the same transaction as the item's upload, so a job resumed after a
crash skips exactly what is on the platform (`pipeline.stages.upload`) and its error log matches it. The tables
belong to this module, which creates them on first use (`ensure_tables`, idempotent: a data dir made by a version
without the last two gains them at its next upload). The viewer reads them (`browse`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from typing import Any

from pipeline.exceptions import InvalidArgumentError

__all__ = ["JOB_LOG_NAMES", "JOB_TABLES", "RUN_STATES", "JobRow", "count_done", "done_keys", "ensure_tables",
           "finish_run", "first_target", "get_job", "insert_job", "job_identity", "list_jobs", "record_done", "record_errors",
           "set_run_total", "start_run", "TrackRow", "get_tracks", "put_tracks"]

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
CREATE TABLE IF NOT EXISTS upload_job_errors (
    job_id   TEXT NOT NULL REFERENCES upload_jobs(id) ON DELETE CASCADE,
    item_key TEXT NOT NULL,              -- Item.key: "image:<id>", "video:<id>:<frame>", "file:<path>", "url:..."
    error    TEXT NOT NULL,
    at       REAL NOT NULL,              -- epoch seconds, as upload_jobs.created_at
    PRIMARY KEY (job_id, item_key)
) WITHOUT ROWID;
-- the viewer's "has errors" filter looks an image's key up across all jobs
CREATE INDEX IF NOT EXISTS upload_job_errors_key ON upload_job_errors (item_key);
CREATE TABLE IF NOT EXISTS upload_job_runs (
    job_id        TEXT NOT NULL REFERENCES upload_jobs(id) ON DELETE CASCADE,
    run           INTEGER NOT NULL,      -- 1 for the first start, 2 for the first resume, ...
    started_at    REAL NOT NULL,
    ended_at      REAL,                  -- NULL while running, or when its process died
    state         TEXT NOT NULL CHECK (state IN ('running', 'done', 'stopped', 'failed')),
    items_total   INTEGER,               -- items this run processes (input minus skipped), once counted
    items_skipped INTEGER NOT NULL DEFAULT 0,  -- items earlier runs had done, skipped by this one
    message       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, run)
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
) WITHOUT ROWID;
-- what a job's input is (the run's `source_identity`): a job id given again on another input is refused
CREATE TABLE IF NOT EXISTS upload_job_sources (
    job_id   TEXT PRIMARY KEY REFERENCES upload_jobs(id) ON DELETE CASCADE,
    identity TEXT NOT NULL
) WITHOUT ROWID
"""

JOB_LOG_NAMES = ("upload_job_errors", "upload_job_errors_key", "upload_job_runs")
"""The tables and index of the error and run log (a data dir of an older version may lack them)."""
RUN_STATES = ("running", "done", "stopped", "failed")

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


def insert_job(conn: sqlite3.Connection, job_id: str, mode: str, source: str, target_project_id: int | None,
               identity: str | None = None) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO upload_jobs (id, mode, source, target_project_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, mode, source, target_project_id, now, now),
    )
    if identity is not None:
        conn.execute("INSERT INTO upload_job_sources (job_id, identity) VALUES (?, ?)", (job_id, identity))


def job_identity(conn: sqlite3.Connection, job_id: str) -> str | None:
    """The input identity job `job_id` recorded when it started (None: none recorded, e.g. arrays)."""
    row = conn.execute("SELECT identity FROM upload_job_sources WHERE job_id = ?", (job_id,)).fetchone()
    return row[0] if row else None


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


def record_errors(conn: sqlite3.Connection, job_id: str, errors: Iterable[tuple[str, str]],
                  at: float | None = None) -> int:
    """Record failed items of the job, (item key, error) pairs, inside the caller's transaction (the one that
    records the same group's done items); an item that failed before gets the new error. Returns how many."""
    stamp = time.time() if at is None else float(at)
    rows = [(job_id, str(key), str(error), stamp) for key, error in errors]
    conn.executemany(
        "INSERT INTO upload_job_errors (job_id, item_key, error, at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (job_id, item_key) DO UPDATE SET error = excluded.error, at = excluded.at",
        rows,
    )
    if rows:  # the job is alive: the viewer tells a running job from a dead one by this stamp
        conn.execute("UPDATE upload_jobs SET updated_at = ? WHERE id = ?", (stamp, job_id))
    return len(rows)


def start_run(conn: sqlite3.Connection, job_id: str, skipped: int, total: int | None = None) -> int:
    """A new run of the job (its first start or a resume), state running; returns its number (1, 2, ...)."""
    row = conn.execute("SELECT COALESCE(MAX(run), 0) FROM upload_job_runs WHERE job_id = ?", (job_id,)).fetchone()
    run = int(row[0]) + 1
    conn.execute(
        "INSERT INTO upload_job_runs (job_id, run, started_at, state, items_total, items_skipped) "
        "VALUES (?, ?, ?, 'running', ?, ?)",
        (job_id, run, time.time(), total, int(skipped)),
    )
    return run


def set_run_total(conn: sqlite3.Connection, job_id: str, run: int, total: int) -> None:
    """How many items the run processes, once the input is counted (the count runs beside the run)."""
    conn.execute("UPDATE upload_job_runs SET items_total = ? WHERE job_id = ? AND run = ?", (int(total), job_id, run))


def finish_run(conn: sqlite3.Connection, job_id: str, run: int, state: str, message: str = "") -> None:
    """Mark the run ended: state "done", "stopped" or "failed" (with the error as `message`)."""
    if state not in RUN_STATES[1:]:
        raise InvalidArgumentError(f"a run ends as one of {RUN_STATES[1:]}; got {state!r}")
    conn.execute(
        "UPDATE upload_job_runs SET ended_at = ?, state = ?, message = ? WHERE job_id = ? AND run = ?",
        (time.time(), state, message, job_id, run),
    )


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
