"""A driver's own local Ray dies with the driver: after a `kill -9` of a script that called `deploy` / `predict`
without a Ray address, none of the Ray processes it started (GCS, raylet, agents, workers, the replica holding
the model) outlives it by more than a few seconds; another Ray on the same machine is left alone."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = str(Path(__file__).with_name("local_ray_driver.py"))
ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0  # "a few seconds"; the watchdog acts within a fraction of one


def _wait_for(proc: subprocess.Popen, word: str, timeout: float) -> list[str]:
    """The lines `proc` printed until one starting with `word`."""
    lines: list[str] = []
    deadline = time.time() + timeout
    while not lines or not lines[-1].startswith(word):
        assert proc.poll() is None, f"the driver exited ({proc.returncode}): {lines}"
        left = deadline - time.time()
        assert left > 0, f"no {word} from the driver within {timeout:g}s: {lines}"
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            lines.append(proc.stdout.readline().strip())
    return lines


def _session_processes(session_dir: str, known: list[psutil.Process]) -> list[psutil.Process]:
    """Live (not zombie) processes of the driver's Ray: those it had started, and any naming its session dir."""
    alive = {}
    for p in known:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive[p.pid] = p
        except psutil.Error:
            continue
    for p in psutil.process_iter(["cmdline"]):
        try:
            if session_dir in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                alive[p.pid] = p
        except psutil.Error:
            continue
    return list(alive.values())


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {p.name()} ({p.memory_info().rss >> 20} MiB)")
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_a_sigkilled_drivers_local_ray_is_gone_within_seconds(ray_session, tiny_checkpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with open(tmp_path / "driver.err", "w") as err:
        proc = subprocess.Popen([sys.executable, SCRIPT, str(tiny_checkpoint), str(tmp_path / "platform")],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        lines = _wait_for(proc, "PREDICTED", timeout=180)  # its replica holds the model and has predicted
        session_dir = next(ln.split(None, 1)[1] for ln in lines if ln.startswith("SESSION"))
        started = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in started)
        assert "raylet" in names and "gcs_server" in names and "ray::Replica" in names, names

        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        proc.wait()
        killed_at = time.time()
        left = _session_processes(session_dir, started)
        while left and time.time() - killed_at < GONE_WITHIN_S:
            time.sleep(0.25)
            left = _session_processes(session_dir, started)
        assert left == [], f"{GONE_WITHIN_S:g}s after the driver's SIGKILL, still alive: {_describe(left)}"
        # the test session's own Ray, another Ray on this machine, is untouched
        assert ray_session.get(ray_session.put("still here")) == "still here"
        assert ray_session.cluster_resources().get("CPU") == 2
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _session_processes("\0never\0", started):  # whatever a failed run left: never leak it
            p.kill()


@pytest.mark.slow
def test_without_an_address_a_local_ray_of_its_own_not_a_ray_start_clusters(tmp_path):
    """`ray.init()` without an address attaches to the cluster whose address a `ray start` left in
    <ray temp dir>/ray_current_cluster, even one long gone. The pipeline starts its own instead."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # a cluster that is gone
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    code = ("import ray; from pipeline.deploy.cluster import ensure_ray; ensure_ray(); "
            "print('GCS', ray.get_runtime_context().gcs_address); ray.shutdown()")
    started = time.time()
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    gcs = next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("GCS"))
    assert gcs != "127.0.0.1:1" and "Failed to connect to GCS" not in out.stderr
    assert time.time() - started < 60
