"""`pipeline run` end to end with the example configs, its exit codes, and the commands' argument errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.app import cli, submit

ROOT = Path(__file__).resolve().parents[2]


def make_images(folder: Path, n: int, size=(96, 128), seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def run_cli(*argv: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.app.cli", *argv], cwd=ROOT, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


# --- run, end to end (in this process, on the session's Ray) -----------------------------------------------


@pytest.mark.slow
def test_run_predict_directory_deploys_predicts_exports_and_shuts_down(ray_session, tiny_checkpoint, tmp_path,
                                                                        capsys):
    make_images(tmp_path / "imgs" / "sub", 4, size=(120, 160))
    make_images(tmp_path / "imgs", 2, size=(64, 64), seed=1)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = cli.main([
        "--data-dir", str(tmp_path / "home"), "run", str(ROOT / "configs" / "predict_directory.yaml"),
        "--set", f"model.checkpoint={tiny_checkpoint}", "--set", "model.device=cpu",
        "--set", f"input.path={tmp_path / 'imgs'}", "--set", "predict.settings.conf=0.0",
        "--set", f"output.parquet={out / 'p.parquet'}", "--set", f"output.coco={out / 'coco.json'}",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out
    assert "pipeline run: done" in text and "7 items, 1 failed" in text
    assert "objects per class:" in text and "images/s" in text
    assert "broken.jpg" in text  # the failed item is quoted
    assert f"output_parquet={out / 'p.parquet'}" in text
    assert (out / "p.parquet").exists() and (out / "coco.json").exists()
    assert "progress:" in captured.err  # stderr is not a terminal here: plain progress lines
    # It deployed the model, so it shut it down.
    task_id = int(text.split("as task ")[1].split(":")[0])
    assert f"stopped deployment {task_id}" in text
    import pipeline

    assert task_id not in {d["task_id"] for d in pipeline.Api(data_dir=tmp_path / "home").nn.list()}


@pytest.mark.slow
def test_sigterm_mid_run_still_shuts_down_what_the_run_deployed(ray_session, tiny_checkpoint, tmp_path):
    import signal

    import pipeline

    make_images(tmp_path / "imgs", 400, size=(48, 64))
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.app.cli", "--data-dir", str(tmp_path / "home"), "run",
         str(ROOT / "configs" / "predict_directory.yaml"), "--set", f"model.checkpoint={tiny_checkpoint}",
         "--set", "model.device=cpu", "--set", f"input.path={tmp_path / 'imgs'}", "--set", "predict.batch_size=1",
         "--set", f"output.parquet={tmp_path / 'out' / 'p.parquet'}", "--set", "output.coco=null",
         "--set", f"ray.address={address}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)},
    )
    task_id = None
    deadline = time.time() + 180
    for line in proc.stdout:
        if " as task " in line:
            task_id = int(line.split(" as task ")[1].split(":")[0])
        if task_id is not None and line.startswith("progress:"):
            break
        assert time.time() < deadline, "the run did not start"
    assert task_id is not None
    proc.send_signal(signal.SIGTERM)  # what `pipeline cancel` does to a job's driver
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert f"stopped deployment {task_id}" in rest
    assert task_id not in {d["task_id"] for d in pipeline.Api(data_dir=tmp_path / "x").nn.list()}


def test_a_platform_id_that_does_not_exist_fails_before_deploying(tmp_path, capsys, tiny_checkpoint):
    code = cli.main(["--data-dir", str(tmp_path / "home"), "run", str(ROOT / "configs" / "relabel_project.yaml"),
                     "--set", f"model.checkpoint={tiny_checkpoint}", "--set", "input.project_id=999"])
    captured = capsys.readouterr()
    assert code == 2 and "project 999 does not exist" in captured.err
    assert "deploying" not in captured.out


def make_audio_only_mp4(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def api_error(config: Path, overrides: list[str], home: Path) -> str:
    """The message the Python API gives for this config's predict arguments: predict() validates its arguments,
    then resolves the source, before any work."""
    from pipeline.app.config import load_config
    from pipeline.exceptions import PipelineError
    from pipeline.platform import Platform
    from pipeline.stages import args as _args
    from pipeline.stages.source import resolve_source

    args = _args.normalize(load_config(config, overrides).predict_kwargs())
    with pytest.raises(PipelineError) as info:
        resolve_source(args, Platform(home))
    return str(info.value)


@pytest.mark.parametrize("case", ["text file named .mp4", "audio-only mp4", "start_frame past the end"])
def test_a_bad_video_input_fails_before_deploying(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(ROOT)
    home = tmp_path / "home"
    overrides = [f"model.checkpoint={ROOT / 'checkpoints' / 'shapes.pth'}",
                 f"output.parquet={tmp_path / 'v.parquet'}"]
    if case == "text file named .mp4":
        (tmp_path / "notes.mp4").write_text("not a video\n")
        overrides.append(f"input.path={tmp_path / 'notes.mp4'}")
        words = ["'notes.mp4' cannot be opened as a video"]
    elif case == "audio-only mp4":
        overrides.append(f"input.path={make_audio_only_mp4(tmp_path / 'sound.mp4')}")
        words = ["'sound.mp4' has no video stream (streams: audio)"]
    else:
        overrides.append("predict.video_params.start_frame=400")
        words = ["video_params['start_frame'] is 400, beyond the end of video 'clip.mp4'"]
    config = ROOT / "configs" / "video.yaml"
    argv = ["--data-dir", str(home), "run", str(config)]
    for o in overrides:
        argv += ["--set", o]
    t0 = time.time()
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "deploying" not in captured.out and time.time() - t0 < 10
    expected = api_error(config, overrides, home)
    assert expected in captured.err  # the Python API's own words (placed in the file, when a key is named)
    for w in words:
        assert w in captured.err


def test_a_videos_project_or_an_image_id_as_video_id_fails_before_deploying(tmp_path, capsys):
    from pipeline.platform import Platform

    home = tmp_path / "home"
    platform = Platform(home)
    images = platform.project.create("pictures")
    ds = platform.dataset.create(images.id, "ds0")
    image = platform.image.upload(ds.id, "a.png", np.zeros((16, 16, 3), np.uint8))
    videos = platform.project.create("clips", type="videos")
    platform.dataset.create(videos.id, "ds0")
    config = ROOT / "configs" / "relabel_project.yaml"
    checkpoint = f"model.checkpoint={ROOT / 'checkpoints' / 'shapes.pth'}"

    for overrides, words in [
        ([checkpoint, f"input.project_id={videos.id}"], [f"project {videos.id} ('clips') belongs to a videos project"]),
        ([checkpoint, "input.project_id=null", f"input.video_id={image.id}"],
         [f"video {image.id} does not exist; {image.id} is the id of image 'a.png'", f"image_ids=[{image.id}]"]),
    ]:
        argv = ["--data-dir", str(home), "run", str(config)]
        for o in overrides:
            argv += ["--set", o]
        code = cli.main(argv)
        captured = capsys.readouterr()
        assert code == 2, captured.err
        assert "deploying" not in captured.out
        assert f"error: {api_error(config, overrides, home)}" in captured.err
        for w in words:
            assert w in captured.err


@pytest.mark.slow
def test_run_fail_on_item_errors(ray_session, tiny_deployment, tmp_path, capsys):
    make_images(tmp_path / "imgs", 1)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    argv = ["--data-dir", str(tmp_path / "home"), "run", str(ROOT / "configs" / "predict_directory.yaml"),
            "--set", "model.checkpoint=null", "--set", f"model.task_id={tiny_deployment.task_id}",
            "--set", f"input.path={tmp_path / 'imgs'}", "--set", "output=null"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--fail-on-item-errors"]) == 1
    captured = capsys.readouterr()
    assert "1 item failed (--fail-on-item-errors)" in captured.err
    # A connected deployment is not ours to stop.
    assert f"deployment {tiny_deployment.task_id} is still running" in captured.out
    assert tiny_deployment.info()["status"] == "running"


@pytest.mark.slow
def test_run_relabel_project_merges_into_the_platform(ray_session, tiny_deployment, tmp_path, capsys):
    import pipeline

    home = tmp_path / "home"
    api = pipeline.Api(data_dir=home)
    project = api.project.create("shapes")
    ds = api.dataset.create(project.id, "ds0")
    images = [api.image.upload(ds.id, f"{i}.png", np.full((80, 100, 3), 40 * i, np.uint8)) for i in range(3)]
    argv = [
        "--data-dir", str(home), "run", str(ROOT / "configs" / "relabel_project.yaml"),
        "--set", "model.checkpoint=null", "--set", f"model.task_id={tiny_deployment.task_id}",
        "--set", f"input.project_id={project.id}", "--set", "predict.settings.conf=0.0", "--job-id", "relabel-test",
    ]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pipeline run: done" in captured.out and "3 items, 0 failed" in captured.out
    assert "job_id=relabel-test" in captured.out and "upload=iou_merge" in captured.out
    objects = [len(api.annotation.get(im.id).to_json()["objects"]) for im in images]
    n_predicted = int(captured.out.split("0 failed, ")[1].split(" object")[0])
    assert sum(objects) == n_predicted > 0

    # the same --job-id again: a resumed job skips what is done, nothing is uploaded twice
    code = cli.main(argv)
    again = capsys.readouterr()
    assert code == 0, again.err
    assert "resuming, 3 item(s) already done are skipped" in again.err and "0 items" in again.out
    assert [len(api.annotation.get(im.id).to_json()["objects"]) for im in images] == objects


@pytest.mark.slow
def test_run_video_example(ray_session, tiny_deployment, tmp_path, capsys):
    clip = ROOT / "configs" / ".." / "tests" / "fixtures" / "sly_video_project" / "ds0" / "video" / "clip.mp4"
    if not clip.exists():
        pytest.skip("the video fixture is missing")
    code = cli.main([
        "--data-dir", str(tmp_path / "home"), "run", str(ROOT / "configs" / "video.yaml"),
        "--set", "model.checkpoint=null", "--set", f"model.task_id={tiny_deployment.task_id}",
        "--set", f"output.parquet={tmp_path / 'v.parquet'}", "--set", "predict.video_params.stride=2",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pipeline run: done" in captured.out and (tmp_path / "v.parquet").exists()


# --- run: bad configs and arguments (exit 2), unreachable clusters (exit 1) ---------------------------------


def test_bad_config_exits_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  checkpont: x.pth\ninput: {path: .}\n")
    assert cli.main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "model.checkpont" in err and "did you mean 'checkpoint'" in err


@pytest.mark.parametrize("text,words", [
    (None, ["not found"]),
    ("model: [unclosed\n", ["not valid YAML"]),
    ("model: {checkpoint: /no/such/model.pth}\ninput: {path: .}\n", ["model.checkpoint", "does not exist"]),
    ("model: {checkpoint: CKPT}\ninput: {path: /no/such/dir}\n", ["input.path", "does not exist"]),
    ("model: {checkpoint: CKPT}\ninput: {path: 'nosuchfs://bucket/imgs/'}\n", ["Unrecognized filesystem type"]),
    ("model: {checkpoint: CKPT}\ninput: {path: .}\noutput: {coco: 'nosuchfs://b/c.json'}\n", ["output coco"]),
])
def test_missing_or_unreadable_inputs_exit_2_before_any_work(tmp_path, capsys, tiny_checkpoint, text, words):
    p = tmp_path / "c.yaml"
    if text is not None:
        p.write_text(text.replace("CKPT", str(tiny_checkpoint)))
    t0 = time.time()
    assert cli.main(["run", str(p)]) == 2
    assert time.time() - t0 < 5  # nothing was deployed
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_bad_set_and_job_id_without_upload_exit_2(tmp_path, capsys, tiny_checkpoint):
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{checkpoint: {tiny_checkpoint}}}\ninput: {{path: {tmp_path}}}\n")
    assert cli.main(["run", str(p), "--set", "predict.batch_size"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err


def test_unreachable_ray_address_fails_fast_with_a_clear_message(tmp_path, tiny_checkpoint):
    # Nobody listens on this port: the TCP check answers at once. Exit 1: the config is fine, the cluster is not.
    port = free_port()
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{checkpoint: {tiny_checkpoint}}}\ninput: {{path: {tmp_path}}}\n"
                 f"ray: {{address: '127.0.0.1:{port}'}}\n")
    t0 = time.time()
    r = run_cli("--data-dir", str(tmp_path / "home"), "run", str(p), timeout=60)
    assert time.time() - t0 < 30
    assert r.returncode == 1, r.stderr
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in r.stderr


@pytest.mark.slow
def test_an_address_that_is_not_ray_fails_within_the_attach_timeout(tmp_path, tiny_checkpoint):
    # A port that accepts connections but is no Ray GCS (here: a plain TCP listener): ray.init would retry for
    # minutes; the CLI gives up after PIPELINE_ATTACH_TIMEOUT_S and exits.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        port = srv.getsockname()[1]
        p = tmp_path / "c.yaml"
        p.write_text(f"model: {{checkpoint: {tiny_checkpoint}}}\ninput: {{path: {tmp_path}}}\n"
                     f"ray: {{address: '127.0.0.1:{port}'}}\n")
        t0 = time.time()
        r = run_cli("--data-dir", str(tmp_path / "home"), "run", str(p), timeout=60, PIPELINE_ATTACH_TIMEOUT_S="5")
        assert time.time() - t0 < 30
    assert r.returncode == 1, r.stderr
    assert "no Ray cluster answered" in r.stderr and "within 5s" in r.stderr


def test_a_dashboard_url_as_ray_address_is_a_config_error(tmp_path, capsys, tiny_checkpoint):
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{checkpoint: {tiny_checkpoint}}}\ninput: {{path: {tmp_path}}}\n"
                 "ray: {address: 'http://127.0.0.1:8265'}\n")
    assert cli.main(["run", str(p)]) == 2
    assert "dashboard" in capsys.readouterr().err


# --- deployment commands need a running cluster -------------------------------------------------------------


@pytest.mark.parametrize("argv", [["deploy", "checkpoints/shapes.pth"], ["models"], ["stop", "3"]])
def test_deployment_commands_need_an_address(argv, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs a running Ray cluster" in err and "ray start --head" in err


@pytest.mark.parametrize("flag, value", [("--gpus-per-replica", "nan"), ("--gpus-per-replica", "inf"),
                                         ("--gpus-per-replica", "-1"), ("--replicas", "0")])
def test_deploy_refuses_a_number_that_is_not_finite_and_positive_first(flag, value, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the argument is wrong whatever the cluster
    assert cli.main(["deploy", "checkpoints/shapes.pth", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag[2:].replace("-", "_") in err and "needs a running Ray cluster" not in err, err


def test_deploy_refuses_a_dashboard_address_and_a_missing_checkpoint(capsys, tmp_path):
    assert cli.main(["deploy", "m.pth", "--address", "http://127.0.0.1:8265"]) == 2
    assert "dashboard" in capsys.readouterr().err


def test_job_commands_report_an_unreachable_dashboard(capsys):
    port = free_port()
    t0 = time.time()
    assert cli.main(["status", "some-id", "--address", f"http://127.0.0.1:{port}"]) == 1
    assert time.time() - t0 < 15
    assert "cannot reach the Ray dashboard" in capsys.readouterr().err


class SilentListener:
    """A TCP port that accepts connections (the kernel completes them) and never answers a byte."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.sock.close()


