"""The output files of a run (`output={"parquet": ..., "coco": ..., "yolo": ...}`) and the job that makes them
resumable without any upload.

Every file output rests on Parquet parts that carry their manifest (`export.py`): the `parquet` folder when one is
asked for, else a hidden working folder (`<yolo>/.staging/parts`, or `.<coco file name>.parts` next to the COCO
file) deleted once the job has finished. COCO and YOLO are assembled from the parts at the end.

A run without an upload is a **file job**: its id is `job_id`, or a new one printed when it starts. Re-running
with the same id after a crash (even SIGKILL) skips the items its parts record and predicts the rest; COCO and
YOLO are then assembled from all the parts, so they equal one clean run's. With an upload, the platform keeps the
job (`target.py`) and the parts follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.args import PredictArgs
from pipeline.stages.collect import keypoint_layout
from pipeline.stages.source import source_identity
from pipeline.stages.source.plan import SourcePlan
from pipeline.stages.upload.coco import CocoWriter
from pipeline.stages.upload.export import ParquetWriter, check_output
from pipeline.stages.upload.location import Location
from pipeline.stages.upload.target import Target, new_job_id
from pipeline.stages.upload.yolo import YOLO_TASKS, YoloWriter, check_yolo_folder

__all__ = ["Outputs", "make_outputs"]


@dataclass
class Outputs:
    """The writers of a run's files (in the order they take each group), its job and what it already did."""

    writers: list[Any]
    job_id: str
    done_keys: set[str]
    resumed: bool
    file_job: bool  # no upload: the parts are the job's record
    replaced: int = 0  # part files of an earlier job that were deleted
    staging: list[Location] = field(default_factory=list)  # hidden working folders, deleted when the job is done

    def announce(self) -> str:
        text = f"file job {self.job_id}: writing " + ", ".join(f"{type(w).__name__[:-6].lower()} {w.path}"
                                                             for w in self.writers if not _is_staging(w, self))
        if self.resumed:
            return text + f"; resuming, {len(self.done_keys)} item(s) already done are skipped"
        return text + f"; re-run with job_id={self.job_id!r} to resume after a crash"

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {"job_id": self.job_id} if self.file_job else {}
        for w in self.writers:
            if not _is_staging(w, self):
                ctx[f"output_{type(w).__name__[:-6].lower()}"] = w.path
        return ctx

    def finish(self, complete: bool) -> None:
        """The writers are closed: a job that completed needs its working folders no more."""
        if not complete:
            return
        for loc in self.staging:
            if loc.kind() == "dir":
                loc.delete_dir(loc.path)


def _is_staging(writer: Any, outputs: Outputs) -> bool:
    return isinstance(writer, ParquetWriter) and any(writer.loc.path == s.path or
                                                     writer.loc.path.startswith(s.path + "/")
                                                     for s in outputs.staging)


def _check_yolo(loc: Location, plan: SourcePlan, model: Any) -> None:
    task = model.spec.task_type
    if task not in YOLO_TASKS:
        raise InvalidArgumentError(f"output yolo: a {task} model's predictions have no YOLO label format here "
                                   f"(detect, segment, pose and obb datasets are written: {', '.join(YOLO_TASKS)})")
    if plan.has_videos:
        raise InvalidArgumentError("output yolo needs image files; a video's frames are not files: extract "
                                   "the frames you want first, or write output.parquet / output.coco")
    check_yolo_folder(loc)


def _parts_location(locs: dict[str, Location]) -> tuple[Location, Location | None]:
    """Where the parts go, and the hidden working folder to delete at the end (None for `output.parquet`)."""
    if "parquet" in locs:
        return locs["parquet"], None
    if "yolo" in locs:
        staging = locs["yolo"].at(locs["yolo"].join(".staging"))
        return staging.at(staging.join("parts"), "the job's parts"), staging
    coco = locs["coco"]
    staging = coco.at(coco.sibling(f".{coco.name}.parts"), "the job's parts")
    return staging, staging


def make_outputs(args: PredictArgs, plan: SourcePlan, model: Any, target: Target | None) -> Outputs:
    """Check the outputs and prepare them, before any prediction: the parts (resumed when they hold job
    `job_id`'s), COCO and YOLO writers."""
    locs = check_output(args.output)
    if "yolo" in locs:
        _check_yolo(locs["yolo"], plan, model)
    job_id = target.job_id if target is not None else (args.job_id or new_job_id())
    parts_loc, staging = _parts_location(locs)
    resumed_upload = target is not None and target.resumed
    for key in ("coco", "yolo"):
        if key in locs and resumed_upload:
            raise InvalidArgumentError(
                f"output.{key} cannot resume with upload job {job_id!r}: the platform records its items, and a "
                "crash between an upload and its Parquet part loses that part's rows, so the file could miss them; "
                f"export it from the platform (pipeline platform export PROJECT DIR --format {key})"
            )
    identity = target.identity if target is not None else source_identity(args)  # what the job was started on
    parts = ParquetWriter(parts_loc, job_id, keep_unmarked=resumed_upload, identity=identity)
    writers: list[Any] = []
    layout = keypoint_layout(model.spec)
    if "yolo" in locs:
        writers.append(YoloWriter(locs["yolo"], args.class_names(model.classes), model.spec.task_type, parts,
                                  images=args.output.get("yolo_images", "copy"),
                                  url_timeout=float(args.settings.get("url_timeout", 20.0)),
                                  keypoint_names=layout.names if layout is not None else None))
    if "coco" in locs:
        writers.append(CocoWriter(locs["coco"], args.class_names(model.classes), parts, layout))
    writers.append(parts)  # last: an array a YOLO dataset needs is staged before its item is recorded done
    file_job = target is None
    done = parts.done_keys if file_job else target.done_keys
    return Outputs(writers, job_id, done, resumed=file_job and parts.resumed, file_job=file_job,
                   replaced=parts.replaced, staging=[staging] if staging is not None else [])
