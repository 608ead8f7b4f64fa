"""The arguments of `predict` / `predict_detached`: aliases, checks and defaults, before any work starts.

Pure: no Ray, no files beyond `os.path` checks made by the source stage. Table-tested in tests/pipeline/test_args.py.
"""

from __future__ import annotations

import collections
import difflib
import math
import numbers
import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from pipeline.stages.video_params import check_video_params
from workers.formats import is_url, is_video_file
from workers.tiling import check_tiling

__all__ = ["ALIASES", "DEFAULT_IOU_MERGE_THRESHOLD", "PIPELINE_SETTINGS", "PredictArgs", "UPLOAD_MODES", "abs_path", "as_int",
           "describe_input", "normalize", "parse_img_size"]

UPLOAD_MODES = ("create", "append", "replace", "iou_merge")
PLATFORM_MODES = ("append", "replace", "iou_merge")
ID_SOURCES = ("project_id", "dataset_id", "image_ids", "video_id")
# Released Supervisely SDK names accepted as aliases: alias -> canonical.
ALIASES = {"image_id": "image_ids", "upload_mode": "upload"}
SETTING_ALIASES = ("conf", "iou", "max_det")
# The settings predict() reads besides the model's own: the upload's merge threshold and the loaders' limits.
PIPELINE_SETTINGS = ("iou_merge_threshold", "max_pixels", "url_timeout", "decode")
DECODE_MODES = ("auto", "full", "reduced", "gpu")  # settings["decode"]: workers.messages.DecodeOptions
DEFAULT_IOU_MERGE_THRESHOLD = 0.9
OUTPUT_FORMATS = ("parquet", "coco", "yolo")  # output={format: local path or object-store URI}

KNOWN = (
    "input", "project_id", "dataset_id", "image_ids", "video_id", "settings", "batch_size", "img_size", "classes",
    "upload", "recursive", "video_params", "job_id", "progress", "output", "max_in_flight", "tiling", "tracking",
)


@dataclass
class PredictArgs:
    input: Any = None
    project_id: int | None = None
    dataset_id: int | None = None
    image_ids: list[int] | None = None
    video_id: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    img_size: int | tuple[int, int] | None = None
    classes: list[str] | None = None
    upload: str | None = None
    recursive: bool = False
    video_params: dict[str, Any] | None = None
    job_id: str | None = None
    progress: bool = True
    output: dict[str, str] | None = None
    max_in_flight: int | None = None
    tiling: dict[str, Any] | None = None
    # True / False as given; after `normalize` the `TrackingConfig` (tracker and settings) or None
    tracking: Any = None
    prompts: list[str] | None = None  # an open-vocabulary model's `classes`: what it is told to find

    def class_names(self, model_classes: list[str]) -> list[str]:
        """The names the run's class ids index into: the prompts for an open-vocabulary model, else the model's
        classes."""
        return list(self.prompts) if self.prompts is not None else list(model_classes)

    @property
    def class_filter(self) -> list[str] | None:
        """The classes to keep of what the model found (None: all); prompts are no filter, they are the classes."""
        return None if self.prompts is not None else self.classes

    @property
    def source_name(self) -> str:
        given = [k for k in ID_SOURCES if getattr(self, k) is not None]
        return given[0] if given else "input"

    @property
    def from_platform(self) -> bool:
        return any(getattr(self, k) is not None for k in ID_SOURCES)


