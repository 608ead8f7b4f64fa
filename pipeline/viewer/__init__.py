"""The web viewer of the embedded platform: projects, image grids, images and videos with their objects, runs.

    from pipeline.viewer import create_app, serve
    serve(data_dir, host="127.0.0.1", port=8000)     # until Ctrl-C; prints the address to open (or api.serve())
    app = create_app(data_dir, token=None)           # the FastAPI app, for tests or another ASGI server

Read-only (GET only). Pages are static HTML/JS/CSS from the package over a JSON API under /api (docs/viewer.md);
there is no front-end build step. FastAPI and uvicorn are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def create_app(data_dir: Any, token: str | None = None) -> Any:
    """See `pipeline.viewer.app.create_app`."""
    from pipeline.viewer.app import create_app as _create

    return _create(data_dir, token)


def serve(data_dir: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          **kwargs: Any) -> None:
    """See `pipeline.viewer.server.serve`."""
    from pipeline.viewer.server import serve as _serve

    _serve(data_dir, host, port, token, **kwargs)
