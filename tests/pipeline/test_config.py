"""YAML pipeline configs: every example validates; each kind of mistake names the key and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.app.config import PipelineConfig, expand_env, load_config, parse_override
from pipeline.exceptions import ConfigError, InvalidArgumentError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "configs").glob("*.yaml"))

GOOD = """\
model:
  checkpoint: ckpt.pth
  device: cpu
input:
  path: images
predict:
  batch_size: 4
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# --- the examples ------------------------------------------------------------------------------------------


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"predict_directory.yaml", "relabel_project.yaml", "video.yaml", "pretrained.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates(path, monkeypatch):
    # As shipped: every ${VAR} has a default, so the file validates with none of them set.
    for var in ("CHECKPOINT", "IMAGES", "VIDEO", "PROJECT_ID", "OUTPUT_DIR", "CLUSTER_PIPELINE_HOME", "JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(path)
    kwargs = cfg.predict_kwargs()
    sources = [k for k in ("input", "project_id", "dataset_id", "image_ids", "video_id") if k in kwargs]
    assert len(sources) == 1
    # What the CLI hands to predict passes predict's own argument checks.
    from pipeline.stages import args as _args

    _args.normalize(kwargs)
    assert cfg.to_yaml()  # a submit can ship it


def test_relabel_example_is_iou_merge_on_a_project():
    cfg = load_config(ROOT / "configs" / "relabel_project.yaml")
    assert cfg.upload.mode == "iou_merge" and cfg.input.project_id is not None


def test_pretrained_example_names_the_tiny_torchvision_detector():
    cfg = load_config(ROOT / "configs" / "pretrained.yaml")
    assert cfg.model.pretrained == "torchvision/fasterrcnn_mobilenet_v3_large_320_fpn"


# --- the schema --------------------------------------------------------------------------------------------


def test_predict_kwargs_maps_every_section(tmp_path):
    p = write(tmp_path, """\
        model: {checkpoint: c.pth}
        input: {project_id: 3}
        predict:
          batch_size: 8
          img_size: [240, 320]
          classes: [a]
          settings: {conf: 0.25}
          video_params: {stride: 2}
        upload: {mode: iou_merge, job_id: 42}
        output: {parquet: out/p.parquet}
        """)
    cfg = load_config(p)
    assert cfg.predict_kwargs() == {
        "project_id": 3, "batch_size": 8, "img_size": [240, 320], "classes": ["a"], "settings": {"conf": 0.25},
        "video_params": {"stride": 2}, "upload": "iou_merge", "job_id": "42", "output": {"parquet": "out/p.parquet"},
    }
    assert cfg.predict_kwargs(job_id="cli")["job_id"] == "cli"  # --job-id wins


def test_output_section_yolo_and_a_file_job(tmp_path):
    p = write(tmp_path, """\
        model: {checkpoint: c.pth}
        input: {path: "s3://bucket/imgs/?endpoint_override=127.0.0.1:9000&scheme=http", recursive: true}
        output: {parquet: "s3://bucket/p.parquet", yolo: ds, yolo_images: link, job_id: 7}
        """)
    kw = load_config(p).predict_kwargs()
    assert kw == {"input": "s3://bucket/imgs/?endpoint_override=127.0.0.1:9000&scheme=http", "recursive": True,
                  "job_id": "7", "output": {"parquet": "s3://bucket/p.parquet", "yolo": "ds", "yolo_images": "link"}}
    assert load_config(p).predict_kwargs(job_id="cli")["job_id"] == "cli"
    bad = write(tmp_path, GOOD + "upload: {mode: create}\noutput: {coco: c.json, job_id: x}\n")
    with pytest.raises(ConfigError, match="output.job_id: with an upload the job is the upload's"):
        load_config(bad)
    with pytest.raises(ConfigError, match="yolo_images"):
        load_config(write(tmp_path, GOOD + "output: {yolo: ds, yolo_images: hardlink}\n"))


@pytest.mark.parametrize("source,value,kw", [
    ("path", "imgs", {"input": "imgs"}),
    ("paths", ["a.jpg", "b.jpg"], {"input": ["a.jpg", "b.jpg"]}),
    ("url", "https://example.com/a.jpg", {"input": "https://example.com/a.jpg"}),
    ("dataset_id", 2, {"dataset_id": 2}),
    ("image_ids", [1, 2], {"image_ids": [1, 2]}),
    ("video_id", 5, {"video_id": 5}),
])
def test_each_input_source(source, value, kw):
    cfg = PipelineConfig.model_validate({"model": {"checkpoint": "c.pth"}, "input": {source: value}})
    assert cfg.predict_kwargs() == kw


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.replicas is None and cfg.model.gpus_per_replica == 1.0 and cfg.model.reuse is False
    assert cfg.model.shutdown is None  # shut down what the run deployed
    assert cfg.upload is None and cfg.output is None and cfg.ray.address is None and cfg.ray.runtime_env == {}


def test_empty_optional_sections_are_allowed(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace("predict:\n  batch_size: 4\n", "predict:\nray:\n")))
    assert cfg.predict.batch_size is None


