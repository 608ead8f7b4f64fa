"""Stage 5 for videos: frame predictions written into platform video annotations (create / append / replace /
iou_merge), with the same job records and resume as images (`pipeline.stages.upload.PlatformTarget`, which this extends).

A group of predictions (whatever arrived since the last write) is one SQLite transaction. Inside it, each video's
frames are ONE read-modify-write of its annotation JSON (a SAVEPOINT), together with one `upload_job_items` row
per frame (key `video:<id>:<frame>` or `frame:<path>:<frame>`). A crash at any moment leaves each frame either in
the annotation and recorded, or in neither; re-running the job skips the recorded frames, so figures are never
lost or duplicated.

The merge works on the stored JSON (`merge_video_json`): the objects and figures already there stay dicts, never
decoded into geometries and encoded again (a bitmap is a PNG); only the new objects and figures are made, checked
against the meta and the video's frame count, and serialised, and `iou_merge` decodes just the figures already on
the predicted frames. A write still parses and serialises the whole JSON (one row per video), so its cost grows
with the annotation, but by the JSON's size, not by decoding it (see docs/PERFORMANCE.md, "Video").

Each predicted detection becomes its own `VideoObject` (no tracking: the same car on two frames is two objects)
with one `VideoFigure` on its frame; its score is the object's `confidence` tag, with `frameRange [f, f]`.
`merge_video_json` and `merge_video_annotation` (the same rules on a `VideoAnnotation`) are the pure parts
(table-tested); `VideoTarget` talks to SQLite.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipeline.stages.upload.merge import iou_merge_keep
from pipeline.exceptions import FormatError, InvalidArgumentError, PipelineError
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.upload import PlatformTarget

__all__ = ["VideoTarget", "labels_to_video", "merge_video_annotation", "merge_video_json"]

MODES = ("create", "append", "replace", "iou_merge")


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

    if mode not in MODES:
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


def frame_labels(data: Mapping[str, Any], frames: Iterable[int]) -> dict[int, list[Any]]:
    """{frame: its figures as `Label`s (geometry and class name)} for the `frames` of the video annotation JSON
    `data`: only those frames' figures are decoded (what `iou_merge` compares the predictions with)."""
    from pipeline.annotation import Label, ObjClass, geometry_from_json

    wanted = set(frames)
    figures: dict[int, list[dict]] = {}
    for fr in data.get("frames", ()):
        if fr.get("index") in wanted:
            figures.setdefault(fr["index"], []).extend(fr.get("figures", ()))
    keys = {fig.get("objectKey") for figs in figures.values() for fig in figs}
    titles = {o.get("key"): o.get("classTitle") for o in data.get("objects", ()) if o.get("key") in keys}
    classes: dict[str, Any] = {}
    out: dict[int, list[Any]] = {}
    for index, figs in figures.items():
        for j, fig in enumerate(figs):
            where = f"video annotation: frame {index} figure {j}"
            title = titles.get(fig.get("objectKey"))
            if title is None:
                raise FormatError(f"{where}: objectKey {fig.get('objectKey')!r} is not one of the annotation's objects")
            geometry = geometry_from_json(str(fig.get("geometryType")), fig.get("geometry") or {}, where)
            cls = classes.setdefault(title, ObjClass(title, "any_shape"))
            out.setdefault(index, []).append(Label(geometry, cls))
    return out


