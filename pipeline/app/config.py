"""YAML pipelines: the schema of the pipeline config (`model`, `input`, `predict`, `upload`, `output`, `ray`) in pydantic.

    cfg = load_config("configs/predict_directory.yaml", overrides=["predict.batch_size=8"])
    model = deploy(api, cfg)                       # pipeline/app/runner.py: the one path shared with the CLI
    session = model.predict_detached(**cfg.predict_kwargs())

Loading goes: file -> YAML node tree (with line marks) -> `${VAR}` expansion on the tree -> plain data -> `--set`
overrides -> validation. Every error is a `ConfigError` whose message names the file, the line and the dotted key
(`configs/x.yaml, line 4: model.checkpont: unknown key (did you mean 'checkpoint'?)`), or the `--set` that
introduced it.

Paths in a config (checkpoint, input, outputs) are used as written: a relative path is relative to the current
working directory of the process that runs the pipeline (users run `pipeline run configs/x.yaml` from the project
root; a submitted job runs in its uploaded copy of the project root). See docs/configs.md.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.app.config_yaml import (
    LocatedError,
    expand_env,
    expand_tree,
    first_line,
    format_errors,
    line_of,
    override,
    parse_override,
    yaml_problem,
)
from pipeline.deploy.models import bare_weights_name
from pipeline.exceptions import ConfigError, InvalidArgumentError, ModelLoadError
from pipeline.stages import args as _args
from pipeline.stages.video_params import DEFAULT_VIDEO_PARAMS

__all__ = [
    "PipelineConfig",
    "ModelSection",
    "InputSection",
    "PredictSection",
    "UploadSection",
    "OutputSection",
    "RaySection",
    "load_config",
    "parse_override",
    "expand_env",
    "check_ray_address",
]

SECTIONS = ("model", "input", "predict", "upload", "output", "ray")
MODEL_SOURCES = ("checkpoint", "pretrained", "task_id")
INPUT_SOURCES = ("path", "paths", "url", "project_id", "dataset_id", "image_ids", "video_id")
PLATFORM_SOURCES = ("project_id", "dataset_id", "image_ids", "video_id")
# A number > 0 that is finite: YAML's `.inf` (and `.nan`) are floats, and pydantic's PositiveFloat takes infinity.
FinitePositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


# ---------------------------------------------------------------------------------------------------------------
# The schema


class _Section(BaseModel):
    # Unknown keys are errors: a typo (`batchsize`) must not silently fall back to a default.
    # Strict types: YAML has native booleans and numbers, so `batch_size: '8'`, `recursive: 'yes'` or
    # `duration: true` are mistakes (as they are for the Python API), not values to coerce. `${VAR}` and `--set`
    # values are read as YAML too (`batch_size: ${BATCH:-8}` is the number 8), so strict types suit them; an int
    # is still a valid float (`duration: 20`).
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(_Section):
    """Which model: exactly one of `checkpoint`, `pretrained`, `task_id`; and how to deploy it."""

    checkpoint: str | None = None  # local path, file:// or any pyarrow.fs URI
    pretrained: str | None = None  # "<framework>/<name>", e.g. torchvision/fasterrcnn_mobilenet_v3_large_320_fpn
    task_id: PositiveInt | None = None  # connect to a running deployment instead of deploying
    device: str | None = None  # None: cuda when the cluster has GPUs, else cpu
    replicas: PositiveInt | None = None  # None: one per GPU (one on CPU)
    gpus_per_replica: FinitePositiveFloat = 1.0
    runtime: Literal["pytorch", "onnx", "tensorrt"] | None = None  # how a framework's own file runs (None: its own)
    reuse: bool = False  # use a running deployment of the same model and device instead of starting one
    # None: shut down what this run deployed (not a reused or connected deployment); true: shut down the model
    # the run used, whoever started it; false: leave it running (its task id is printed).
    shutdown: bool | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"cpu|gpu|cuda(:\d+)?", v.lower()):
            raise ValueError(f"expected cpu, cuda (or gpu), got {v!r}")
        return v

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){1,2}(@[A-Za-z0-9_.-]+)?", v):
            raise ValueError(
                f"expected '<framework>/<name>' (e.g. 'torchvision/fasterrcnn_mobilenet_v3_large_320_fpn', or "
                f"'hf/<owner>/<repo>'), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        given = [k for k in MODEL_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one of checkpoint, pretrained or task_id; got {got}")
        if self.task_id is not None:
            deploy_keys = [k for k in ("device", "replicas", "gpus_per_replica", "reuse") if k in self.model_fields_set]
            if deploy_keys:
                raise ValueError(
                    f"task_id connects to a running deployment, so {', '.join(deploy_keys)} do not apply; "
                    "remove them (or deploy with checkpoint/pretrained)"
                )
        return self

    @property
    def ref(self) -> str | None:
        """What `api.nn.deploy(model=...)` takes: the checkpoint or the pretrained name (None for task_id)."""
        return self.checkpoint if self.checkpoint is not None else self.pretrained


class InputSection(_Section):
    """What to predict: exactly one source."""

    path: str | None = None  # an image, a directory, a video file, a local Supervisely project folder, or an
    # object-store URI (s3://bucket/prefix/, gs://..., hdfs://...: an object or every image under a prefix)
    paths: list[str] | None = Field(default=None, min_length=1)
    url: str | None = None
    project_id: PositiveInt | None = None
    dataset_id: PositiveInt | None = None
    image_ids: list[PositiveInt] | None = Field(default=None, min_length=1)
    video_id: PositiveInt | None = None
    recursive: bool = False  # directories: include sub-directories

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r} (use input.path for files)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> InputSection:
        given = [k for k in INPUT_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one source ({', '.join(INPUT_SOURCES)}); got {got}")
        return self

    @property
    def source(self) -> str:
        return next(k for k in INPUT_SOURCES if getattr(self, k) is not None)

    @property
    def from_platform(self) -> bool:
        return self.source in PLATFORM_SOURCES


class VideoParams(_Section):
    """Which frames of a video (docs/video.md); a key left out keeps the video stage's default. `tracker` and its
    settings (any other key: `track_buffer: 60`, ...) link detections into tracks; they are checked with
    `predict.tracking` by `PredictSection`, as predict() checks them."""

    model_config = ConfigDict(extra="allow", strict=True)

    tracker: str | None = None  # bytetrack, sort, ocsort, botsort, ... (the `trackers` library's names)
    stride: PositiveInt | None = None
    start_frame: int | None = Field(default=None, ge=0)
    end_frame: int | None = Field(default=None, ge=0)
    num_frames: PositiveInt | None = None
    duration: FinitePositiveFloat | None = None  # seconds


class PredictSection(_Section):
    batch_size: PositiveInt | None = None  # None: the model's default
    img_size: Any = None  # int (square side) or [height, width]; None: the model's default
    classes: list[str] | None = None  # class names to keep
    settings: dict[str, Any] = Field(default_factory=dict)  # conf, iou, max_det, iou_merge_threshold, model keys
    video_params: VideoParams | None = None
    tiling: dict[str, Any] | bool | None = None  # {tile, overlap, merge, full_image, ...}: docs/api.md, "tiling"

    @field_validator("tiling")
    @classmethod
    def _tiling(cls, v: Any) -> Any:
        from workers.tiling import check_tiling

        try:
            check_tiling(v)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None
        return v
    # true: ByteTrack with its defaults unless video_params.tracker names another. Always validated (even left out):
    # its validator checks the tracker and its settings with the section's other fields, so that their errors are
    # reported together with the others (a model validator would run only once every field is valid).
    tracking: bool | None = Field(default=None, validate_default=True)

    @field_validator("tracking")
    @classmethod
    def _tracking(cls, tracking: bool | None, info: ValidationInfo) -> bool | None:
        """The tracker and its settings as predict() checks them (the input's kind is checked at run time)."""
        if "video_params" not in info.data:  # it failed its own validation: that error says enough
            return tracking
        video_params = info.data["video_params"]
        params = video_params.model_dump(exclude_unset=True) if video_params is not None else None
        if not tracking and not (params and set(params) - set(DEFAULT_VIDEO_PARAMS)):
            return tracking
        from pipeline.stages.tracking import check_video_params_tracking

        try:
            check_video_params_tracking(params, tracking)
        except InvalidArgumentError as exc:
            text = str(exc)
            # blame the key the message names (a setting before `tracker`, which every setting's message names
            # too), or whose value it quotes, else the section
            items = list((params or {}).items())
            key = next((k for k, _ in items if k != "tracker" and f"{k!r}" in text), None) or next(
                (k for k, v in items if f"{k!r}" in text or f"{v!r}" in text), None)
            loc = ("predict", "video_params", key) if key else ("predict", "tracking" if params is None
                                                               else "video_params")
            raise LocatedError(loc, text) from None
        return tracking

    @field_validator("img_size")
    @classmethod
    def _img_size(cls, v: Any) -> Any:
        try:
            _args.parse_img_size(v)
        except InvalidArgumentError:
            raise ValueError(f"expected an int (square side) or [height, width] of positive ints, got {v!r}") from None
        return v

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = known_settings()
        for key in v:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise LocatedError(("predict", "settings", key),
                                    f"unknown setting{hint}; known settings: {', '.join(known)}")
        try:
            _args._check_settings(v)  # the values, as predict() checks them
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None
        return v


def known_settings() -> list[str]:
    """The keys `predict.settings` may hold: the model settings (conf, iou, max_det), every registered adapter's
    `default_settings`, and the pipeline's own (iou_merge_threshold, max_pixels, url_timeout)."""
    from workers.models import DEFAULT_SETTINGS, get_adapter, list_frameworks

    keys = [*_args.SETTING_ALIASES, *DEFAULT_SETTINGS, *_args.PIPELINE_SETTINGS]
    for framework in list_frameworks():  # imports the adapters' modules, not their frameworks (no torch)
        keys.extend(get_adapter(framework).default_settings)
    return list(dict.fromkeys(keys))


class UploadSection(_Section):
    # Numbers are accepted as job ids (`job_id: 42`) and kept as text (a lax field: strict mode never coerces).
    model_config = ConfigDict(coerce_numbers_to_str=True)

    mode: Literal["create", "append", "replace", "iou_merge"]
    job_id: str | None = Field(default=None, strict=False)  # resume this job: items already uploaded are skipped


class OutputSection(_Section):
    # Each a local path or an object-store URI (s3://, gs://, hdfs://: any pyarrow.fs URI).
    parquet: str | None = None  # a folder of Parquet parts, one row per object
    coco: str | None = None  # COCO-format JSON
    yolo: str | None = None  # a YOLO dataset folder (Ultralytics' layout)
    yolo_images: Literal["copy", "link"] | None = None  # the YOLO dataset's images: copies (default) or links
    # Without an upload, the run is a file job: a re-run with the same id resumes it (an upload's job is upload.job_id)
    job_id: str | None = Field(default=None, strict=False)
    model_config = ConfigDict(coerce_numbers_to_str=True)


class RaySection(_Section):
    # The GCS address (host:6379), ray://host:10001 or auto; None: $RAY_ADDRESS, else a local Ray.
    address: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)  # applied by `pipeline submit` to the job

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else check_ray_address(v)


