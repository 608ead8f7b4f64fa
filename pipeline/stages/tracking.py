"""Detections of a video linked into tracks, with Roboflow's `trackers` library (ByteTrack, SORT, OC-SORT,
BoT-SORT, ...), and the checks of `video_params={"tracker": ...}` / `tracking=True`.

    tracker = make_tracker("bytetrack", {"track_buffer": 60}, fps=30, stride=1)
    for frame in frames_in_order:                       # see pipeline.stages.reorder: frames must come in order
        ids = tracker.update(boxes, scores, class_ids)  # (N,) int64, -1 where a detection joined no track

One `VideoTracker` per video (its state is that video's tracks). A track id is unique within its video, from 0.

Settings pass through to the library's tracker class; the common ByteTrack names of the original ByteTrack code
(as Supervisely's serving apps use it), of Ultralytics' `bytetrack.yaml` and of supervision are mapped onto the
library's parameters (`SETTING_ALIASES`), and the library's own names are accepted too. `match_thresh` is a
*distance* (1 - IoU) in all three, so it becomes `minimum_iou_threshold = 1 - match_thresh`.

Our own settings:
* `class_aware` (default True): one tracker per class, so a track never changes class (a Supervisely video object
  cannot); a detection whose class flickers starts a new track instead. False: one tracker for all classes, a
  track's detections may differ in class (the caller picks the object's class).
* `dedupe_iou` (default 0.5, None = off): before tracking, of detections of different classes whose boxes
  overlap with IoU above it only the best-scored one is tracked, the others get -1. A detector often reports one
  object twice under two classes (the demo model: a small square also as a circle, at scores up to 0.95); each
  duplicate would otherwise become a track of its own (on the generated test video: 130 false positives, MOTA
  0.80 instead of 0.98). Cost: two objects of different classes overlapping that much are tracked as one until
  they part (the other coasts on its motion model).
* `track_low_thresh` (Ultralytics' name; default None): detections scoring below it are not given to the
  tracker and get -1.

Stride. With `stride` k the tracker sees every k-th frame. It is built with the effective frame rate `fps / k`, so
`lost_track_buffer` (in 30 fps frames) still means the same time, and each update is one step of its motion model.
What that costs: objects move k times further between two updates. Until a track's Kalman filter has a velocity
(its first updates) a detection must still overlap its own previous box (IoU >= `minimum_iou_threshold`, 0.1 by
default) to join it: roughly `k * speed < 0.8 * object size` (a 24 px object at 4 px/frame: fine at k = 3,
never tracked at k = 5). Fast or small objects, and crossing ones (the Kalman prediction bridges less well over
longer gaps), lose identity first.

A track's first detection. The library gives a track's id from its `minimum_consecutive_frames`-th (2) detection
on: the detection that started it comes back -1. `VideoTracker.started_by_previous` names, after each update, the
detections of the previous update that started a track confirmed now, and `TrackedVideo` holds each frame for one
more update to give them their track's id: a track's object starts on its first frame, and a detection seen once
stays -1. A tracker whose `minimum_consecutive_frames` is above 2 (SORT's default is 3) confirms a track later
than that: its frames before the confirmation stay -1.

Masks are accepted by `update` for the interface's sake; none of the library's trackers associates by mask from
detections alone (McByte's mask association needs the frames and a segmentation model), so they are not used.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.reorder import (
    ReorderBuffer,
    ReorderBuffers,
    ReorderOverflowError,
    reorder_capacity,
    rounds_in_step,
)
from pipeline.stages.video_params import DEFAULT_VIDEO_PARAMS

__all__ = [
    "DEFAULT_TRACKER",
    "OWN_SETTINGS",
    "SETTING_ALIASES",
    "ReorderBuffer",
    "ReorderBuffers",
    "ReorderOverflowError",
    "TrackedVideo",
    "TrackingConfig",
    "VideoTracker",
    "check_tracker_settings",
    "check_video_params_tracking",
    "known_trackers",
    "make_tracker",
    "reorder_capacity",
    "rounds_in_step",
    "tracker_settings",
]

DEFAULT_TRACKER = "bytetrack"
# Our settings, not the library's: see the module doc.
OWN_SETTINGS: dict[str, Any] = {"class_aware": True, "track_low_thresh": None, "dedupe_iou": 0.5}
# Other vocabularies -> the library's parameter. A callable maps the value; several targets: the first that the
# tracker has (SORT-style trackers have `minimum_iou_threshold`, BoT-SORT-style ones `..._first_assoc`).
_IOU_TARGETS = ("minimum_iou_threshold", "minimum_iou_threshold_first_assoc")
SETTING_ALIASES: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    # the original ByteTrack (and Supervisely's serving apps): track_thresh splits high / low scores, and a new
    # track needs track_thresh + 0.1 (`det_thresh` there) -- the library's defaults 0.6 / 0.7 are that pair
    "track_thresh": (("high_conf_det_threshold",), float),
    "track_buffer": (("lost_track_buffer",), int),
    "match_thresh": (_IOU_TARGETS, lambda v: round(1.0 - float(v), 9)),
    # Ultralytics bytetrack.yaml / botsort.yaml
    "track_high_thresh": (("high_conf_det_threshold",), float),
    "new_track_thresh": (("track_activation_threshold",), float),
    # supervision.ByteTrack
    "minimum_matching_threshold": (_IOU_TARGETS, lambda v: round(1.0 - float(v), 9)),
}
# Keys of other tools that have no counterpart here: refused with the reason rather than silently ignored.
_UNSUPPORTED = {
    "fuse_score": "the library's trackers match by IoU only (no score fusion)",
    "with_reid": "the library's trackers have no appearance re-identification",
    "proximity_thresh": "the library's trackers have no appearance re-identification",
    "appearance_thresh": "the library's trackers have no appearance re-identification",
    "gmc_method": "use 'cmc_method' (BoT-SORT), which needs the frames: not available to the collector",
    "mot20": "not a setting of the library's trackers",
}
# Switches of features that need the video's frames (or a segmentation model), which the collector does not have:
# off, and refused when turned on.
_NEEDS_FRAMES = {
    "enable_cmc": "camera-motion compensation needs the frames, which the collector does not have",
    "enable_mask_manager": "McByte's mask manager needs the frames and a segmentation model",
}
# Parameters whose values are objects (classes, models), not settings a user can spell in JSON or YAML.
_PLAIN = (bool, int, float, str)


def _registry() -> dict[str, type]:
    """The library's trackers by name: every `BaseTracker` subclass that declares a `tracker_id`."""
    import trackers  # noqa: F401 - importing it defines (and registers) every tracker class
    from trackers.core.base import BaseTracker

    out: dict[str, type] = {}
    todo = list(BaseTracker.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        name = getattr(cls, "tracker_id", None)
        if isinstance(name, str):
            out[name] = cls
    return dict(sorted(out.items()))


def known_trackers() -> list[str]:
    """The tracker names `make_tracker` accepts (those of the installed `trackers` library)."""
    return list(_registry())


def tracker_settings(name: str) -> dict[str, Any]:
    """The settings tracker `name` accepts, with their defaults: the library's plain-valued parameters and ours.
    `frame_rate` is accepted too but is not listed: it defaults to the video's own. Raises
    `InvalidArgumentError` for an unknown name."""
    import inspect

    cls = _tracker_class(name)
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name != "frame_rate" and p.default is not inspect.Parameter.empty and isinstance(p.default, _PLAIN):
            out[p.name] = p.default
    for key in _NEEDS_FRAMES:
        if key in out:
            out[key] = False
    return {**out, **OWN_SETTINGS}


def _tracker_class(name: Any) -> type:
    reg = _registry()
    if not isinstance(name, str) or name not in reg:
        close = difflib.get_close_matches(str(name), list(reg), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidArgumentError(f"unknown tracker {name!r}{hint}; the trackers are {', '.join(reg)}")
    return reg[name]


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, type(default))


def _check_value(tracker: str, key: str, value: Any, default: Any, given_as: str, given: Any = None) -> None:
    """`value` (the library's, after an alias's conversion) checked; errors name the setting as given and quote the
    value as given (`given`, e.g. match_thresh 1.5 for minimum_iou_threshold -0.5)."""
    where = f"tracker {tracker!r} setting {given_as!r}" + (f" (= {key!r})" if given_as != key else "")
    shown = value if given_as == key else given
    if value is None and key in OWN_SETTINGS:  # ours may be switched off
        return
    if not _type_ok(value, default):
        kind = ("a number" if default is None or isinstance(default, float) else "True or False"
                if isinstance(default, bool) else "an int" if isinstance(default, int) else "a string")
        raise InvalidArgumentError(f"{where} must be {kind}; got {value!r} ({type(value).__name__})")
    if key in _NEEDS_FRAMES and value:
        raise InvalidArgumentError(f"{where} cannot be True here: {_NEEDS_FRAMES[key]}")
    if value is None or isinstance(value, bool | str):
        return
    if ("thresh" in key or key.endswith("iou")) and not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{where} must lie in [0, 1]; got {shown!r}")
    if key in ("lost_track_buffer", "minimum_consecutive_frames", "delta_t", "cmc_downscale") and value < 0:
        raise InvalidArgumentError(f"{where} must be >= 0; got {shown!r}")
    if key == "frame_rate" and value <= 0:
        raise InvalidArgumentError(f"{where} must be > 0 (frames per second); got {shown!r}")


def check_tracker_settings(name: str, settings: Mapping[str, Any] | None,
                           other_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Tracker `name`'s settings checked and mapped onto the library's names, defaults filled in: every key of
    `tracker_settings(name)` plus `frame_rate` when given. Unknown keys, keys another tool has but the library
    lacks, values of the wrong type or out of range, and an alias given together with its target are
    `InvalidArgumentError`s naming the key; an unknown key's did-you-mean also looks at `other_keys` (the frame
    keys that sit beside the settings in `video_params`)."""
    accepted = tracker_settings(name)
    settings = dict(settings or {})
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in settings.items():
        if key == "tracker_type":  # Ultralytics' yaml names its tracker too
            if value != name:
                raise InvalidArgumentError(f"tracker_type {value!r} contradicts tracker {name!r}")
            continue
        target, mapped = _resolve(name, key, value, accepted, other_keys)
        if target in given_as:
            raise InvalidArgumentError(f"tracker {name!r}: {given_as[target]!r} and {key!r} both set {target!r}; "
                                       "give one of them")
        default = accepted.get(target, 30.0 if target == "frame_rate" else None)
        _check_value(name, target, mapped, default, key, value)
        out[target] = float(mapped) if isinstance(default, float) and isinstance(mapped, int | float) else mapped
        given_as[target] = key
    if "track_thresh" in given_as.values() and "track_activation_threshold" in accepted \
            and "track_activation_threshold" not in given_as:
        out["track_activation_threshold"] = min(1.0, round(out["high_conf_det_threshold"] + 0.1, 9))
    return {**accepted, **out}


def _resolve(name: str, key: Any, value: Any, accepted: Mapping[str, Any],
             other_keys: Sequence[str] = ()) -> tuple[str, Any]:
    """(library parameter, value in its units) for setting `key` of tracker `name`."""
    if key in accepted or key == "frame_rate":
        return key, value
    if key in SETTING_ALIASES:
        targets, convert = SETTING_ALIASES[key]
        target = next((t for t in targets if t in accepted), None)
        if target is not None:
            if not _type_ok(value, 0 if convert is int else 0.0):
                kind = "an int" if convert is int else "a number"
                raise InvalidArgumentError(f"tracker {name!r} setting {key!r} (= {targets[0]!r}) must be {kind}; "
                                           f"got {value!r} ({type(value).__name__})")
            return target, convert(value)
        raise InvalidArgumentError(f"tracker {name!r} has no counterpart of {key!r} (it would set "
                                   f"{' or '.join(targets)})")
    if key in _UNSUPPORTED:
        raise InvalidArgumentError(f"tracker setting {key!r} is not supported: {_UNSUPPORTED[key]}")
    aliases = [a for a, (targets, _) in SETTING_ALIASES.items() if any(t in accepted for t in targets)]
    names = [*accepted, "frame_rate", *aliases]
    close = difflib.get_close_matches(str(key), [*names, *other_keys], n=1)
    if close and close[0] in other_keys and close[0] not in names:
        raise InvalidArgumentError(f"unknown video_params key {key!r} (did you mean {close[0]!r}?); the keys are "
                                   f"{', '.join(other_keys)}, 'tracker' and tracker {name!r}'s settings")
    raise InvalidArgumentError(f"unknown setting {key!r} for tracker {name!r}"
                               + (f" (did you mean {close[0]!r}?)" if close else "")
                               + f"; its settings are {', '.join(sorted(set(names)))}")


def _spawned_tracklets(lib: Any, before: set[int], key: int, boxes: np.ndarray, ids: np.ndarray,
                       sel: np.ndarray) -> list[tuple[int, Any, int]]:
    """(key, tracklet, detection index) of each track library tracker `lib` started in its last update: a
    tracklet that was not there before, not confirmed yet, whose box is that of one of `sel`'s detections left
    without an id (a new tracklet's state is its first box). Empty for a tracker that keeps no `tracks` list."""
    found = []
    free = [int(i) for i in sel if ids[int(i)] < 0]
    for t in getattr(lib, "tracks", ()):
        if id(t) in before or getattr(t, "tracker_id", 0) != -1 or not free:
            continue
        try:
            box = np.asarray(t.get_state_bbox(), dtype=np.float64).reshape(4)
        except Exception:  # a tracklet of another shape: no backfill for it
            continue
        dist = np.abs(boxes[free].astype(np.float64) - box).max(axis=1)
        j = int(np.argmin(dist))
        if dist[j] <= 1e-3 * max(1.0, float(np.abs(box).max())):
            found.append((key, t, free.pop(j)))
    return found


def _best_of_overlaps(boxes: np.ndarray, scores: np.ndarray, usable: np.ndarray, thr: float) -> np.ndarray:
    """(N,) bool: greedy NMS over all classes among the `usable` detections (IoU > thr suppresses)."""
    keep = np.zeros(len(boxes), bool)
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        return keep
    b = boxes[idx].astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(idx), bool)
    for i in np.argsort(-scores[idx], kind="stable"):
        if not alive[i]:
            continue
        keep[idx[i]] = True
        iw = np.clip(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]), 0, None)
        inter = iw * ih
        union = area[i] + area - inter
        alive &= ~(np.where(union > 0, inter / np.where(union > 0, union, 1), 0) > thr)
    return keep


