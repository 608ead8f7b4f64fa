"""The upload thread: takes predictions from the collector, writes them (platform target, Parquet / COCO files),
then hands them to the reader. The replicas never wait for the database."""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.exceptions import DiskFullError, UploadError
from pipeline.prediction import Item, Prediction
from pipeline.stages.upload.outputs import Outputs
from pipeline.stages.upload.target import Target

log = logging.getLogger(__name__)

__all__ = ["MAX_GROUP", "UploadStage", "output_disk_full"]

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's disk quota is spent


def output_disk_full(writer: Any, exc: BaseException, job_id: str | None) -> DiskFullError | None:
    """A `DiskFullError` naming the output `writer` was writing when `exc` came (None: another failure)."""
    if not (isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS):
        return None
    path = getattr(writer, "path", None) or type(writer).__name__
    again = f" with job_id={job_id!r}" if job_id else ""
    return DiskFullError(
        f"the disk holding the output {path} is full ({exc.strerror or exc}): free space on it, or write the "
        f"output elsewhere, then run again{again}: the items already written are skipped"
    )


# Items written per transaction at most: large enough that SQLite's per-commit cost (an fsync of the WAL) is
# spread over many items, small enough that one transaction holds the write lock for well under a second.
MAX_GROUP = 256


class UploadStage:
    """The upload thread: takes predictions from the collector, writes them, then hands them to the reader."""

    def __init__(self, target: Target | None, outputs: Outputs | None = None):
        self.target = target
        self.outputs = outputs
        self.writers: list[Any] = outputs.writers if outputs is not None else []
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._emit: Callable[[list[Prediction]], None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._queued = 0  # predictions put and not yet written (backpressure counts predictions, not groups)
        self._lock = threading.Lock()
        # the job's run record: its number once started; a total counted before the start waits here
        self._run: int | None = None
        self._run_total: int | None = None
        self._run_lock = threading.Lock()

    # -- resume -----------------------------------------------------------------------------------------------
    @property
    def done_keys(self) -> set[str]:
        """The items the job did before (an upload job: the platform's record; a file job: its parts')."""
        if self.target is not None:
            return self.target.done_keys
        return self.outputs.done_keys if self.outputs is not None else set()

    def filter_done(self, items: Iterator[Item], keep_frames: bool = False) -> Iterator[Item]:
        """The items a resumed job has not written yet. `keep_frames`: video frames all pass (a tracked video is
        tracked again from its start; the tracking stage drops the done frames' predictions after tracking)."""
        done = self.done_keys
        for item in items:
            if item.key not in done or (keep_frames and item.frame_idx is not None):
                yield item

    def skipped_count(self) -> int:
        return len(self.done_keys)

    def context(self) -> dict[str, Any]:
        ctx = self.target.context() if self.target is not None else {}
        if self.outputs is not None:
            ctx.update(self.outputs.context())
        return ctx

    def backlog(self) -> int:
        """Predictions waiting to be written."""
        return self._queued

    # -- the job's run record (start or resume -> done / stopped / failed) ------------------------------------
    def begin_run(self) -> None:
        """Record this run of the upload job as running (nothing without a platform target)."""
        if self.target is None:
            return
        with self._run_lock:
            self._run = self.target.start_run(self._run_total)

    def set_total(self, total: int) -> None:
        """The run's item count (input minus skipped), from the session's counting thread."""
        if self.target is None:
            return
        with self._run_lock:
            self._run_total = total
            if self._run is not None:
                self.target.set_run_total(self._run, total)

    def end_run(self, state: str, message: str = "") -> None:
        """Record how the run ended. Never raises: a database too broken to take it must not hide the run's own
        outcome (the viewer then shows the run as interrupted)."""
        if self.target is None or self._run is None:
            return
        try:
            with self._run_lock:
                self.target.finish_run(self._run, state, message)
        except Exception:
            log.exception("recording the end of upload job %s", self.target.job_id)

    # -- the thread -------------------------------------------------------------------------------------------
    def start(self, emit: Callable[[list[Prediction]], None]) -> None:
        self._emit = emit
        self._thread = threading.Thread(target=self._loop, name="pipeline-upload", daemon=True)
        self._thread.start()

    def _failure(self) -> UploadError:
        """The error that ends the run once the upload failed (a full disk stays a `DiskFullError`)."""
        exc = self._error
        if isinstance(exc, DiskFullError):
            return DiskFullError(str(exc))
        return UploadError(f"the upload failed: {type(exc).__name__}: {exc}")

    def put(self, preds: list[Prediction]) -> None:
        if self._error is not None:
            raise self._failure() from self._error
        with self._lock:
            self._queued += len(preds)
        self._queue.put(preds)

    def _loop(self) -> None:
        stop = False
        while not stop:
            group = self._queue.get()
            if group is None:
                break
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group = group + more
            if self._error is not None:  # the run is ending: what is still queued is not written (not even
                # tried: a locked database would make each group wait its 30 s) and not reported as failed
                # items; the resumed job does them
                with self._lock:
                    self._queued -= len(group)
                continue
            try:
                if self.target is not None:
                    group = self.target.write(group)
                for w in self.writers:
                    self._write(w, group)
            except BaseException as exc:  # the database or a file is unusable: the run must end
                log.error("upload failed: %s: %s", type(exc).__name__, exc)
                self._error = exc
                with self._lock:
                    self._queued -= len(group)
                continue  # the group's transaction was rolled back: not written, not its items' errors
            with self._lock:
                self._queued -= len(group)
            self._emit(group)

    def _job_id(self) -> str | None:
        if self.outputs is not None:
            return self.outputs.job_id
        return getattr(self.target, "job_id", None)

    def _write(self, w: Any, group: list[Prediction]) -> None:
        try:
            w.add(group)
            if self.target is not None and hasattr(w, "flush"):
                # a job's done items are skipped on resume: their rows must be on disk once committed
                # (a crash between the two loses at most this group's rows)
                w.flush()
        except OSError as exc:
            full = output_disk_full(w, exc, self._job_id())
            if full is None:
                raise
            raise full from exc

    def close(self, abort: bool = False, complete: bool = True) -> None:
        """Write everything queued, close the files (COCO and YOLO are assembled now); raise if the upload
        failed. `complete`: every item of the run was processed (not stopped), so a file job's working folders
        can go."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        for w in self.writers:
            try:
                w.close()  # the last part is written; COCO and YOLO are assembled from the parts
            except OSError as exc:
                full = output_disk_full(w, exc, self._job_id())
                if full is None:
                    raise
                self._error = self._error or full
        if self.outputs is not None:
            self.outputs.finish(complete and not abort and self._error is None)
        if self._error is not None and not abort:
            raise self._failure() from self._error
