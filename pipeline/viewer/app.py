"""`create_app(data_dir, token=None)`: the viewer's FastAPI application over a platform data directory.

    from pipeline.viewer import create_app
    app = create_app("~/.local/share/cv-pipeline")           # run it with any ASGI server, or `serve(...)`

Routes: the JSON API under `/api/...` (`routes_api`, `routes_media`, `routes_runs`; documented in docs/viewer.md),
the pages (`pages`), and `/static/...` (the package's HTML/JS/CSS; no build step). Every request passes
`security.ViewerGate` first. Errors are JSON `{"detail": message}` (an HTML page for page routes): 400 malformed
parameters, 401 token, 404 unknown ids / missing files, 405 anything but GET, 422 a file that does not decode,
503 the database unusable; anything unexpected is logged with its traceback and answered 500 with a one-line
message, never the traceback.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError, PipelineError
from pipeline.viewer.pages import STATIC_DIR

__all__ = ["STATIC_DIR", "Viewer", "create_app"]

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")
_VIDEO_CACHE = 8  # parsed video annotations kept (a long video's JSON is MBs; scrubbing reads it per frame)


class Viewer:
    """What the routes share: the platform's store and a small cache of parsed video annotations."""

    def __init__(self, data_dir: Path):
        from pipeline.platform import Platform

        self.data_dir = data_dir
        self.platform = Platform(data_dir)
        self.store = self.platform.store
        self._videos: OrderedDict[int, tuple[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def video_annotation(self, video_id: int) -> dict[str, Any] | None:
        """The video's annotation JSON, parsed, from the cache while its `updated_at` is unchanged."""
        from pipeline.platform import browse

        with self._lock:
            cached = self._videos.get(video_id)
        with self.store.read() as conn:
            stamp, text = browse.video_annotation_if_changed(conn, video_id, cached[0] if cached else None)
        if stamp is None:
            return None
        if text is None and cached is not None:
            return cached[1]
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise FormatError(f"the stored annotation of video {video_id} is not JSON: {exc}") from None
        with self._lock:
            self._videos[video_id] = (stamp, data)
            self._videos.move_to_end(video_id)
            while len(self._videos) > _VIDEO_CACHE:
                self._videos.popitem(last=False)
        return data


def create_app(data_dir: str | os.PathLike, token: str | None = None) -> Any:
    """The viewer over the platform in `data_dir` (its `platform.db` must exist). With `token`, every request must
    carry it (see `security`); without, only loopback Host names are answered. Returns a FastAPI app."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from pipeline.viewer import pages, routes_api, routes_media, routes_runs
    from pipeline.viewer.security import ViewerGate

    root = Path(data_dir).expanduser().resolve()
    if not (root / "platform.db").is_file():
        raise InvalidArgumentError(
            f"no platform database in {root}: give the data directory of a platform (--data-dir), or fill this one "
            "first (`pipeline demo`, `pipeline platform import`)"
        )
    if token is not None and (not isinstance(token, str) or not _TOKEN.match(token)):
        raise InvalidArgumentError("the token must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ - "
                                   "(leave it out and `serve` generates one)")
    viewer = Viewer(root)
    app = FastAPI(title="cv-pipeline viewer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.viewer = viewer
    _install_error_handlers(app)
    app.include_router(routes_api.router(viewer))
    app.include_router(routes_media.router(viewer))
    app.include_router(routes_runs.router(viewer))
    app.include_router(pages.router(viewer))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(ViewerGate, token=token, on_error=_unexpected)
    return app


# ------------------------------------------------------------------------------------------------------ errors


def _is_api(request: Any) -> bool:
    return request.url.path.startswith(("/api/", "/static/"))


def error_response(request: Any, status: int, message: str) -> Any:
    """JSON `{"detail": message}` for the API, a small HTML page for the pages."""
    from fastapi.responses import HTMLResponse, JSONResponse

    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status)
    body = (f"<!doctype html><meta charset='utf-8'><title>{status}</title><link rel='stylesheet' "
            f"href='/static/viewer.css'><main class='error'><h1>{status}</h1><p>{html.escape(message)}</p>"
            "<p><a href='/'>Projects</a> · <a href='/runs'>Runs</a></p></main>")
    return HTMLResponse(body, status_code=status)


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def _install_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    statuses = ((NotFoundError, 404), (InvalidArgumentError, 400), (FormatError, 422))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Any:
        return error_response(request, 400, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Any:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such page or API route: {request.url.path}"
        response = error_response(request, exc.status_code, detail)
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(PipelineError)
    async def _pipeline(request: Any, exc: PipelineError) -> Any:
        for kind, status in statuses:
            if isinstance(exc, kind):
                return error_response(request, status, str(exc))
        log.warning("viewer: %s %s: %s", request.method, request.url.path, exc)
        return error_response(request, 503, str(exc))

    @app.exception_handler(sqlite3.Error)
    async def _database(request: Any, exc: sqlite3.Error) -> Any:
        log.warning("viewer: database error on %s: %s", request.url.path, exc)
        return error_response(request, 503, f"the platform database could not answer: {exc}")


def _unexpected(scope: Any, exc: Exception) -> Any:
    """The 500 of an exception no handler took: one line, no traceback (the log has it). Sent by the gate
    (security.py), so it carries the security headers."""
    from starlette.requests import Request

    request = Request(scope)
    log.error("viewer: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error ({type(exc).__name__}); the server log has the details")
