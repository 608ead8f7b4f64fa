"""The JSON API of projects, datasets, images and videos (docs/viewer.md lists every route and field).

Ids are path integers 1..2**63-1 (anything else: 400); unknown ids: 404. Lists are keyset-paginated: pass the
`next_after` of a page as `after` for the next one.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.viewer.params import MAX_ID, MAX_PAGE, After, Classes, Frame, Id, Limit
from pipeline.viewer.shapes import annotation_objects, class_colors, object_view, track_color

__all__ = ["MAX_ID", "MAX_PAGE", "frame_figures", "router"]

_SUMMARY_KEYS = ("class", "color", "predicted", "confidence", "shape", "bbox")


def _ann(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"objects": [], "error": f"the stored annotation of {what} is not JSON"}
    return data if isinstance(data, dict) else None


def _with_missing_classes(classes: list[dict[str, Any]], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The meta's classes plus any class an object uses that the meta lacks (the legend must list it)."""
    known = {c["name"] for c in classes}
    extra = []
    for o in objects:
        if o["class"] not in known:
            known.add(o["class"])
            extra.append({"name": o["class"], "shape": o["geometry"], "color": o["color"], "geometry_config": {},
                          "in_meta": False})
    return classes + extra


def _image_summary(row: Any, classes: dict[str, Any]) -> dict[str, Any]:
    objects = annotation_objects(_ann(row["ann"], f"image {row['id']}"), classes, full=False)
    return {
        "id": row["id"], "name": row["name"], "width": row["width"], "height": row["height"],
        "objects": len(objects), "predicted": sum(1 for o in objects if o["predicted"]),
        "thumb_url": f"/api/images/{row['id']}/thumb",
        "shapes": [{k: o[k] for k in _SUMMARY_KEYS} for o in objects],
    }


def _image_info(row: Any) -> dict[str, Any]:
    keys = ("id", "name", "width", "height", "size", "ext", "hash", "created_at", "dataset_id", "project_id")
    out = {k: row[k] for k in keys}
    out.update(file_url=f"/api/images/{row['id']}/file", thumb_url=f"/api/images/{row['id']}/thumb")
    return out


def _video_info(row: Any) -> dict[str, Any]:
    keys = ("id", "name", "frames_count", "fps", "width", "height", "size", "ext", "hash", "created_at",
            "dataset_id", "project_id")
    out = {k: row[k] for k in keys}
    out.update(thumb_url=f"/api/videos/{row['id']}/thumb", file_url=f"/api/videos/{row['id']}/file")
    return out


def _video_objects(ann: dict[str, Any], classes: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """The video's objects with their frame span, and the sorted frames that have figures."""
    spans: dict[str, list[int]] = {}
    frames = []
    for fr in ann.get("frames") or []:
        if not isinstance(fr, dict) or not isinstance(fr.get("index"), int):
            continue
        figures = [f for f in fr.get("figures") or [] if isinstance(f, dict)]
        if figures:
            frames.append(fr["index"])
        for f in figures:
            spans.setdefault(str(f.get("objectKey")), []).append(fr["index"])
    out = []
    for i, obj in enumerate(o for o in ann.get("objects") or [] if isinstance(o, dict)):
        key = str(obj.get("key"))
        view = object_view({"classTitle": obj.get("classTitle"), "tags": obj.get("tags")}, i, classes)
        seen = spans.get(key, [])
        out.append({"key": key, "class": view["class"], "color": view["color"], "track_color": track_color(key),
                    "predicted": view["predicted"], "confidence": view["confidence"], "tags": view["tags"],
                    "figures": len(seen), "first_frame": min(seen) if seen else None,
                    "last_frame": max(seen) if seen else None})
    return out, sorted(set(frames))


def frame_figures(ann: dict[str, Any] | None, frame: int, classes: dict[str, Any]) -> list[dict[str, Any]]:
    """The drawing records of the figures on `frame`, each with its `object_key` and `track_color`."""
    if not ann:
        return []
    objects = {str(o.get("key")): o for o in ann.get("objects") or [] if isinstance(o, dict)}
    out = []
    for fr in ann.get("frames") or []:
        if not isinstance(fr, dict) or fr.get("index") != frame:
            continue
        for fig in fr.get("figures") or []:
            if not isinstance(fig, dict):
                continue
            key = str(fig.get("objectKey"))
            obj = objects.get(key, {})
            geometry = fig.get("geometry") if isinstance(fig.get("geometry"), dict) else {}
            view = object_view({"geometryType": fig.get("geometryType")}, len(out), classes, full=True,
                               geometry=geometry, class_name=str(obj.get("classTitle", "?")), tags=obj.get("tags"))
            view.update(object_key=key, figure_key=fig.get("key"), track_color=track_color(key))
            out.append(view)
    return out


def frame_tags(ann: dict[str, Any] | None, frame: int) -> list[dict[str, Any]]:
    """The video tags on `frame` ({"name", "value"}): those whose frameRange holds it (a classifier's answer for
    the frame, a scene marked by hand); tags of the whole video are the video's (`GET /api/videos/{id}`)."""
    out = []
    for tag in (ann or {}).get("tags") or []:
        r = tag.get("frameRange") if isinstance(tag, dict) else None
        if isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r) and r[0] <= frame <= r[1]:
            out.append({"name": tag.get("name"), "value": tag.get("value")})
    return out