def test_pretrained_and_task_id(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace("checkpoint: ckpt.pth", "pretrained: torchvision/fcos_resnet50_fpn")))
    assert cfg.model.ref == "torchvision/fcos_resnet50_fpn"
    cfg = load_config(write(tmp_path, "model: {task_id: 3}\ninput: {path: x}\n"))
    assert cfg.model.task_id == 3 and cfg.model.ref is None
    # a Hugging Face model: hf/<owner>/<repo>[@revision] (docs/models.md)
    for name in ("hf/google/owlv2-base-patch16-ensemble", "hf/PekingU/rtdetr_r50vd@main"):
        cfg = load_config(write(tmp_path, GOOD.replace("checkpoint: ckpt.pth", f"pretrained: {name}")))
        assert cfg.model.ref == name
    with pytest.raises(ConfigError, match="hf/<owner>/<repo>"):
        load_config(write(tmp_path, GOOD.replace("checkpoint: ckpt.pth", "pretrained: hf/a/b/c")))


# --- ${VAR} ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,env,expected", [
    ("${A}", {"A": "x"}, "x"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),  # as in the shell: the default also replaces an empty value
    ("${A:-}", {}, ""),
    ("pre/${A}/post", {"A": "mid"}, "pre/mid/post"),
    ("$$A and $${A}", {}, "$A and ${A}"),
    ("no vars", {}, "no vars"),
])
def test_expand_env(text, env, expected):
    assert expand_env(text, env) == expected


def test_unset_variable_without_default_names_it_and_the_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_TEST_UNSET", raising=False)
    msg = error_of(write(tmp_path, GOOD.replace("path: images", "path: ${PIPELINE_TEST_UNSET}")))
    assert "PIPELINE_TEST_UNSET" in msg and "line 5" in msg and "input.path" in msg


def test_variables_expand_and_plain_ones_are_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_BATCH", "16")
    monkeypatch.setenv("PIPELINE_TEST_DIR", "/data")
    p = write(tmp_path, """\
        model: {checkpoint: "${PIPELINE_TEST_DIR}/m.pth"}
        input:
          path: ${PIPELINE_TEST_DIR}/imgs
          recursive: ${PIPELINE_TEST_REC:-true}
        predict:
          batch_size: ${PIPELINE_TEST_BATCH}
          settings:
            conf: ${PIPELINE_TEST_CONF:-0.4}
          video_params:
            duration: ${PIPELINE_TEST_DURATION:-2.5}
        upload: {mode: create, job_id: "${PIPELINE_TEST_BATCH}"}
        """)
    cfg = load_config(p)
    assert cfg.model.checkpoint == "/data/m.pth" and cfg.input.path == "/data/imgs" and cfg.input.recursive is True
    assert cfg.predict.batch_size == 16 and cfg.predict.video_params.duration == 2.5
    assert cfg.predict.settings == {"conf": 0.4}
    assert cfg.upload.job_id == "16"
    # A quoted value stays a string, and a string is not a number (types are strict, as in the Python API).
    text = p.read_text().replace("batch_size: ${PIPELINE_TEST_BATCH}", 'batch_size: "${PIPELINE_TEST_BATCH}"')
    msg = error_of(write(tmp_path, text, "quoted.yaml"))
    assert "line 6: predict.batch_size: expected an integer, got '16'" in msg