class VideoTracker:
    """One video's tracks. `update` once per selected frame, in order; `skip` for a frame without usable
    detections (a failed frame), so the tracks' motion models still advance one step."""

    def __init__(self, name: str, factory: Callable[[], Any], class_aware: bool = True,
                 low_thresh: float | None = None, dedupe_iou: float | None = 0.5) -> None:
        self.name = name
        self._factory = factory
        self.class_aware = class_aware
        self.low_thresh = low_thresh
        self.dedupe_iou = dedupe_iou
        self._trackers: dict[int, Any] = {}  # class id (or -1 when class-agnostic) -> library tracker
        self._ids: dict[tuple[int, int], int] = {}  # (class key, the library's id) -> our track id
        self.frames = 0
        # Tracks the library started in the last update (not confirmed yet): (class key, its tracklet, the index of
        # the detection it started from). See `started_by_previous`.
        self._spawned: list[tuple[int, Any, int]] = []
        # {detection index of the previous update: our track id}: the detections that started a track the
        # library confirmed in the last update (it gives an id from a track's second detection on).
        self.started_by_previous: dict[int, int] = {}

    def _tracker(self, key: int) -> Any:
        if key not in self._trackers:
            self._trackers[key] = self._factory()
        return self._trackers[key]

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
               masks: np.ndarray | None = None) -> np.ndarray:
        """Track ids (N,) int64 for one frame's detections: boxes (N, 4) xyxy pixels, scores (N,), class_ids (N,).
        -1 where the detection joined no (confirmed) track. `masks` (N, H, W) is accepted and not used."""
        import supervision as sv

        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        n = len(boxes)
        if len(scores) != n or len(class_ids) != n:
            raise InvalidArgumentError(f"update: {n} boxes, {len(scores)} scores and {len(class_ids)} class ids")
        out = np.full(n, -1, dtype=np.int64)
        usable = np.ones(n, bool) if self.low_thresh is None else scores >= self.low_thresh
        if self.dedupe_iou is not None:
            usable &= _best_of_overlaps(boxes, scores, usable, self.dedupe_iou)
        keys = np.where(usable, class_ids if self.class_aware else -1, -2)
        spawned_before, self._spawned = self._spawned, []
        for key in sorted(set(self._trackers) | {int(k) for k in keys[usable]}):
            sel = np.flatnonzero(keys == key)
            det = sv.Detections(xyxy=boxes[sel], confidence=scores[sel], class_id=class_ids[sel],
                                data={"index": sel})
            lib = self._tracker(key)
            before = {id(t) for t in getattr(lib, "tracks", ())}
            res = lib.update(det)
            for i, tid in zip(res.data.get("index", []), res.tracker_id):
                if tid >= 0:
                    out[int(i)] = self._ids.setdefault((key, int(tid)), len(self._ids))
            self._spawned += _spawned_tracklets(lib, before, key, boxes, out, sel)
        self.started_by_previous = {}
        for key, tracklet, index in spawned_before:
            tid = getattr(tracklet, "tracker_id", -1)
            if isinstance(tid, int | np.integer) and tid >= 0 and (key, int(tid)) in self._ids:
                self.started_by_previous[index] = self._ids[(key, int(tid))]
        self.frames += 1
        return out

    def skip(self) -> None:
        """A frame the tracker cannot use (its prediction failed): every track coasts one step."""
        empty = np.zeros((0,), np.float32)
        self.update(np.zeros((0, 4), np.float32), empty, empty.astype(np.int64))

    @property
    def tracks(self) -> int:
        """Track ids given so far."""
        return len(self._ids)


