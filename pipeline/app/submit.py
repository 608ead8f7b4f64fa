"""`pipeline submit | status | logs | cancel`: a YAML pipeline as a Ray job on a cluster, through the Ray
dashboard's job API (http://HEAD:8265). The job runs `pipeline run` on the cluster, in an uploaded copy of this
project (its working dir), with the resolved config."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.env import env_seconds
from pipeline.exceptions import DeploymentError, InvalidArgumentError, NotFoundError

__all__ = ["SUBMIT_DIR", "cmd_cancel", "cmd_logs", "cmd_status", "cmd_submit", "project_root",
           "submit_runtime_env"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Where `submit` puts the resolved config inside the uploaded project; the file exists only while the working
# dir is packaged and uploaded (submit_job does that before it returns), then it is removed. It must not be
# git-ignored: Ray leaves git-ignored files out of a working_dir upload.
SUBMIT_DIR = ".pipeline_submit"
# Left out of the project upload (besides Ray's defaults and .gitignore): nothing a job needs, and the upload is
# capped (~500 MiB).
SUBMIT_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "tests/",
                   "*.egg-info", "demo_output/", "out/", "build/", "dist/"]
# Log lines shown again, on stderr, when a submitted job fails: enough for a traceback and the run's last lines.
FAILED_LOG_TAIL = 40
# How long to wait for the dashboard's TCP answer before calling it unreachable (requests has no default timeout).
DASHBOARD_CONNECT_TIMEOUT_S = 10.0
# How long connecting to the dashboard (TCP check and Ray's version check together), and then each request that
# should be quick (submit, status, log, stop), may take before the dashboard counts as not answering: a port that
# accepts connections and never replies would otherwise hang the command (Ray's client sets no timeout). Following
# a job's log is not limited: it streams. Read when used, so that $PIPELINE_ADDRESS_TIMEOUT_S can change it.
ADDRESS_TIMEOUT_ENV = "PIPELINE_ADDRESS_TIMEOUT_S"
DEFAULT_ADDRESS_TIMEOUT_S = 20.0
# The JobSubmissionClient methods that get the limit (tail_job_logs, a stream, does not), as multiples of it:
# submit_job packages and uploads the project first (a few MiB; up to Ray's 500 MiB cap on a slow link).
TIMED_JOB_CALLS = {"submit_job": 6.0, "get_job_status": 1.0, "get_job_info": 1.0, "stop_job": 1.0,
                   "get_job_logs": 1.0, "list_jobs": 1.0, "delete_job": 1.0}


# ---------------------------------------------------------------------------------------------------------------
# Ray jobs


def project_root() -> Path | None:
    """The checkout this package runs from (the folder holding pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "pipeline" / "app" / "cli.py").is_file():
        return root
    return None


def _dashboard(address: str | None) -> str:
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD


def address_timeout() -> float:
    """The limit on connecting to the dashboard and on each quick request: $PIPELINE_ADDRESS_TIMEOUT_S seconds
    (default 20, so that an unresponsive address is reported well within 30 s of starting the command)."""
    return env_seconds(ADDRESS_TIMEOUT_ENV, DEFAULT_ADDRESS_TIMEOUT_S)


def _no_answer(url: str, what: str, timeout: float) -> DeploymentError:
    return DeploymentError(
        f"the Ray dashboard at {url} did not answer within {timeout:g}s ({what}); check --address "
        f"(http://HEAD:8265, the dashboard of a running head node), or set ${ADDRESS_TIMEOUT_ENV} to wait longer"
    )


def _job_client(address: str | None):
    """A JobSubmissionClient for the dashboard at `address`, whose quick requests fail within `address_timeout()`
    s. Unreachable, or not answering -> DeploymentError within that limit."""
    url = _dashboard(address)
    timeout = address_timeout()
    t0 = time.monotonic()
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme in ("http", "https") and parsed.hostname:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port),
                                          timeout=min(DASHBOARD_CONNECT_TIMEOUT_S, timeout)):
                pass
        except OSError as exc:
            raise DeploymentError(
                f"cannot reach the Ray dashboard at {url} ({exc}); check --address (http://HEAD:8265) and that the "
                "head node was started with the dashboard"
            ) from None
    from ray.job_submission import JobSubmissionClient

    from pipeline.app.runner import call_with_timeout

    def connect() -> Any:  # the client asks the dashboard for its Ray version
        try:
            return JobSubmissionClient(url)
        except (ConnectionError, RuntimeError) as exc:
            raise DeploymentError(f"cannot use the Ray dashboard at {url}: {exc}") from None

    left = max(1.0, timeout - (time.monotonic() - t0))  # the TCP check and the version check share the limit
    # Ray lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override the address it is given; --address must win.
    with _env_without("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        client = call_with_timeout(connect, left, lambda: _no_answer(url, "connecting", timeout),
                                   name="pipeline-dashboard")
    return _TimedJobClient(client, url, timeout)


