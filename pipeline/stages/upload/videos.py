"""Video uploads: frame predictions written into platform video annotations (create / append / replace /
iou_merge), with the same job records and resume as images (`Target`).

A unit is one video's frames of a group, written together with one `upload_job_items` row per frame (key
`video:<id>:<frame>` or `frame:<path>:<frame>`) in one SAVEPOINT. A crash at any moment leaves each frame either
in the annotation and recorded, or in neither; re-running the job skips the recorded frames, so figures are never
lost or duplicated.

The platform stores a video's objects and figures in rows of their own (`pipeline.platform.video_rows`), so a
write inserts the group's objects and figures and reads nothing else: `replace` first deletes the figures of its
frames (and the objects left without any), `iou_merge` decodes the figures already on its frames only
(`merge.kept_on_frames`). Its cost is O(group), however long the video (docs/PERFORMANCE.md, "Video").

What becomes an object:
* a tracked detection (`Prediction.track_ids[i] >= 0`): its track's object, one per track and video. The first
  figure of a track makes the object (its class: that detection's); the job remembers it (`upload_job_tracks`),
  so later frames, in later groups or in a resumed run, add their figures to the same object. The object's
  `confidence` tag is the mean score of its figures, `frameRange` [first, last] frame it was seen on;
* an untracked detection (no tracking, or -1: it joined no track, e.g. seen on one frame only): an object of its
  own with one figure, its score as the `confidence` tag with `frameRange [f, f]`. It is kept rather than
  dropped: it is a detection like any other, and an annotator merges or deletes it as they would a stray box.

A classifier's answer for a frame is a video tag on that frame: named after its top class, valued with its
probability, `frameRange [f, f]` (the tag meta any_number, as for images). Per frame they combine with the
video's tags as image tags do (`frame_tags`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.exceptions import DiskFullError, FormatError, InvalidArgumentError, PipelineError
from pipeline.platform import jobs, media, ops, video_rows
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.upload.merge import kept_on_frames, stored_labels
from pipeline.stages.upload.target import Target, Written

__all__ = ["PredictedLabel", "VideoTarget", "frame_tags", "write_frames"]

# (label in the project's classes, track id or -1, score) of one predicted object
PredictedLabel = tuple[Any, int, float]


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
        """This video's predicted frames into its annotation (`write_frames`)."""
        created_before = self._created
        try:
            video_id = self._video_id(conn, unit[0])
            row = ops.get_video_row(conn, video_id)
            meta = self.resolve_meta(conn, row["project_id"], unit, metas)
            anns = {p.frame_idx: (p, self.predicted_annotation(p, meta)) for p in unit}
            predicted = {f: self._labels(p, ann) for f, (p, ann) in anns.items()}
            tags = {f: ann.img_tags for f, (_, ann) in anns.items() if ann.img_tags}
            write_frames(conn, row, self.mode, predicted, meta, self.threshold, self.job_id, tags)
        except PipelineError:
            self._created = created_before  # rolled back with the savepoint
            raise
        return [(p, UploadTarget(row["project_id"], row["dataset_id"], video_id=video_id, frame_idx=p.frame_idx))
                for p in unit]

    def _labels(self, p: Prediction, ann: Any) -> list[PredictedLabel]:
        """`p`'s objects (`ann`: its predicted annotation) as (label, track id, score), aligned (an empty mask makes
        no label)."""
        labels = ann.labels
        n = len(p)
        idx = np.flatnonzero(p.masks.any(axis=(1, 2))) if p.masks is not None else np.arange(n)
        tracks = p.track_ids[idx] if p.track_ids is not None else np.full(len(idx), -1)
        return [(lab, int(t), round(float(s), 4)) for lab, t, s in zip(labels, tracks, p.scores[idx], strict=True)]

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


# --- one video's frames of a group -----------------------------------------------------------------------------


