"""Stage 5, upload: predictions written back to the platform (create / append / replace / iou_merge) and to
Parquet / COCO files, in their own thread so the replicas never wait for the database.

Each item's upload is atomic: its image, its annotation and its job-progress row are written in one SQLite
transaction (a SAVEPOINT inside the transaction of its group; a group is whatever arrived since the last write,
up to `MAX_GROUP` items). A run killed at any moment leaves every item either fully uploaded and recorded, or
untouched; re-running with the same job id skips the recorded items, so nothing is lost or done twice.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.stages.args import DEFAULT_IOU_MERGE_THRESHOLD, PredictArgs
from pipeline.stages.upload.merge import merge_annotation
from pipeline.exceptions import InvalidArgumentError, NotFoundError, PipelineError, UploadError
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.source import Item, SourcePlan
from workers.decode import ItemError

log = logging.getLogger(__name__)

__all__ = ["make_uploader", "UploadStage", "new_job_id"]

# Items written per transaction at most: large enough that SQLite's per-commit cost (an fsync of the WAL) is
# spread over many items, small enough that one transaction holds the write lock for well under a second.
MAX_GROUP = 256
DEFAULT_DATASET = "ds0"  # where items without a dataset of their own go (Supervisely's default dataset name)

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
) WITHOUT ROWID
"""