def router(viewer: Any) -> Any:
    """The routes, bound to `viewer` (app.Viewer)."""
    from fastapi import APIRouter

    api = APIRouter(prefix="/api")
    _catalog_routes(api, viewer)
    _image_routes(api, viewer)
    _video_routes(api, viewer)
    return api


def _dataset_of_type(conn: Any, dataset_id: int, kind: str) -> dict[str, Any]:
    """The dataset's record (no count); a dataset of the other kind is an `InvalidArgumentError` saying where to
    look instead."""
    from pipeline.exceptions import InvalidArgumentError
    from pipeline.platform import browse

    ds = browse.dataset_items(conn, dataset_id, count=False)
    if ds["project"]["type"] != kind:
        other = "videos" if kind == "images" else "images"
        raise InvalidArgumentError(f"dataset {dataset_id} holds {other}: list them at /api/datasets/{dataset_id}/{other}")
    return ds


def _catalog_routes(api: Any, viewer: Any) -> None:
    from pipeline.platform import browse

    @api.get("/projects")
    def projects() -> dict[str, Any]:
        with viewer.store.read() as conn:
            return {"projects": browse.list_projects(conn)}

    @api.get("/projects/{project_id}")
    def project(project_id: Id) -> dict[str, Any]:
        with viewer.store.read() as conn:
            out = browse.list_projects(conn, project_id)[0]
            out["datasets_list"] = browse.list_datasets(conn, project_id)
        return out

    @api.get("/datasets/{dataset_id}")
    def dataset(dataset_id: Id) -> dict[str, Any]:
        with viewer.store.read() as conn:
            return browse.dataset_items(conn, dataset_id)