class VersionOnlyDashboard:
    """An HTTP server that answers Ray's version check like a dashboard, then never answers anything else."""

    def __enter__(self) -> str:
        import http.server
        import json
        import threading

        import ray

        release = self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's API
                if self.path.startswith("/api/version"):
                    body = json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "x"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                release.wait(60)

            do_POST = do_PUT = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


JOB_COMMANDS = [["status", "some-id"], ["logs", "some-id"], ["cancel", "some-id"],
                ["submit", str(ROOT / "configs" / "relabel_project.yaml"), "--no-wait"]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", JOB_COMMANDS, ids=[a[0] for a in JOB_COMMANDS])
def test_job_commands_give_up_on_a_dashboard_that_never_answers(argv, capsys, monkeypatch):
    # The port accepts connections, so the TCP check passes; Ray's client would then wait for ever.
    monkeypatch.setenv("PIPELINE_ADDRESS_TIMEOUT_S", "2")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with SilentListener() as url:
        t0 = time.time()
        code = cli.main([*argv, "--address", url])
        elapsed = time.time() - t0
    err = capsys.readouterr().err
    assert code == 1, err
    assert elapsed < 15
    assert f"the Ray dashboard at {url} did not answer within 2s (connecting)" in err
    assert "PIPELINE_ADDRESS_TIMEOUT_S" in err
    assert not (ROOT / submit.SUBMIT_DIR).exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv,call,limit", [
    (["status", "some-id"], "get_job_info", "2s"),
    (["logs", "some-id"], "get_job_info", "2s"),
    (["cancel", "some-id"], "get_job_info", "2s"),
    (["submit", str(ROOT / "configs" / "relabel_project.yaml"), "--no-wait"], "submit_job", "6s"),
], ids=["status", "logs", "cancel", "submit"])
def test_each_job_request_has_a_time_limit(argv, call, limit, capsys, monkeypatch):
    # The dashboard answers the client's version check, then not the request itself. submit_job (which uploads
    # the project) gets 6 times the limit.
    monkeypatch.setenv("PIPELINE_ADDRESS_TIMEOUT_S", "1" if call == "submit_job" else "2")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with VersionOnlyDashboard() as url:
        t0 = time.time()
        code = cli.main([*argv, "--address", url])
        elapsed = time.time() - t0
    err = capsys.readouterr().err
    assert code == 1, err
    assert elapsed < float(limit[:-1]) + 10
    assert f"the Ray dashboard at {url} did not answer within {limit} ({call})" in err
    assert not (ROOT / submit.SUBMIT_DIR).exists()  # the shipped config is removed however submit ends


