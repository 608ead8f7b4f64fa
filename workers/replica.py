"""The replica actor: one model replica per Ray actor.

The class is plain Python; `pipeline.deploy.nn` wraps it with `ray.remote(...)` when it deploys, choosing resources
(`num_gpus=gpus_per_replica` on GPU), restart policy and name. The model is loaded once, in `__init__`; every
`predict` call runs one batch under `torch.inference_mode()`. Images arrive as uint8 (a quarter of the bytes of
float32) and become float on the device.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any

from workers.gpu_decode import decode_jpegs
from workers.messages import BatchResult, LoadedBatch, ModelOutput
from workers.models.base import ModelSpec, get_adapter
from workers.models.checkpoint import parse_checkpoint
from workers.tiling import run_tiled

__all__ = ["Replica"]


def _fetch_weights(registry: tuple[str, str], task_id: int) -> bytes:
    """The deployment's checkpoint bytes, from the registry actor named `registry` = (name, namespace)."""
    import ray

    handle = ray.get_actor(registry[0], namespace=registry[1])
    refs = ray.get(handle.weights_of.remote(task_id))
    if not refs:
        raise RuntimeError(f"the registry holds no weights for deployment {task_id} (was it stopped?)")
    return ray.get(refs[0])


class Replica:
    """Hosts one model of deployment `task_id`; its checkpoint bytes come from the registry actor named
    `registry` = (name, namespace), or are given as `weights` (None: a pretrained model)."""

    def __init__(
        self,
        spec: dict[str, Any],
        device: str,
        num_threads: int | None = None,
        name: str = "",
        task_id: int | None = None,
        weights: bytes | None = None,
        registry: tuple[str, str] | None = None,
    ):
        import torch

        if weights is None and registry is not None and spec.get("source") in ("checkpoint", "file"):
            weights = _fetch_weights(registry, task_id)

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.name = name
        self.spec = ModelSpec.from_dict(spec)
        self.device = "cuda" if device.startswith("cuda") else device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"replica {name} was asked for CUDA but torch sees no GPU on {socket.gethostname()}")
        adapter_cls = get_adapter(self.spec.framework)
        self.adapter = adapter_cls(self.spec, self.device)
        if self.spec.source == "file":  # a framework's own file (a YOLO .pt, an .onnx, a transformers model)
            self.adapter.load_payload(weights)
        elif weights is not None:  # our checkpoint
            self.adapter.load(parse_checkpoint(weights, self.spec.name or "checkpoint").state_dict)
        else:  # pretrained by name: the adapter finds its framework's weights
            self.adapter.load(None)
        self.started_at = time.time()
        self.batches = 0
        self.images = 0

    def ready(self) -> dict[str, Any]:
        """Where this replica runs: answered once the model is loaded."""
        import ray
        import torch

        ctx = ray.get_runtime_context()
        return {
            "name": self.name,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "hostname": socket.gethostname(),
            "device": self.device,
            "gpu": torch.cuda.get_device_name(0) if self.device == "cuda" else None,
            "threads": torch.get_num_threads(),
            "batches": self.batches,
            "images": self.images,
        }

    def predict(self, batch: LoadedBatch, settings: dict[str, Any] | None = None) -> BatchResult:
        """Predict the images of `batch` that loaded; items that failed to load keep their error."""
        images, errors = self._images(batch)
        ok = [i for i, img in enumerate(images) if img is not None]
        outputs: list[ModelOutput] = [
            ModelOutput.empty(error=errors[i] or "image was not loaded") for i in range(len(batch))
        ]
        seconds = 0.0
        if ok:
            sizes = [batch.orig_sizes[i] for i in ok]
            try:
                results, seconds = self._run([images[i] for i in ok], sizes, settings or {})
            except Exception as exc:  # a model error fails this batch's items, not the replica
                msg = f"model error: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                for i in ok:
                    outputs[i] = ModelOutput.empty(error=msg)
            else:
                for i, res in zip(ok, results):
                    outputs[i] = res
        self.batches += 1
        self.images += len(ok)
        return BatchResult(
            indices=list(batch.indices),
            outputs=outputs,
            orig_sizes=list(batch.orig_sizes),
            compute_seconds=seconds,
            replica=self.name,
        )

    def _run(self, images: list[Any], sizes: list[Any], settings: dict[str, Any]) -> tuple[list[ModelOutput], float]:
        """The adapter on the images, or on their tiles (`settings["tiling"]`: workers/tiling.py), the tiles of
        each image consecutive in batches of the run's batch size."""
        tiling = settings.get("tiling")
        if not tiling:
            return self.adapter.run(images, sizes, settings)
        plain = {k: v for k, v in settings.items() if k != "tiling"}
        return run_tiled(lambda views, view_sizes: self.adapter.run(views, view_sizes, plain), images, tiling,
                         int(tiling.get("batch", 8)))

    def _images(self, batch: LoadedBatch) -> tuple[list[Any], list[str | None]]:
        """The batch's images, its JPEGs decoded here (decode mode "gpu"), and every item's error."""
        images, errors = list(batch.images), list(batch.errors)
        if batch.encoded:
            todo = [i for i, data in enumerate(batch.encoded) if data is not None]
            for i, img in zip(todo, decode_jpegs([batch.encoded[i] for i in todo], self.device)):
                if isinstance(img, str):
                    errors[i] = img
                else:
                    images[i] = img if self.adapter.accepts_device_tensors else img.cpu().numpy()
        return images, errors

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Raise `InvalidArgumentError` for a run's settings the loaded model cannot take (its adapter's
        `check_loaded_settings`): asked once by the driver before a run starts."""
        self.adapter.check_loaded_settings(settings)

    def info(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), **self.ready()}