class _TimedJobClient:
    """A JobSubmissionClient whose requests (TIMED_JOB_CALLS) raise a DeploymentError after `timeout` s (times
    the call's factor) without an answer, the way `pipeline run` limits attaching (runner.call_with_timeout)."""

    def __init__(self, client: Any, url: str, timeout: float):
        self._client = client
        self._url = url
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in TIMED_JOB_CALLS:
            return attr
        from pipeline.app.runner import call_with_timeout

        limit = self._timeout * TIMED_JOB_CALLS[name]

        def timed(*args: Any, **kwargs: Any) -> Any:
            return call_with_timeout(lambda: attr(*args, **kwargs), limit,
                                     lambda: _no_answer(self._url, name, limit), name=f"pipeline-{name}")

        return timed


@contextlib.contextmanager
def _env_without(*names: str):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _job_info(client: Any, submission_id: str) -> Any:
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc).lower():
            raise NotFoundError(f"no job {submission_id!r} on this cluster (see `ray job list`)") from None
        raise DeploymentError(f"could not read job {submission_id!r}: {exc}") from None


def submit_runtime_env(cfg: Any, root: Path | None, working_dir: Path) -> dict[str, Any]:
    """The job's runtime_env: the config's `ray.runtime_env`, with the project as working_dir."""
    user = dict(cfg.ray.runtime_env)
    if "working_dir" in user:
        from pipeline.exceptions import ConfigError

        raise ConfigError(
            f"{cfg.path}: ray.runtime_env.working_dir: `pipeline submit` ships the project as the job's working_dir; "
            "remove it (use py_modules or excludes to change what travels)"
        )
    env = {**user, "working_dir": str(working_dir)}
    excludes = list(SUBMIT_EXCLUDES) if root is not None else []
    env["excludes"] = excludes + list(user.get("excludes") or [])
    # Unbuffered: the job's log is a pipe, and the progress lines should reach `pipeline logs` as they happen.
    env["env_vars"] = {"PYTHONUNBUFFERED": "1", **dict(user.get("env_vars") or {})}
    return env


def _left_out_of_upload(root: Path, rel: str, extra_excludes: list[str]) -> str | None:
    """What keeps `rel` (relative to the project root) out of the job's working_dir upload, or None if it travels.
    The same rules as Ray's packaging: the excludes, then the root's .gitignore and .rayignore."""
    rel = os.path.normpath(rel)
    if rel.startswith(".."):
        return "it is outside the project"
    try:
        from ray._private.ray_constants import get_runtime_env_default_excludes
        from ray._private.thirdparty.pathspec import PathSpec
    except ImportError:  # another Ray layout: let the job report it
        return None
    rules = [("the upload's excludes", SUBMIT_EXCLUDES + get_runtime_env_default_excludes() + extra_excludes)]
    for name in (".gitignore", ".rayignore"):
        if (root / name).is_file():
            rules.append((f"the project's {name}", (root / name).read_text(errors="replace").splitlines()))
    parts = Path(rel).parts
    # Ray tests each directory on the way down, then the file; a directory pattern ("out/") needs the slash.
    candidates = ["/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)] + ["/".join(parts)]
    for label, lines in rules:
        spec = PathSpec.from_lines("gitwildmatch", lines)
        if any(spec.match_file(c) for c in candidates):
            return f"{label} leave it out"
    return None


def _check_submit_paths(cfg: Any, root: Path | None, err: Any) -> None:
    """A job runs in its uploaded copy of the project: a relative input/checkpoint must be inside it and travel."""
    extra = list(cfg.ray.runtime_env.get("excludes") or [])
    for key, p in cfg.local_paths():
        if os.path.isabs(p) or p.startswith("file://"):
            continue
        problem = None
        if root is None:
            problem = "there is no project checkout to upload"
        elif not (root / p).exists():
            problem = f"it is not in the project ({root})"
        else:
            problem = _left_out_of_upload(root, p, extra)
        if problem:
            raise InvalidArgumentError(
                f"{cfg.path}: {key}: {p!r} is relative, and a submitted job runs in an uploaded copy of the project, "
                f"but {problem}; use an absolute path that exists on the cluster's nodes (or a URI)"
            )
    paths = cfg.output.model_dump(include={"parquet", "coco", "yolo"}) if cfg.output else {}
    for key, p in ((k, v) for k, v in paths.items() if v):
        if not os.path.isabs(p) and "://" not in p:
            err.write(f"warning: output.{key} {p!r} is relative: the job writes it inside its working directory on "
                      "the head node, which Ray deletes later; use an absolute path on a shared volume\n")


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.app.config import load_config

    cfg = load_config(args.config, args.overrides)
    root = project_root()
    _check_submit_paths(cfg, root, sys.stderr)
    client = _job_client(args.address)
    url = client.get_address()
    stem = "".join(c if c.isalnum() else "-" for c in Path(args.config).stem)[:40]
    submission_id = f"pipeline-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    import tempfile

    tmp = None
    if root is None:
        # An installed package: the cluster must have cv-pipeline installed too; only the config travels.
        tmp = tempfile.TemporaryDirectory(prefix="pipeline-submit-")
        working_dir = Path(tmp.name)
        print("note: not running from a checkout; the job uses the cv-pipeline installed on the cluster",
              file=sys.stderr)
    else:
        working_dir = root
    rel = f"{SUBMIT_DIR}/{submission_id}.yaml"
    cfg_file = working_dir / rel
    cfg_file.parent.mkdir(exist_ok=True)
    cfg_file.write_text(f"# {args.config}, resolved by `pipeline submit` ({submission_id})\n"
                        + cfg.to_yaml(drop_address=True), encoding="utf-8")
    entrypoint = f"python -m pipeline.app.cli run {shlex.quote(rel)}"
    if args.job_id:
        entrypoint += f" --job-id {shlex.quote(args.job_id)}"
    if args.fail_on_item_errors:
        entrypoint += " --fail-on-item-errors"
    if args.data_dir:
        entrypoint = entrypoint.replace(" run ", f" --data-dir {shlex.quote(args.data_dir)} run ", 1)
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                          runtime_env=submit_runtime_env(cfg, root, working_dir),
                          metadata={"config": str(args.config), "tool": "pipeline submit"})
    except DeploymentError:  # no answer in time: already says so
        raise
    except Exception as exc:  # a refused runtime_env, an upload over the size cap, a stopped dashboard, ...
        raise DeploymentError(f"the cluster at {url} refused the job: {exc}") from None
    finally:
        cfg_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cfg_file.parent.rmdir()
        if tmp is not None:
            tmp.cleanup()
    print(f"submitted job {submission_id} to {url}")
    print(f"  dashboard: {url}/#/jobs/{submission_id}")
    addr = f" --address {url}"
    if args.no_wait:
        print(f"  follow it: pipeline logs {submission_id} --follow{addr}")
        print(f"  status:    pipeline status {submission_id}{addr}")
        return EXIT_OK
    sys.stdout.flush()
    try:
        _follow_logs(client, submission_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (pipeline cancel {submission_id}{addr} stops it)",
              file=sys.stderr)
        return EXIT_FAILED
    return _report_final(client, submission_id)