def make_tracker(name: str = DEFAULT_TRACKER, settings: Mapping[str, Any] | None = None, *,
                 fps: float | None = None, stride: int = 1) -> VideoTracker:
    """A `VideoTracker` for one video: tracker `name` of the `trackers` library with `settings` (checked by
    `check_tracker_settings`), at the effective frame rate (`settings['frame_rate']`, else `fps`, else 30) /
    `stride`. Raises `InvalidArgumentError` for an unknown tracker or a bad setting."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InvalidArgumentError(f"stride must be an int >= 1; got {stride!r}")
    cls = _tracker_class(name)
    params = check_tracker_settings(name, settings)
    own = {k: params.pop(k) for k in OWN_SETTINGS}
    rate = float(params.pop("frame_rate", None) or fps or 30.0)
    if not math.isfinite(rate) or rate <= 0:
        raise InvalidArgumentError(f"the video's frame rate must be > 0; got {rate!r}")
    params["frame_rate"] = rate / stride
    factory = functools.partial(cls, **params)  # a partial, not a closure: a VideoTracker pickles (resume)
    try:
        factory()  # the library's own checks, before any frame
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"tracker {name!r} refused its settings: {exc}") from None
    return VideoTracker(name, factory, class_aware=bool(own["class_aware"]), low_thresh=own["track_low_thresh"],
                        dedupe_iou=own["dedupe_iou"])


class TrackedVideo:
    """One video's frames through its `ReorderBuffer` into its `VideoTracker`: the collector's seam.

    `push(pos, item, detections)` with `detections` = (boxes (N, 4), scores (N,), class_ids (N,)) of a frame that
    predicted, or None for a failed frame; returns `[(item, track_ids or None), ...]` for the frames now tracked,
    in order, track ids (N,) int64 aligned with that frame's detections. A frame comes out one update after it was
    tracked (its detections that started a track get that track's id: module doc), the last one with the video's
    last. Whatever order the frames come in, the ids are those of tracking the frames in order. A `TrackedVideo`
    pickles (the tracker state for a resume)."""

    def __init__(self, tracker: VideoTracker, buffer: ReorderBuffer) -> None:
        self.tracker = tracker
        self.buffer = buffer
        self._last: tuple[Any, Any] | None = None  # the frame tracked last, held for one more update

    def push(self, pos: int, item: Any, detections: tuple[Any, Any, Any] | None) -> list[tuple[Any, Any]]:
        out = []
        for it, dets in self.buffer.push(pos, (item, detections)):
            if dets is None:
                self.tracker.skip()
                ids = None
            else:
                ids = self.tracker.update(*dets)
            if self._last is not None:
                out.append(self._with_starts(*self._last))
            self._last = (it, ids)
        if self.buffer.done and self._last is not None:
            out.append(self._last)
            self._last = None
        return out

    def _with_starts(self, item: Any, ids: Any) -> tuple[Any, Any]:
        """The held frame with the tracks the last update confirmed given their first detection too."""
        starts = self.tracker.started_by_previous
        if ids is None or not starts:
            return item, ids
        ids = ids.copy()
        for index, tid in starts.items():
            ids[index] = tid
        return item, ids

    def finish(self) -> list[tuple[Any, Any]]:
        """The video is over: the frame still held (when the buffer did not know the video's length)."""
        self.buffer.finish()
        last, self._last = self._last, None
        return [last] if last is not None else []


@dataclass
class TrackingConfig:
    """What `check_video_params_tracking` found: the tracker's name and its settings (as given, checked)."""

    tracker: str = DEFAULT_TRACKER
    settings: dict[str, Any] = field(default_factory=dict)

    def make(self, fps: float | None, stride: int = 1) -> VideoTracker:
        return make_tracker(self.tracker, self.settings, fps=fps, stride=stride)

    def video(self, fps: float | None, stride: int, capacity: int, total: int | None = None,
              pause_at: int | None = None, name: str = "the video") -> TrackedVideo:
        """A `TrackedVideo` for one video: its tracker and a reorder buffer of `capacity` (`reorder_capacity`)."""
        return TrackedVideo(self.make(fps, stride), ReorderBuffer(capacity, total, pause_at, name))


def _video_keys() -> list[str]:
    return list(DEFAULT_VIDEO_PARAMS)


def check_video_params_tracking(video_params: Any, tracking: Any = None, is_video: bool = True,
                                what: str = "an input that is not a video",
                                ) -> tuple[dict[str, Any] | None, TrackingConfig | None]:
    """Split `video_params` into (the frame-selection keys for `check_video_params`, the tracking config or None).

    `video_params={"tracker": "bytetrack", "track_buffer": 60, "stride": 2}`: the tracker and its settings sit
    next to the frame keys. `tracking=True` (the seed-style alias) means ByteTrack with its defaults unless
    `video_params` names a tracker; `tracking=False` with a tracker named is a contradiction. Raised before any
    work, as `InvalidArgumentError`: an unknown tracker, a bad setting, settings with no tracker, a key that is
    neither (with a did-you-mean over both), `tracking` that is not a bool, tracking on a non-video input
    (`is_video=False`; `what` says what it is)."""
    if tracking is not None and not isinstance(tracking, bool):
        raise InvalidArgumentError(f"tracking must be True or False; got {tracking!r}")
    if video_params is not None and not isinstance(video_params, Mapping):
        raise InvalidArgumentError(f"video_params must be a dict; got {type(video_params).__name__}")
    frame_keys = _video_keys()
    given = dict(video_params or {})
    rest = {k: v for k, v in given.items() if k in frame_keys}
    extra = {k: v for k, v in given.items() if k not in frame_keys}
    rest_or_none = None if video_params is None else rest
    name = extra.pop("tracker", None)
    if name is None and tracking:
        name = DEFAULT_TRACKER
    if name is not None and tracking is False:
        raise InvalidArgumentError(f"tracking=False contradicts video_params['tracker']={name!r}; drop one")
    if name is None:
        if extra:
            _refuse_untracked(extra, frame_keys)
        return rest_or_none, None
    if not is_video:
        raise InvalidArgumentError(f"tracking links detections across the frames of a video; got {what}: give a "
                                   "video file, a video_id, or a directory with videos (or leave tracking out)")
    _tracker_class(name)
    check_tracker_settings(name, extra, frame_keys)
    return rest_or_none, TrackingConfig(name, extra)


def _refuse_untracked(extra: dict[str, Any], frame_keys: list[str]) -> None:
    """Keys beside the frame keys while no tracker is asked for: tracker settings without a tracker, or typos."""
    every = sorted({k for n in known_trackers() for k in tracker_settings(n)} | set(SETTING_ALIASES))
    key = next(iter(extra))
    if key in every:
        raise InvalidArgumentError(f"video_params[{key!r}] is a tracker setting, but no tracker is set: add "
                                   f"video_params['tracker'] (one of {', '.join(known_trackers())}) or "
                                   "tracking=True")
    close = difflib.get_close_matches(str(key), [*frame_keys, "tracker", *every], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InvalidArgumentError(f"unknown video_params key {key!r}{hint}"
                               + f"; the keys are {', '.join(frame_keys)}, 'tracker' and the tracker's settings")
