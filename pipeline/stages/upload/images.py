"""Image uploads: predictions written into image annotations (create / append / replace / iou_merge).

`create` copies each item's image into the blob store before the transaction (a platform image's blob is shared:
same content, same blob; only a new row), then adds its row and annotation. The other modes read, merge and write
the item's annotation: `append` and `replace` at the JSON level (the stored objects stay JSON, no bitmap decoded
and encoded again; only the new ones are checked), `iou_merge` through `merge_annotation`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

from pipeline.exceptions import DiskFullError, InvalidArgumentError, PipelineError
from pipeline.platform import media, ops
from pipeline.prediction import Prediction, UploadTarget
from pipeline.stages.upload.merge import merge_annotation, merge_tags
from pipeline.stages.upload.target import Target, Written
from workers.decode import ItemError, fetch_bytes

__all__ = ["ImageTarget"]


class ImageTarget(Target):
    """Writes the predictions of images into the platform; one image is one unit."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._names: dict[int, set[str]] = {}  # dataset id -> image names taken (create)
        self._staged: dict[int, tuple] = {}
        self._new_name: tuple[int, str] | None = None  # the name the unit being written took

    def accepts(self, p: Prediction) -> bool:
        return p.frame_idx is None

    # -- create: the images themselves ------------------------------------------------------------------------
    def stage(self, todo: list[Prediction]) -> dict[int, str]:
        """Copy the items' files into the blob store before the transaction (create mode)."""
        self._staged = {}
        errors: dict[int, str] = {}
        if self.mode != "create":
            return errors
        for p in todo:
            try:
                self._staged[id(p)] = self._stage_image(p)
            except DiskFullError:  # no item's fault, and every next one would fail the same way: the run ends
                raise
            except (OSError, PipelineError, ItemError) as exc:  # e.g. a URL that no longer answers
                errors[id(p)] = f"upload failed: cannot store the image: {exc}"
        return errors

    def _stage_image(self, p: Prediction) -> tuple[Any, ...]:
        if p.image_id is not None:  # a platform image: same content, same blob; only a new row is needed
            info = self.platform.image.get(p.image_id)
            return (info.hash, info.size, info.ext, info.width, info.height)
        if p.image is not None:
            src = io.BytesIO(media.encode_array(p.image, p.name or "image.png"))
        elif p.image_path is not None:
            src = open(p.image_path, "rb")  # noqa: SIM115 - closed by the `with` below
        elif p.image_url is not None:
            src = io.BytesIO(fetch_bytes(p.image_url))
        else:
            raise InvalidArgumentError("the item has no image to store")
        with src:
            sha, size, probe = self.store.store_blob(src, lambda tmp: media.probe_image(tmp, p.name or "image"))
        return (sha, size, probe.ext, probe.width, probe.height)

    def before_units(self, conn: Any, todo: list[Prediction], metas: dict[int, Any]) -> dict[int, str]:
        """create: the group's classes into the new project's meta, and its target datasets."""
        errors: dict[int, str] = {}
        if self.mode != "create":
            return errors
        self.resolve_meta(conn, self.project_id, todo, metas)
        for path in dict.fromkeys(p.dataset for p in todo):
            try:
                self.dataset_for(conn, path)
            except DiskFullError:
                raise
            except PipelineError as exc:  # e.g. a folder name the platform refuses
                errors.update((id(p), f"upload failed: cannot create dataset {'/'.join(path)!r}: {exc}")
                              for p in todo if p.dataset == path)
        return errors

    def _free_item_name(self, conn: Any, ds_id: int, name: str, index: int) -> str:
        taken = self._names.get(ds_id)
        if taken is None:
            taken = self._names[ds_id] = ops.item_names(conn, ds_id)
        if name in taken:
            stem, ext = os.path.splitext(name)
            name = f"{stem}_{index:06d}{ext}"
            n = 1
            while name in taken:
                name, n = f"{stem}_{index:06d}_{n}{ext}", n + 1
        return name

    # -- the units --------------------------------------------------------------------------------------------
    def units(self, todo: list[Prediction]) -> Iterator[list[Prediction]]:
        return ([p] for p in todo)

    def write_unit(self, conn: Any, unit: list[Prediction], metas: dict[int, Any]) -> Written:
        [p] = unit
        self._new_name = None
        if self.mode == "create":
            return [(p, self._create(conn, p, metas))]
        return [(p, self._merge(conn, p, metas))]

    def _create(self, conn: Any, p: Prediction, metas: dict[int, Any]) -> UploadTarget:
        meta = metas[self.project_id]
        sha, size, ext, w, h = self._staged[id(p)]
        ds_id = self.dataset_for(conn, p.dataset)
        name = self._free_item_name(conn, ds_id, p.name or f"image_{p.index:06d}.png", p.index)
        image_id = ops.insert_image(conn, ds_id, name, w, h, sha, size, ext)
        ops.set_annotation(conn, image_id, self.predicted_annotation(p, meta), meta=meta)
        self._new_name = (ds_id, name)
        return UploadTarget(self.project_id, ds_id, image_id)

    def _merge(self, conn: Any, p: Prediction, metas: dict[int, Any]) -> UploadTarget:
        from pipeline.annotation import Annotation

        row = ops.get_image_row(conn, p.image_id)
        meta = self.resolve_meta(conn, row["project_id"], [p], metas)
        cur = ops.get_annotation_text(conn, p.image_id)
        predicted = self.predicted_annotation(p, meta)
        if self.mode in ("append", "replace"):
            # The stored annotation was checked when it was written: its objects stay JSON (no bitmap decoded and
            # encoded again); only the new ones are checked.
            self._put_json(conn, row, cur, predicted, meta)
        else:
            current = (Annotation.from_json(json.loads(cur), meta) if cur is not None
                       else Annotation((row["height"], row["width"])))
            ops.set_annotation(conn, p.image_id, merge_annotation(self.mode, current, predicted, self.threshold),
                               meta=meta)
        return UploadTarget(row["project_id"], row["dataset_id"], p.image_id)

    def _put_json(self, conn: Any, row: Any, cur: str | None, predicted: Any, meta: Any) -> None:
        """append / replace at the JSON level: the current objects (append) or none (replace), plus the
        predicted ones; image tags and everything else of the current annotation kept."""
        where = f"image {row['id']} ({row['name']!r})"
        ops.check_annotation(predicted, meta, (row["height"], row["width"]), where)
        new_objects = [lab.to_json() for lab in predicted.labels]
        if cur is None:
            data = predicted.to_json()
        else:
            data = json.loads(cur)
            data["objects"] = (list(data.get("objects", [])) if self.mode == "append" else []) + new_objects
            if predicted.img_tags:  # a classifier's tag, by `merge_tags`' rules
                data["tags"] = merge_tags(self.mode, list(data.get("tags", [])),
                                          [t.to_json() for t in predicted.img_tags], lambda t: t.get("name"))
        ops.put_annotation_json(conn, row["id"], data, len(data["objects"]))

    def unit_written(self, written: Written) -> None:
        new = self._new_name
        if new is not None:  # taken only once the item's savepoint is released
            self._names[new[0]].add(new[1])
            self._new_name = None

    def rolled_back(self) -> None:
        super().rolled_back()  # ids created inside the rolled-back transaction are gone
        self._names.clear()
