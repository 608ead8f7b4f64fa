"""`serve(...)`: run the viewer with uvicorn until interrupted (what `pipeline serve` calls)."""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, TextIO

from pipeline.exceptions import InvalidArgumentError

__all__ = ["serve", "viewer_url"]


def viewer_url(host: str, port: int, token: str | None = None, path: str = "/") -> str:
    """The address to open: `http://host:port/path`, with `?token=` when there is one (IPv6 hosts bracketed). A
    wildcard host (0.0.0.0, ::: every interface) is no address to open: this machine's name is shown instead."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        import socket

        name = socket.getfqdn()
        host = name if name and not name.startswith("localhost") else socket.gethostname() or "localhost"
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{path}" + (f"?token={token}" if token else "")


def serve(data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, *, out: TextIO | None = None, log_level: str = "info") -> None:
    """Serve the web viewer of the platform in `data_dir` on `host`:`port` until Ctrl-C (`Api.serve` passes its
    own data dir). Read-only. A `host` other than the loopback interface needs a token: pass one, or one is
    generated; the address to open (with `?token=`) is printed to `out` (stderr) either way."""
    import uvicorn

    from pipeline.viewer.app import create_app
    from pipeline.viewer.security import is_loopback

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be an integer 0..65535; got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise InvalidArgumentError(f"host must be an interface address or name; got {host!r}")
    out = out or sys.stderr
    generated = token is None and not is_loopback(host)
    if generated:
        token = secrets.token_urlsafe(24)
    app = create_app(data_dir, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                            proxy_headers=False, access_log=log_level == "debug")
    server = uvicorn.Server(config)
    note = " (a generated token: every request must carry it)" if generated else ""
    out.write(f"pipeline viewer: serving {app.state.viewer.data_dir} read-only\n"
              f"  open {viewer_url(host, port, token)}{note}\n")
    out.flush()
    server.run()


def _main(argv: Any = None) -> None:  # `python -m pipeline.viewer.server DATA_DIR [host] [port]`, for benchmarks
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m pipeline.viewer.server DATA_DIR [HOST] [PORT]")
    serve(args[0], args[1] if len(args) > 1 else "127.0.0.1",
          int(args[2]) if len(args) > 2 else 8000, os.environ.get("PIPELINE_VIEWER_TOKEN"), log_level="warning")


if __name__ == "__main__":
    _main()