def _follow_logs(client: Any, submission_id: str) -> None:
    """Print the job's log as it grows until the job ends (Ray's log stream; polling if the stream fails)."""
    import asyncio

    printed = 0

    async def stream() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            printed += len(chunk)

    try:
        asyncio.run(stream())
        return
    except Exception as exc:  # e.g. a proxy that refuses websockets
        print(f"(log stream unavailable: {exc}; polling)", file=sys.stderr)
    while True:
        info = _job_info(client, submission_id)
        logs = client.get_job_logs(submission_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if info.status.is_terminal():
            return
        time.sleep(2.0)


def _wait_terminal(client: Any, submission_id: str, timeout: float = 30.0) -> Any:
    """The job's info once it is terminal (the log stream can end a moment before the status is written)."""
    deadline = time.time() + timeout
    info = _job_info(client, submission_id)
    while not info.status.is_terminal() and time.time() < deadline:
        time.sleep(0.5)
        info = _job_info(client, submission_id)
    return info


def _report_final(client: Any, submission_id: str) -> int:
    info = _wait_terminal(client, submission_id)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    if status == "SUCCEEDED":
        print(f"job {submission_id} SUCCEEDED")
        return EXIT_OK
    if not info.status.is_terminal():
        print(f"job {submission_id} is still {status}", file=sys.stderr)
        return EXIT_FAILED
    _print_failure(client, submission_id, info)
    return EXIT_FAILED


def _print_failure(client: Any, submission_id: str, info: Any) -> None:
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    message = (info.message or "").strip().splitlines()
    print(f"error: job {submission_id} {status}: {message[0] if message else '(no message)'}", file=sys.stderr)
    try:
        logs = client.get_job_logs(submission_id)
    except Exception:  # the status above is the essential part
        logs = ""
    tail = logs.rstrip("\n").splitlines()[-FAILED_LOG_TAIL:]
    if tail:
        print(f"--- last {len(tail)} lines of the job's log ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    client = _job_client(args.address)
    info = _job_info(client, args.submission_id)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    print(f"job {args.submission_id}: {status}")
    if info.message:
        print(f"  message: {info.message.strip().splitlines()[0]}")
    for label, t in (("started", info.start_time), ("ended", info.end_time)):
        if t:
            print(f"  {label}: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t / 1000))}")
    if info.entrypoint:
        print(f"  entrypoint: {info.entrypoint}")
    if status in ("FAILED", "STOPPED"):
        _print_failure(client, args.submission_id, info)
        return EXIT_FAILED
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    client = _job_client(args.address)
    _job_info(client, args.submission_id)  # a clear error for an unknown id
    if args.follow:
        try:
            _follow_logs(client, args.submission_id)
        except KeyboardInterrupt:
            return EXIT_OK
    else:
        sys.stdout.write(client.get_job_logs(args.submission_id))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    client = _job_client(args.address)
    info = _job_info(client, args.submission_id)
    if info.status.is_terminal():
        print(f"job {args.submission_id} has already ended: {info.status}")
        return EXIT_OK
    client.stop_job(args.submission_id)
    print(f"stop requested for job {args.submission_id}")
    return EXIT_OK
