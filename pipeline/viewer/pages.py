"""The pages: one HTML shell (`static/page.html`) naming each page's JS module, which fetches the JSON API.

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


# page -> its title; its script is static/<page>.js
TITLES = {"projects": "Projects", "project": "Project", "grid": "Dataset", "image": "Image", "video": "Video",
          "runs": "Runs", "run": "Run"}


@lru_cache(maxsize=16)
def _shell(name: str) -> bytes:
    template = (STATIC_DIR / "page.html").read_text(encoding="utf-8")
    return template.replace("{title}", TITLES[name]).replace("{name}", name).encode()


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

    @pages.get("/runs", include_in_schema=False)
    def runs() -> Any:
        return page("runs")

    # The pages of one record: the record is looked up first, so an unknown id is a 404 page at once.
    for path, name, lookup, id_type in (
        ("/projects/{record_id}", "project", ops.get_project_row, Id),
        ("/datasets/{record_id}", "grid", ops.get_dataset_row, Id),
        ("/images/{record_id}", "image", ops.get_image_row, Id),
        ("/videos/{record_id}", "video", ops.get_video_row, Id),
        ("/runs/{record_id}", "run", browse.get_run, JobId),
    ):
        pages.add_api_route(path, _record_page(viewer, page, name, lookup, id_type), include_in_schema=False,
                            methods=["GET"])
    return pages


def _record_page(viewer: Any, page: Any, name: str, lookup: Any, id_type: Any) -> Any:
    def handler(record_id: Any) -> Any:
        with viewer.store.read() as conn:
            lookup(conn, record_id)
        return page(name)

    handler.__annotations__["record_id"] = id_type  # FastAPI validates the id by its type (Id or JobId)
    return handler
