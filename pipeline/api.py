"""`Api`: the entry point. Platform sub-APIs (`project`, `dataset`, `image`, `video`, `annotation`) and `nn`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["Api", "default_data_dir"]


def default_data_dir() -> Path:
    """`$PIPELINE_HOME`, else a per-user data directory (`$XDG_DATA_HOME/cv-pipeline` or `~/.local/share/...`)."""
    env = os.environ.get("PIPELINE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cv-pipeline"


class Api:
    """The project's API: the embedded platform and the model deployments.

    Args:
        data_dir: where the platform keeps its SQLite database and blobs. None: `$PIPELINE_HOME`, else a per-user
            data directory.
        ray_address: the Ray cluster to use for models. None: `$RAY_ADDRESS`, else a local Ray started on first use.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, ray_address: str | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir()
        self.ray_address = ray_address
        from pipeline.platform import Platform

        self._platform = Platform(self.data_dir)
        self.project = self._platform.project
        self.dataset = self._platform.dataset
        self.image = self._platform.image
        self.video = self._platform.video
        self.annotation = self._platform.annotation
        from pipeline.deploy.nn import NnApi  # deferred: `import pipeline` stays free of ray/torch until needed

        self.nn = NnApi(self)

    @property
    def platform(self):
        """The embedded platform this Api reads and writes (`pipeline.platform.Platform`)."""
        return self._platform

    def serve(self, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **kwargs: Any) -> None:
        """Serve the web viewer of this platform (projects, image grids, images, videos, upload runs) on
        `host`:`port` until Ctrl-C; prints the address to open. Read-only. A non-loopback `host` needs `token`
        (one is generated and printed when it is None). See docs/viewer.md; `pipeline serve` calls this."""
        from pipeline.viewer.server import serve  # deferred: FastAPI and uvicorn load only for the viewer

        serve(self.data_dir, host=host, port=port, token=token, **kwargs)

    def __repr__(self) -> str:
        return f"Api(data_dir={str(self.data_dir)!r})"
