"""`Target`: what image and video uploads share: the job (its record, resume, announcement), the target
datasets, the project meta, and the transaction loop that makes each unit of a group atomic.

A group of predictions (whatever arrived since the last write) is one SQLite transaction (`BEGIN IMMEDIATE`,
WAL). Each unit of it (an image, or one video's frames) is written in a SAVEPOINT together with its rows in
`upload_job_items`: a unit that fails rolls back alone and its predictions get `error`; a crash at any moment
leaves every unit either fully written and recorded, or untouched; a re-run with the same job id skips the recorded
items, so nothing is lost or done twice. The group's failed items (whatever failed them) are recorded in
`upload_job_errors` in the same transaction, and each run of the job in `upload_job_runs` (`start_run`,
`finish_run`): what the viewer's runs page shows.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pipeline.exceptions import DiskFullError, InvalidArgumentError, NotFoundError, PipelineError
from pipeline.platform import jobs, ops
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.args import DEFAULT_IOU_MERGE_THRESHOLD, PredictArgs
from pipeline.stages.source import check_same_source, source_identity
from pipeline.stages.source.plan import SourcePlan

__all__ = ["DEFAULT_DATASET", "Target", "new_job_id", "resolve_class", "resolve_tag_meta"]

DEFAULT_DATASET = "ds0"  # where items without a dataset of their own go (Supervisely's default dataset name)

# A unit's outcome: per prediction, where it went (after the commit) or why it failed.
Written = list[tuple[Prediction, UploadTarget]]


def new_job_id() -> str:
    """A readable, unique job id: date, time and random hex."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Target:
    """Writes predictions to the platform under one mode, recording job progress. Subclasses say what a unit of a
    group is (`units`) and how it is written (`write_unit`); `stage` prepares what must exist before the
    transaction (files copied into the blob store)."""

    project_type = "images"

    def __init__(self, args: PredictArgs, plan: SourcePlan, platform: Any, model: Any):
        self.mode = args.upload
        self.platform = platform
        self.store = platform.store
        self.plan = plan
        self.identity = source_identity(args)
        self.threshold = float(args.settings.get("iou_merge_threshold", DEFAULT_IOU_MERGE_THRESHOLD))
        self.project_id: int | None = None
        self.project_name: str | None = None
        self.renamed_from: str | None = None
        self._datasets: dict[tuple[str, ...], int] = {}
        self.resumed = False
        jobs.ensure_tables(self.store)
        self.job_id = args.job_id or new_job_id()
        self._prepare_job()
        self.done_keys = self._load_done_keys()

    # -- before any work --------------------------------------------------------------------------------------
    def _prepare_job(self) -> None:
        with self.store.write() as conn:
            row = jobs.get_job(conn, self.job_id)
            if row is not None:
                self._resume(conn, row)
                return
            if self.mode == "create":
                wanted = self.plan.name or "Predictions"
                name = ops.free_project_name(conn, wanted)
                if name != wanted:
                    self.renamed_from = wanted
                self.project_id = ops.insert_project(conn, name, self.project_type)
                self.project_name = name
            jobs.insert_job(conn, self.job_id, self.mode, self.plan.description, self.project_id, self.identity)

    def _resume(self, conn: Any, row: Any) -> None:
        if row["mode"] != self.mode:
            raise InvalidArgumentError(f"job {self.job_id!r} was a {row['mode']!r} upload; it cannot resume as "
                                       f"{self.mode!r}: resume it with upload={row['mode']!r}, or give a new job_id "
                                       "(or none) for this run")
        check_same_source(self.job_id, jobs.job_identity(conn, self.job_id), self.identity)
        self.resumed = True
        self.project_id = row["target_project_id"]
        if self.mode == "create":
            try:
                self.project_name = ops.get_project_row(conn, self.project_id)["name"]
            except NotFoundError:
                raise InvalidArgumentError(
                    f"job {self.job_id!r} created project {self.project_id}, which no longer exists; start a new "
                    "job (without job_id)"
                ) from None

    def _load_done_keys(self) -> set[str]:
        if not self.resumed:
            return set()
        with self.store.read() as conn:
            return jobs.done_keys(conn, self.job_id)

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

    def context(self) -> dict[str, Any]:
        ctx = {"job_id": self.job_id, "upload": self.mode}
        if self.project_id is not None:
            ctx["target_project_id"] = self.project_id
            ctx["target_project_name"] = self.project_name
        if self.renamed_from:
            ctx["renamed_from"] = self.renamed_from
        return ctx

    # -- the job's runs (the viewer's runs page) ----------------------------------------------------------------
    def start_run(self, total: int | None = None) -> int:
        """Record a run of the job (its start, or this resume) as running; returns its number."""
        with self.store.write() as conn:
            return jobs.start_run(conn, self.job_id, skipped=len(self.done_keys), total=total)

    def set_run_total(self, run: int, total: int) -> None:
        with self.store.write() as conn:
            jobs.set_run_total(conn, self.job_id, run, total)

    def finish_run(self, run: int, state: str, message: str = "") -> None:
        """Record how the run ended: "done", "stopped" or "failed" (`message`: the error)."""
        with self.store.write() as conn:
            jobs.finish_run(conn, self.job_id, run, state, message)

    # -- shared by the units ----------------------------------------------------------------------------------
    def dataset_for(self, conn: Any, path: tuple[str, ...]) -> int:
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
                    ds_id = ops.find_dataset(conn, self.project_id, parent, sub[-1])
                    if ds_id is None:
                        ds_id = ops.insert_dataset(conn, self.project_id, sub[-1], parent)
                    found[sub] = ds_id
                parent = ds_id
        self._datasets.update(found)
        return self._datasets[path]

    def resolve_meta(self, conn: Any, project_id: int, preds: list[Prediction], metas: dict[int, Any]) -> Any:
        """The project's meta with every predicted class (of the predictions' shape: rectangle, bitmap or a graph
        with its keypoint template; renamed `<name>_nn` where the name is taken by a class that cannot hold it),
        the confidence tag and the predicted image tags (a classifier's class, any_number) merged in; cached in
        `metas` for the group."""
        from pipeline.annotation import CONFIDENCE_TAG

        meta = metas.get(project_id)
        if meta is None:
            meta = ops.get_meta(conn, project_id)
        before = meta
        for p in preds:
            for name in dict.fromkeys(p.classes):
                cls = resolve_class(meta, p.obj_class(name))
                if meta.get_obj_class(cls.name) is None:
                    meta = meta.add_obj_class(cls)
            for tag in p.image_tags():
                tag_meta = resolve_tag_meta(meta, tag.meta)
                if meta.get_tag_meta(tag_meta.name) is None:
                    meta = meta.add_tag_meta(tag_meta)
        if meta.get_tag_meta(CONFIDENCE_TAG.name) is None:
            meta = meta.add_tag_meta(CONFIDENCE_TAG)
        if meta is not before:
            meta = ops.merge_meta(conn, project_id, meta)
        metas[project_id] = meta
        return meta

    def predicted_annotation(self, p: Prediction, meta: Any) -> Any:
        """`p`'s objects and image tags as an `Annotation` whose classes and tags are the target project's."""
        from pipeline.annotation import Tag

        ann = p.to_annotation()
        labels = tuple(lab.clone(obj_class=resolve_class(meta, lab.obj_class)) for lab in ann.labels)
        tags = tuple(Tag(resolve_tag_meta(meta, t.meta), t.value) for t in ann.img_tags)
        return ann.clone(labels=labels, img_tags=tags)

    # -- the subclass's part ----------------------------------------------------------------------------------
    def accepts(self, p: Prediction) -> bool:
        raise NotImplementedError

    def stage(self, todo: list[Prediction]) -> dict[int, str]:
        """Work before the transaction (copying files into the blob store); {id(p): error} of those it failed."""
        return {}

    def units(self, todo: list[Prediction]) -> Iterator[list[Prediction]]:
        raise NotImplementedError

    def write_unit(self, conn: Any, unit: list[Prediction], metas: dict[int, Any]) -> Written:
        raise NotImplementedError

    def before_units(self, conn: Any, todo: list[Prediction], metas: dict[int, Any]) -> dict[int, str]:
        """Work inside the transaction before the units (the target datasets); {id(p): error} of failed ones."""
        return {}

    def unit_written(self, written: Written) -> None:
        """A unit's savepoint is released: what it created may be remembered (until a rollback)."""

    def committed(self) -> None:
        """The group's transaction is committed: what the units learned may now be kept."""

    def rolled_back(self) -> None:
        """The group's transaction was rolled back: forget what its units learned."""
        self._datasets.clear()

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, preds: list[Prediction]) -> list[Prediction]:
        """Upload a group of predictions; returns them as written (with `target`) or failed (with `error`), in
        the same order. An item that fails gets its error and the others go on."""
        try:
            return self._write(preds)
        except DiskFullError as exc:  # the run ends here; the message says how to go on from what was committed
            raise DiskFullError(f"upload job {self.job_id!r} stopped: {exc}") from None

    def _write(self, preds: list[Prediction]) -> list[Prediction]:
        todo = [p for p in preds if p.error is None and self.accepts(p)]
        errors = self.stage(todo)
        todo = [p for p in todo if id(p) not in errors]
        targets: dict[int, UploadTarget] = {}
        try:
            with self.store.write() as conn:
                metas: dict[int, Any] = {}
                errors.update(self.before_units(conn, todo, metas))
                done = 0
                for unit in self.units([p for p in todo if id(p) not in errors]):
                    try:
                        with self.store.write():  # a SAVEPOINT: this unit alone is undone if it fails
                            written = self.write_unit(conn, unit, metas)
                            done += jobs.record_done(conn, self.job_id, [(p.key, _target_id(t)) for p, t in written])
                        self.unit_written(written)
                        targets.update((id(p), t) for p, t in written)
                    except DiskFullError:  # SQLite may have rolled the whole transaction back: no unit goes on
                        raise
                    except PipelineError as exc:
                        errors.update((id(p), f"upload failed: {exc}") for p in unit)
                jobs.count_done(conn, self.job_id, done)
                # every failed item of the group, whatever failed (loading, the model, staging, its unit), in the
                # transaction that records the group's done items: the error log always matches what is uploaded
                jobs.record_errors(conn, self.job_id, _failures(preds, errors))
        except BaseException:
            self.rolled_back()
            raise
        self.committed()
        # only after the commit: a prediction says where it went once it is there
        return [replace(p, error=errors[id(p)]) if id(p) in errors
                else replace(p, target=targets[id(p)]) if id(p) in targets else p for p in preds]


