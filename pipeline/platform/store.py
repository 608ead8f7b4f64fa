"""Storage of the embedded platform: one SQLite database for records and a content-addressed blob directory.

    <data_dir>/platform.db                          projects, datasets, images, videos, annotations
    <data_dir>/blobs/<hash[:2]>/<sha256>.<ext>      the image and video files, written atomically

Concurrency: every thread of every process gets its own connection (WAL journal, so readers never wait for the
writer). Connections are in autocommit mode and every write runs in `store.write()`, an explicit
`BEGIN IMMEDIATE ... COMMIT` that takes the database's write lock at the start: a read-modify-write (merging a
class into a meta) cannot interleave with another process's, and a multi-row change is all or nothing. A writer
that finds the lock taken waits up to `BUSY_TIMEOUT_S`.

Other modules compose operations inside one transaction by taking the connection `write()` yields:

    with store.write() as conn:
        ops.set_annotation(conn, image_id, ann_json)
        jobs.record_done(conn, job_id, rows)   # the upload jobs' own tables (pipeline.platform.jobs)

Schema changes: bump `SCHEMA_VERSION` and add a step to `_MIGRATIONS`; a module that owns its own tables (the
upload jobs) creates them with `CREATE TABLE IF NOT EXISTS` in a `store.write()` of its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from pipeline.exceptions import DiskFullError, FormatError, InvalidArgumentError, PipelineError
from pipeline.platform.infos import blob_path

__all__ = ["BUSY_TIMEOUT_S", "SCHEMA_VERSION", "Store", "disk_full", "now"]

P = TypeVar("P")

SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 30.0  # a long import holds the write lock for seconds; other writers wait rather than fail
_COPY_CHUNK = 1 << 20  # 1 MiB: hashing and copying large videos without holding them in memory
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's disk quota is spent
# Below this many free bytes, an I/O error of SQLite's is taken for a full disk: growing its WAL index (-shm) on a
# full file system fails as SQLITE_IOERR_SHMSIZE ("disk I/O error"), not as SQLITE_FULL.
_NEARLY_FULL = 1 << 20

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- AUTOINCREMENT: ids of deleted items are never reused
    name        TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL CHECK (type IN ('images', 'videos')),
    description TEXT NOT NULL DEFAULT '',
    meta        TEXT NOT NULL,                       -- ProjectMeta JSON
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    parent_id   INTEGER REFERENCES datasets(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
-- NULLs are distinct in a UNIQUE constraint: the expression makes two top-level datasets of one name collide
CREATE UNIQUE INDEX IF NOT EXISTS datasets_name ON datasets (project_id, COALESCE(parent_id, 0), name);
CREATE TABLE IF NOT EXISTS images (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id  INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    ext         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (dataset_id, name)
);
CREATE INDEX IF NOT EXISTS images_project ON images (project_id, id);
CREATE TABLE IF NOT EXISTS annotations (
    image_id      INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    ann           TEXT NOT NULL,                     -- Annotation JSON, compact
    objects_count INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id   INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    project_id   INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    frames_count INTEGER NOT NULL,
    fps          REAL NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    hash         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    ext          TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (dataset_id, name)
);
CREATE INDEX IF NOT EXISTS videos_project ON videos (project_id, id);
CREATE TABLE IF NOT EXISTS video_annotations (
    video_id      INTEGER PRIMARY KEY REFERENCES videos(id) ON DELETE CASCADE,
    ann           TEXT NOT NULL,                     -- VideoAnnotation JSON, compact
    objects_count INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);
"""

_SCHEMA_V2 = """
-- keyset pagination of one dataset (image.iterate(dataset_id=...)) walks this index instead of sorting
CREATE INDEX IF NOT EXISTS images_dataset ON images (dataset_id, id);
CREATE INDEX IF NOT EXISTS videos_dataset ON videos (dataset_id, id);
"""