def check_ray_address(address: str) -> str:
    """A Ray cluster address as `ray.init` takes it: host:port, ray://host[:port], auto or local. ValueError else."""
    if address.startswith(("http://", "https://")):
        raise ValueError(
            f"{address!r} looks like the dashboard (the address `pipeline submit --address` takes); a Ray cluster "
            "address is the GCS one, e.g. head:6379, ray://head:10001 or auto"
        )
    if address not in ("auto", "local") and not re.fullmatch(r"(ray://[^\s:/]+(:\d+)?|[^\s:/]+:\d+)", address):
        raise ValueError(f"expected host:port (e.g. head:6379), ray://host:10001 or auto, got {address!r}")
    return address


# The first words of predict()'s argument errors -> the config key they are about (PipelineConfig.located).
_ERROR_KEYS = (
    ("classes", "predict.classes"), ("video_params", "predict.video_params"), ("tracking", "predict.tracking"),
    ("tiling", "predict.tiling"), ("settings", "predict.settings"), ("img_size", "predict.img_size"),
    ("batch_size", "predict.batch_size"), ("upload", "upload.mode"), ("output", "output"), ("input", "input"),
)


class PipelineConfig(_Section):
    """A whole YAML pipeline. Build it with `load_config`; `predict_kwargs()` feeds `model.predict_detached`."""

    model: ModelSection
    input: InputSection
    predict: PredictSection = Field(default_factory=PredictSection)
    upload: UploadSection | None = None
    output: OutputSection | None = None
    ray: RaySection = Field(default_factory=RaySection)

    _path: Path | None = PrivateAttr(default=None)
    _data: dict[str, Any] = PrivateAttr(default_factory=dict)
    _overridden: dict[str, str] = PrivateAttr(default_factory=dict)  # dotted key -> the --set that gave it

    @field_validator("predict", "ray", mode="before")
    @classmethod
    def _empty_section(cls, v: Any) -> Any:
        return {} if v is None else v  # `predict:` with nothing under it

    @model_validator(mode="after")
    def _upload_fits_input(self) -> PipelineConfig:
        if self.upload is not None and self.upload.mode != "create" and not self.input.from_platform:
            raise LocatedError(
                ("upload", "mode"),
                f"{self.upload.mode!r} needs platform items (input.project_id, dataset_id, image_ids or "
                f"video_id); input.{self.input.source} is not. Use mode: create to store the results as a new project",
            )
        if self.upload is not None and self.output is not None and self.output.job_id is not None:
            raise LocatedError(("output", "job_id"), "with an upload the job is the upload's: give upload.job_id")
        return self

    @property
    def path(self) -> Path | None:
        """The file this config was loaded from."""
        return self._path

    @property
    def data(self) -> dict[str, Any]:
        """The config as plain data, after `${VAR}` expansion and `--set` overrides."""
        return self._data

    def predict_kwargs(self, job_id: str | None = None) -> dict[str, Any]:
        """The keyword arguments of `model.predict_detached(...)` / `model.predict(...)`.

        `job_id` (the CLI's --job-id) takes precedence over `upload.job_id`.
        """
        inp, pred = self.input, self.predict
        kw: dict[str, Any] = {}
        src = inp.source
        if src in ("path", "paths", "url"):
            kw["input"] = getattr(inp, src)
        else:
            kw[src] = getattr(inp, src)
        if inp.recursive:
            kw["recursive"] = True
        if pred.settings:
            kw["settings"] = dict(pred.settings)
        for key in ("batch_size", "img_size", "classes", "tiling"):
            value = getattr(pred, key)
            if value is not None:
                kw[key] = value
        if pred.video_params is not None:
            kw["video_params"] = pred.video_params.model_dump(exclude_unset=True)
        if pred.tracking is not None:
            kw["tracking"] = pred.tracking
        if self.upload is not None:
            kw["upload"] = self.upload.mode
        job = job_id if job_id is not None else (self.upload.job_id if self.upload is not None else None)
        if job is None and self.output is not None:
            job = self.output.job_id
        if job is not None:
            kw["job_id"] = job
        if self.output is not None:
            outputs = {k: v for k, v in self.output.model_dump(exclude={"job_id"}).items() if v is not None}
            if outputs:
                kw["output"] = outputs
        return kw

    def local_paths(self) -> list[tuple[str, str]]:
        """(dotted key, path) of the local files this config reads: the checkpoint and the input paths."""
        found = []
        if self.model.checkpoint is not None:
            found.append(("model.checkpoint", self.model.checkpoint))
        if self.input.path is not None:
            found.append(("input.path", self.input.path))
        for i, p in enumerate(self.input.paths or []):
            found.append((f"input.paths[{i}]", p))
        return [(k, p) for k, p in found if _is_local(p) and not (k == "model.checkpoint" and bare_weights_name(p))]

    def check_paths(self) -> None:
        """A local checkpoint or input path that does not exist is a `ConfigError` (before deploying anything);
        so is an Ultralytics weights name (`yolo11n.pt`) found in no weights folder."""
        if self.model.checkpoint is not None and bare_weights_name(self.model.checkpoint):
            from workers.models.ultralytics import resolve_weights

            try:
                resolve_weights(self.model.checkpoint)
            except ModelLoadError as exc:
                raise ConfigError(f"{self._where('model.checkpoint')}{exc}") from None
        for key, p in self.local_paths():
            local = p[len("file://"):] if p.startswith("file://") else p
            if not os.path.exists(os.path.expanduser(local)):
                where = self._where(key)
                rel = "" if os.path.isabs(local) else f" (relative paths are relative to the current directory, {os.getcwd()})"
                raise ConfigError(f"{where}{key}: {p!r} does not exist{rel}")

    def located(self, message: str) -> str:
        """An argument error of predict() (found before the model is deployed, `runner.precheck`) with the place in
        the file of the key it is about, when its first words name one ("classes must be ..." -> predict.classes)."""
        for words, key in _ERROR_KEYS:
            given = [text for dotted, text in self._overridden.items() if dotted.startswith(key)]
            if message.startswith(words) and given:  # a value given by --set: blamed, as load_config does
                return f"{self._path}: --set {given[0]}: {key}: {message}"
            if message.startswith(words) and line_of(self._path, key) is not None:
                return f"{self._where(key)}{key}: {message}"
        return message

    def _where(self, key: str) -> str:
        """"FILE, line N: " of `key` (what an error about it starts with)."""
        line = line_of(self._path, key)
        return f"{self._path}, line {line}: " if line is not None else f"{self._path}: " if self._path else ""

    def to_yaml(self, drop_address: bool = False) -> str:
        """The resolved config (variables expanded, overrides applied) as YAML. `drop_address`: leave out
        `ray.address`, for a job that runs inside the cluster it should attach to."""
        data = _deepcopy(self._data)
        if drop_address and isinstance(data.get("ray"), dict):
            data["ray"].pop("address", None)
        return yaml.safe_dump(data, sort_keys=False)


