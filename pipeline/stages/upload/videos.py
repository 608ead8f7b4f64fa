"""Video uploads: frame predictions written into platform video annotations (create / append / replace /
iou_merge), with the same job records and resume as images (`Target`).

A unit is one video's frames of a group: ONE read-modify-write of its annotation JSON, together with one
`upload_job_items` row per frame (key `video:<id>:<frame>` or `frame:<path>:<frame>`). A crash at any moment
leaves each frame either in the annotation and recorded, or in neither; re-running the job skips the recorded
frames, so figures are never lost or duplicated.

The merge works on the stored JSON (`merge_video_json`): the objects and figures already there stay dicts, never
decoded into geometries and encoded again (a bitmap is a PNG); only the new objects and figures are made, checked
against the meta and the video's frame count, and serialised, and `iou_merge` decodes just the figures already on
the predicted frames. A write still parses and serialises the whole JSON (one row per video), so its cost grows
with the annotation, but by the JSON's size, not by decoding it (see docs/PERFORMANCE.md, "Video").

Each predicted detection becomes its own `VideoObject` (no tracking: the same car on two frames is two objects)
with one `VideoFigure` on its frame; its score is the object's `confidence` tag, with `frameRange [f, f]`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterator
from typing import Any

from pipeline.exceptions import DiskFullError, FormatError, InvalidArgumentError, PipelineError
from pipeline.platform import jobs, media, ops
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.upload.merge import merge_video_json
from pipeline.stages.upload.target import Target, Written

__all__ = ["VideoTarget"]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused. Parsing a long video's annotation makes about ten containers per figure,
    and each collection they trigger walks all of them (and every other object of the process) while they are
    young: more than the parse itself costs. The JSON holds no cycles and is freed by reference counting, so the
    merge runs with the collector paused and drops the parsed JSON before it resumes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class VideoTarget(Target):
    """Writes the frame predictions of one video (a file or a platform video) into a platform video annotation.
    `create` makes a videos project named after the source, holding the video (a platform video's blob is
    shared: a new row with the same hash) and its predicted annotation."""

    project_type = "videos"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.video_id: int | None = None  # create: the video made by this job
        self._created: int | None = None  # ... made in the group being written, kept once it commits
        self._staged: tuple | None = None
        if self.mode == "create" and self.resumed:
            with self.store.read() as conn:
                self.video_id = jobs.first_target(conn, self.job_id)

    def accepts(self, p: Prediction) -> bool:
        return p.frame_idx is not None

    # -- create: the video itself -----------------------------------------------------------------------------
    def stage(self, todo: list[Prediction]) -> dict[int, str]:
        """Store the source video's file as a blob before the transaction (once per job)."""
        if not todo or self.mode != "create" or self.video_id is not None or self._staged is not None:
            return {}
        try:
            self._staged = self._stage_video(todo[0])
        except DiskFullError:  # the run ends: see ImageTarget.stage
            raise
        except (OSError, PipelineError) as exc:
            return {id(p): f"upload failed: cannot store the video: {exc}" for p in todo}
        return {}

    def _stage_video(self, p: Prediction) -> tuple:
        if p.video_id is not None:  # a platform video: same content, same blob; only a new row is needed
            with self.store.read() as conn:
                row = ops.get_video_row(conn, p.video_id)
            return (row["name"], row["frames_count"], row["fps"], row["width"], row["height"], row["hash"],
                    row["size"], row["ext"])
        path = p.item.path
        if path is None:
            raise InvalidArgumentError("the prediction has no video file to store")
        name = os.path.basename(path)
        with open(path, "rb") as f:
            sha, size, probe = self.store.store_blob(f, lambda tmp: media.probe_video(tmp, name))
        return (name, probe.frames_count, probe.fps, probe.width, probe.height, sha, size, probe.ext)

    def _video_id(self, conn: Any, p: Prediction) -> int:
        if self.mode != "create":
            return p.video_id
        if self.video_id is None and self._created is None:
            name, frames, fps, w, h, sha, size, ext = self._staged  # type: ignore[misc]
            ds_id = self.dataset_for(conn, p.dataset)
            self._created = ops.insert_video(conn, ds_id, name, frames, fps, w, h, sha, size, ext)
        return self.video_id or self._created

    # -- the units --------------------------------------------------------------------------------------------
    def units(self, todo: list[Prediction]) -> Iterator[list[Prediction]]:
        groups: dict[Any, list[Prediction]] = {}
        for p in todo:
            groups.setdefault(p.video_id if p.video_id is not None else p.item.video_path, []).append(p)
        return iter(groups.values())

    def write_unit(self, conn: Any, unit: list[Prediction], metas: dict[int, Any]) -> Written:
        """This video's predicted frames into its annotation: one read-modify-write of the stored JSON."""
        created_before = self._created
        try:
            video_id = self._video_id(conn, unit[0])
            row = ops.get_video_row(conn, video_id)
            meta = self.resolve_meta(conn, row["project_id"], unit, metas)
            predicted = {p.frame_idx: self.predicted_annotation(p, meta).labels for p in unit}
            with _gc_paused():
                self._merge_json(conn, row, predicted, meta)  # its locals (the parsed JSON) are freed on return
        except PipelineError:
            self._created = created_before  # rolled back with the savepoint
            raise
        return [(p, UploadTarget(row["project_id"], row["dataset_id"], video_id=video_id, frame_idx=p.frame_idx))
                for p in unit]

    def _merge_json(self, conn: Any, row: Any, predicted: dict[int, Any], meta: Any) -> None:
        """The stored objects and figures were checked when they were written and stay JSON; the new ones are
        checked here (classes and tags against `meta`, frames within the video) before anything is written."""
        from pipeline.annotation import VideoAnnotation

        video_id = row["id"]
        where = f"video {video_id} ({row['name']!r})"
        cur = ops.get_video_annotation_text(conn, video_id)
        size = (row["height"], row["width"])
        data = json.loads(cur) if cur is not None else VideoAnnotation(size, row["frames_count"]).to_json()
        objects, figures, changed = merge_video_json(self.mode, data, predicted, self.threshold)
        if figures:
            last = max(f.frame_index for f in figures)
            if last >= row["frames_count"]:
                raise FormatError(f"{where}: a prediction for frame {last}; the video has {row['frames_count']}")
            added = VideoAnnotation(size, row["frames_count"], tuple(objects)).add_figures(figures)
            ops.check_video_annotation(added, meta, where)
        if changed or cur is None:
            ops.put_video_annotation_json(conn, video_id, data, len(data["objects"]))

    def committed(self) -> None:
        if self._created is not None:
            self.video_id = self._created
            self._created = None

    def rolled_back(self) -> None:
        super().rolled_back()
        self._created = None

    def context(self) -> dict[str, Any]:
        ctx = super().context()
        if self.video_id is not None:
            ctx["target_video_id"] = self.video_id
        return ctx
