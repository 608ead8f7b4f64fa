"""`pipeline run CONFIG`: a YAML pipeline from start to summary. Also the entrypoint of a `pipeline submit` job.

    config -> attach to Ray -> deploy (or connect) -> predict_detached -> progress -> summary -> shutdown

`deploy_from_config` and `start_from_config` are the one path from a config to a running session, for the CLI
and for Python callers alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from pipeline.app.config import PipelineConfig, load_config
from pipeline.env import env_seconds
from pipeline.exceptions import DeploymentError, InvalidArgumentError, PipelineError

if TYPE_CHECKING:
    from pipeline.api import Api
    from pipeline.deploy.nn import Model
    from pipeline.stages.session import PredictionSession

__all__ = ["run_config", "attach", "call_with_timeout", "deploy_from_config", "start_from_config", "RunSummary",
           "AttachTimeout"]

# How long attaching to a Ray cluster at an address may take before we call it unreachable. The TCP check in
# pipeline/deploy/cluster.py catches a closed port or a dead host within 10 s; this catches a port that answers but is not
# a Ray GCS (e.g. the dashboard's 8265), where ray.init would retry for minutes. A healthy cluster answers in ~1-5 s.
# $PIPELINE_ATTACH_TIMEOUT_S overrides it.
ATTACH_TIMEOUT_S = 20.0
# Seconds between the plain progress lines written when stderr is not a terminal (job logs, CI): often enough to
# see a run move, rare enough to keep a long job's log readable.
LOG_PROGRESS_EVERY_S = 10.0
# How often the tqdm bar's postfix (done, failed, images/s, ETA) is refreshed from session.status().
POSTFIX_EVERY_S = 0.5
# Item errors quoted in the summary; the rest are counted.
MAX_ERRORS_SHOWN = 3
# Keys of status()["context"] worth printing at the end (where the results went), in this order.
CONTEXT_KEYS = ("job_id", "upload", "target_project_id", "target_project_name", "renamed_from",
                "output_parquet", "output_coco", "output_yolo")


class AttachTimeout(DeploymentError):
    """No Ray cluster answered at the given address in time."""


def call_with_timeout(fn: Callable[[], Any], timeout: float, on_timeout: Callable[[], BaseException],
                      name: str = "pipeline-call", exit_on_hang: bool = False) -> Any:
    """`fn()` in a daemon thread: its result, or the exception it raised, re-raised here. When it has not returned
    after `timeout` s, the exception `on_timeout()` makes is raised instead and the thread is left behind (a call
    blocked in ray.init or in a socket read cannot be interrupted; a daemon thread does not keep the process up).
    `exit_on_hang`: also make the process's exit immediate (exit code 1), for calls that Ray's own exit hook
    would wait on."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if exit_on_hang:
            # The last atexit hook registered runs first: before Ray's, which would wait on the stuck call.
            import atexit

            atexit.register(os._exit, 1)
        raise on_timeout()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def attach(address: str | None, timeout: float | None = None) -> None:
    """Attach this process to Ray (pipeline.deploy.cluster.ensure_ray), failing within `timeout` s
    ($PIPELINE_ATTACH_TIMEOUT_S, default ATTACH_TIMEOUT_S) for an address that does not answer like a Ray cluster.
    A local Ray (no address) is started without a limit."""
    from pipeline.deploy.cluster import ensure_ray
    from pipeline.deploy.nn import DEPLOY_TIMEOUT_S

    env_seconds("PIPELINE_DEPLOY_TIMEOUT_S", DEPLOY_TIMEOUT_S)  # a bad value is refused before Ray starts
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ensure_ray(None)
        return
    timeout = timeout or env_seconds("PIPELINE_ATTACH_TIMEOUT_S", ATTACH_TIMEOUT_S)
    # ray.init stuck in its retry loop: the process must still be able to exit.
    call_with_timeout(
        lambda: ensure_ray(address), timeout, name="pipeline-attach", exit_on_hang=True,
        on_timeout=lambda: AttachTimeout(
            f"no Ray cluster answered at {address!r} within {timeout:g}s; is it the GCS address (host:6379 by "
            "default, `ray status` on the head shows it), not the dashboard's (8265)? If it is, the cluster may "
            "refuse this process's Ray authentication token (Ray's token authentication: give this machine the "
            "head's token, in ~/.ray/auth_token or $RAY_AUTH_TOKEN, or run both with RAY_AUTH_MODE=disabled)"
        ),
    )