def merge_video_json(mode: str, data: dict[str, Any], predicted: Mapping[int, Sequence[Any]],
                     threshold: float = 0.9) -> tuple[list[Any], list[Any], bool]:
    """`merge_video_annotation` on the video annotation JSON `data`, which is changed in place: the same rules,
    without decoding what is stored (objects and figures stay dicts; `iou_merge` decodes the figures of the
    predicted frames only, `frame_labels`). Returns (the `VideoObject`s added, their `VideoFigure`s, whether
    `data` changed), so that the caller can check the new ones against the project meta and the video."""
    if mode not in MODES:
        raise ValueError(f"unknown upload mode {mode!r}")
    objects = data.setdefault("objects", [])
    frames = data.setdefault("frames", [])
    changed = False
    if mode == "replace" and predicted:
        drop = set(predicted)
        gone = [fr for fr in frames if fr.get("index") in drop]
        if gone:
            frames[:] = [fr for fr in frames if fr.get("index") not in drop]
            # the objects whose only figures were on the dropped frames go too (objects with no figure stay)
            lost = {fig.get("objectKey") for fr in gone for fig in fr.get("figures", ())}
            if lost:
                lost -= {fig.get("objectKey") for fr in frames for fig in fr.get("figures", ())}
                objects[:] = [o for o in objects if o.get("key") not in lost]
            changed = True
    size = data.get("size") or {}
    h, w = int(size.get("height", 0)), int(size.get("width", 0))
    existing = frame_labels(data, predicted) if mode == "iou_merge" else {}
    new_objects: list[Any] = []
    new_figures: list[Any] = []
    for frame in sorted(predicted):
        labels = list(predicted[frame])
        if mode == "iou_merge" and labels:
            keep = iou_merge_keep(existing.get(frame, []), labels, threshold, h, w)
            labels = [lab for lab, k in zip(labels, keep) if k]
        objs, figs = labels_to_video(frame, labels)
        new_objects += objs
        new_figures += figs
    if not new_figures:
        return new_objects, new_figures, changed
    objects.extend(o.to_json() for o in new_objects)
    by_index: dict[int, dict] = {}
    for fr in frames:
        by_index.setdefault(fr.get("index"), fr)
    added = False
    for fig in new_figures:
        fr = by_index.get(fig.frame_index)
        if fr is None:
            fr = by_index[fig.frame_index] = {"index": fig.frame_index, "figures": []}
            frames.append(fr)
            added = True
        fr.setdefault("figures", []).append(fig.to_json())
    if added:  # frames in index order, as `VideoAnnotation.add_figures` keeps them (stable: nearly sorted is cheap)
        frames.sort(key=lambda fr: fr["index"])
    return new_objects, new_figures, True


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
    def _write_video(self, conn: Any, row: Any, group: list[Prediction], meta: Any) -> None:
        """This video's predicted frames into its annotation: one read-modify-write of the stored JSON.

        The stored objects and figures were checked when they were written and stay JSON; the new ones are checked
        here (classes and tags against `meta`, frames within the video) before anything is written."""
        predicted = {p.frame_idx: self._predicted_annotation(p, meta).labels for p in group}
        with _gc_paused():
            self._merge_json(conn, row, predicted, meta)  # its locals (the parsed JSON) are freed on return

    def _merge_json(self, conn: Any, row: Any, predicted: dict[int, Any], meta: Any) -> None:
        from pipeline.annotation import VideoAnnotation

        video_id = row["id"]
        where = f"video {video_id} ({row['name']!r})"
        cur = conn.execute("SELECT ann FROM video_annotations WHERE video_id = ?", (video_id,)).fetchone()
        size = (row["height"], row["width"])
        data = json.loads(cur[0]) if cur is not None else VideoAnnotation(size, row["frames_count"]).to_json()
        objects, figures, changed = merge_video_json(self.mode, data, predicted, self.threshold)
        if figures:
            last = max(f.frame_index for f in figures)
            if last >= row["frames_count"]:
                raise FormatError(f"{where}: a prediction for frame {last}; the video has {row['frames_count']}")
            added = VideoAnnotation(size, row["frames_count"], tuple(objects)).add_figures(figures)
            self.ops.check_video_annotation(added, meta, where)
        if changed or cur is None:
            self.ops.put_video_annotation_json(conn, video_id, data, len(data["objects"]))

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
                            self._write_video(conn, row, group, meta)
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
