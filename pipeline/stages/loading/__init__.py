"""Stage 2, loading: how the items of a plan are grouped into batches and decoded on the cluster's CPUs.

`make_loader(plan, img_size, settings)` chooses the loader from what the plan holds: image items are decoded by
Ray tasks (`images.py`), video frames by reader actors that decode each video range front to back (`video.py`).
A loader turns the plan's stream into items in the order they will be read (`items`) and the items into `Batch`es
(`batches`), each knowing how to start its own loading on a given node (`Batch.submit`); the scheduler decides
when and where. Pixels never pass through the driver: a batch's `LoadedBatch` goes into the object store and the
replica call takes its ObjectRef.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from pipeline.prediction import Item
from pipeline.stages.loading.batch import Batch
from pipeline.stages.loading.images import ImageLoader
from pipeline.stages.loading.video import VideoLoader
from pipeline.stages.source.plan import SourcePlan
from workers.decode import DEFAULT_MAX_PIXELS, DEFAULT_URL_TIMEOUT_S
from workers.messages import DecodeOptions

__all__ = ["GPU_DECODE_BELOW_CPUS_PER_GPU", "Batch", "Loader", "decode_options", "make_loader"]


class Loader(Protocol):
    def items(self, stream: Iterator[Any]) -> Iterator[Item]:
        """The plan's stream (`Item`s and `VideoFrames`) as items, in the order they will be loaded."""

    def batches(self, items: Iterator[Item], batch_size: int) -> Iterator[Batch]:
        """The items grouped into batches of at most `batch_size`."""

    def close(self, stopped: bool = False) -> None:
        """The run is over: release what loads (video readers); at once when `stopped`."""


def make_loader(plan: SourcePlan, options: DecodeOptions, tracking: Any = None) -> Loader:
    """The loader of `plan`'s items: video readers when it holds videos, else loading tasks. `tracking` (the run's
    tracking stage): its videos are read in the order a tracker needs (see `VideoLanes`)."""
    if plan.has_videos:
        return VideoLoader(options, tracking=tracking)
    return ImageLoader(options)


# With fewer CPUs than this per GPU, decoding full-size photos on the CPUs cannot keep a GPU busy: "auto" decodes
# JPEGs on the replica's GPU (nvJPEG) when its adapter takes device tensors.
GPU_DECODE_BELOW_CPUS_PER_GPU = 6


def decode_options(settings: dict[str, Any], resize: tuple[int, int] | None, hint: tuple | None,
                   gpu_decode_ok: bool, cpus_per_gpu: float | None) -> DecodeOptions:
    """The run's `DecodeOptions` from `settings["decode"]` ("auto" by default). "auto" decodes every pixel, as the
    framework's own predictor does (a reduced decode costs the demo model 0.6 points of mAP50:95 on large photos:
    docs/PERFORMANCE.md, so it is asked for, never assumed), on the replica's GPU when CPUs are scarce for it
    (`cpus_per_gpu` < `GPU_DECODE_BELOW_CPUS_PER_GPU` and the adapter takes device tensors), else on the CPUs."""
    mode = settings.get("decode", "auto")
    if mode == "auto":
        scarce = cpus_per_gpu is not None and cpus_per_gpu < GPU_DECODE_BELOW_CPUS_PER_GPU
        mode = "gpu" if gpu_decode_ok and scarce else "full"
    return DecodeOptions(resize=resize, max_pixels=int(settings.get("max_pixels", DEFAULT_MAX_PIXELS)),
                         url_timeout=float(settings.get("url_timeout", DEFAULT_URL_TIMEOUT_S)), mode=mode, hint=hint)