def resolve_class(meta: Any, predicted: Any) -> Any:
    """The class of `meta` a predicted object of class `predicted` goes in: the class of that name if it holds
    such objects (its shape, or "any_shape"; a graph class only if its keypoint template has every node of
    ours, which the Supervisely SDK checks), else `<name>_nn` (and `_nn_nn` ...) on the same terms; a new class
    (`predicted` renamed, not added: the caller merges it in) when none is there."""
    name = predicted.name
    while True:
        existing = meta.get_obj_class(name)
        if existing is None:
            return predicted if name == predicted.name else replace(predicted, name=name)
        if _holds(existing, predicted):
            return existing
        name = f"{name}_nn"


def _holds(existing: Any, predicted: Any) -> bool:
    if predicted.shape != "graph":
        return existing.accepts(predicted.shape)
    nodes = (existing.geometry_config or {}).get("nodes") or {}
    return existing.shape == "graph" and set(predicted.geometry_config.get("nodes", {})) <= set(nodes)


def resolve_tag_meta(meta: Any, predicted: Any) -> Any:
    """The tag meta of `meta` a predicted tag goes in: the one of that name if its value type is the same, else
    `<name>_nn` (...) on the same terms; `predicted` (renamed) when none is there."""
    name = predicted.name
    while True:
        existing = meta.get_tag_meta(name)
        if existing is None:
            return predicted if name == predicted.name else replace(predicted, name=name)
        if existing.value_type == predicted.value_type:
            return existing
        name = f"{name}_nn"


def _failures(preds: list[Prediction], errors: dict[int, str]) -> list[tuple[str, str]]:
    """(item key, error) of the group's predictions that came failed or failed here."""
    out = []
    for p in preds:
        error = p.error if p.error is not None else errors.get(id(p))
        if error is not None:
            out.append((p.key, error))
    return out


def _target_id(t: UploadTarget) -> int | None:
    return t.video_id if t.video_id is not None else t.image_id
