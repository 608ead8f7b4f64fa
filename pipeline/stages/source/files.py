"""File sources: a directory (walked lazily, one folder at a time), a local Supervisely project folder, and loose
inputs (paths, URLs, arrays, PIL images, or a list of them). Nothing here reads pixels."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import Item
from pipeline.stages.source.objects import VIDEO_REFUSAL, check_store, object_item
from pipeline.stages.source.plan import SourcePlan, abs_path, file_item
from pipeline.stages.source.video import directory_plan_with_videos
from workers.decode import to_rgb_array
from workers.formats import is_image_file, is_url, is_video_file
from workers.objects import is_object_uri

__all__ = ["directory_plan", "loose_plan", "sly_project_plan", "walk"]


# --- directories -------------------------------------------------------------------------------------------


def walk(root: str, recursive: bool) -> Iterator[tuple[tuple[str, ...], str]]:
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
    return sum(1 for _ in walk(root, recursive))


def directory_plan(root: str, recursive: bool) -> SourcePlan:
    """The images (and videos) of the directory `root` (absolute), in walk order."""
    name = os.path.basename(root.rstrip(os.sep)) or "Predictions"
    with_videos = directory_plan_with_videos(root, recursive, name, walk)  # None when it holds no video
    if with_videos is not None:
        return with_videos

    def items() -> Iterator[Item]:
        for i, (parts, path) in enumerate(walk(root, recursive)):
            yield file_item(i, path, dataset=parts)

    return SourcePlan("directory", "a directory", name, items, lambda: _count_walk(root, recursive),
                      context={"input": root, "recursive": recursive})


# --- local Supervisely project folders -----------------------------------------------------------------------


def _sly_datasets(root: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """(dataset path, folder) of a Supervisely project folder, parents before children, sorted by name."""

    def visit(folder: str, parts: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
        yield parts, folder
        nested = os.path.join(folder, "datasets")
        if os.path.isdir(nested):
            for e in sorted(os.scandir(nested), key=lambda e: e.name):
                if e.is_dir():
                    yield from visit(e.path, parts + (e.name,))

    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.is_dir() and (os.path.isdir(os.path.join(e.path, "img")) or os.path.isdir(os.path.join(e.path, "datasets"))):
            yield from visit(e.path, (e.name,))


def sly_project_plan(root: str) -> SourcePlan:
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
            yield file_item(i, path, dataset=parts)

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
        if is_url(text):
            return Item(index=index, key=f"url:{index}:{text}", name=_url_name(text, index), source=text, url=text,
                        image_url=text)
        if is_object_uri(text):
            return object_item(index, text, source=value)
        path = abs_path(text)
        error = None
        if not os.path.exists(path):
            error = f"file not found: {text}"
        elif os.path.isdir(path):
            error = f"is a directory (pass it alone as input to predict its images): {text}"
        return file_item(index, path, source=value, error=error)
    if isinstance(value, Image.Image | np.ndarray):
        try:
            arr = to_rgb_array(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"input item {index}: {exc}") from None
        return Item(index=index, key=f"array:{index}", name=f"image_{index:06d}.png", source=value, image=arr)
    raise InvalidArgumentError(
        f"input item {index} is a {type(value).__name__}; expected a path, URL, PIL.Image or numpy array"
    )


def loose_plan(values: list[Any], description: str) -> SourcePlan:
    from urllib.parse import urlsplit

    stores: set[tuple[str, str, str]] = set()
    for v in values:
        if isinstance(v, str) and is_object_uri(v):
            if is_video_file(v.split("?", 1)[0]):
                raise InvalidArgumentError(f"input {v.split('?', 1)[0]}: {VIDEO_REFUSAL}")
            parts = urlsplit(v)
            store = (parts.scheme, parts.netloc, parts.query)
            if store not in stores:  # each store and bucket checked once, before any work
                stores.add(store)
                check_store(v)
        elif isinstance(v, str | os.PathLike) and not is_url(v):
            if is_video_file(os.fspath(v)):
                raise InvalidArgumentError(f"a video inside a list is not supported; pass the video alone: {v}")
    items_list = [_loose_item(v, i) for i, v in enumerate(values)]  # arrays are converted once, here
    return SourcePlan("files", description, "Predictions", lambda: iter(items_list), lambda: len(items_list),
                      context={"input": description})