def test_submit_to_a_silent_dashboard_exits_1_and_does_not_hang(tmp_path):
    # The case, as a process: `pipeline submit` must end (the stuck request is in a daemon thread).
    with SilentListener() as url:
        t0 = time.time()
        r = run_cli("submit", "configs/relabel_project.yaml", "--address", url, timeout=60,
                    PIPELINE_ADDRESS_TIMEOUT_S="3")
        assert time.time() - t0 < 30
    assert r.returncode == 1, r.stderr
    assert "did not answer within 3s (connecting)" in r.stderr


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_a_bad_address_timeout_is_a_usage_error(value, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINE_ADDRESS_TIMEOUT_S", value)
    assert cli.main(["status", "some-id", "--address", "http://127.0.0.1:9"]) == 2
    assert "PIPELINE_ADDRESS_TIMEOUT_S" in capsys.readouterr().err


# --- the parser ----------------------------------------------------------------------------------------------


def test_every_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "run", "submit", "status", "logs", "cancel", "deploy", "models", "stop", "platform"} <= set(
        sub.choices)


def test_data_dir_before_or_after_run():
    parser = cli.build_parser()
    assert parser.parse_args(["--data-dir", "A", "run", "c.yaml"]).data_dir == "A"
    assert parser.parse_args(["run", "c.yaml", "--data-dir", "B"]).data_dir == "B"
    args = parser.parse_args(["run", "c.yaml", "--set", "a.b=1", "--set", "c.d=2", "--job-id", "j"])
    assert args.overrides == ["a.b=1", "c.d=2"] and args.job_id == "j"