# --- --set -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("predict.batch_size=32", (("predict", "batch_size"), 32)),
    ("model.reuse=true", (("model", "reuse"), True)),
    ("predict.settings.conf=0.3", (("predict", "settings", "conf"), 0.3)),
    ("predict.img_size=[240, 320]", (("predict", "img_size"), [240, 320])),
    ("input.path=/data/x y", (("input", "path"), "/data/x y")),
    ("model.checkpoint=null", (("model", "checkpoint"), None)),
    ("upload.job_id=a=b", (("upload", "job_id"), "a=b")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("bad", ["predict.batch_size", "=3", "predict..batch_size=3", "predict.batch size=3",
                                 "predict.img_size=[1, 2"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(bad)


def test_overrides_apply_and_create_sections(tmp_path):
    p = write(tmp_path, GOOD)
    cfg = load_config(p, ["predict.batch_size=32", "model.replicas=2", "upload.mode=create",
                          "predict.settings.conf=0.1", "model.checkpoint=null", "model.pretrained=torchvision/ssd300_vgg16",
                          "model.device=null"])
    assert cfg.predict.batch_size == 32 and cfg.model.replicas == 2 and cfg.upload.mode == "create"
    assert cfg.predict.settings == {"conf": 0.1} and cfg.model.ref == "torchvision/ssd300_vgg16"
    assert cfg.data["predict"]["batch_size"] == 32  # the resolved data a submit ships


def test_overrides_and_native_yaml_values_pass_the_strict_types(tmp_path):
    # --set values are read as YAML, so they arrive as the types the schema wants; ints are valid floats.
    p = write(tmp_path, GOOD + "upload: {mode: create, job_id: 42}\n")
    cfg = load_config(p, ["input.recursive=true", "model.gpus_per_replica=1", "model.reuse=false",
                          "predict.video_params.duration=20", "predict.video_params.start_frame=3",
                          "model.shutdown=true", "predict.settings.max_det=10"])
    assert cfg.input.recursive is True and cfg.model.gpus_per_replica == 1.0 and cfg.model.shutdown is True
    assert cfg.predict.video_params.duration == 20 and cfg.predict.video_params.start_frame == 3
    assert cfg.upload.job_id == "42"  # a number as a job id is kept as text
    msg = error_of(p, ["predict.batch_size='8'"])
    assert "--set predict.batch_size='8'" in msg and "expected an integer, got '8'" in msg


def test_every_known_setting_is_accepted_and_an_adapter_can_add_its_own(tmp_path, monkeypatch):
    from pipeline.app.config import known_settings

    settings = "{conf: 0.3, iou: 0.5, max_det: 50, iou_merge_threshold: 0.8, max_pixels: 1000000, url_timeout: 5}"
    p = write(tmp_path, GOOD.replace("batch_size: 4", f"settings: {settings}"))
    assert set(load_config(p).predict.settings) == {"conf", "iou", "max_det", "iou_merge_threshold", "max_pixels",
                                                     "url_timeout"}
    p = write(tmp_path, GOOD.replace("batch_size: 4", "settings: {conf: 0.3, tta: true}"))
    assert "predict.settings.tta: unknown setting" in error_of(p)

    # A model-specific key is one an adapter declares in its default_settings.
    from workers.models import base

    class Adapter(base.ModelAdapter):
        default_settings = {**base.DEFAULT_SETTINGS, "tta": False}

        def load(self, state_dict):
            pass

        def predict(self, batch, settings):
            return []

    base.list_frameworks()  # the built-in adapters first, as they would be
    monkeypatch.setitem(base._ADAPTERS, "test-framework", Adapter)
    assert "tta" in known_settings()
    assert load_config(p).predict.settings == {"conf": 0.3, "tta": True}


def test_override_errors_name_the_override(tmp_path):
    p = write(tmp_path, GOOD)
    for override, key in [("model.gpus_per_replica=.inf", "model.gpus_per_replica"),
                          ("predict.video_params.duration=.inf", "predict.video_params.duration"),
                          ("predict.settings.conf=.nan", "settings['conf'] must be a finite number")]:
        msg = error_of(p, [override])
        assert f"--set {override}" in msg and key in msg, msg
    msg = error_of(p, ["predict.batch_size=many"])
    assert "--set predict.batch_size=many" in msg and "expected an integer" in msg
    msg = error_of(p, ["model.checkpoint.x=1"])
    assert "model.checkpoint" in msg and "not a section" in msg
    msg = error_of(p, ["predict.batchsize=1"])
    assert "unknown key" in msg and "batch_size" in msg
    # a tracker setting given by --set is blamed, not the file's `tracker:` line that every such message names
    tracked = ["predict.video_params.tracker=bytetrack"]
    msg = error_of(p, [*tracked, "predict.video_params.track_buffer=6.5"])
    assert "--set predict.video_params.track_buffer=6.5" in msg and "must be an int; got 6.5" in msg, msg
    msg = error_of(p, [*tracked, "predict.video_params.strid=2"])
    assert "--set predict.video_params.strid=2" in msg and "did you mean 'stride'?" in msg, msg


# --- mistakes ----------------------------------------------------------------------------------------------

# (the YAML, the words the message must hold: the dotted key, the line, what was expected)
MISTAKES = [
    ("unknown section", GOOD + "extras: 1\n", ["extras", "line 8", "unknown section", "model, input, predict"]),
    ("unknown key", GOOD.replace("device: cpu", "devise: cpu"), ["model.devise", "line 3", "did you mean 'device'"]),
    ("unknown nested key", GOOD + "  video_params: {strid: 2}\n", ["predict.video_params.strid", "line 8",
                                                                     "did you mean 'stride'"]),
    ("wrong type", GOOD.replace("batch_size: 4", "batch_size: four"), ["predict.batch_size", "line 7",
                                                                         "expected an integer", "'four'"]),
    ("wrong type bool", GOOD.replace("device: cpu", "reuse: sometimes"), ["model.reuse", "line 3", "true or false"]),
    ("not positive", GOOD.replace("batch_size: 4", "batch_size: 0"), ["predict.batch_size", "line 7", "greater than 0"]),
    ("bad device", GOOD.replace("device: cpu", "device: tpu"), ["model.device", "line 3", "cpu, cuda"]),
    ("section not a mapping", GOOD.replace("predict:\n  batch_size: 4\n", "predict: fast\n"),
     ["predict", "line 6", "expected a mapping"]),
    ("two model sources", GOOD.replace("device: cpu", "pretrained: torchvision/ssd300_vgg16"),
     ["model", "line 1", "exactly one of checkpoint, pretrained or task_id", "checkpoint and pretrained"]),
    ("no model source", GOOD.replace("checkpoint: ckpt.pth", "replicas: 2"), ["model", "line 1", "got none"]),
    ("two input sources", GOOD.replace("path: images", "path: images\n  project_id: 3"),
     ["input", "line 4", "exactly one source", "path and project_id"]),
    ("no input source", GOOD.replace("path: images", "recursive: true"), ["input", "line 4", "got none"]),
    ("missing section", "model: {checkpoint: c.pth}\n", ["input", "required section is missing"]),
    ("bad upload mode", GOOD + "upload: {mode: merge}\n", ["upload.mode", "line 8", "'iou_merge'"]),
    ("platform mode on files", GOOD + "upload: {mode: iou_merge}\n", ["upload.mode", "line 8", "platform items"]),
    ("deploy keys with task_id", "model: {task_id: 2, replicas: 3}\ninput: {path: x}\n", ["model", "line 1",
                                                                                          "replicas"]),
    ("bad img_size", GOOD.replace("batch_size: 4", "img_size: [1, 2, 3]"), ["predict.img_size", "line 7"]),
    ("bad settings", GOOD.replace("batch_size: 4", "settings: {conf: 3}"), ["predict.settings", "line 7", "conf"]),
    ("unknown setting", GOOD.replace("batch_size: 4", "settings:\n    conf: 0.3\n    conff: 0.4"),
     ["predict.settings.conff", "line 9", "unknown setting (did you mean 'conf'?)", "known settings: conf, iou"]),
    ("string for an int", GOOD.replace("batch_size: 4", "batch_size: '8'"), ["predict.batch_size", "line 7",
                                                                             "expected an integer, got '8'"]),
    ("string for a bool", GOOD.replace("path: images", "path: images\n  recursive: 'yes'"),
     ["input.recursive", "line 6", "expected true or false, got 'yes'"]),
    ("int for a bool", GOOD.replace("device: cpu", "reuse: 1"), ["model.reuse", "line 3", "true or false"]),
    ("bool for a number", GOOD + "  video_params:\n    duration: true\n",
     ["predict.video_params.duration", "line 9", "expected a number, got True"]),
    # NaN and infinity (YAML's .nan and .inf are floats) where a finite number is meant (issue 19)
    ("infinite gpus_per_replica", GOOD.replace("device: cpu", "gpus_per_replica: .inf"),
     ["model.gpus_per_replica", "line 3", "expected a finite number, got inf"]),
    ("NaN gpus_per_replica", GOOD.replace("device: cpu", "gpus_per_replica: .nan"), ["model.gpus_per_replica",
                                                                                       "line 3", "got nan"]),
    ("infinite duration", GOOD + "  video_params:\n    duration: .inf\n",
     ["predict.video_params.duration", "line 9", "expected a finite number, got inf"]),
    ("NaN duration", GOOD + "  video_params: {duration: .NaN}\n", ["predict.video_params.duration", "line 8",
                                                                    "got nan"]),
    ("NaN setting", GOOD.replace("batch_size: 4", "settings: {conf: .nan}"),
     ["predict.settings", "line 7", "settings['conf'] must be a finite number"]),
    ("infinite setting", GOOD.replace("batch_size: 4", "settings: {iou: -.inf}"),
     ["predict.settings", "line 7", "settings['iou'] must be a finite number"]),
    ("infinite img_size", GOOD.replace("batch_size: 4", "img_size: [.inf, 64]"), ["predict.img_size", "line 7"]),
    ("infinite batch_size", GOOD.replace("batch_size: 4", "batch_size: .inf"), ["predict.batch_size", "line 7",
                                                                                "expected an integer"]),
    ("float for an int", GOOD + "  video_params: {start_frame: 2.0}\n",
     ["predict.video_params.start_frame", "line 8", "expected an integer, got 2.0"]),
    ("bool for an int", GOOD.replace("batch_size: 4", "batch_size: true"), ["predict.batch_size", "line 7",
                                                                            "expected an integer, got True"]),
    ("dashboard as ray.address", GOOD + "ray: {address: 'http://head:8265'}\n", ["ray.address", "line 8",
                                                                                 "dashboard"]),
    ("bad ray.address", GOOD + "ray: {address: head}\n", ["ray.address", "line 8", "host:port"]),
    ("duplicate key", GOOD.replace("device: cpu", "device: cpu\n  device: cuda"), ["model.device", "line 4",
                                                                                    "duplicate key", "line 3"]),
    ("not YAML", "model: [unclosed\n", ["not valid YAML", "line 2"]),
    ("tabs", "model:\n\tcheckpoint: x\n", ["not valid YAML", "line 2"]),
    ("a list", "- model\n- input\n", ["mapping of sections", "a list"]),
    ("a scalar", "just some words\n", ["mapping of sections", "single value"]),
    ("empty", "", ["empty"]),
]


@pytest.mark.parametrize("name,text,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes(tmp_path, name, text, words):
    msg = error_of(write(tmp_path, text))
    assert str(tmp_path / "p.yaml") in msg  # the file is named
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"


def test_several_mistakes_are_all_listed_in_line_order(tmp_path):
    text = GOOD.replace("device: cpu", "devise: cpu").replace("batch_size: 4", "batch_size: x") + "extra: 1\n"
    msg = error_of(write(tmp_path, text))
    assert "3 problems" in msg
    assert msg.index("line 3") < msg.index("line 7") < msg.index("line 8")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_directory_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    p = tmp_path / "b.yaml"
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(p)


def test_config_error_is_an_invalid_argument():
    # The CLI maps both to exit code 2.
    assert issubclass(ConfigError, InvalidArgumentError)


# --- paths -------------------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    # The config lives in a sub-directory; its relative paths still mean the process's working directory.
    (tmp_path / "configs").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    p = write(tmp_path / "configs", GOOD)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/p.yaml")
    cfg.check_paths()  # images/ and ckpt.pth exist next to the working directory, not next to the config
    assert cfg.predict_kwargs()["input"] == "images"
    monkeypatch.chdir(tmp_path / "configs")
    with pytest.raises(ConfigError) as info:
        load_config(p).check_paths()
    msg = str(info.value)
    assert "model.checkpoint" in msg and "'ckpt.pth' does not exist" in msg and "line 2" in msg
    assert "current directory" in msg


def test_remote_paths_are_not_checked(tmp_path):
    p = write(tmp_path, GOOD.replace("ckpt.pth", "s3://bucket/m.pth").replace("path: images",
                                                                               "url: https://example.com/a.jpg"))
    load_config(p).check_paths()


def test_to_yaml_round_trips_and_can_drop_the_address(tmp_path):
    p = write(tmp_path, GOOD + "ray: {address: 'head:6379', runtime_env: {env_vars: {A: b}}}\n")
    cfg = load_config(p, ["predict.batch_size=9"])
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text(cfg.to_yaml(drop_address=True))
    again = load_config(shipped)
    assert again.predict.batch_size == 9 and again.ray.address is None and again.ray.runtime_env == {"env_vars": {"A": "b"}}
    assert cfg.ray.address == "head:6379"  # the original is untouched


def test_a_tracker_error_is_reported_with_the_sections_other_errors(tmp_path):
    p = write(tmp_path, GOOD.replace("  batch_size: 4\n", "  batch_size: four\n  video_params: {tracker: bytetrak}\n"))
    msg = error_of(p)
    assert "2 problems" in msg and "line 7: predict.batch_size" in msg, msg
    assert "line 8: predict.video_params.tracker: unknown tracker 'bytetrak' (did you mean 'bytetrack'?)" in msg


def test_argument_errors_found_before_deploying_name_their_line(tmp_path, monkeypatch, capsys):
    """predict()'s own argument checks (run before the model is deployed) are placed in the file too."""
    from pipeline.app.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    (tmp_path / "images").mkdir()
    for extra, words in [('  classes: [circle, ""]\n', "line 8: predict.classes: classes must be non-empty names"),
                         ("  video_params: {stride: 2}\n", "line 8: predict.video_params: video_params applies to")]:
        p = write(tmp_path, GOOD + extra)
        assert main(["--data-dir", str(tmp_path / "d"), "run", str(p)]) == 2
        assert words in capsys.readouterr().err
