"""Stage 5 for videos: frame predictions written into platform video annotations (create / append / replace /
iou_merge), with the same job records and resume as images (`pipeline.upload.PlatformTarget`, which this extends).

A group of predictions (whatever arrived since the last write) is one SQLite transaction. Inside it, each video's
frames are ONE read-modify-write of its `VideoAnnotation` (a SAVEPOINT), together with one `upload_job_items`
row per frame (key `video:<id>:<frame>` or `frame:<path>:<frame>`). A crash at any moment leaves each frame either
in the annotation and recorded, or in neither; re-running the job skips the recorded frames, so figures are never
lost or duplicated.

Each predicted detection becomes its own `VideoObject` (no tracking: the same car on two frames is two objects)
with one `VideoFigure` on its frame; its score is the object's `confidence` tag, with `frameRange [f, f]`.
`merge_video_annotation` is the pure part (table-tested); `VideoTarget` talks to SQLite.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline._merge import iou_merge_keep
from pipeline.exceptions import FormatError, InvalidArgumentError, PipelineError
from pipeline.prediction import Prediction, UploadTarget
from pipeline.upload import PlatformTarget

__all__ = ["VideoTarget", "labels_to_video", "merge_video_annotation"]


def labels_to_video(frame: int, labels: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(objects, figures) for the predicted `labels` of `frame`: one `VideoObject` per label, its `confidence`
    tag (if the label has one) moved onto the object with `frame_range (frame, frame)`, one `VideoFigure` each."""
    from pipeline.annotation import VideoFigure, VideoObject, VideoTag

    objects, figures = [], []
    for lab in labels:
        tags = tuple(VideoTag(t.meta, t.value, (frame, frame)) for t in lab.tags)
        obj = VideoObject(lab.obj_class, tags)
        objects.append(obj)
        figures.append(VideoFigure(obj, lab.geometry, frame))
    return objects, figures


def merge_video_annotation(mode: str, current: Any, predicted: Mapping[int, Sequence[Any]],
                           threshold: float = 0.9) -> Any:
    """The video annotation after writing `predicted` = {frame index: predicted `Label`s} into `current` under
    `mode`, frame by frame, leaving every other frame as it was.

    create / append: the predicted objects are added. replace: the figures already on a predicted frame are
    removed first, and so is every object left with no figure by that (objects that never had figures stay).
    iou_merge: like append, minus each predicted label that `iou_merge_keep` drops against the figures already on
    its frame (same class, IoU >= threshold).
    """
    from pipeline.annotation import Label

    if mode not in ("create", "append", "replace", "iou_merge"):
        raise ValueError(f"unknown upload mode {mode!r}")
    ann = current
    if mode == "replace" and predicted:
        frames = set(predicted)
        had = {f.video_object.key for f in ann.figures}
        kept_frames = tuple(fr for fr in ann.frames if fr.index not in frames)
        still = {f.video_object.key for fr in kept_frames for f in fr.figures}
        objects = tuple(o for o in ann.objects if o.key in still or o.key not in had)
        ann = ann.clone(frames=kept_frames, objects=objects)
    h, w = ann.img_size
    new_objects, new_figures = [], []
    for frame in sorted(predicted):
        labels = list(predicted[frame])
        if mode == "iou_merge" and labels:
            existing = [Label(f.geometry, f.video_object.obj_class) for f in ann.figures_on_frame(frame)]
            keep = iou_merge_keep(existing, labels, threshold, h, w)
            labels = [lab for lab, k in zip(labels, keep) if k]
        objects, figures = labels_to_video(frame, labels)
        new_objects += objects
        new_figures += figures
    if not new_objects:
        return ann
    return ann.add_objects(new_objects).add_figures(new_figures)


