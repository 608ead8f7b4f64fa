"""`PredictionSession`: a prediction run in the background, read as it completes.

The run is one driver thread: source -> batches -> scheduler (loading tasks + replica calls) -> collector ->
upload (its own thread) -> a queue the reader takes from. `predict()` is a session collected in input order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipeline.exceptions import InvalidArgumentError, PipelineError, RunError
from pipeline.prediction import Prediction
from pipeline.stages import args as _args
from pipeline.stages.collect import Collector, keypoint_layout
from pipeline.stages.loading import decode_options, make_loader
from pipeline.stages.scheduler import DEFAULT_MAX_IN_FLIGHT, RayExecutor, Scheduler
from pipeline.stages.source import SourcePlan, resolve_source
from pipeline.stages.tracking_stage import TrackingStage
from pipeline.stages.upload import UploadStage, make_uploader

if TYPE_CHECKING:
    from pipeline.deploy.nn import Model

log = logging.getLogger(__name__)

__all__ = ["PredictionSession", "start_session", "run_predict"]

# Default images per model call when predict(batch_size=None): GPUs want larger batches; on CPU a small batch
# keeps latency low and costs nothing in throughput.
DEFAULT_BATCH_SIZE = {"cuda": 16, "cpu": 4}
# Unread predictions a session keeps before it pauses new work (backpressure on a reader that falls behind).
MAX_BUFFERED = 4096


class _Done:
    """The end-of-stream sentinel on the reader's queue."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


