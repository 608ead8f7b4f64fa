"""The pages: static HTML shells from the package (`static/*.html`) that fetch the JSON API with plain JS.

A page route checks its id first, so an unknown project, dataset, image, video or run is a 404 page at once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.viewer.params import Id, JobId

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The pages' HTML, JS modules and CSS, served as they are under /static (no build step)."""


@lru_cache(maxsize=16)
def _shell(name: str) -> bytes:
    return (STATIC_DIR / f"{name}.html").read_bytes()


def router(viewer: Any) -> Any:
    """The page routes, bound to `viewer` (app.Viewer)."""
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse

    from pipeline.platform import browse, ops

    pages = APIRouter()

    def page(name: str) -> Any:
        return HTMLResponse(_shell(name), headers={"cache-control": "no-cache"})

    @pages.get("/", include_in_schema=False)
    def projects() -> Any:
        return page("projects")

    @pages.get("/projects/{project_id}", include_in_schema=False)
    def project(project_id: Id) -> Any:
        with viewer.store.read() as conn:
            ops.get_project_row(conn, project_id)
        return page("project")

    @pages.get("/datasets/{dataset_id}", include_in_schema=False)
    def dataset(dataset_id: Id) -> Any:
        with viewer.store.read() as conn:
            ops.get_dataset_row(conn, dataset_id)
        return page("grid")

    @pages.get("/images/{image_id}", include_in_schema=False)
    def image(image_id: Id) -> Any:
        with viewer.store.read() as conn:
            ops.get_image_row(conn, image_id)
        return page("image")

    @pages.get("/videos/{video_id}", include_in_schema=False)
    def video(video_id: Id) -> Any:
        with viewer.store.read() as conn:
            ops.get_video_row(conn, video_id)
        return page("video")

    @pages.get("/runs", include_in_schema=False)
    def runs() -> Any:
        return page("runs")

    @pages.get("/runs/{job_id}", include_in_schema=False)
    def run(job_id: JobId) -> Any:
        with viewer.store.read() as conn:
            browse.get_run(conn, job_id)
        return page("run")

    return pages