def test_help_runs():
    r = run_cli("--help", timeout=60)
    assert r.returncode == 0 and "submit" in r.stdout and "deploy" in r.stdout
    r = run_cli("deploy", "--help", timeout=60)
    assert r.returncode == 0 and "ray start --head" in " ".join(r.stdout.split())


def test_usage_errors_exit_2():
    r = run_cli("run", timeout=60)
    assert r.returncode == 2 and "config" in r.stderr


def test_console_script_module_entry(tmp_path):
    script = textwrap.dedent("""
        import sys
        from pipeline.app.cli import main
        sys.exit(main(["run", "/no/such/config.yaml"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr


# --- the runner's progress and summary (no Ray) ----------------------------------------------------------------


class FakeSession:
    """What the runner reads from a PredictionSession: next(timeout) and status()."""

    def __init__(self, preds, error=None, total=None):
        self.preds = list(preds)
        self.error = error
        self.total = len(self.preds) if total is None else total
        self.done = 0
        self.stopped = False

    def next(self, timeout=None):
        if self.preds:
            self.done += 1
            return self.preds.pop(0)
        if self.error is not None:
            e, self.error = self.error, None
            raise e
        raise StopIteration

    def stop(self):
        self.stopped = True

    def status(self):
        return {"progress": 100.0 * self.done / max(1, self.total), "done": self.done, "total": self.total,
                "failed": 0, "message": "predicting", "error": None, "elapsed_s": 2.0, "items_per_s": 3.0,
                "eta_s": 1.5, "context": {"job_id": "j1", "upload": "create", "target_project_id": 9,
                                          "input": "/x"}}


def fake_pred(classes=(), error=None, name="a.jpg"):
    from types import SimpleNamespace

    return SimpleNamespace(classes=list(classes), error=error, name=name, source=name)


def test_collect_and_summary_count_items_objects_and_failures():
    import io

    from pipeline.app.runner import collect, print_summary

    session = FakeSession([fake_pred(["circle", "square"]), fake_pred(["circle"]),
                           fake_pred(error="not an image", name="bad.jpg")])
    summary = collect(session)
    assert (summary.items, summary.failed, dict(summary.objects)) == (3, 1, {"circle": 2, "square": 1})
    out = io.StringIO()
    print_summary(summary, out)
    text = out.getvalue()
    assert text.startswith("pipeline run: done in 2.0s: 3 items, 1 failed, 3 objects, 1.50 images/s")
    assert "objects per class: circle 2, square 1" in text and "bad.jpg: not an image" in text
    assert "results: job_id=j1, upload=create, target_project_id=9" in text and "input" not in text


def test_collect_keeps_the_error_that_ended_the_run():
    import io

    from pipeline.app.runner import collect, print_summary
    from pipeline.exceptions import RunError

    summary = collect(FakeSession([fake_pred(["a"])], error=RunError("the upload failed: disk full")))
    assert isinstance(summary.error, RunError) and summary.items == 1
    out = io.StringIO()
    print_summary(summary, out)
    assert out.getvalue().startswith("pipeline run: FAILED")


def test_progress_on_a_terminal_is_a_bar_with_a_live_postfix():
    import io

    from pipeline.app.runner import _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = _Progress(stream)
    session = FakeSession([fake_pred()] * 4)
    session.done = 2
    progress.tick(2, session, force=True)
    progress.close()
    text = stream.getvalue()
    assert "done=2 failed=0 3.0 img/s ETA 1.5s" in text and "2/4" in text


def test_progress_elsewhere_is_a_plain_line():
    import io

    from pipeline.app.runner import _Progress

    stream = io.StringIO()
    progress = _Progress(stream)
    session = FakeSession([fake_pred()] * 4)
    session.done = 1
    progress.tick(1, session, force=True)
    progress.tick(1, session)  # within LOG_PROGRESS_EVERY_S: nothing new
    assert stream.getvalue() == "progress: 1/4 (25%), done=1 failed=0 3.0 img/s ETA 1.5s\n"


@pytest.mark.parametrize("seconds,text", [(None, "?"), (0.04, "0.0s"), (59.9, "59.9s"), (61, "1m01s"),
                                          (3725, "1h02m")])
def test_duration(seconds, text):
    from pipeline.app.runner import _duration

    assert _duration(seconds) == text


@pytest.mark.parametrize("value", ["nan", "0", "soon"])
def test_a_bad_attach_timeout_is_a_usage_error(value, tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINE_ATTACH_TIMEOUT_S", value)
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{checkpoint: {tiny_checkpoint}}}\ninput: {{path: {tmp_path}}}\n"
                 "ray: {address: '127.0.0.1:9'}\n")
    assert cli.main(["--data-dir", str(tmp_path / "home"), "run", str(p)]) == 2
    assert "$PIPELINE_ATTACH_TIMEOUT_S must be a" in capsys.readouterr().err