def write_frames(conn: Any, row: Any, mode: str, predicted: Mapping[int, Sequence[PredictedLabel]], meta: Any,
                 threshold: float = 0.9, job_id: str | None = None,
                 tags: Mapping[int, Sequence[Any]] | None = None) -> None:
    """Write `predicted` = {frame: [(label, track id, score), ...]} and `tags` = {frame: [Tag, ...]} (a
    classifier's) into video `row`'s annotation under `mode`, in the caller's transaction. The new objects, figures
    and tags are checked (classes and tags against `meta`, frames within the video) before anything is written;
    tracked labels need the `job_id` that keeps their objects."""
    video_id = row["id"]
    where = f"video {video_id} ({row['name']!r})"
    size = (row["height"], row["width"])
    last = max([f for f, labs in predicted.items() if labs] + list(tags or ()), default=-1)
    if last >= row["frames_count"]:
        raise FormatError(f"{where}: a prediction for frame {last}; the video has {row['frames_count']}")
    video_rows.ensure_head(conn, video_id, *size, row["frames_count"])
    if tags:
        _write_frame_tags(conn, video_id, mode, tags, meta, where)
    if mode == "replace" and predicted:
        video_rows.delete_frames(conn, video_id, predicted)
    existing: dict[int, list[Any]] = {}
    if mode == "iou_merge":
        existing = stored_labels(video_rows.figures_on_frames(conn, video_id, [f for f, v in predicted.items() if v]))
    keep = kept_on_frames(mode, existing, {f: [lab for lab, _, _ in v] for f, v in predicted.items()}, size,
                          threshold)
    kept = {f: [predicted[f][i] for i in idx] for f, idx in keep.items() if idx}
    if not kept:
        return
    _ObjectsOfGroup(conn, video_id, job_id).write(kept, size, row["frames_count"], meta, where)