def new_job_id() -> str:
    """A readable, unique job id: date, time and random hex."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def ensure_job_tables(store: Any) -> None:
    with store.write() as conn:
        for statement in JOB_TABLES.split(";\n"):
            if statement.strip():
                conn.execute(statement)


class PlatformTarget:
    """Writes predictions to the platform under one mode, recording job progress."""

    def __init__(self, args: PredictArgs, plan: SourcePlan, platform: Any, model: Any):
        from pipeline.platform import ops

        self.ops = ops
        self.mode = args.upload
        self.platform = platform
        self.store = platform.store
        self.plan = plan
        self.threshold = float(args.settings.get("iou_merge_threshold", DEFAULT_IOU_MERGE_THRESHOLD))
        self.shape = "bitmap" if model.spec.task_type != "detection" else "rectangle"
        self.project_id: int | None = None
        self.project_name: str | None = None
        self.renamed_from: str | None = None
        self._datasets: dict[tuple[str, ...], int] = {}
        self._names: dict[int, set[str]] = {}
        self.resumed = False
        ensure_job_tables(self.store)
        self.job_id = args.job_id or new_job_id()
        self._prepare_job()
        self.done_keys = self._load_done_keys()

    # -- before any work --------------------------------------------------------------------------------------
    def _prepare_job(self) -> None:
        with self.store.write() as conn:
            row = conn.execute("SELECT * FROM upload_jobs WHERE id = ?", (self.job_id,)).fetchone()
            if row is not None:
                if row["mode"] != self.mode:
                    raise InvalidArgumentError(
                        f"job {self.job_id!r} was a {row['mode']!r} upload; it cannot resume as {self.mode!r}"
                    )
                self.resumed = True
                self.project_id = row["target_project_id"]
                if self.mode == "create":
                    try:
                        self.project_name = self.ops.get_project_row(conn, self.project_id)["name"]
                    except NotFoundError:
                        raise InvalidArgumentError(
                            f"job {self.job_id!r} created project {self.project_id}, which no longer exists; "
                            "start a new job (without job_id)"
                        ) from None
                return
            if self.mode == "create":
                wanted = self.plan.name or "Predictions"
                name = self.ops.free_project_name(conn, wanted)
                if name != wanted:
                    self.renamed_from = wanted
                project_type = "videos" if self.plan.project_type == "videos" else "images"
                self.project_id = self.ops.insert_project(conn, name, project_type)
                self.project_name = name
            conn.execute(
                "INSERT INTO upload_jobs (id, mode, source, target_project_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.job_id, self.mode, self.plan.description, self.project_id, time.time(), time.time()),
            )

    def _load_done_keys(self) -> set[str]:
        if not self.resumed:
            return set()
        with self.store.read() as conn:
            rows = conn.execute("SELECT item_key FROM upload_job_items WHERE job_id = ?", (self.job_id,))
            return {r[0] for r in rows}

    def announce(self) -> str:
        what = {"create": f"into new project {self.project_id} ({self.project_name!r})",
                "append": "appending to", "replace": "replacing the annotations of",
                "iou_merge": f"merging (IoU >= {self.threshold:g}) into"}[self.mode]
        if self.mode != "create":
            what += f" {self.plan.description}"
        text = f"upload job {self.job_id}: {self.mode} {what}"
        if self.renamed_from:
            text += f" (a project named {self.renamed_from!r} exists already, so it is named {self.project_name!r})"
        if self.resumed:
            text += f"; resuming, {len(self.done_keys)} item(s) already done are skipped"
        else:
            text += f"; re-run with job_id={self.job_id!r} to resume after a crash"
        return text

    # -- writing ----------------------------------------------------------------------------------------------
    def _dataset_for(self, conn: Any, path: tuple[str, ...]) -> int:
        """The target dataset of a source dataset path, created (with its parents) in a SAVEPOINT of its own; the
        cache learns new ids only once that savepoint is released, so a rollback never leaves a stale id."""
        path = path or (DEFAULT_DATASET,)
        if path in self._datasets:
            return self._datasets[path]
        found: dict[tuple[str, ...], int] = {}
        with self.store.write():
            parent = None
            for depth in range(1, len(path) + 1):
                sub = path[:depth]
                ds_id = self._datasets.get(sub)
                if ds_id is None:
                    row = conn.execute(
                        "SELECT id FROM datasets WHERE project_id = ? AND COALESCE(parent_id, 0) = ? AND name = ?",
                        (self.project_id, parent or 0, sub[-1]),
                    ).fetchone()
                    ds_id = row[0] if row else self.ops.insert_dataset(conn, self.project_id, sub[-1], parent)
                    found[sub] = ds_id
                parent = ds_id
        self._datasets.update(found)
        return self._datasets[path]

    def _free_item_name(self, conn: Any, ds_id: int, name: str, index: int) -> str:
        taken = self._names.get(ds_id)
        if taken is None:
            taken = {r[0] for r in conn.execute("SELECT name FROM images WHERE dataset_id = ?", (ds_id,))}
            self._names[ds_id] = taken
        if name in taken:
            stem, ext = os.path.splitext(name)
            name = f"{stem}_{index:06d}{ext}"
            n = 1
            while name in taken:
                name, n = f"{stem}_{index:06d}_{n}{ext}", n + 1
        return name

    def _stage_image(self, p: Prediction) -> tuple[Any, ...] | None:
        """Copy the item's file into the blob store before the transaction (create mode)."""
        import io

        from pipeline.platform import media

        if p.image_id is not None:  # a platform image: same content, same blob; only a new row is needed
            info = self.platform.image.get(p.image_id)
            return ("existing", info.hash, info.size, info.ext, info.width, info.height)
        if p.image is not None:
            data = media.encode_array(p.image, p.name or "image.png")
            tmp, sha, size = self.store.stage_file(io.BytesIO(data))
        elif p.image_path is not None:
            with open(p.image_path, "rb") as f:
                tmp, sha, size = self.store.stage_file(f)
        elif p.image_url is not None:
            from workers.decode import fetch_url

            tmp, sha, size = self.store.stage_file(io.BytesIO(fetch_url(p.image_url)))
        else:
            raise InvalidArgumentError("the item has no image to store")
        try:
            probe = media.probe_image(tmp, p.name or "image")
            self.store.commit_blob(tmp, sha, probe.ext)
        except BaseException:
            self.store.discard(tmp)
            raise
        return ("new", sha, size, probe.ext, probe.width, probe.height)

    def _resolve(self, conn: Any, project_id: int, preds: list[Prediction], metas: dict[int, Any]) -> Any:
        """The project's meta with every predicted class (renamed `<name>_nn` where the name is taken by another
        shape) and the confidence tag merged in; returns {(name): ObjClass} for this project."""
        from pipeline.annotation import CONFIDENCE_TAG

        meta = metas.get(project_id)
        if meta is None:
            meta = self.ops.get_meta(conn, project_id)
        before = meta
        for p in preds:
            for name in set(p.classes):
                cls = meta.resolve_class(name, self.shape)
                if meta.get_obj_class(cls.name) is None:
                    meta = meta.add_obj_class(cls)
        if meta.get_tag_meta(CONFIDENCE_TAG.name) is None:
            meta = meta.add_tag_meta(CONFIDENCE_TAG)
        if meta is not before:
            meta = self.ops.merge_meta(conn, project_id, meta)
        metas[project_id] = meta
        return meta

    def _predicted_annotation(self, p: Prediction, meta: Any) -> Any:
        ann = p.to_annotation()
        labels = tuple(lab.clone(obj_class=meta.resolve_class(lab.obj_class.name, self.shape)) for lab in ann.labels)
        return ann.clone(labels=labels)

    def _put_json(self, conn: Any, row: Any, cur: Any, predicted: Any, meta: Any) -> None:
        """append / replace at the JSON level: the current objects (append) or none (replace), plus the
        predicted ones; image tags and everything else of the current annotation kept."""
        where = f"image {row['id']} ({row['name']!r})"
        self.ops.check_annotation(predicted, meta, (row["height"], row["width"]), where)
        new_objects = [lab.to_json() for lab in predicted.labels]
        if cur is None:
            data = predicted.to_json()
        else:
            data = json.loads(cur[0])
            data["objects"] = (list(data.get("objects", [])) if self.mode == "append" else []) + new_objects
        self.ops.put_annotation_json(conn, row["id"], data, len(data["objects"]))

    def write(self, preds: list[Prediction]) -> None:
        """Upload a group of predictions; an item that fails gets `error` and the others go on."""
        from pipeline.annotation import Annotation

        todo = [p for p in preds if p.error is None and p.frame_idx is None]
        staged: dict[int, tuple] = {}
        if self.mode == "create":
            for p in list(todo):
                try:
                    staged[id(p)] = self._stage_image(p)
                except (OSError, PipelineError, ItemError) as exc:  # e.g. a URL that no longer answers
                    p.error = f"upload failed: cannot store the image: {exc}"
                    todo.remove(p)
        targets: dict[int, UploadTarget] = {}
        done_rows: list[tuple] = []
        try:
            with self.store.write() as conn:
                metas: dict[int, Any] = {}
                if self.mode == "create":
                    self._resolve(conn, self.project_id, todo, metas)
                    for path in dict.fromkeys(p.dataset for p in todo):
                        try:
                            self._dataset_for(conn, path)
                        except PipelineError as exc:  # e.g. a folder name the platform refuses
                            for p in todo:
                                if p.dataset == path:
                                    p.error = f"upload failed: cannot create dataset {'/'.join(path)!r}: {exc}"
                    todo = [p for p in todo if p.error is None]
                for p in todo:
                    name = None
                    try:
                        with self.store.write():  # a SAVEPOINT: this item alone is undone if it fails
                            if self.mode == "create":
                                meta = metas[self.project_id]
                                _, sha, size, ext, w, h = staged[id(p)]
                                ds_id = self._dataset_for(conn, p.dataset)
                                name = self._free_item_name(conn, ds_id, p.name or f"image_{p.index:06d}.png", p.index)
                                image_id = self.ops.insert_image(conn, ds_id, name, w, h, sha, size, ext)
                                ann = self._predicted_annotation(p, meta)
                                target = UploadTarget(self.project_id, ds_id, image_id)
                            else:
                                row = self.ops.get_image_row(conn, p.image_id)
                                pid = row["project_id"]
                                meta = self._resolve(conn, pid, [p], metas)
                                image_id = p.image_id
                                target = UploadTarget(pid, row["dataset_id"], image_id)
                                cur = conn.execute("SELECT ann FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
                                predicted = self._predicted_annotation(p, meta)
                                if self.mode in ("append", "replace"):
                                    # The stored annotation was checked when it was written: its objects stay
                                    # JSON (no bitmap decoded and encoded again); only the new ones are checked.
                                    self._put_json(conn, row, cur, predicted, meta)
                                    ann = None
                                else:
                                    current = (Annotation.from_json(json.loads(cur[0]), meta) if cur
                                               else Annotation((row["height"], row["width"])))
                                    ann = merge_annotation(self.mode, current, predicted, self.threshold)
                            if ann is not None:
                                self.ops.set_annotation(conn, image_id, ann, meta=meta)
                            conn.execute(
                                "INSERT INTO upload_job_items (job_id, item_key, target_id, done_at) VALUES (?, ?, ?, ?)",
                                (self.job_id, p._key, image_id, time.time()),
                            )
                            targets[id(p)] = target
                            done_rows.append(p)
                        if name is not None:  # taken only once the item's savepoint is released
                            self._names[target.dataset_id].add(name)
                    except PipelineError as exc:
                        p.error = f"upload failed: {exc}"
                if done_rows:
                    conn.execute(
                        "UPDATE upload_jobs SET updated_at = ?, items_done = items_done + ? WHERE id = ?",
                        (time.time(), len(done_rows), self.job_id),
                    )
        except BaseException:
            self._datasets.clear()  # ids created inside the rolled-back transaction are gone
            self._names.clear()
            raise
        for p in todo:  # only after the commit: a prediction says where it went once it is there
            if id(p) in targets:
                p.target = targets[id(p)]

    def context(self) -> dict[str, Any]:
        ctx = {"job_id": self.job_id, "upload": self.mode}
        if self.project_id is not None:
            ctx["target_project_id"] = self.project_id
            ctx["target_project_name"] = self.project_name
        if self.renamed_from:
            ctx["renamed_from"] = self.renamed_from
        return ctx


class UploadStage:
    """The upload thread: takes predictions from the collector, writes them, then hands them to the reader."""

    def __init__(self, target: PlatformTarget | None, writers: list[Any]):
        self.target = target
        self.writers = writers
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._emit: Callable[[list[Prediction]], None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.written = 0
        self.write_seconds = 0.0
        self._queued = 0  # predictions put and not yet written (backpressure counts predictions, not groups)
        self._lock = threading.Lock()

    # -- resume -----------------------------------------------------------------------------------------------
    def filter_done(self, items: Iterator[Item]) -> Iterator[Item]:
        done = self.target.done_keys if self.target is not None else set()
        for item in items:
            if item.key not in done:
                yield item

    def skipped_count(self) -> int:
        return len(self.target.done_keys) if self.target is not None else 0

    def context(self) -> dict[str, Any]:
        ctx = self.target.context() if self.target is not None else {}
        for w in self.writers:
            ctx[f"output_{type(w).__name__.replace('Writer', '').lower()}"] = w.path
        return ctx

    def backlog(self) -> int:
        """Predictions waiting to be written."""
        return self._queued

    # -- the thread -------------------------------------------------------------------------------------------
    def start(self, emit: Callable[[list[Prediction]], None]) -> None:
        self._emit = emit
        self._thread = threading.Thread(target=self._loop, name="pipeline-upload", daemon=True)
        self._thread.start()

    def put(self, preds: list[Prediction]) -> None:
        if self._error is not None:
            raise UploadError(f"the upload failed: {type(self._error).__name__}: {self._error}") from self._error
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
            try:
                t0 = time.perf_counter()
                if self.target is not None:
                    self.target.write(group)
                for w in self.writers:
                    w.add(group)
                    if self.target is not None and hasattr(w, "flush"):
                        # a job's done items are skipped on resume: their rows must be on disk once committed
                        # (a crash between the two loses at most this group's rows)
                        w.flush()
                self.write_seconds += time.perf_counter() - t0
                self.written += len(group)
            except BaseException as exc:  # the database or a file is unusable: the run must end
                log.exception("upload failed")
                self._error = exc
                for p in group:
                    if p.error is None:
                        p.error = f"upload failed: {exc}"
            with self._lock:
                self._queued -= len(group)
            self._emit(group)

    def close(self, abort: bool = False) -> None:
        """Write everything queued, close the files; raise if the upload failed."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        for w in self.writers:
            w.close()
        if self._error is not None and not abort:
            raise UploadError(f"the upload failed: {type(self._error).__name__}: {self._error}") from self._error


def _check_confidence_tag(args: PredictArgs, plan: SourcePlan, platform: Any) -> None:
    """Predicted objects carry their score in the `confidence` tag (any_number): a target project that defines
    `confidence` as another kind of tag could take none of them, so it is refused before any work."""
    from pipeline.annotation import CONFIDENCE_TAG

    if args.video_id is not None:
        project_ids = {platform.video.get(args.video_id).project_id}
    elif args.image_ids is not None:
        project_ids = {platform.image.get(i).project_id for i in args.image_ids}
    elif plan.context.get("project_id") is not None:
        project_ids = {plan.context["project_id"]}
    else:
        return
    for pid in sorted(project_ids):
        tag = platform.project.get_meta(pid).get_tag_meta(CONFIDENCE_TAG.name)
        if tag is not None and tag.value_type != CONFIDENCE_TAG.value_type:
            raise InvalidArgumentError(
                f"project {pid} defines the tag {CONFIDENCE_TAG.name!r} as {tag.value_type}; predicted objects "
                f"carry their score in it as {CONFIDENCE_TAG.value_type}: rename or change that tag first, or "
                "upload='create' into a new project"
            )


def make_uploader(args: PredictArgs, plan: SourcePlan, platform: Any, model: Any) -> UploadStage:
    """Check the upload against the input and prepare it (job record, new project), before any prediction."""
    target = None
    if args.output:
        from pipeline.stages.upload.export import check_output

        check_output(args.output)
    if args.upload is not None:
        if args.upload != "create" and not plan.platform_items:
            raise InvalidArgumentError(f"upload={args.upload!r} needs platform items; got {plan.description}")
        if args.upload == "create" and plan.project_type == "images" and plan.context.get("videos"):
            raise InvalidArgumentError(
                f"upload='create' of a directory that holds videos ({plan.context['videos']}) would need an images "
                "project and a videos project; predict the videos on their own (input=<video file>) or move them "
                "out of the directory"
            )
        if args.upload != "create":
            _check_confidence_tag(args, plan, platform)
        if plan.project_type == "videos":
            from pipeline.stages.upload.videos import VideoTarget

            target = VideoTarget(args, plan, platform, model)
        else:
            target = PlatformTarget(args, plan, platform, model)
        print(target.announce(), file=sys.stderr)
    writers: list[Any] = []
    if args.output:
        from pipeline.stages.upload.export import CocoWriter, ParquetWriter

        resumed = target is not None and target.resumed
        if args.output.get("coco") and resumed:
            raise InvalidArgumentError(
                f"output.coco cannot resume: job {target.job_id!r} skips the items it has done, so the COCO file "
                "would hold only the rest; export COCO in a run of its own (output.parquet resumes)"
            )
        if args.output.get("parquet"):
            writer = ParquetWriter(args.output["parquet"], resume=resumed)
            if writer.replaced:
                print(f"output.parquet: replaced {writer.replaced} part file(s) of an earlier run in {writer.path}",
                      file=sys.stderr)
            writers.append(writer)
        if args.output.get("coco"):
            writers.append(CocoWriter(args.output["coco"], model.classes))
    return UploadStage(target, writers)
