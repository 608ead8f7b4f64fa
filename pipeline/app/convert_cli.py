"""`pipeline convert SRC OUT`: any model file this package deploys -> one self-describing file, for clusters where
the source framework should not be imported (or unpickled) at load time.

The converters live with their adapters (`workers/models/`); this module picks one by what SRC is.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from pipeline.exceptions import CheckpointError, InvalidArgumentError, NotFoundError, PipelineError

__all__ = ["CONVERTERS", "add_parser", "cmd_convert"]

# framework -> "module:function(src, out, **options)"; a framework's adapter recognises its files (`sniff`).
CONVERTERS: dict[str, str] = {
    "ultralytics": "workers.models.convert:cli_convert_ultralytics",
    "onnx": "workers.models.convert:cli_convert_onnx",
    "transformers": "workers.models.hf:convert",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a model file (YOLO .pt, .onnx, a transformers folder) into one "
                                       "self-describing file",
                       description="Convert a model this package deploys into one self-describing file: a YOLO .pt "
                                   "into our checkpoint (no Ultralytics pickle), an .onnx into its sidecar JSON "
                                   "(--classes, --layout), a transformers folder into one safetensors file.")
    p.add_argument("src", help="the model file or folder")
    p.add_argument("out", nargs="?", help="where to write (an .onnx writes <model>.onnx.json when left out)")
    p.add_argument("--classes", help="class names, comma-separated (ONNX files without metadata)")
    p.add_argument("--layout", help="ONNX output layout: yolo | yolo_end2end | rtdetr | boxes_labels_scores")
    p.add_argument("--img-size", type=int, help="ONNX input size when the file does not state it")
    p.add_argument("--task", help="the task, when the file does not say it")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from workers.models import get_adapter
    from workers.models.base import FILE_FRAMEWORKS

    options = {k: v for k, v in (("classes", args.classes), ("layout", args.layout), ("img_size", args.img_size),
                                 ("task", args.task)) if v is not None}
    if "://" not in args.src and not os.path.exists(args.src):
        print(f"error: {args.src} does not exist", file=sys.stderr)
        return EXIT_USAGE
    head = _head(args.src)
    for framework in FILE_FRAMEWORKS:
        if framework in CONVERTERS and get_adapter(framework).sniff(args.src, head):
            module, _, name = CONVERTERS[framework].partition(":")
            existed = bool(args.out) and os.path.exists(args.out)
            try:
                written = getattr(importlib.import_module(module), name)(args.src, args.out, **options)
            except (InvalidArgumentError, CheckpointError, NotFoundError) as exc:  # what was given is wrong
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except PipelineError as exc:  # e.g. a framework that is not installed
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"wrote {written}" + (" (it replaced the file that was there)" if existed else ""))
            return EXIT_OK
    print(f"error: {args.src} is not a model file this package converts (a YOLO .pt, an .onnx, a transformers "
          "folder); our own checkpoints need no conversion", file=sys.stderr)
    return EXIT_USAGE


def _head(path: str) -> bytes:
    if os.path.isdir(path):
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError:
        return b""
