"""`api.nn`: deploy models as GPU-pinned replica actors, connect to them by task id, list and stop them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline.deploy.models import resolve_model
from pipeline.deploy.planning import check_deploy_args, plan_replicas, resolve_device, spread_nodes
from pipeline.env import env_seconds
from pipeline.exceptions import (
    DeploymentError,
    InvalidArgumentError,
    ModelLoadError,
    NotFoundError,
)

if TYPE_CHECKING:
    from pipeline.api import Api
    from pipeline.stages.session import PredictionSession

__all__ = ["DEPLOY_TIMEOUT_S", "Model", "NnApi"]

# How long deploy() waits for every replica to load its model. Generous: a cold node may first pull torch and
# the weights; a replica that cannot be placed at all is caught before waiting (see plan_replicas).
# $PIPELINE_DEPLOY_TIMEOUT_S overrides it (read at each deploy).
DEPLOY_TIMEOUT_S = 600.0


# How long predict() waits for a replica to judge an open-vocabulary run's prompts before it starts anyway.
SETTINGS_CHECK_TIMEOUT_S = 30.0


def _creation_error(exc: Exception) -> str:
    """The message of the exception a replica's __init__ raised, out of Ray's wrapping."""
    text = str(exc)
    for marker in ("ModelLoadError: ", "CheckpointError: ", "RuntimeError: "):
        if marker in text:
            tail = text.rsplit(marker, 1)[1]
            return marker.rstrip(": ") + ": " + tail.strip().splitlines()[0]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


class NnApi:
    """`api.nn`: deploy / connect / list."""

    def __init__(self, api: Api):
        self._api = api

    def _ray(self):
        from pipeline.deploy.cluster import ensure_ray

        ensure_ray(self._api.ray_address)
        from pipeline.deploy.registry import get_registry

        return get_registry()

    def deploy(
        self,
        model: str | os.PathLike,
        device: str | None = None,
        replicas: int | None = None,
        gpus_per_replica: float = 1.0,
        reuse: bool = False,
        timeout: float | None = None,
        runtime: str | None = None,
        precision: str = "fp32",
    ) -> Model:
        """Deploy a checkpoint (path, file:// or pyarrow.fs URI) or a pretrained "<framework>/<name>".

        Everything about the model (framework, architecture, task type, classes, input size) is read from the
        checkpoint. `device=None` picks "cuda" when the Ray cluster has GPUs, else "cpu"; `replicas=None` is one
        replica per GPU (one on CPU); each replica is a Ray actor with `num_gpus=gpus_per_replica`. With
        `reuse=True` a running deployment of the same model (same checkpoint content or pretrained name) on the
        same device is returned instead of starting another. Waits until every replica has loaded the model.
        `runtime` ("pytorch" | "onnx" | "tensorrt"; None: from the file) says how a framework's own file runs.
        `precision` "fp16" / "bf16" runs the forward pass under autocast on the GPU (refused on CPU).
        """
        import ray

        check_deploy_args(replicas, gpus_per_replica, timeout)  # before the model is read or Ray is started
        timeout = timeout or env_seconds("PIPELINE_DEPLOY_TIMEOUT_S", DEPLOY_TIMEOUT_S)
        from workers.models.base import PRECISIONS

        if runtime not in (None, "pytorch", "onnx", "tensorrt"):
            raise InvalidArgumentError(f"runtime must be None, 'pytorch', 'onnx' or 'tensorrt'; got {runtime!r}")
        if precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
        spec, weights = resolve_model(model, **({"runtime": runtime} if runtime is not None else {}))
        registry = self._ray()
        res = ray.cluster_resources()
        from pipeline.deploy.cluster import node_cpus

        cpus = node_cpus()
        dev = resolve_device(device, res.get("GPU", 0.0))
        if precision != "fp32":
            if dev != "cuda":
                raise InvalidArgumentError(
                    f"precision={precision!r} needs a GPU (autocast runs on CUDA): this deployment runs on the CPU, "
                    "where float32 is what the model computes in; leave precision='fp32' or deploy on a GPU"
                )
            spec.precision = precision
            spec.identity += f":{precision}"
        plan = plan_replicas(dev, replicas, gpus_per_replica, res.get("GPU", 0.0), max(cpus.values(), default=0))
        # GPU replicas are placed by their GPU demand; CPU replicas, which demand nothing, by spread_nodes.
        placement = spread_nodes(cpus, plan.replicas) if dev == "cpu" else [None] * plan.replicas
        if reuse:
            rec = ray.get(registry.find.remote(spec.identity, dev))
            if rec is not None:
                return Model(self._api, rec)
        weights_arg = [ray.put(weights)] if weights is not None else []
        rec = ray.get(registry.deploy.remote(spec.to_dict(), weights_arg, dev, plan.replicas, plan.options, plan.threads,
                                             placement))
        handle = Model(self._api, rec)
        try:
            # Not retried: a model that fails to load fails the same way again (its error, e.g. weights missing
            # from the cache, would otherwise come after two more attempts and their tracebacks)
            infos = ray.get([h.ready.options(max_task_retries=0).remote() for h in handle._replicas()],
                            timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ray.get(registry.remove.remote(rec["task_id"]))
            raise DeploymentError(
                f"the replicas of {spec.name} did not start within {timeout:g}s (resources "
                f"{plan.options}); is the cluster able to place them?"
            ) from None
        except Exception as exc:
            ray.get(registry.remove.remote(rec["task_id"]))
            raise ModelLoadError(f"could not start {spec.name}: {_creation_error(exc)}") from None
        ray.get(registry.set_status.remote(rec["task_id"], "running", infos))
        handle._record = ray.get(registry.get.remote(rec["task_id"]))
        handle._handles = None  # read again with each replica's node (loading tasks are placed next to it)
        return handle

    def connect(self, task_id: int) -> Model:
        """The running deployment with this task id (from any driver attached to the same cluster)."""
        import ray

        from pipeline.stages.args import as_int

        tid = as_int(task_id)
        if tid is None:
            raise InvalidArgumentError(f"task_id must be an integer (see `pipeline models`); got {task_id!r}")
        registry = self._ray()
        rec = ray.get(registry.get.remote(tid))
        if rec is None:
            running = [r["task_id"] for r in ray.get(registry.list.remote())]
            raise NotFoundError(
                f"no running deployment with task id {task_id} (it was never started or has been stopped); "
                f"running: {running or 'none'}"
            )
        return Model(self._api, rec)

    def list(self) -> list[dict[str, Any]]:
        """Running deployments: task_id, model, framework, task_type, classes, device, replicas, status."""
        import ray

        registry = self._ray()
        return [Model(self._api, rec).info() for rec in ray.get(registry.list.remote())]

    def stop(self, task_id: int) -> None:
        self.connect(task_id).shutdown()


class Model:
    """A handle on one deployment. Cheap: any number of handles may point at the same deployment."""

    def __init__(self, api: Api, record: dict[str, Any]):
        from workers.models.base import ModelSpec

        self._api = api
        self._record = record
        self.spec = ModelSpec.from_dict(record["spec"])
        self._handles: list | None = None

    @property
    def api(self) -> Api:
        """The `Api` this handle was made by (its platform is where uploads go)."""
        return self._api

    @property
    def task_id(self) -> int:
        return int(self._record["task_id"])

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def open_vocabulary(self) -> bool:
        """True for a text-prompted model (OWLv2, Grounding DINO): `classes` is [] and predict's `classes=[...]`
        are what it finds, not a filter."""
        from workers.models import get_adapter

        return get_adapter(self.spec.framework).is_open_vocabulary(self.spec)

    def validate_settings(self, settings: dict[str, Any]) -> None:
        """`InvalidArgumentError` for settings (a run's, `img_size` included) this model cannot take."""
        from workers.models import get_adapter

        get_adapter(self.spec.framework).validate_settings(self.spec, settings)
        if self.open_vocabulary:  # its prompts are judged by its tokenizer, which only a replica has loaded
            self._check_on_a_replica(settings)

    def _check_on_a_replica(self, settings: dict[str, Any]) -> None:
        import ray

        handle = self._replicas()[0]
        try:
            ray.get(handle.check_settings.remote(settings), timeout=SETTINGS_CHECK_TIMEOUT_S)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InvalidArgumentError):
                raise InvalidArgumentError(str(exc.cause)) from None
            raise
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return  # busy with another run, or gone (the run deals with that): each batch is checked where it runs

    @property
    def settings_keys(self) -> list[str]:
        """The `settings` keys this model's adapter takes (besides the pipeline's own)."""
        from workers.models import get_adapter

        return list(get_adapter(self.spec.framework).default_settings)

    @property
    def device(self) -> str:
        return self._record["device"]

    def _replicas(self) -> list:
        """Handles of the live replicas (a replica killed for good is left out)."""
        return [h for h, _ in self.replicas_and_nodes()]

    def replicas_and_nodes(self) -> list[tuple[Any, str | None]]:
        """(actor handle, node id it was placed on) of each live replica: what a prediction run feeds."""
        import ray

        from pipeline.deploy.cluster import NAMESPACE

        if self._handles is None:
            nodes = {i.get("name"): i.get("node_id") for i in self._record.get("replicas_info", [])}
            handles = []
            for name in self._record["replica_names"]:
                try:
                    handles.append((ray.get_actor(name, namespace=NAMESPACE), nodes.get(name)))
                except ValueError:
                    continue  # killed for good; the others carry on
            if not handles:
                raise DeploymentError(f"deployment {self.task_id} has no live replicas; deploy it again")
            self._handles = handles
        return self._handles

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {
            "task_id": self.task_id,
            "model": s.name,
            "framework": s.framework,
            "architecture": s.architecture,
            "task_type": s.task_type,
            "classes": list(s.classes),
            "open_vocabulary": self.open_vocabulary,  # True: no classes of its own; predict(classes=[...]) names them
            "img_size": s.img_size,
            "device": self.device,
            "replicas": len(self._record["replica_names"]),
            "status": self._record.get("status", "unknown"),
            "created_at": self._record.get("created_at"),
            "replicas_info": self._record.get("replicas_info", []),
        }

    def shutdown(self) -> None:
        """Stop the replicas and forget the deployment; its task id is never reused."""
        import ray

        from pipeline.deploy.registry import get_registry

        ray.get(get_registry().remove.remote(self.task_id))
        self._handles = None
        self._record = {**self._record, "status": "stopped"}

    def predict(self, input: Any = None, **kwargs: Any) -> list:  # noqa: A002 - the draft API's name
        """Predict and collect: see `predict_detached` for the arguments. Returns a list in input order."""
        from pipeline.stages.session import run_predict

        return run_predict(self, input=input, **kwargs)

    def predict_detached(self, input: Any = None, **kwargs: Any) -> PredictionSession:  # noqa: A002
        """Start a prediction run and return its `PredictionSession` at once."""
        from pipeline.stages.session import start_session

        return start_session(self, input=input, **kwargs)

    def __repr__(self) -> str:
        return f"Model(task_id={self.task_id}, model={self.spec.name!r}, device={self.device!r})"