def deploy_from_config(api: Api, cfg: PipelineConfig, out: IO[str] | None = None) -> tuple[Model, bool]:
    """Deploy the config's model, or connect to its task_id. Returns (model, deployed_by_this_call)."""
    m = cfg.model
    say = out.write if out is not None else (lambda _s: None)
    if m.task_id is not None:
        model = api.nn.connect(m.task_id)
        say(f"using deployment {model.task_id}: {model.spec.name} on {model.device}\n")
        return model, False
    before = {d["task_id"] for d in api.nn.list()} if m.reuse else set()
    say(f"deploying {m.ref} ...\n")
    t0 = time.time()
    model = api.nn.deploy(model=m.ref, device=m.device, replicas=m.replicas, gpus_per_replica=m.gpus_per_replica,
                          reuse=m.reuse, runtime=m.runtime)
    reused = model.task_id in before
    info = model.info()
    verb = "reusing" if reused else f"deployed in {time.time() - t0:.1f}s as"
    say(f"{verb} task {model.task_id}: {info['framework']}/{info['architecture']} ({info['task_type']}, "
        f"{'open-vocabulary' if info.get('open_vocabulary') else str(len(info['classes'])) + ' classes'}) on "
        f"{info['device']}, {_n(info['replicas'], 'replica')}\n")
    return model, not reused