def frame_tags(mode: str, current: Sequence[Mapping[str, Any]],
               predicted: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
    """The video's tags (JSON) once the `predicted` frame tags ({frame: [tag JSON with frameRange [f, f]]}) are
    combined with the `current` ones, frame by frame as `merge.merge_tags` combines image tags:

    replace: a current tag of a predicted name on exactly that frame is replaced by the prediction's (one on a
    longer range, or on the whole video, is left as it is). append / iou_merge / create: a predicted tag is added
    unless a tag of its name already covers the frame (an earlier or hand-made answer is not overwritten; create
    builds the new video's tags group by group, so it adds like append).
    """
    predicted_on = {(t["name"], f) for f, ts in predicted.items() for t in ts}
    ranges = [(t.get("name"), _range(t)) for t in current]
    if mode == "replace":
        kept = [t for t, (name, r) in zip(current, ranges)
                if not (r is not None and r[0] == r[1] and (name, r[0]) in predicted_on)]
        return kept + [t for ts in predicted.values() for t in ts]
    if mode not in ("append", "iou_merge", "create"):
        raise ValueError(f"unknown upload mode {mode!r}")
    names = {name for name, _ in predicted_on}
    single = {(name, r[0]) for name, r in ranges if r is not None and r[0] == r[1] and name in names}
    wide = [(name, r) for name, r in ranges if (r is None or r[0] != r[1]) and name in names]

    def covered(name: str, f: int) -> bool:
        return (name, f) in single or any(n == name and (r is None or r[0] <= f <= r[1]) for n, r in wide)

    return list(current) + [t for f, ts in sorted(predicted.items()) for t in ts if not covered(t["name"], f)]


def _range(tag: Mapping[str, Any]) -> tuple[int, int] | None:
    r = tag.get("frameRange")
    return (int(r[0]), int(r[1])) if isinstance(r, list | tuple) and len(r) == 2 else None


def _write_frame_tags(conn: Any, video_id: int, mode: str, tags: Mapping[int, Sequence[Any]], meta: Any,
                      where: str) -> None:
    from pipeline.annotation import VideoTag

    new = {f: [VideoTag(t.meta, t.value, (f, f)) for t in ts] for f, ts in tags.items()}
    ops.check_video_tags([t for ts in new.values() for t in ts], meta, where)
    current = video_rows.get_tags(conn, video_id)
    video_rows.put_tags(conn, video_id, frame_tags(mode, current, {f: [t.to_json() for t in ts]
                                                                   for f, ts in new.items()}))


class _ObjectsOfGroup:
    """The objects and figures a group's kept labels make (module doc), checked, then written."""

    def __init__(self, conn: Any, video_id: int, job_id: str | None):
        self.conn, self.video_id, self.job_id = conn, video_id, job_id

    def _tracks(self, kept: Mapping[int, Sequence[PredictedLabel]]) -> dict[int, tuple[jobs.TrackRow, dict]]:
        """{track: (its job row, its object's stored JSON)} for the group's tracks the job has written before and
        whose objects still exist (an object deleted meanwhile: the track starts a new one)."""
        ids = {t for labs in kept.values() for _, t, _ in labs if t >= 0}
        if not ids:
            return {}
        if self.job_id is None:
            raise InvalidArgumentError("tracked predictions are uploaded by a job (it keeps each track's object)")
        rows = jobs.get_tracks(self.conn, self.job_id, self.video_id, ids)
        stored = video_rows.get_objects(self.conn, self.video_id, [r.object_key for r in rows.values()])
        return {t: (r, stored[r.object_key]) for t, r in rows.items() if r.object_key in stored}

    def write(self, kept: Mapping[int, Sequence[PredictedLabel]], size: tuple[int, int], frames_count: int,
              meta: Any, where: str) -> None:
        from pipeline.annotation import CONFIDENCE_TAG, VideoAnnotation, VideoFigure, VideoObject, VideoTag

        before = self._tracks(kept)
        tracks: dict[int, jobs.TrackRow] = {}
        holders: dict[int, Any] = {}  # a track's object as its figures refer to it (by key); tagged below
        single: list[Any] = []  # the objects of untracked labels
        figures: list[Any] = []
        for frame in sorted(kept):
            for lab, t, score in kept[frame]:
                if t < 0:
                    obj = VideoObject(lab.obj_class, (VideoTag(CONFIDENCE_TAG, score, (frame, frame)),))
                    single.append(obj)
                else:
                    if t not in tracks:
                        row, stored = before.get(t, (None, None))
                        tracks[t] = row or jobs.TrackRow(uuid.uuid4().hex, 0.0, 0, frame, frame)
                        # a track keeps the class its object has (class_aware=False lets a track's class vary)
                        cls = meta.get_obj_class(stored["classTitle"]) if stored else None
                        holders[t] = VideoObject(cls or lab.obj_class, key=tracks[t].object_key)
                    _add(tracks[t], frame, score)
                    obj = holders[t]
                figures.append(VideoFigure(obj, lab.geometry, frame))
        objects = {t: _track_object(holders[t].obj_class, r) for t, r in tracks.items()}
        ann = VideoAnnotation(size, frames_count, (*single, *objects.values()))
        ops.check_video_annotation(ann.add_figures(figures), meta, where)
        new = [o.to_json() for t, o in objects.items() if t not in before]
        video_rows.add_objects(self.conn, self.video_id, [*(o.to_json() for o in single), *new])
        video_rows.update_objects(self.conn, self.video_id, [_retagged(before[t][1], o.to_json()["tags"][0])
                                                             for t, o in objects.items() if t in before])
        video_rows.add_figures(self.conn, self.video_id, [(f.frame_index, f.to_json()) for f in figures])
        if tracks:
            jobs.put_tracks(self.conn, self.job_id, self.video_id, tracks)


def _retagged(stored: dict[str, Any], tag: dict[str, Any]) -> dict[str, Any]:
    """The stored object JSON with its track confidence tag (same key) replaced by `tag`; whatever else the object
    holds (its class, other tags, keys of other tools) stays as it is."""
    tags = [t for t in stored.get("tags") or () if t.get("key") != tag["key"]]
    return {**stored, "tags": [*tags, tag]}


def _add(row: jobs.TrackRow, frame: int, score: float) -> None:
    row.score_sum += score
    row.figures += 1
    row.first_frame, row.last_frame = min(row.first_frame, frame), max(row.last_frame, frame)


def _track_object(obj_class: Any, row: jobs.TrackRow) -> Any:
    """A track's video object: its key, class, and a `confidence` tag of its figures' mean score over the frames
    it was seen on (the tag's key derives from the object's, so rewriting the object keeps it)."""
    from pipeline.annotation import CONFIDENCE_TAG, VideoObject, VideoTag

    mean = round(row.score_sum / max(row.figures, 1), 4)
    tag = VideoTag(CONFIDENCE_TAG, mean, (row.first_frame, row.last_frame),
                   key=uuid.uuid5(uuid.NAMESPACE_OID, row.object_key).hex)
    return VideoObject(obj_class, (tag,), key=row.object_key)
