"""`pipeline submit / status / logs / cancel` and `deploy / models / stop` against a real local Ray head.

The head is `ray start --head --block` with the dashboard, started by this module in its own process group and
temp dir (so no other Ray on the machine finds it), and killed by that group at the end: never `ray stop`, which
would stop every Ray of the user, the test session's included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.app import cli, submit

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    import socket

    while True:  # outside Ray's default worker-port range (10002-19999), which `ray start` refuses to share
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10000 <= port < 20000:
            return port


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    env["RAY_AUTH_MODE"] = "disabled"  # token auth would need ~/.ray/auth_token shared by every process here
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    env.update(extra)
    return env


class Head:
    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.gcs, self.dash = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs}"
        self.dashboard = f"http://127.0.0.1:{self.dash}"
        self.log = open(os.path.join(self.temp, "head.out"), "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
             f"--port={self.gcs}", f"--dashboard-port={self.dash}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--temp-dir={self.temp}", "--disable-usage-stats",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}"],
            cwd=self.temp, env=clean_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {open(self.log.name).read()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/jobs/", timeout=2).read()
                return
            except Exception:
                time.sleep(1)
        raise RuntimeError(f"the Ray head did not come up in {timeout}s: {open(self.log.name).read()[-3000:]}")

    def stop(self) -> None:
        # The whole process group: `ray start`, GCS, raylet, dashboard, workers. SIGTERM first, then SIGKILL.
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _group_alive(self.proc.pid):
                time.sleep(0.2)
                self.proc.poll()
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def head():
    h = Head()
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


def pipeline_cli(*argv: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipeline.app.cli", *argv], cwd=ROOT, env=clean_env(**env),
                       capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(f"$ pipeline {' '.join(argv)}\n-> {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}\n")
    return r


def in_process(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
    """`pipeline ...` in this process: job commands only talk HTTP to the dashboard (no ray.init here)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    sys.stdout.write(f"$ pipeline {' '.join(argv)}\n-> {code}\n{captured.out}\n{captured.err[-3000:]}\n")
    return code, captured.out, captured.err


def submission_id(stdout: str) -> str:
    return stdout.split("submitted job ", 1)[1].split()[0]


def make_project(home: Path, n: int = 3) -> tuple[int, list[int]]:
    from pipeline.platform import Platform

    platform = Platform(home)
    project = platform.project.create("to-relabel")
    ds = platform.dataset.create(project.id, "ds0")
    rng = np.random.default_rng(0)
    ids = [platform.image.upload(ds.id, f"{i}.png", rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).id
           for i in range(n)]
    return project.id, ids


def test_deploy_then_submit_a_relabel_job_whose_predictions_land(head, tiny_checkpoint, tmp_path, capsys,
                                                                  monkeypatch):
    home = tmp_path / "platform"
    project_id, image_ids = make_project(home)

    # A detached deployment on the cluster: it outlives the `pipeline deploy` process.
    r = pipeline_cli("deploy", str(tiny_checkpoint), "--device", "cpu", "--address", head.address)
    assert r.returncode == 0, r.stderr
    task_id = int(r.stdout.split("task ", 1)[1].split(":")[0])
    assert "stop it: pipeline stop" in r.stdout
    r = pipeline_cli("models", "--address", head.address)
    assert r.returncode == 0 and str(task_id) in r.stdout and Path(tiny_checkpoint).name in r.stdout

    # The job connects to it by task id; the platform data dir reaches the job through the runtime_env.
    code, out, err = in_process(
        capsys, monkeypatch,
        "submit", "configs/relabel_project.yaml", "--address", head.dashboard, "--job-id", "relabel-1",
        "--set", "model.checkpoint=null", "--set", f"model.task_id={task_id}",
        "--set", f"input.project_id={project_id}", "--set", "predict.settings.conf=0.0",
        "--set", f"ray.runtime_env.env_vars.PIPELINE_HOME={home}",
    )
    assert code == 0, err
    sid = submission_id(out)
    assert sid.startswith("pipeline-relabel-project-")
    assert "pipeline run: done" in out and "3 items, 0 failed" in out  # the job's log, followed
    assert "job_id=relabel-1" in out and f"job {sid} SUCCEEDED" in out
    assert not (ROOT / submit.SUBMIT_DIR).exists()  # the shipped config was only there for the upload

    from pipeline.platform import Platform

    platform = Platform(home)
    counts = [len(platform.annotation.get(i).to_json()["objects"]) for i in image_ids]
    predicted = int(out.split("0 failed, ")[1].split(" object")[0])
    assert sum(counts) == predicted > 0

    code, out, _ = in_process(capsys, monkeypatch, "status", sid, "--address", head.dashboard)
    assert code == 0 and "SUCCEEDED" in out and "pipeline.app.cli run .pipeline_submit/" in out

    # The job did not deploy the model, so it left it running; `pipeline stop` ends it.
    r = pipeline_cli("stop", str(task_id), "--address", head.address)
    assert r.returncode == 0 and f"stopped deployment {task_id}" in r.stdout


