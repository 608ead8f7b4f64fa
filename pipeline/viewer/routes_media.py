"""Routes that send files: an image's stored file and thumbnail, a video's file, thumbnail and decoded frames.

Each looks the record up by its id and sends the file the database names (`media.blob_file`); nothing from the
request becomes a path. Blobs and thumbnails are content-addressed, so they may be cached by the browser for as
long as it likes (`immutable`); `private` keeps them out of shared caches.
"""

from __future__ import annotations

from typing import Any

from pipeline.viewer import media
from pipeline.viewer.params import Frame, Id

__all__ = ["router"]

_CACHE = {"cache-control": "private, max-age=31536000, immutable"}


def router(viewer: Any) -> Any:
    """The file routes, bound to `viewer` (app.Viewer)."""
    from fastapi import APIRouter
    from fastapi.responses import FileResponse, Response

    from pipeline.platform import ops

    api = APIRouter(prefix="/api")

    def image_row(image_id: int) -> Any:
        with viewer.store.read() as conn:
            return ops.get_image_row(conn, image_id)

    def video_row(video_id: int) -> Any:
        with viewer.store.read() as conn:
            return ops.get_video_row(conn, video_id)

    def send(path: Any, ext: str) -> Any:
        return FileResponse(path, media_type=media.MEDIA_TYPES.get(ext, "application/octet-stream"), headers=_CACHE)

    @api.get("/images/{image_id}/file")
    def image_file(image_id: Id) -> Any:
        row = image_row(image_id)
        return send(media.blob_file(viewer.store, row, "image"), row["ext"])

    @api.get("/images/{image_id}/thumb")
    def image_thumb(image_id: Id) -> Any:
        return send(media.image_thumbnail(viewer.store, image_row(image_id)), "jpg")

    @api.get("/videos/{video_id}/file")
    def video_file(video_id: Id) -> Any:
        row = video_row(video_id)
        return send(media.blob_file(viewer.store, row, "video"), row["ext"])

    @api.get("/videos/{video_id}/thumb")
    def video_thumb(video_id: Id) -> Any:
        return send(media.video_thumbnail(viewer.store, video_row(video_id)), "jpg")

    @api.get("/videos/{video_id}/frames/{frame}/image")
    def video_frame_image(video_id: Id, frame: Frame) -> Any:
        data = media.frame_jpeg(viewer.store, video_row(video_id), frame)
        return Response(data, media_type="image/jpeg", headers=_CACHE)

    return api
