"""The watchdog of a local Ray: when the driver that started it dies, even by SIGKILL, every process of its Ray
session is killed at once.

Why: `ray.init()` without an address starts a Ray of its own (GCS, raylet, dashboard and runtime-env agents,
workers, the replicas holding the model). Ray ties the GCS and the raylet to the driver (PR_SET_PDEATHSIG), and the
workers and replicas leave when the raylet goes, but its two agents do not: on a SIGKILLed driver they wait for the
dead GCS before exiting and stay up (~200 MiB) for more than a minute, and nothing guarantees the next Ray release
keeps the rest as tidy. So the driver starts this watchdog (`start_watchdog`) right after its local Ray is up.

The watchdog is a child of the driver in a session of its own (a Ctrl-C or a `kill -9` of the driver's process
group does not reach it), imports nothing but the standard library, and polls `getppid()` every `POLL_S` seconds:
when the driver is gone it has been re-parented, whatever killed the driver and whether or not the pid was reused.
It then SIGKILLs every process of the driver's Ray session and exits. A process belongs to the session when its
command line names the session directory (GCS, raylet, the monitors) or when it is a Ray process (its title starts
with `ray::`, or its command line runs a file of the Ray package) holding a file open in the session directory
(every worker, replica and agent logs there). A process of another Ray, and a user's own process attached to this
one, are never touched. Linux only (/proc); elsewhere nothing is started.

Run as a script (`python -I -S reaper.py DRIVER_PID SESSION_DIR RAY_PACKAGE_DIR`), by file path: it must start in
a few milliseconds and must not import the package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["POLL_S", "main", "reap", "session_processes", "start_watchdog"]

POLL_S = 0.2  # how often the watchdog checks that its driver is alive: a dead driver's Ray goes within this
REAP_ROUNDS = 10  # scans after the first kill: a process forked meanwhile is found by the next scan
_WATCHDOGS: list[subprocess.Popen] = []  # held for the driver's lifetime (a Popen collected early is harmless)


def start_watchdog(session_dir: str, ray_dir: str) -> subprocess.Popen | None:
    """Start the watchdog of this driver's local Ray session (`session_dir`, as Ray reports it; `ray_dir`: the
    directory of the `ray` package). None where /proc is missing (not Linux): nothing to watch with."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self/fd"):
        return None
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-u", os.path.abspath(__file__), str(os.getpid()), session_dir, ray_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    _WATCHDOGS.append(proc)
    return proc


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _holds_file_under(pid: str, prefix: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def session_processes(session_dir: str, ray_dir: str, exclude: set[int] = frozenset()) -> dict[int, str]:
    """pid -> title of the live processes of the Ray session in `session_dir` (see the module's docstring)."""
    real = os.path.realpath(session_dir)
    names = {os.fsencode(session_dir), os.fsencode(real)}
    prefix = real.rstrip("/") + "/"
    ray_marker = os.fsencode(os.path.realpath(ray_dir).rstrip("/") + "/")
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        cmdline = _read(f"/proc/{entry}/cmdline")
        if not cmdline:  # a kernel thread, a zombie, or gone
            continue
        member = any(n in cmdline for n in names)
        if not member and (cmdline.startswith(b"ray::") or ray_marker in cmdline):
            member = _holds_file_under(entry, prefix)
        if member:
            found[int(entry)] = cmdline.split(b"\0")[0].decode(errors="replace").strip()[:60]
    return found


def reap(session_dir: str, ray_dir: str) -> dict[int, str]:
    """SIGKILL every process of the session, scanning again until none is left (or `REAP_ROUNDS` scans).
    Returns pid -> title of those killed."""
    killed: dict[int, str] = {}
    for _ in range(REAP_ROUNDS):
        found = session_processes(session_dir, ray_dir, exclude={os.getpid()})
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # exited meanwhile, or not ours to kill
                continue
            killed[pid] = found[pid]
        time.sleep(0.05)
    return killed


def _log(session_dir: str, text: str) -> None:
    try:
        with open(os.path.join(session_dir, "logs", "pipeline_watchdog.log"), "a", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    driver, session_dir, ray_dir = int(argv[0]), argv[1], argv[2]
    for sig in (signal.SIGINT, signal.SIGHUP):  # our job is to outlive the driver's terminal and its Ctrl-C
        signal.signal(sig, signal.SIG_IGN)
    while os.getppid() == driver:  # re-parented: the driver is gone, however it ended
        time.sleep(POLL_S)
    killed = reap(session_dir, ray_dir)
    what = ", ".join(f"{pid} {title}" for pid, title in sorted(killed.items())) or "none left"
    _log(session_dir, f"driver {driver} is gone; killed the processes of its Ray session: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