def test_a_failing_job_shows_its_error_and_log_tail_and_exits_1(head, tmp_path, capsys, monkeypatch):
    # Valid here, but on the cluster the checkpoint is missing: the job's `pipeline run` exits 2.
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(f"model: {{checkpoint: {tmp_path / 'nowhere' / 'model.pth'}}}\ninput: {{project_id: 1}}\n")
    code, out, err = in_process(capsys, monkeypatch, "submit", str(cfg), "--address", head.dashboard)
    assert code == 1
    sid = submission_id(out)
    assert f"error: job {sid} FAILED" in err
    assert "lines of the job's log" in err and "model.checkpoint" in err and "does not exist" in err

    code, out, err = in_process(capsys, monkeypatch, "status", sid, "--address", head.dashboard)
    assert code == 1 and "FAILED" in out and "does not exist" in err
    code, out, _ = in_process(capsys, monkeypatch, "logs", sid, "--address", head.dashboard)
    assert code == 0 and "does not exist" in out
    code, out, _ = in_process(capsys, monkeypatch, "cancel", sid, "--address", head.dashboard)
    assert code == 0 and "already ended" in out
    code, _, err = in_process(capsys, monkeypatch, "status", "no-such-job", "--address", head.dashboard)
    assert code == 2 and "no job 'no-such-job'" in err


def test_no_wait_returns_at_once_and_logs_follow(head, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(f"model: {{checkpoint: {tmp_path / 'missing.pth'}}}\ninput: {{path: {tmp_path}}}\n")
    code, out, _ = in_process(capsys, monkeypatch, "submit", str(cfg), "--address", head.dashboard, "--no-wait")
    assert code == 0 and "pipeline logs" in out
    sid = submission_id(out)
    code, out, _ = in_process(capsys, monkeypatch, "logs", sid, "--follow", "--address", head.dashboard)
    assert code == 0 and "does not exist" in out


def test_address_from_the_environment(head, monkeypatch, capsys):
    # --address left out: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS (Ray's own order).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", head.dashboard)
    assert cli.main(["status", "no-such-job"]) == 2
    assert "no job 'no-such-job'" in capsys.readouterr().err


def test_relative_paths_must_travel_with_the_project(tmp_path, capsys):
    # Checked before contacting any cluster: exit 2.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {checkpoint: checkpoints/not-there.pth}\ninput: {project_id: 1}\n")
    assert cli.main(["submit", str(cfg), "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "model.checkpoint" in err and "relative" in err and "copy of the project" in err
    cfg.write_text("model: {checkpoint: /m.pth}\ninput: {path: tests/fixtures/sly_project}\n")
    assert cli.main(["submit", str(cfg), "--address", "http://127.0.0.1:9"]) == 2
    assert "input.path" in (err := capsys.readouterr().err) and "the upload's excludes leave it out" in err


@pytest.mark.parametrize("rel,travels", [
    ("checkpoints/shapes.pth", True),  # the demo's model goes with the project
    ("configs/relabel_project.yaml", True),
    ("tests/fixtures/sly_project", False),  # tests/ stays home
    ("demo_output/images", False),  # git-ignored
    ("out/x.parquet", False),
    ("pipeline/__pycache__/x.pyc", False),
    ("../elsewhere.pth", False),
])
def test_which_relative_paths_travel_with_the_project(rel, travels):
    assert (submit._left_out_of_upload(ROOT, rel, []) is None) is travels
    assert submit._left_out_of_upload(ROOT, "configs/relabel_project.yaml", ["configs/"]) is not None


def test_runtime_env_merges_the_config(tmp_path):
    from pipeline.app.config import load_config

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("model: {checkpoint: /m.pth}\ninput: {project_id: 1}\n"
                        "ray: {runtime_env: {env_vars: {PIPELINE_HOME: /data}, pip: [rich], excludes: [big/]}}\n")
    env = submit.submit_runtime_env(load_config(cfg_path), ROOT, ROOT)
    assert env["working_dir"] == str(ROOT) and env["pip"] == ["rich"]
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "PIPELINE_HOME": "/data"}
    assert ".venv" in env["excludes"] and "tests/" in env["excludes"] and "big/" in env["excludes"]
    assert "checkpoints/" not in env["excludes"]  # the demo checkpoint travels
    cfg_path.write_text("model: {checkpoint: /m.pth}\ninput: {project_id: 1}\nray: {runtime_env: {working_dir: .}}\n")
    from pipeline.exceptions import ConfigError

    with pytest.raises(ConfigError, match="working_dir"):
        submit.submit_runtime_env(load_config(cfg_path), ROOT, ROOT)