class PredictionSession:
    """A running prediction. Iterate it (completion order), or poll `next`, `status`, `is_done`; `stop` it.

    Created by `model.predict_detached(...)`; all argument checks have passed by the time you hold one.
    """

    def __init__(self, model: Model, args: _args.PredictArgs, plan: SourcePlan, uploader: UploadStage | None = None):
        self.model = model
        self.args = args
        self.plan = plan
        self.uploader = uploader
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._done = 0
        self._failed = 0
        self._read_done = False
        self._error: BaseException | None = None
        self._error_text: str | None = None  # "RunError: every replica ...": what status()["error"] says
        self._traceback: str | None = None  # where it came from: status()["traceback"]
        self._raised = False
        self._message = "starting"
        self._total: int | None = None
        self._total_ready = threading.Event()
        self._skipped = 0
        self._started_at = time.time()
        self._finished_at: float | None = None
        self.scheduler = None
        threading.Thread(target=self._count, name="pipeline-count", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="pipeline-run", daemon=True)
        self._thread.start()

    # -- the run ----------------------------------------------------------------------------------------------
    def _count(self) -> None:
        try:
            total = self.plan.count()
        except Exception:  # a count is for progress only; the run reports real problems
            total = 0
        with self._lock:
            done_before = self.uploader.skipped_count() if self.uploader is not None else 0
            self._total = max(0, total - done_before)
        if self.uploader is not None:  # before len() answers: a caller that waited for it finds the job's total
            try:
                self.uploader.set_total(self._total)
            except Exception:  # the job's record misses its total; the run itself reports database failures
                log.exception("recording the run's item count")
        self._total_ready.set()

    def _emit(self, preds: list[Prediction]) -> None:
        with self._lock:
            for p in preds:
                self._done += 1
                if p.error is not None:
                    self._failed += 1
        for p in preds:
            self._queue.put(p)

    def _sink(self, preds: list[Prediction]) -> None:
        if self.uploader is not None:
            self.uploader.put(preds)
        else:
            self._emit(preds)

    def _run(self) -> None:
        error: BaseException | None = None
        loader = None
        try:
            if self.uploader is not None:
                self.uploader.begin_run()
            model, args = self.model, self.args
            pairs = model.replicas_and_nodes()
            img_size = args.img_size or _spec_size(model.spec.img_size)
            batch_size = args.batch_size or DEFAULT_BATCH_SIZE.get(model.device, 4)
            settings = {**args.settings, "img_size": img_size}
            if args.tiling:  # the replica cuts each image into tiles, run batch_size at a time (workers/tiling.py)
                settings["tiling"] = {**args.tiling, "batch": batch_size}
                settings["decode"] = "full"
            if self.uploader is not None:
                self.uploader.start(self._emit)
            tracking = TrackingStage.for_run(args, self.uploader, self._sink, batch_size,
                                             len(pairs) * (args.max_in_flight or DEFAULT_MAX_IN_FLIGHT))
            loader = make_loader(self.plan, _decode_options(model, settings, img_size), tracking=tracking)
            stream = self.plan.iter_items() if tracking is None else tracking.skip_done(self.plan.iter_items())
            items = loader.items(stream)
            if self.uploader is not None:  # a tracked video is tracked from its start (tracking_stage.py)
                items = self.uploader.filter_done(items, keep_frames=tracking is not None)
            executor = RayExecutor([h for h, _ in pairs], [n for _, n in pairs], settings)
            self.scheduler = Scheduler(executor, len(pairs), args.max_in_flight or DEFAULT_MAX_IN_FLIGHT,
                                       stop_event=self._stop)
            self._message = "predicting"
            collector = Collector(args.class_names(model.classes), args.class_filter, tracking or self._sink,
                                  keypoint_layout(model.spec))
            gate = self._has_room if tracking is None else tracking.gate(
                self._has_room, lambda: self.scheduler.pool.in_flight)
            self.scheduler.run(loader.batches(items, batch_size), collector, before_submit=gate)
            if tracking is not None:
                tracking.close(complete=not self._stop.is_set())
            if self.uploader is not None:
                self._message = "finishing upload"
                self.uploader.close(complete=not self._stop.is_set())
            self._message = "stopped" if self._stop.is_set() else "done"
        except BaseException as exc:  # reported to the reader and kept in status()
            error = exc
            self._error_text = f"{type(exc).__name__}: {exc}"
            self._traceback = "".join(traceback.format_exception(exc)).strip()
            self._message = f"failed: {type(exc).__name__}: {exc}"
            if self.uploader is not None:
                try:
                    self.uploader.close(abort=True)
                except Exception:
                    log.exception("closing the upload after a failure")
        finally:
            if loader is not None:
                loader.close(stopped=self._stop.is_set() or error is not None)
            self._error = error
            if self.uploader is not None:  # before the reader hears of the end: the job's record is final by then
                state = "failed" if error is not None else "stopped" if self._stop.is_set() else "done"
                self.uploader.end_run(state, f"{type(error).__name__}: {error}" if error is not None else "")
            self._finished_at = time.time()
            self._finished.set()
            self._queue.put(_Done(error))

    def _has_room(self) -> bool:
        backlog = self.uploader.backlog() if self.uploader is not None else 0
        return self._queue.qsize() + backlog < MAX_BUFFERED

    # -- reading ----------------------------------------------------------------------------------------------
    def next(self, timeout: float | None = None, block: bool = True) -> Prediction | None:
        """The next finished prediction. `block=False`: None when none is ready. `TimeoutError` after
        `timeout` seconds; `StopIteration` when the run is over and everything was read."""
        if self._read_done:
            self._raise_error_once()
            raise StopIteration
        try:
            item = self._queue.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            if not block:
                return None
            raise TimeoutError(f"no prediction within {timeout}s") from None
        if isinstance(item, _Done):
            self._read_done = True
            self._raise_error_once()
            raise StopIteration
        return item

    def _raise_error_once(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            if isinstance(self._error, PipelineError):
                raise self._error
            raise RunError(f"the prediction run failed: {type(self._error).__name__}: {self._error}") from self._error

    def __iter__(self) -> Iterator[Prediction]:
        return self

    def __next__(self) -> Prediction:
        return self.next()

    def __len__(self) -> int:
        """How many predictions this run produces (items of the input, minus those a resumed job already did)."""
        self._total_ready.wait()
        return int(self._total or 0)

    def is_done(self) -> bool:
        """True once every item has been processed, or the session was stopped."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has finished; True if it did within `timeout`."""
        return self._finished.wait(timeout)

    def stop(self) -> None:
        """Start no new work and cancel what is queued on the replicas; finished predictions stay readable."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def status(self) -> dict[str, Any]:
        """{"progress": 0-100, "done", "total", "failed", "message", "error" (the error that ended the run, as
        "Type: message"; its traceback in "traceback"), "context"} (and a few more)."""
        with self._lock:
            done, failed, total = self._done, self._failed, self._total
        elapsed = (self._finished_at or time.time()) - self._started_at
        if total:
            progress = min(100.0, 100.0 * done / total)
        else:
            progress = 100.0 if self._finished.is_set() else 0.0
        context = dict(self.plan.context)
        if self.uploader is not None:
            context.update(self.uploader.context())
        rate = done / elapsed if elapsed > 0 else 0.0
        return {
            "progress": round(progress, 2),
            "done": done,
            "total": total,
            "failed": failed,
            "message": self._message,
            "error": self._error_text,
            "traceback": self._traceback,
            "context": context,
            "elapsed_s": round(elapsed, 3),
            "items_per_s": round(rate, 3),
            "eta_s": round((total - done) / rate, 1) if rate > 0 and total else None,
            "is_done": self._finished.is_set(),
            "submitted": self.scheduler.stats.submitted if self.scheduler is not None else 0,
            "resubmitted": self.scheduler.stats.resubmitted if self.scheduler is not None else 0,
        }

    def __enter__(self) -> PredictionSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        s = self.status()
        return f"PredictionSession({s['done']}/{s['total']} done, {s['failed']} failed, {s['message']})"


def _decode_options(model: Model, settings: dict[str, Any], img_size: Any) -> Any:
    """How this run's loading tasks decode: only an exact (h, w) size is applied while decoding (an int is the
    model's own fitting rule, done in the replica: docs/api.md, "img_size"); large JPEGs decoded reduced or on the
    GPU per `settings["decode"]` (docs/api.md, "decode")."""
    from workers.models import get_adapter

    adapter = get_adapter(model.spec.framework)
    cpus_per_gpu = None
    if model.device == "cuda":
        import ray

        res = ray.cluster_resources()
        cpus_per_gpu = res.get("CPU", 0.0) / max(res.get("GPU", 0.0), 1e-9)
    return decode_options(settings, img_size if isinstance(img_size, tuple) else None,
                          adapter.decode_hint(model.spec, img_size), adapter.accepts_device_tensors and
                          model.device == "cuda", cpus_per_gpu)


def _spec_size(size: Any) -> int | tuple[int, int] | None:
    return _args.parse_img_size(list(size) if isinstance(size, tuple) else size)


def start_session(model: Model, input: Any = None, **kwargs: Any) -> PredictionSession:  # noqa: A002
    """Validate everything, then start the run. Raises `ValueError`s before any work."""
    args = _args.normalize({"input": input, **kwargs}, model_classes=model.classes,
                           model_settings=model.settings_keys, open_vocabulary=model.open_vocabulary,
                           task_type=model.spec.task_type)  # the model's task: how (and whether) tiles merge
    model.validate_settings({**args.settings, "img_size": args.img_size})
    platform = model.api.platform
    plan = resolve_source(args, platform)
    if args.tracking is not None and not plan.has_videos:
        raise InvalidArgumentError(f"tracking links detections across the frames of a video; {plan.description} "
                                   "holds no video")
    uploader = None
    if args.upload is not None or args.output:
        uploader = make_uploader(args, plan, platform, model)
    return PredictionSession(model, args, plan, uploader)


def run_predict(model: Model, input: Any = None, **kwargs: Any) -> list[Prediction]:  # noqa: A002
    """`predict()`: a session collected in input order, with a tqdm progress bar unless progress=False."""
    session = start_session(model, input=input, **kwargs)
    results: list[Prediction] = []
    try:
        if session.args.progress:
            from tqdm.auto import tqdm

            with tqdm(total=len(session), desc="predict", unit="img") as bar:
                for p in session:
                    results.append(p)
                    bar.update(1)
        else:
            results.extend(session)
    except BaseException:
        session.stop()
        raise
    results.sort(key=lambda p: p.index)
    return results