def start_from_config(model: Model, cfg: PipelineConfig, job_id: str | None = None) -> PredictionSession:
    """`model.predict_detached(**cfg.predict_kwargs(job_id))`."""
    return model.predict_detached(**cfg.predict_kwargs(job_id))


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did, gathered while reading its predictions."""

    items: int = 0
    failed: int = 0
    objects: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error: BaseException | None = None
    interrupted: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    def add(self, pred: Any) -> None:
        self.items += 1
        if pred.error is not None:
            self.failed += 1
            if len(self.errors) < MAX_ERRORS_SHOWN:
                self.errors.append(f"{pred.name or pred.source}: {pred.error}")
        else:
            self.objects.update(pred.classes)


class _Progress:
    """A tqdm bar on a terminal; elsewhere (job logs) a plain line every LOG_PROGRESS_EVERY_S seconds."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = None
        self.last = 0.0
        if self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, desc="predict", unit="img", file=stream, dynamic_ncols=True)

    def tick(self, n: int, session: PredictionSession, force: bool = False) -> None:
        if self.bar is not None and n:
            self.bar.update(n)
        now = time.time()
        every = POSTFIX_EVERY_S if self.interactive else LOG_PROGRESS_EVERY_S
        if not force and now - self.last < every:
            return
        self.last = now
        s = session.status()
        if self.bar is not None:
            if s["total"] and self.bar.total != s["total"]:
                self.bar.total = s["total"]
            self.bar.set_postfix_str(_live(s), refresh=True)
        else:
            total = s["total"] if s["total"] is not None else "?"
            self.stream.write(f"progress: {s['done']}/{total} ({s['progress']:.0f}%), {_live(s)}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _live(s: dict[str, Any]) -> str:
    eta = f"ETA {_duration(s['eta_s'])}" if s.get("eta_s") is not None else "ETA ?"
    return f"done={s['done']} failed={s['failed']} {s['items_per_s']:.1f} img/s {eta}"


def collect(session: PredictionSession, progress: _Progress | None = None,
            on_prediction: Callable[[Any], None] | None = None) -> RunSummary:
    """Read every prediction of `session` (it pauses when nobody reads), counting as we go; `on_prediction` sees
    each one."""
    summary = RunSummary()
    _SIGTERM["defer"] = True
    try:
        while True:
            _check_sigterm(session)
            try:
                pred = session.next(timeout=1.0)
            except TimeoutError:
                if progress is not None:
                    progress.tick(0, session)
                continue
            except StopIteration:
                break
            summary.add(pred)
            if on_prediction is not None:
                on_prediction(pred)
            if progress is not None:
                progress.tick(1, session)
    except KeyboardInterrupt:
        summary.interrupted = True
        session.stop()
    except Exception as exc:  # the error that ended the run (session re-raises it once to the reader)
        summary.error = exc
    finally:
        _SIGTERM["defer"] = False
    _check_sigterm(session)  # a SIGTERM during the last item
    if progress is not None:
        progress.tick(0, session, force=True)
    summary.status = session.status()
    return summary


def print_summary(summary: RunSummary, out: IO[str]) -> None:
    s = summary.status
    elapsed = s.get("elapsed_s") or 0.0
    rate = summary.items / elapsed if elapsed > 0 else 0.0
    state = "interrupted" if summary.interrupted else "FAILED" if summary.error is not None else "done"
    total = sum(summary.objects.values())
    out.write(f"pipeline run: {state} in {_duration(elapsed)}: {_n(summary.items, 'item')}, {summary.failed} failed, "
              f"{_n(total, 'object')}, {rate:.2f} images/s\n")
    if summary.objects:
        per_class = ", ".join(f"{name} {count}" for name, count in sorted(summary.objects.items()))
        out.write(f"  objects per class: {per_class}\n")
    if summary.failed:
        more = summary.failed - len(summary.errors)
        out.write("  failed items: " + "; ".join(summary.errors) + (f"; and {more} more" if more > 0 else "") + "\n")
    ctx = s.get("context") or {}
    results = [f"{k}={ctx[k]}" for k in CONTEXT_KEYS if ctx.get(k) not in (None, "")]
    if results:
        out.write("  results: " + ", ".join(results) + "\n")
    out.flush()


# ---------------------------------------------------------------------------------------------------------------


def run_config(
    config: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    job_id: str | None = None,
    fail_on_item_errors: bool = False,
    data_dir: str | os.PathLike | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Run a YAML pipeline. Returns the exit code: 0 done, 1 the run failed (or, with `fail_on_item_errors`, some
    items failed). Bad configs and arguments raise `InvalidArgumentError`s (the CLI's exit code 2)."""
    from pipeline.api import Api

    out = out or sys.stdout
    err = err or sys.stderr
    cfg = load_config(config, overrides)
    cfg.check_paths()  # before anything is deployed: a typo in a path costs no model start

    api = Api(data_dir, ray_address=cfg.ray.address)
    try:
        precheck(api, cfg.predict_kwargs(job_id))
    except InvalidArgumentError as exc:  # with the file and line of the key it is about
        raise InvalidArgumentError(cfg.located(str(exc))) from None
    _terminate_cleanly()
    attach(cfg.ray.address)
    model, deployed = deploy_from_config(api, cfg, out=out)
    out.flush()
    shutdown = cfg.model.shutdown if cfg.model.shutdown is not None else deployed
    summary: RunSummary | None = None
    session = None
    try:
        session = start_from_config(model, cfg, job_id)
        progress = _Progress(err)
        try:
            summary = collect(session, progress)
        finally:
            progress.close()
        print_summary(summary, out)
        if cfg.upload is not None:
            out.write(f"  platform data dir: {api.data_dir}\n")
    finally:
        if session is not None and not session.is_done():
            # SIGTERM (SystemExit) or another exit mid-run: the session's thread must stop using the replicas
            # before they go, or it keeps retrying dead replicas while the interpreter shuts Ray down under it.
            session.stop()
        if shutdown:
            try:
                model.shutdown()
                out.write(f"stopped deployment {model.task_id}\n")
            except Exception as exc:  # the run's own result matters more than a failed clean-up
                err.write(f"warning: could not stop deployment {model.task_id}: {exc}\n")
        else:
            out.write(f"deployment {model.task_id} is still running (pipeline stop {model.task_id} stops it)\n")
        out.flush()
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.error is not None:
        e = summary.error
        text = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
        err.write(f"error: the run failed: {text}\n")
        return 1
    if summary.failed and fail_on_item_errors:
        err.write(f"error: {_n(summary.failed, 'item')} failed (--fail-on-item-errors)\n")
        return 1
    return 0


def precheck(api: Api, kwargs: dict[str, Any]) -> None:
    """What can be checked without the model, checked before it is deployed, as predict() checks it: the
    arguments (`_args.normalize`), then the source (`source.resolve_source`): that the platform ids exist and
    the project holds images, that a video opens and `video_params` selects frames of it, that a project folder
    is readable; and that an output path is usable. (Class names are checked against the model once it is up.)
    A file that cannot be read as what it claims to be is bad input too: `InvalidArgumentError` (exit code 2)."""
    from pipeline.exceptions import FormatError, InvalidArgumentError
    from pipeline.stages import args as _args
    from pipeline.stages.source import resolve_source

    args = _args.normalize(kwargs, model_classes=None)
    if not _walks_a_directory(args):  # a directory's source walks every file: left to the run itself
        import contextlib
        import io

        try:
            # What resolving says on stderr (a video damaged part way) the run says again when it resolves.
            with contextlib.redirect_stderr(io.StringIO()):
                resolve_source(args, api.platform)
        except FormatError as exc:
            raise InvalidArgumentError(str(exc)) from None
    if args.output:
        from pipeline.stages.upload.export import check_output

        check_output(args.output)


def _walks_a_directory(args: Any) -> bool:
    """Whether `args.input` is a plain directory (not a Supervisely project folder), whose source plan lists every
    file and indexes every video in it: work done once, by the run."""
    value = args.input
    if not isinstance(value, str | os.PathLike):
        return False
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    return os.path.isdir(path) and not os.path.isfile(os.path.join(path, "meta.json"))


# While `collect` reads a session, a SIGTERM is only noted here and acted on at the loop's next turn (within 1 s):
# raised from the handler, the SystemExit could land inside a Ray call and leave Ray's core worker in a state that
# aborts the process at exit.
_SIGTERM: dict[str, Any] = {"defer": False, "signum": None}


def _terminate_cleanly() -> None:
    """SIGTERM (`pipeline cancel`, a job stopped by Ray, `kill`) becomes SystemExit, so the `finally` that shuts
    down what this run deployed still runs; Python's default would exit at once and leave the replicas up."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        # Ray's native failure-signal handler (absl) saw the SIGTERM first: it logged it and armed an alarm that
        # aborts the process 3 s later (alarm_on_failure_secs; ray-project/ray#64830). A clean exit (stop the run,
        # shut the replicas down) may take longer.
        signal.alarm(0)
        if _SIGTERM["defer"]:
            _SIGTERM["signum"] = signum
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _check_sigterm(session: PredictionSession) -> None:
    signum = _SIGTERM["signum"]
    if signum is not None:
        _SIGTERM["signum"] = None
        session.stop()
        raise SystemExit(128 + signum)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds + 0.5), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
