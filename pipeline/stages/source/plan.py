"""What a run reads: the `SourcePlan` every source kind produces, and what the kinds share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.prediction import Item
from pipeline.stages.args import abs_path

__all__ = ["SourcePlan", "abs_path", "dataset_paths", "file_item"]


@dataclass
class SourcePlan:
    """What a run will read: a lazy stream of work plus what upload and status need to know about it.

    `iter_items()` yields `Item`s, and for a video a `VideoFrames` that stands for its selected frames (the loading
    stage decides in which order they are read, `pipeline.stages.loading`). `count()` is the number of items (a
    video's frames counted one by one), from a names-only pass.
    """

    kind: str  # "files", "directory", "sly_project", "platform", "video"
    description: str
    name: str  # what a `create` upload names the new project after
    iter_items: Callable[[], Iterator[Any]]
    count: Callable[[], int]
    context: dict[str, Any] = field(default_factory=dict)
    platform_items: bool = False
    project_type: str = "images"
    datasets: list[tuple[str, ...]] = field(default_factory=list)  # known dataset paths (platform sources)
    has_videos: bool = False  # the stream holds `VideoFrames` (a video file, a platform video, or a directory)


def dataset_paths(datasets: list) -> dict[int, tuple[str, ...]]:
    """{dataset id: its path of names from the project's root} of a project's `DatasetInfo`s."""
    by_id = {d.id: d for d in datasets}
    paths: dict[int, tuple[str, ...]] = {}

    def path_of(ds_id: int) -> tuple[str, ...]:
        if ds_id not in paths:
            d = by_id[ds_id]
            parent = path_of(d.parent_id) if d.parent_id in by_id else ()
            paths[ds_id] = parent + (d.name,)
        return paths[ds_id]

    for d in datasets:
        path_of(d.id)
    return paths


def file_item(index: int, path: str, source: Any = None, dataset: tuple[str, ...] = (), error: str | None = None) -> Item:
    """The item of an image file at `path` (absolute)."""
    return Item(index=index, key=f"file:{path}", name=os.path.basename(path), source=path if source is None else source,
                path=path, image_path=path, dataset=dataset, error=error)