def as_int(value: Any) -> int | None:
    """`value` as an int if it is an integer (NumPy integers too, not bools); else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _int_id(name: str, value: Any) -> int:
    n = as_int(value)
    if n is None or n < 1:
        raise InvalidArgumentError(f"{name} must be a positive int; got {value!r}")
    return n


def parse_img_size(value: Any) -> int | tuple[int, int] | None:
    """None -> None; an int n stays n (a square side the image is fitted into, aspect kept, the framework's own
    way); (h, w) -> (h, w) (an exact size). Anything else is an error."""
    if value is None:
        return None
    n = as_int(value)
    if n is not None:
        if n < 1:
            raise InvalidArgumentError(f"img_size must be positive; got {value!r}")
        return n
    if isinstance(value, list | tuple) and len(value) == 2:
        h, w = as_int(value[0]), as_int(value[1])
        if h is not None and w is not None and h > 0 and w > 0:
            return (h, w)
    raise InvalidArgumentError(f"img_size must be an int (square side) or (height, width) of positive ints; got {value!r}")


def normalize(kwargs: dict[str, Any], model_classes: list[str] | None = None,
              model_settings: Iterable[str] | None = None, open_vocabulary: bool = False,
              task_type: str | None = None) -> PredictArgs:
    """Check and normalise predict() keyword arguments. Raises `InvalidArgumentError` (a ValueError).

    `model_classes` and `model_settings` (the setting keys the model's adapter declares) make unknown class names
    and unknown settings errors; `task_type` (the model's) decides whether and how its outputs merge across
    tiles. For an `open_vocabulary` model, `classes` are the prompts (what to find), not a
    filter: they become `args.prompts` and `settings["prompts"]`, and are required."""
    kw, settings = _unalias(kwargs)
    args = PredictArgs(**kw)
    args.settings = settings
    _check_source(args)
    args.batch_size = _positive("batch_size", args.batch_size)
    args.max_in_flight = _positive("max_in_flight", args.max_in_flight)
    _check_settings(settings, model_settings)
    if "img_size" in settings:  # also a setting (as in the Ultralytics and Supervisely APIs): one value only
        if args.img_size is not None and parse_img_size(args.img_size) != parse_img_size(settings["img_size"]):
            raise InvalidArgumentError(f"img_size given twice: img_size={args.img_size!r} and "
                                       f"settings['img_size']={settings['img_size']!r}")
        args.img_size = settings.pop("img_size")
    args.img_size = parse_img_size(args.img_size)
    args.classes = _check_classes(args.classes, None if open_vocabulary else model_classes)
    if open_vocabulary:
        _take_prompts(args, settings)
    _check_upload(args)
    if not isinstance(args.recursive, bool):
        raise InvalidArgumentError(f"recursive must be True or False; got {args.recursive!r}")
    args.video_params, args.tracking = _check_video(args)
    args.tiling = check_tiling(args.tiling, task_type)
    if args.tiling and settings.get("decode") in ("reduced", "gpu"):
        raise InvalidArgumentError(f"tiling decodes each image whole (its tiles are the model's input); "
                                   f"settings['decode']={settings['decode']!r} cannot apply: leave it out")
    return args


def _check_video(args: PredictArgs) -> tuple[dict[str, Any] | None, Any]:
    """(the frame selection, the `TrackingConfig` or None) from `video_params` and `tracking`: the tracker and its
    settings sit in `video_params` beside the frame keys (pipeline.stages.tracking). Tracking needs videos: a
    video file, a `video_id`, or a directory (which must hold videos: checked once it is walked, before any
    work); it may be asked for on a directory without choosing frames."""
    from pipeline.stages.tracking import check_video_params_tracking

    trackable = args.video_id is not None or (
        isinstance(args.input, str | os.PathLike) and not is_url(args.input)
        and (is_video_file(os.fspath(args.input)) or os.path.isdir(os.fspath(args.input))))
    frames, tracking = check_video_params_tracking(args.video_params, args.tracking, is_video=trackable,
                                                   what=describe_input(args.input) if args.from_platform is False
                                                   else args.source_name)
    if tracking is not None and not frames:
        frames = None  # only the tracker was chosen: every frame, also of a directory's videos
    return check_video_params(frames, args), tracking


def _unalias(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SDK's aliases resolved (`image_id`, `upload_mode`; `conf=` etc. into settings), unknown names refused:
    (the keyword arguments, the settings)."""
    kw = dict(kwargs)
    for alias, canonical in ALIASES.items():
        if alias in kw:
            if kw.get(canonical) is not None:
                raise InvalidArgumentError(f"pass either {alias} or {canonical}, not both")
            kw[canonical] = kw.pop(alias)
    raw_settings = kw.pop("settings", None)
    if raw_settings is not None and not isinstance(raw_settings, dict):
        raise InvalidArgumentError(f"settings must be a dict; got {type(raw_settings).__name__}")
    settings = dict(raw_settings or {})
    for key in SETTING_ALIASES:
        if key in kw:
            value = kw.pop(key)
            if key in settings and settings[key] != value:
                raise InvalidArgumentError(f"{key} given twice: {key}={value!r} and settings[{key!r}]={settings[key]!r}")
            settings[key] = value
    unknown = [k for k in kw if k not in KNOWN]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, KNOWN + tuple(ALIASES) + SETTING_ALIASES, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidArgumentError(f"unknown argument(s) to predict: {', '.join(hints)}")
    return kw, settings


def _check_source(args: PredictArgs) -> None:
    """Exactly one source; platform ids are positive ints."""
    sources = [k for k in ("input",) + ID_SOURCES if getattr(args, k) is not None]
    if not sources:
        raise InvalidArgumentError(
            "nothing to predict: pass input=... (path, URL, image, array, list, directory, video, project folder) "
            "or one of project_id, dataset_id, image_ids, video_id"
        )
    if len(sources) > 1:
        raise InvalidArgumentError(f"pass exactly one source; got {', '.join(sources)}")
    for name in ("project_id", "dataset_id", "video_id"):
        if getattr(args, name) is not None:
            setattr(args, name, _int_id(name, getattr(args, name)))
    if args.image_ids is not None:
        ids = args.image_ids if isinstance(args.image_ids, list | tuple) else [args.image_ids]
        if not ids:
            raise InvalidArgumentError("image_ids is empty")
        args.image_ids = [_int_id("image_ids", i) for i in ids]
    if isinstance(args.input, str | os.PathLike) and not os.fspath(args.input).strip():
        raise InvalidArgumentError("input is an empty path; give a file, directory, URL, image or array")


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    n = as_int(value)
    if n is None or n < 1:
        raise InvalidArgumentError(f"{name} must be a positive int; got {value!r}")
    return n


def _check_classes(classes: Any, model_classes: list[str] | None) -> list[str] | None:
    if classes is None:
        return None
    names = [classes] if isinstance(classes, str) else list(classes)
    if not all(isinstance(c, str) for c in names):
        raise InvalidArgumentError(f"classes must be a list of class names; got {classes!r}")
    if not names:
        raise InvalidArgumentError("classes is empty: it would drop every object; leave it out (None) to keep "
                                   "all classes")
    blank = [c for c in names if not c.strip()]
    if blank:
        raise InvalidArgumentError(f"classes must be non-empty names; got {blank!r} in {names!r}")
    if model_classes is not None:
        unknown = [c for c in names if c not in model_classes]
        if unknown:
            raise InvalidArgumentError(
                f"unknown class name(s) {unknown}; the model's classes are {sorted(set(model_classes))}"
            )
    return names


def _take_prompts(args: PredictArgs, settings: dict[str, Any]) -> None:
    """An open-vocabulary model's classes are its prompts: `classes=[...]` (or `settings["prompts"]`, the
    adapter's own name), required, each once."""
    given = settings.pop("prompts", None)
    if given is not None:
        given = _check_classes(given, None)
        if args.classes is not None and args.classes != given:
            raise InvalidArgumentError(f"prompts given twice: classes={args.classes!r} and "
                                       f"settings['prompts']={given!r}; pass classes=[...] only")
        args.classes = given
    if args.classes is None:
        raise InvalidArgumentError(
            "this model is text-prompted (open-vocabulary): it finds the classes you name and has none of its own; "
            "pass classes=[...], e.g. classes=['person', 'red car']"
        )
    repeated = sorted(c for c, n in collections.Counter(args.classes).items() if n > 1)
    if repeated:
        raise InvalidArgumentError(f"classes names {repeated} more than once; for a text-prompted model each class "
                                   "is a prompt: name each once")
    args.prompts = list(args.classes)
    settings["prompts"] = list(args.classes)


def _check_upload(args: PredictArgs) -> None:
    """The upload mode fits the source; job_id goes with an upload or an output; output names known formats."""
    if args.upload is not None:
        if args.upload not in UPLOAD_MODES:
            raise InvalidArgumentError(f"unknown upload mode {args.upload!r}; use one of {list(UPLOAD_MODES)}")
        _refuse_repeats(args)
        if args.upload in PLATFORM_MODES and not args.from_platform:
            raise InvalidArgumentError(
                f"upload={args.upload!r} needs platform items (project_id, dataset_id, image_ids or video_id); "
                f"got {describe_input(args.input)}. Use upload='create' to store these as a new project."
            )
    elif args.job_id is not None and not (isinstance(args.output, dict) and any(args.output.values())):
        raise InvalidArgumentError("job_id resumes an upload or a file output; pass it together with upload=... "
                                   "or output={...}")
    elif args.job_id is not None:
        _refuse_repeats(args)  # a resumed file job skips items by key: each item once
    if isinstance(args.output, dict):
        args.output = {k: v for k, v in args.output.items() if v is not None} or None
    if args.job_id is not None and (not isinstance(args.job_id, str) or not args.job_id.strip()):
        raise InvalidArgumentError(f"job_id must be a non-empty string; got {args.job_id!r}")
    if args.output is not None:
        formats = set(OUTPUT_FORMATS)
        if not isinstance(args.output, dict) or not set(args.output) <= formats | {"yolo_images"} \
                or not set(args.output) & formats:
            raise InvalidArgumentError(f"output must be a dict with keys {', '.join(map(repr, OUTPUT_FORMATS))} "
                                       f"(and 'yolo_images': 'copy' or 'link'); got {args.output!r}")


def abs_path(p: str | os.PathLike) -> str:
    """`p` absolute, with `~` expanded: the form item keys and messages use."""
    return os.path.abspath(os.path.expanduser(os.fspath(p)))


def _refuse_repeats(args: PredictArgs) -> None:
    """An upload job writes each item once: the same image id, or the same file, twice in one list is refused."""
    if args.image_ids is not None:
        seen = list(args.image_ids)
    elif isinstance(args.input, list | tuple):
        seen = [abs_path(v) for v in args.input if isinstance(v, str | os.PathLike) and not is_url(v)]
    else:
        return
    repeated = sorted(str(v) for v, n in collections.Counter(seen).items() if n > 1)
    if repeated:
        what = "image_ids" if args.image_ids is not None else "input"
        raise InvalidArgumentError(
            f"{what} lists {', '.join(repeated[:5])} more than once; a job (an upload, or files with job_id) "
            "writes each item once: pass each once (without upload= and job_id=, repeats are fine)"
        )


def _check_settings(settings: dict[str, Any], allowed: Iterable[str] | None = None) -> None:
    """The values of the settings the pipeline knows (numbers in range, finite); with `allowed` (the model's
    settings), any other key is an error, with a did-you-mean."""
    if allowed is not None:
        known = list(dict.fromkeys([*allowed, *PIPELINE_SETTINGS]))
        unknown = [k for k in settings if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), known, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise InvalidArgumentError(f"unknown setting(s) {', '.join(hints)}: this model takes "
                                       f"{', '.join(known)}")

    for key, value in settings.items():
        # any number of any setting, the adapter's own keys and numbers inside lists included: NaN passes every
        # range check (every comparison with it is False) and silently changes what a model keeps
        bad = _non_finite(value)
        if bad is not None:
            what = "be a finite number" if bad is value else f"hold finite numbers only ({bad!r} is not)"
            raise InvalidArgumentError(f"settings[{key!r}] must {what}; got {value!r}")

    def number(key: str, lo: float, hi: float, lo_open: bool = False) -> None:
        if key not in settings:
            return
        v = settings[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InvalidArgumentError(f"settings[{key!r}] must be a number; got {v!r}")
        if not math.isfinite(v):  # NaN passes every comparison; an infinite value is no threshold or timeout
            raise InvalidArgumentError(f"settings[{key!r}] must be a finite number; got {v!r}")
        if (v <= lo if lo_open else v < lo) or v > hi:
            bracket = "(" if lo_open else "["
            raise InvalidArgumentError(f"settings[{key!r}] must be in {bracket}{lo:g}, {hi:g}]; got {v!r}")

    if "decode" in settings and settings["decode"] not in DECODE_MODES:
        raise InvalidArgumentError(f"settings['decode'] must be one of {list(DECODE_MODES)}; got "
                                   f"{settings['decode']!r}")
    number("conf", 0.0, 1.0)
    number("iou", 0.0, 1.0)
    number("iou_merge_threshold", 0.0, 1.0, lo_open=True)
    number("url_timeout", 0.0, math.inf, lo_open=True)
    for key in ("max_det", "max_pixels"):
        if key in settings:
            v = as_int(settings[key])
            if v is None or v < 1:
                raise InvalidArgumentError(f"settings[{key!r}] must be a positive int; got {settings[key]!r}")
            settings[key] = v


def _non_finite(value: Any, depth: int = 0) -> Any:
    """The first NaN or infinite number in `value` (a number, or one inside lists, tuples and dict values), or
    None. Bools are not numbers here."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool | numbers.Integral):
        return None if math.isfinite(value) else value
    if depth < 4 and isinstance(value, list | tuple | dict):
        for v in value.values() if isinstance(value, dict) else value:
            bad = _non_finite(v, depth + 1)
            if bad is not None:
                return bad
    return None


def describe_input(value: Any) -> str:
    """A few words on what `input` is, for messages."""
    import os

    if value is None:
        return "nothing"
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if is_url(text):
            return "a URL"
        if "://" in text and not text.startswith("file://"):
            return "an object-store URI"
        if os.path.isdir(text):
            return "a project folder" if os.path.exists(os.path.join(text, "meta.json")) else "a directory"
        return "a file path"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} inputs"
    return f"a {type(value).__name__}"