def _image_routes(api: Any, viewer: Any) -> None:
    from pipeline.platform import browse

    @api.get("/datasets/{dataset_id}/images")
    def dataset_images(
        dataset_id: Id, after: After = 0, limit: Limit = 100,
        cls: Classes = [],  # noqa: B006 (FastAPI copies the default)
        predicted: bool | None = None, errors: bool | None = None,
    ) -> dict[str, Any]:
        from pipeline.exceptions import InvalidArgumentError

        if any(not c or len(c) > 255 for c in cls):
            raise InvalidArgumentError("query parameter 'class': a class name is 1 to 255 characters")
        with viewer.store.read() as conn:
            ds = _dataset_of_type(conn, dataset_id, "images")
            page = browse.page_images(conn, dataset_id, after, limit, cls, predicted, errors)
        classes = class_colors(ds["project"]["classes"])
        return {"items": [_image_summary(r, classes) for r in page.rows], "next_after": page.next_after,
                "scanned_to": page.scanned_to, "filtered": bool(cls) or predicted is not None or errors is not None}

    @api.get("/images/{image_id}")
    def image(image_id: Id) -> dict[str, Any]:
        with viewer.store.read() as conn:
            rec = browse.image_record(conn, image_id)
            prev_id, next_id = browse.image_neighbours(conn, image_id, rec["row"]["dataset_id"])
            errors = browse.item_errors(conn, f"image:{image_id}")
            ds = browse.dataset_items(conn, rec["row"]["dataset_id"], count=False)
        ann = _ann(rec["ann"], f"image {image_id}")
        classes = ds["project"]["classes"]
        objects = annotation_objects(ann, class_colors(classes), full=True)
        return {"image": _image_info(rec["row"]), "dataset": {k: ds[k] for k in ("id", "name", "path")},
                "project": {k: ds["project"][k] for k in ("id", "name", "type")},
                "classes": _with_missing_classes(classes, objects), "objects": objects, "annotation": ann,
                "annotation_updated_at": rec["ann_updated_at"], "prev_id": prev_id, "next_id": next_id,
                "errors": errors}

    @api.get("/images/{image_id}/annotation")
    def image_annotation(image_id: Id) -> Any:
        with viewer.store.read() as conn:
            rec = browse.image_record(conn, image_id)
        return _ann(rec["ann"], f"image {image_id}")


def _video_routes(api: Any, viewer: Any) -> None:
    from pipeline.platform import browse

    @api.get("/datasets/{dataset_id}/videos")
    def dataset_videos(dataset_id: Id, after: After = 0, limit: Limit = 100) -> dict[str, Any]:
        with viewer.store.read() as conn:
            _dataset_of_type(conn, dataset_id, "videos")
            rows, nxt = browse.page_videos(conn, dataset_id, after, limit)
        items = [{**_video_info(r), "objects": r["objects_count"] or 0} for r in rows]
        return {"items": items, "next_after": nxt}

    @api.get("/videos/{video_id}")
    def video(video_id: Id) -> dict[str, Any]:
        with viewer.store.read() as conn:
            rec = browse.video_record(conn, video_id)
            ds = browse.dataset_items(conn, rec["row"]["dataset_id"], count=False)
            errors = browse.video_errors(conn, video_id, ds["project"]["id"])
        ann = viewer.video_annotation(video_id) or {}
        classes = ds["project"]["classes"]
        objects, frames = _video_objects(ann, class_colors(classes))
        return {"video": _video_info(rec["row"]), "dataset": {k: ds[k] for k in ("id", "name", "path")},
                "project": {k: ds["project"][k] for k in ("id", "name", "type")},
                "classes": _with_missing_classes(classes, objects), "objects": objects,
                "has_tracks": any(o["figures"] > 1 for o in objects), "frames_with_figures": frames,
                "tags": ann.get("tags") or [], "annotation_updated_at": rec["ann_updated_at"], "errors": errors}

    @api.get("/videos/{video_id}/annotation")
    def video_annotation(video_id: Id) -> Any:
        with viewer.store.read() as conn:
            browse.video_record(conn, video_id)
        return viewer.video_annotation(video_id)

    @api.get("/videos/{video_id}/frames/{frame}")
    def video_frame(video_id: Id, frame: Frame) -> dict[str, Any]:
        from pipeline.exceptions import NotFoundError

        with viewer.store.read() as conn:
            rec = browse.video_record(conn, video_id)
            ds = browse.dataset_items(conn, rec["row"]["dataset_id"], count=False)
        n = int(rec["row"]["frames_count"])
        if frame >= n:
            raise NotFoundError(f"video {video_id} has frames 0..{n - 1}; there is no frame {frame}")
        ann = viewer.video_annotation(video_id)
        figures = frame_figures(ann, frame, class_colors(ds["project"]["classes"]))
        return {"frame": frame, "figures": figures, "tags": frame_tags(ann, frame),
                "image_url": f"/api/videos/{video_id}/frames/{frame}/image"}
