"""`pipeline serve [--data-dir D] [--host 127.0.0.1] [--port 8000] [--token T]`: the web viewer (docs/viewer.md)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "add_parser", "cmd_serve", "serve_hint"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `serve` command on `subparsers`."""
    p = subparsers.add_parser(
        "serve", help="the web viewer: projects, image grids, images and videos with their objects, upload runs",
        description="Serve a read-only web viewer of the embedded platform until Ctrl-C and print the address to "
                    "open. It answers on the loopback interface only, unless --host names another; then every "
                    "request must carry a token (--token, or one is generated and printed).",
    )
    # SUPPRESS: a subparser default would overwrite `pipeline --data-dir D serve`.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="platform data directory (as `pipeline --data-dir`)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST}; another "
                                                        "one needs a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--token", help="the token every request must carry (?token=... once; the page keeps it in a "
                                   "cookie); default: none on loopback, a generated one on any other host")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.api import Api

    Api(getattr(args, "data_dir", None)).serve(host=args.host, port=args.port, token=args.token)
    return 0


def serve_hint(data_dir: str | None, path: str = "/") -> str:
    """The command that serves the viewer and the address of `path` on it, for messages: "`pipeline serve`, then
    open http://127.0.0.1:8000/projects/3"."""
    from pipeline.viewer.server import viewer_url

    dd = f"--data-dir {data_dir} " if data_dir else ""
    return f"`pipeline {dd}serve`, then open {viewer_url(DEFAULT_HOST, DEFAULT_PORT, path=path)}"