_SCHEMA_V3 = """
-- a video annotation's objects and figures in rows of their own (pipeline/platform/video_rows.py): an upload
-- write costs O(its frames), not O(the annotation); video_annotations.ann keeps the rest (the "head")
CREATE TABLE IF NOT EXISTS video_objects (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,   -- the order of the annotation's "objects"
    video_id  INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    obj       TEXT NOT NULL,                       -- the object's JSON
    UNIQUE (video_id, key)
);
CREATE TABLE IF NOT EXISTS video_figures (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of the figures on a frame
    video_id    INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    frame       INTEGER NOT NULL,
    object_key  TEXT NOT NULL,
    fig         TEXT NOT NULL                       -- the figure's JSON
);
CREATE INDEX IF NOT EXISTS video_figures_frame ON video_figures (video_id, frame);
CREATE INDEX IF NOT EXISTS video_figures_object ON video_figures (video_id, object_key);
-- version 2's one-row annotations split: objects (a keyless one gets a key, computed once per object), ...
WITH src AS MATERIALIZED (
    SELECT a.video_id AS video_id, o.id AS oid, o.value AS obj,
           COALESCE(json_extract(o.value, '$.key'), lower(hex(randomblob(16)))) AS k
    FROM video_annotations a, json_each(a.ann, '$.objects') o
)
INSERT INTO video_objects (video_id, key, obj)
    SELECT video_id, k, CASE WHEN json_extract(obj, '$.key') IS NULL THEN json_set(obj, '$.key', k) ELSE obj END
    FROM src ORDER BY video_id, oid;
-- ... figures, by frame index then their order ...
INSERT INTO video_figures (video_id, frame, object_key, fig)
    SELECT a.video_id, json_extract(f.value, '$.index'), json_extract(g.value, '$.objectKey'), g.value
    FROM video_annotations a, json_each(a.ann, '$.frames') f, json_each(f.value, '$.figures') g
    ORDER BY a.video_id, json_extract(f.value, '$.index'), f.id, g.id;
-- ... and the head: no objects; only the frames with keys of their own, or none of their figures, stay listed
UPDATE video_annotations SET ann = json_set(json_remove(ann, '$.objects'), '$.frames', json((
    SELECT json_group_array(json(json_remove(f.value, '$.figures')))
    FROM json_each(video_annotations.ann, '$.frames') f
    WHERE (SELECT COUNT(*) FROM json_each(f.value)) > 2 OR COALESCE(json_array_length(f.value, '$.figures'), 0) = 0
)));
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3}  # version -> the SQL that brings version - 1 to it


def now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z, as records store it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Store:
    """The database and blob directory under `data_dir`. Cheap to create: nothing is opened or created until the
    first query. Safe to share between threads (a connection per thread) and processes (SQLite locking)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "platform.db"
        self.blobs_dir = self.data_dir / "blobs"
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._initialized = False
        self._blobs_root: Path | None = None

    # ------------------------------------------------------------------------------------------- connections

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened, and the schema created, on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = self._open()
        self._local.conn, self._local.pid = conn, os.getpid()  # pid: a forked child must not reuse the parent's
        self._local.depth = 0
        self._local.reading = False
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a file system without shared memory: still correct, just slower
                conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across crashes of the process
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.db_path) from None
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise self._full(exc) from None
            raise PipelineError(f"cannot open the platform database {self.db_path}: {exc}") from None
        with self._init_lock:
            if not self._initialized:
                self._migrate(conn)
                self._initialized = True
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                version = row[0] or 0
                if version > SCHEMA_VERSION:
                    raise PipelineError(
                        f"the platform database {self.db_path} has schema version {version}; this version of the "
                        f"package reads up to {SCHEMA_VERSION}: upgrade the package"
                    )
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[v].split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (v,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.db_path) from None

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's objects are collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---------------------------------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: `BEGIN IMMEDIATE` (waits for the write lock), COMMIT on success, ROLLBACK on any
        error. Nested use on one thread becomes a SAVEPOINT of the outer transaction. Yields the connection."""
        conn = self.connection()
        depth = self._local.depth
        if self._local.reading:
            # a deferred read transaction cannot safely become a write one (another process may have written
            # since its snapshot): that is a bug in the caller, said plainly
            raise PipelineError("store.write() inside store.read(): open the write transaction first")
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
        except sqlite3.Error as exc:
            raise _translate(exc, self.db_path) from None
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            self._local.depth = depth
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK" if depth == 0 else f"ROLLBACK TO sp{depth}")
                if depth:
                    conn.execute(f"RELEASE sp{depth}")
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self.db_path) from None
            raise
        self._local.depth = depth
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise _translate(exc, self.db_path) from None

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read: several queries see one snapshot (a deferred transaction, which never blocks a writer in WAL
        mode). Inside `write()` it simply joins the write transaction."""
        conn = self.connection()
        if self._local.depth:
            yield conn
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _translate(exc, self.db_path) from None
        self._local.depth, self._local.reading = 1, True
        try:
            yield conn
        except sqlite3.Error as exc:
            raise _translate(exc, self.db_path) from None
        finally:
            self._local.depth, self._local.reading = 0, False
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------------ blobs

    @property
    def blobs_root(self) -> Path:
        """The blob directory as an absolute, resolved path (resolved once: records carry it in their `path`)."""
        if self._blobs_root is None:
            self._blobs_root = self.blobs_dir.resolve()
        return self._blobs_root

    def blob_path(self, sha256: str, ext: str) -> Path:
        """Absolute path of the blob with content hash `sha256` and extension `ext`."""
        return blob_path(self.blobs_root, sha256, ext)

    def stage_file(self, src: BinaryIO) -> tuple[Path, str, int]:
        """Copy a readable binary stream to a temporary file in the blob directory, hashing it on the way.
        Returns (temporary path, sha256 hex, size in bytes); `commit_blob` moves it into place."""
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.blobs_dir, prefix=".incoming-")
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise self._full(exc) from None
            raise
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a partial copy never stays (and is never referenced: it has no content address)
            if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
                raise self._full(exc) from None
            raise
        return Path(tmp), digest.hexdigest(), size

    def commit_blob(self, tmp: Path, sha256: str, ext: str) -> Path:
        """Move a staged file to its content address (atomic `os.replace`; identical content may already be there,
        which is fine: same hash, same bytes; that file's time is then refreshed). Returns the blob path."""
        final = self.blob_path(sha256, ext)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)  # a new directory needs a block too
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise self._full(exc) from None
            raise
        try:
            os.utime(final)  # there already: refreshed, so that garbage collection leaves it (pipeline.platform.gc)
            os.unlink(tmp)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; workers of another user may read the blobs
            os.replace(tmp, final)
        return final

    def _full(self, exc: BaseException) -> DiskFullError:
        return disk_full(self.data_dir, exc)

    def discard(self, tmp: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def store_blob(self, src: BinaryIO, probe: Callable[[Path], P]) -> tuple[str, int, P]:
        """Stage a stream, check it with `probe(tmp_path)` (which returns something with an `ext`, or raises),
        and commit it under that extension: (sha256, size, what probe returned). Nothing is left behind when the
        probe or the copy fails."""
        tmp, sha256, size = self.stage_file(src)
        try:
            found = probe(tmp)
            self.commit_blob(tmp, sha256, found.ext)
        except BaseException:
            self.discard(tmp)
            raise
        return sha256, size, found


def disk_full(data_dir: Path, exc: BaseException) -> DiskFullError:
    """The error of a write that found the disk of `data_dir` full: which disk, and what to do."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return DiskFullError(
        f"the disk holding the platform data dir {data_dir} is full ({reason}): nothing more can be stored there. "
        f"Free space on it (see `df -h {data_dir}`) or move the data dir to a bigger disk (--data-dir / "
        "$PIPELINE_HOME), then run the same upload again with its job_id: what was committed stays, and the job "
        "resumes after it"
    )


def _is_full(exc: sqlite3.Error, db_path: Path) -> bool:
    """SQLITE_FULL, or an I/O error while the file system of the database has (almost) no space left."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    if (code is not None and (code & 0xFF) == sqlite3.SQLITE_IOERR) or "disk I/O error" in str(exc):
        try:
            st = os.statvfs(db_path.parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _NEARLY_FULL
    return False


def _translate(exc: sqlite3.Error, db_path: Path) -> PipelineError:
    """A sqlite3 error as one of ours: the user never sees a raw sqlite3 exception."""
    text = str(exc)
    if _is_full(exc, db_path):
        return disk_full(db_path.parent, exc)
    if isinstance(exc, sqlite3.IntegrityError):  # a race the API's own checks could not see, e.g. a name taken
        return InvalidArgumentError(f"the platform refused the change: {text}")
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return FormatError(f"{db_path} is not a readable platform database ({text}); move it away to start afresh")
    if "locked" in text or "busy" in text:
        return PipelineError(
            f"the platform database {db_path} stayed locked by another writer for {BUSY_TIMEOUT_S:.0f} s ({text})"
        )
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        folder = db_path.parent
        if not os.access(folder, os.W_OK) or _read_only_mount(folder):
            return PipelineError(
                f"platform database {db_path}: {text}: its folder is not writable (a read-only file system or "
                "permissions). SQLite writes its journal files next to the database even to read it (WAL mode): "
                "give the data dir a writable place, or copy it to one"
            )
    return PipelineError(f"platform database {db_path}: {text}")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def translate(exc: sqlite3.Error, store: Store) -> PipelineError:
    """`_translate` for the other platform modules."""
    return _translate(exc, store.db_path)