class VideoTarget(PlatformTarget):
    """Writes the frame predictions of one video (a file or a platform video) into a platform video annotation.

    Same interface as `PlatformTarget` (`job_id`, `done_keys`, `announce()`, `write(preds)`, `context()`), same job
    tables. `create` makes a videos project named after the source, holding the video (a platform video's blob is
    shared: a new row with the same hash) and its predicted annotation.
    """

    def __init__(self, args: Any, plan: Any, platform: Any, model: Any):
        super().__init__(args, plan, platform, model)
        self.video_id: int | None = None  # create: the video made by this job
        self._staged: tuple | None = None
        if self.mode == "create" and self.resumed:
            with self.store.read() as conn:
                row = conn.execute("SELECT target_id FROM upload_job_items WHERE job_id = ? LIMIT 1",
                                   (self.job_id,)).fetchone()
            self.video_id = row[0] if row else None

    # -- create: the video itself -----------------------------------------------------------------------------
    def _stage_video(self, p: Prediction) -> tuple:
        """Store the source video's file as a blob before the transaction (once per job)."""
        from pipeline.platform import media

        if p.video_id is not None:  # a platform video: same content, same blob; only a new row is needed
            with self.store.read() as conn:
                row = self.ops.get_video_row(conn, p.video_id)
            return (row["name"], row["frames_count"], row["fps"], row["width"], row["height"], row["hash"],
                    row["size"], row["ext"])
        path = p.image_path or p._blob_path
        if path is None:
            raise InvalidArgumentError("the prediction has no video file to store")
        name = os.path.basename(path)
        with open(path, "rb") as f:
            tmp, sha, size = self.store.stage_file(f)
        try:
            probe = media.probe_video(tmp, name)
            self.store.commit_blob(tmp, sha, probe.ext)
        except BaseException:
            self.store.discard(tmp)
            raise
        return (name, probe.frames_count, probe.fps, probe.width, probe.height, sha, size, probe.ext)

    def _insert_video(self, conn: Any, p: Prediction) -> tuple[int, int]:
        name, frames, fps, w, h, sha, size, ext = self._staged  # type: ignore[misc]
        ds_id = self._dataset_for(conn, p.dataset)
        return self.ops.insert_video(conn, ds_id, name, frames, fps, w, h, sha, size, ext), ds_id

    # -- writing ----------------------------------------------------------------------------------------------
    def _current(self, conn: Any, video_id: int, meta: Any) -> Any:
        from pipeline.annotation import VideoAnnotation

        row = self.ops.get_video_row(conn, video_id)
        cur = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
        if cur is None:
            return VideoAnnotation((row["height"], row["width"]), row["frames_count"])
        data = json.loads(cur[0])
        try:
            return VideoAnnotation.from_json(data, meta)
        except FormatError:  # the meta was edited since: classes from the JSON itself
            return VideoAnnotation.from_json(data, None)

    def write(self, preds: list[Prediction]) -> None:
        """Upload a group of frame predictions; the frames of a video that fails get `error`, the others go on."""
        todo = [p for p in preds if p.error is None and p.frame_idx is not None]
        if not todo:
            return
        if self.mode == "create" and self.video_id is None and self._staged is None:
            try:
                self._staged = self._stage_video(todo[0])
            except (OSError, PipelineError) as exc:
                for p in todo:
                    p.error = f"upload failed: cannot store the video: {exc}"
                return
        groups: dict[Any, list[Prediction]] = {}
        for p in todo:
            groups.setdefault(p.video_id if p.video_id is not None else p.image_path, []).append(p)
        targets: dict[int, UploadTarget] = {}
        created: int | None = None
        done = 0
        try:
            with self.store.write() as conn:
                metas: dict[int, Any] = {}
                for group in groups.values():
                    try:
                        with self.store.write():  # a SAVEPOINT: this video's frames alone are undone if it fails
                            if self.mode == "create":
                                if self.video_id is None and created is None:
                                    created, _ = self._insert_video(conn, group[0])
                                video_id = self.video_id or created
                            else:
                                video_id = group[0].video_id
                            row = self.ops.get_video_row(conn, video_id)
                            project_id = row["project_id"]
                            meta = self._resolve(conn, project_id, group, metas)
                            current = self._current(conn, video_id, meta)
                            predicted = {p.frame_idx: self._predicted_annotation(p, meta).labels for p in group}
                            ann = merge_video_annotation(self.mode, current, predicted, self.threshold)
                            self.ops.set_video_annotation(conn, video_id, ann, meta=meta)
                            now = time.time()
                            conn.executemany(
                                "INSERT INTO upload_job_items (job_id, item_key, target_id, done_at) VALUES (?, ?, ?, ?)",
                                [(self.job_id, p._key, video_id, now) for p in group],
                            )
                            for p in group:
                                targets[id(p)] = UploadTarget(project_id, row["dataset_id"], video_id=video_id,
                                                              frame_idx=p.frame_idx)
                            done += len(group)
                    except PipelineError as exc:
                        if self.mode == "create" and created is not None and self.video_id is None:
                            created = None  # rolled back with the savepoint
                        for p in group:
                            p.error = f"upload failed: {exc}"
                if done:
                    conn.execute(
                        "UPDATE upload_jobs SET updated_at = ?, items_done = items_done + ? WHERE id = ?",
                        (time.time(), done, self.job_id),
                    )
        except BaseException:
            self._datasets.clear()  # ids created inside the rolled-back transaction are gone
            raise
        if created is not None:
            self.video_id = created
        for p in todo:  # only after the commit: a prediction says where it went once it is there
            if id(p) in targets:
                p.target = targets[id(p)]

    def context(self) -> dict[str, Any]:
        ctx = super().context()
        if self.video_id is not None:
            ctx["target_video_id"] = self.video_id
        return ctx
