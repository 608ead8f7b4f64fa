"""Platform sources: images by id, a dataset (with its nested datasets) or a whole project, read one page of
rows at a time (`ImageApi.iterate`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import Item
from pipeline.stages.args import PredictArgs
from pipeline.stages.source.plan import SourcePlan, dataset_paths

__all__ = ["platform_plan"]


def _image_item(index: int, info: Any, ds_paths: dict[int, tuple[str, ...]]) -> Item:
    return Item(
        index=index, key=f"image:{info.id}", name=info.name, source=info.id, path=info.path,
        project_id=info.project_id, dataset_id=info.dataset_id, image_id=info.id,
        dataset=ds_paths.get(info.dataset_id, ()),
    )


def platform_plan(args: PredictArgs, platform: Any) -> SourcePlan:
    if args.image_ids is not None:
        infos = []
        for iid in args.image_ids:
            infos.append(platform.image.get(iid))  # NotFoundError names a missing id before any work
        project_ids = {i.project_id for i in infos}
        ds_paths: dict[int, tuple[str, ...]] = {}
        for pid in project_ids:
            ds_paths.update(dataset_paths(platform.dataset.list(pid)))
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
    ds_paths = dataset_paths(datasets)

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


