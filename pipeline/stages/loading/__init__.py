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

__all__ = ["Batch", "Loader", "make_loader"]


class Loader(Protocol):
    def items(self, stream: Iterator[Any]) -> Iterator[Item]:
        """The plan's stream (`Item`s and `VideoFrames`) as items, in the order they will be loaded."""

    def batches(self, items: Iterator[Item], batch_size: int) -> Iterator[Batch]:
        """The items grouped into batches of at most `batch_size`."""

    def close(self, stopped: bool = False) -> None:
        """The run is over: release what loads (video readers); at once when `stopped`."""


def make_loader(plan: SourcePlan, img_size: tuple[int, int] | None, settings: dict[str, Any],
                tracking: Any = None) -> Loader:
    """The loader of `plan`'s items: video readers when it holds videos, else loading tasks. `tracking` (the run's
    tracking stage): its videos are read in the order a tracker needs (see `VideoLanes`)."""
    if plan.has_videos:
        return VideoLoader(img_size, settings, tracking=tracking)
    return ImageLoader(img_size, settings)