def _is_local(p: str) -> bool:
    return p.startswith("file://") or "://" not in p


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Loading and error messages


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, expand, override and validate a YAML pipeline. Raises `ConfigError` naming the key and the line."""
    p = Path(path)
    where = str(path)
    if not p.exists():
        raise ConfigError(f"config file {where!r} not found (relative to {os.getcwd()})")
    if p.is_dir():
        raise ConfigError(f"config {where!r} is a directory; give a YAML file, e.g. configs/predict_directory.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {where!r}: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}{yaml_problem(exc)}") from None
    if root is None:
        raise ConfigError(f"{where}: the file is empty; a pipeline needs the sections {', '.join(SECTIONS)}")
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else f"a single value ({root.value!r})"
        raise ConfigError(
            f"{where}: a pipeline config is a mapping of sections ({', '.join(SECTIONS)}); this file is {kind}"
        )
    expand_tree(root, where)
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {first_line(exc)}") from None
    finally:
        loader.dispose()

    overridden: dict[tuple[str, ...], str] = {}
    for text_override in overrides:
        parts, value = parse_override(text_override)
        override(data, parts, value, text_override)
        overridden[parts] = text_override

    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, root, where, overridden, _allowed_keys())) from None
    cfg._path = p
    cfg._data = data
    cfg._overridden = {".".join(parts): text for parts, text in overridden.items()}
    return cfg




def _allowed_keys() -> dict[str | None, list[str]]:
    """The keys of each section (and, under None, the sections), for the did-you-mean of an unknown key."""
    models: dict[str, type[BaseModel]] = {
        "model": ModelSection, "input": InputSection, "predict": PredictSection, "upload": UploadSection,
        "output": OutputSection, "ray": RaySection, "video_params": VideoParams,
    }
    return {None: list(SECTIONS), **{name: list(m.model_fields) for name, m in models.items()}}
