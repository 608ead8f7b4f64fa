"""Stage 1, source: the arguments -> a lazy stream of item descriptors.

Nothing here reads pixels. Directories and projects are walked lazily, one folder (or one page of 1,000 platform
rows) at a time, so a 100,000-image input is never listed into memory as images and the first batch can be
predicted while the walk goes on. `SourcePlan.count()` gives the total for progress bars with a names-only pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.stages.args import PredictArgs
from pipeline.exceptions import InvalidArgumentError
from workers.decode import is_image_file, is_video_file, to_rgb_array

__all__ = ["Item", "SourcePlan", "resolve_source"]


@dataclass
class Item:
    """One thing to predict, and everything a `Prediction` says about where it came from."""

    index: int
    key: str  # stable across re-runs of the same job: what resume skips by
    name: str
    source: Any = None
    path: str | None = None  # file to read pixels from (image file or platform blob)
    url: str | None = None
    array: np.ndarray | None = None
    image_path: str | None = None
    image_url: str | None = None
    image: np.ndarray | None = None
    project_id: int | None = None
    dataset_id: int | None = None
    image_id: int | None = None
    video_id: int | None = None
    frame_idx: int | None = None
    video_path: str | None = None
    dataset: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class SourcePlan:
    """What a run will read: a lazy item stream plus what upload and status need to know about it."""

    kind: str  # "files", "directory", "sly_project", "platform", "video"
    description: str
    name: str  # what a `create` upload names the new project after
    iter_items: Callable[[], Iterator[Item]]
    count: Callable[[], int]
    context: dict[str, Any] = field(default_factory=dict)
    platform_items: bool = False
    project_type: str = "images"
    datasets: list[tuple[str, ...]] = field(default_factory=list)  # known dataset paths (platform sources)
    # Hooks for sources that load differently from image files (videos): given (img_size, settings),
    # `submit_factory` returns `factory(items) -> submit(node_id) -> ObjectRef[LoadedBatch]`; `batcher(items,
    # batch_size, factory)` groups items into `inference.Batch`es (default: consecutive runs of batch_size).
    submit_factory: Callable[..., Any] | None = None
    batcher: Callable[..., Any] | None = None


def _abs(p: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(p)))


# --- directories -------------------------------------------------------------------------------------------


def _walk(root: str, recursive: bool) -> Iterator[tuple[tuple[str, ...], str]]:
    """(relative dir parts, absolute file path) of image and video files, sorted per folder, one folder at a time.
    Hidden files and folders (names starting with ".") are skipped. Symlinked folders are followed once: a folder already walked (same device and inode) is not entered again, so
    a link loop cannot repeat files or recurse without end."""
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    seen: set[tuple[int, int]] = set()
    while stack:
        folder, parts = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:  # a broken or looping link: not a folder; as a file it reports its own error
                is_dir = False
            if is_dir:
                if recursive and not e.name.startswith("."):
                    subdirs.append((e.path, parts + (e.name,)))
            elif e.name.startswith("."):
                continue  # hidden files (e.g. macOS "._x.jpg" resource forks) are not the user's images
            elif is_image_file(e.name) or is_video_file(e.name):
                yield parts, e.path
        stack.extend(reversed(subdirs))  # depth-first, in name order


def _count_walk(root: str, recursive: bool) -> int:
    return sum(1 for _ in _walk(root, recursive))


def _directory_plan(root: str, recursive: bool) -> SourcePlan:
    name = os.path.basename(root.rstrip(os.sep)) or "Predictions"
    from pipeline.stages.source.video import directory_plan_with_videos

    with_videos = directory_plan_with_videos(root, recursive, name, _walk)  # None when it holds no video
    if with_videos is not None:
        return with_videos

    def items() -> Iterator[Item]:
        for i, (parts, path) in enumerate(_walk(root, recursive)):
            yield Item(
                index=i, key=f"file:{path}", name=os.path.basename(path), source=path, path=path,
                image_path=path, dataset=parts,
            )

    return SourcePlan("directory", "a directory", name, items, lambda: _count_walk(root, recursive),
                      context={"input": root, "recursive": recursive})


# --- local Supervisely project folders -----------------------------------------------------------------------


def _sly_datasets(root: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """(dataset path, folder) of a Supervisely project folder, parents before children, sorted by name."""

    def walk(folder: str, parts: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
        yield parts, folder
        nested = os.path.join(folder, "datasets")
        if os.path.isdir(nested):
            for e in sorted(os.scandir(nested), key=lambda e: e.name):
                if e.is_dir():
                    yield from walk(e.path, parts + (e.name,))

    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.is_dir() and (os.path.isdir(os.path.join(e.path, "img")) or os.path.isdir(os.path.join(e.path, "datasets"))):
            yield from walk(e.path, (e.name,))


def _sly_project_plan(root: str) -> SourcePlan:
    meta_path = os.path.join(root, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"{meta_path} is not a readable Supervisely meta.json: {exc}") from None
    if meta.get("projectType", "images") != "images":
        raise InvalidArgumentError(f"{root} is a {meta.get('projectType')} project; only image projects are read from folders")
    name = os.path.basename(root.rstrip(os.sep))

    def files() -> Iterator[tuple[tuple[str, ...], str]]:
        for parts, folder in _sly_datasets(root):
            img_dir = os.path.join(folder, "img")
            if not os.path.isdir(img_dir):
                continue
            for e in sorted(os.scandir(img_dir), key=lambda e: e.name):
                if e.is_file() and is_image_file(e.name):
                    yield parts, e.path

    def items() -> Iterator[Item]:
        for i, (parts, path) in enumerate(files()):
            yield Item(index=i, key=f"file:{path}", name=os.path.basename(path), source=path, path=path,
                       image_path=path, dataset=parts)

    return SourcePlan("sly_project", "a Supervisely project folder", name, items, lambda: sum(1 for _ in files()),
                      context={"input": root})


# --- loose inputs --------------------------------------------------------------------------------------------


def _url_name(url: str, index: int) -> str:
    from urllib.parse import urlparse

    base = os.path.basename(urlparse(url).path)
    return base if base and is_image_file(base) else f"url_{index:06d}.jpg"


def _loose_item(value: Any, index: int) -> Item:
    from PIL import Image

    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            return Item(index=index, key=f"url:{index}:{text}", name=_url_name(text, index), source=text, url=text,
                        image_url=text)
        path = _abs(text)
        item = Item(index=index, key=f"file:{path}", name=os.path.basename(path), source=value, path=path,
                    image_path=path)
        if not os.path.exists(path):
            item.error = f"file not found: {text}"
        elif os.path.isdir(path):
            item.error = f"is a directory (pass it alone as input to predict its images): {text}"
        return item
    if isinstance(value, Image.Image | np.ndarray):
        try:
            arr = to_rgb_array(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"input item {index}: {exc}") from None
        return Item(index=index, key=f"array:{index}", name=f"image_{index:06d}.png", source=value, array=arr,
                    image=arr)
    raise InvalidArgumentError(
        f"input item {index} is a {type(value).__name__}; expected a path, URL, PIL.Image or numpy array"
    )


def _loose_plan(values: list[Any], description: str) -> SourcePlan:
    for v in values:
        if isinstance(v, str | os.PathLike) and not os.fspath(v).startswith(("http://", "https://")):
            if is_video_file(os.fspath(v)):
                raise InvalidArgumentError(f"a video inside a list is not supported; pass the video alone: {v}")
    items_list = [_loose_item(v, i) for i, v in enumerate(values)]  # arrays are converted once, here
    return SourcePlan("files", description, "Predictions", lambda: iter(items_list), lambda: len(items_list),
                      context={"input": description})


# --- platform ------------------------------------------------------------------------------------------------


def _dataset_paths(datasets: list) -> dict[int, tuple[str, ...]]:
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


def _image_item(index: int, info: Any, ds_paths: dict[int, tuple[str, ...]]) -> Item:
    return Item(
        index=index, key=f"image:{info.id}", name=info.name, source=info.id, path=info.path,
        project_id=info.project_id, dataset_id=info.dataset_id, image_id=info.id,
        dataset=ds_paths.get(info.dataset_id, ()),
    )


def _platform_plan(args: PredictArgs, platform: Any) -> SourcePlan:
    if args.image_ids is not None:
        infos = []
        for iid in args.image_ids:
            infos.append(platform.image.get(iid))  # NotFoundError names a missing id before any work
        project_ids = {i.project_id for i in infos}
        ds_paths: dict[int, tuple[str, ...]] = {}
        for pid in project_ids:
            ds_paths.update(_dataset_paths(platform.dataset.list(pid)))
        project = platform.project.get(infos[0].project_id)
        items_list = [_image_item(i, info, ds_paths) for i, info in enumerate(infos)]
        return SourcePlan(
            "platform", f"{len(infos)} platform image(s)", f"{project.name} (predictions)",
            lambda: iter(items_list), lambda: len(items_list), context={"image_ids": list(args.image_ids)},
            platform_items=True, datasets=sorted(set(ds_paths.values())),
        )

    if args.project_id is not None:
        project = platform.project.get(args.project_id)
        datasets = platform.dataset.list(project.id)
        chosen = datasets
        context = {"project_id": project.id}
        description = f"project {project.id} ({project.name!r})"
    else:
        ds = platform.dataset.get(args.dataset_id)
        project = platform.project.get(ds.project_id)
        datasets = platform.dataset.list(project.id)
        children: dict[int | None, list] = {}
        for d in datasets:
            children.setdefault(d.parent_id, []).append(d)
        chosen, stack = [], [ds]
        while stack:
            d = stack.pop(0)
            chosen.append(d)
            stack[0:0] = children.get(d.id, [])
        context = {"project_id": project.id, "dataset_id": ds.id}
        description = f"dataset {ds.id} ({ds.name!r})"
    if project.type != "images":
        raise InvalidArgumentError(f"{description} belongs to a {project.type} project; use video_id for videos")
    ds_paths = _dataset_paths(datasets)

    def items() -> Iterator[Item]:
        i = 0
        for d in chosen:
            for info in platform.image.iterate(dataset_id=d.id):
                yield _image_item(i, info, ds_paths)
                i += 1

    def count() -> int:
        return sum(platform.image.count(dataset_id=d.id) for d in chosen)

    return SourcePlan("platform", description, f"{project.name} (predictions)", items, count, context=context,
                      platform_items=True, datasets=[ds_paths[d.id] for d in chosen])


# --- entry point ---------------------------------------------------------------------------------------------


def resolve_source(args: PredictArgs, platform: Any) -> SourcePlan:
    """Turn validated arguments into a `SourcePlan`. Raises before any work for inputs that cannot be read."""
    if args.from_platform:
        if args.video_id is not None:
            from pipeline.stages.source.video import platform_video_plan

            return platform_video_plan(args, platform)
        return _platform_plan(args, platform)
    value = args.input
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            return _loose_plan([text], "a URL")
        path = _abs(text)
        if not os.path.exists(path):
            raise InvalidArgumentError(f"input path does not exist: {text}")
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "meta.json")):
                return _sly_project_plan(path)
            return _directory_plan(path, args.recursive)
        if is_video_file(path):
            from pipeline.stages.source.video import video_file_plan

            return video_file_plan(path, args)
        plan = _loose_plan([value], "an image file")
        plan.name = os.path.splitext(os.path.basename(path))[0] or "Predictions"
        return plan
    if isinstance(value, list | tuple):
        if not value:
            raise InvalidArgumentError("input is an empty list")
        return _loose_plan(list(value), f"a list of {len(value)} inputs")
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return _loose_plan(list(value), f"a batch of {len(value)} arrays")
    return _loose_plan([value], f"a {type(value).__name__}")
