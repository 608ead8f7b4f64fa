"""`pipeline platform import DIR | export PROJECT_ID DIR [--format supervisely|yolo|coco] | ls [PROJECT_ID] |
gc [--min-age S] [--dry-run]`: the embedded platform from a shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `platform` command and its `import`, `export`, `ls` and `gc` subcommands on `subparsers`."""
    parser = subparsers.add_parser(
        "platform", help="import, export and list projects of the embedded platform",
        description="Import, export and list projects of the embedded platform (Supervisely project folders).",
    )
    sub = parser.add_subparsers(dest="platform_command", required=True, metavar="{import,export,ls,gc}")

    p = sub.add_parser("import", help="import a Supervisely project folder as a new project")
    p.add_argument("dir", help="the project folder (meta.json, <dataset>/img, <dataset>/ann)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a project as a Supervisely project folder, a YOLO dataset or COCO")
    p.add_argument("project_id", type=int, help="the project's id (see `pipeline platform ls`)")
    p.add_argument("dir", help="where to write it: a new or empty folder (a .json file for coco); a local path or "
                               "an object-store URI for yolo and coco")
    p.add_argument("--format", choices=("supervisely", "yolo", "coco"), default="supervisely",
                   help="supervisely: the project folder (default); yolo: images/, labels/ and data.yaml, as "
                        "Ultralytics trains on; coco: one JSON file")
    p.add_argument("--images", choices=("copy", "link"), default="copy",
                   help="yolo: copy the images (default) or link to the stored files")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ls", help="list projects, or one project's datasets and classes")
    p.add_argument("project_id", type=int, nargs="?", help="a project to show in detail")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("gc", help="remove stored files and thumbnails no image or video uses any more")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="only files older than this (default 3600: an upload stores its file before it commits "
                        "the record naming it)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.set_defaults(func=cmd_gc)
    return parser


def _platform(args: argparse.Namespace) -> Any:
    from pipeline.api import default_data_dir
    from pipeline.platform import Platform

    data_dir = getattr(args, "data_dir", None)
    return Platform(Path(data_dir).expanduser() if data_dir else default_data_dir())


def cmd_import(args: argparse.Namespace) -> int:
    platform = _platform(args)
    project_id = platform.project.import_dir(args.dir)
    info = platform.project.get(project_id)
    stats = platform.project.stats(project_id)
    kind = "images" if info.type == "images" else "videos"
    folder = Path(args.dir).resolve().name
    renamed = f" (named {info.name!r}: the name was taken)" if info.name != folder else ""
    print(
        f"imported {folder!r} as project {project_id}{renamed}: "
        f"{_n(stats['datasets'], 'dataset')}, {_n(stats['items'], kind[:-1])}, {_n(stats['objects'], 'object')}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    platform = _platform(args)
    info = platform.project.get(args.project_id)
    fmt = getattr(args, "format", "supervisely")
    if fmt != "supervisely":
        from pipeline.app import platform_export

        if fmt == "yolo":
            done = platform_export.export_yolo(platform, args.project_id, args.dir, images=args.images)
            what = f"a YOLO {done['task']} dataset"
        else:
            done = platform_export.export_coco(platform, args.project_id, args.dir)
            what = "COCO"
        skipped = done.get("skipped")
        print(f"exported project {info.id} ({info.name!r}) as {what} to {args.dir}: "
              f"{_n(done['images'], 'image')}, {_n(done['objects'], 'object')}"
              + (f" ({_n(skipped, 'object')} without a box skipped: a graph with no visible node, an empty "
                 "mask)" if skipped else ""))
        return 0
    platform.project.export_dir(args.project_id, args.dir)
    stats = platform.project.stats(args.project_id)
    print(
        f"exported project {info.id} ({info.name!r}) to {Path(args.dir).resolve()}: "
        f"{_n(stats['datasets'], 'dataset')}, {_n(stats['items'], info.type[:-1])}, {_n(stats['objects'], 'object')}"
    )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    platform = _platform(args)
    if args.project_id is None:
        projects = platform.project.list()
        if not projects:
            print(f"no projects in {platform.data_dir}")
            return 0
        rows = [("ID", "NAME", "TYPE", "DATASETS", "ITEMS", "OBJECTS")]
        for p in projects:
            s = platform.project.stats(p.id)
            rows.append((str(p.id), p.name, p.type, str(s["datasets"]), str(s["items"]), str(s["objects"])))
        _table(rows)
        return 0
    info = platform.project.get(args.project_id)
    stats = platform.project.stats(info.id)
    print(f"project {info.id} {info.name!r} ({info.type}): {_n(stats['items'], info.type[:-1])}, "
          f"{_n(stats['objects'], 'object')}")
    datasets = platform.dataset.list(info.id)
    depth: dict[int, int] = {}
    rows = [("ID", "DATASET", info.type.upper())]
    for ds in datasets:
        depth[ds.id] = depth[ds.parent_id] + 1 if ds.parent_id else 0
        count = platform.image.count(dataset_id=ds.id) if info.type == "images" else platform.video.count(dataset_id=ds.id)
        rows.append((str(ds.id), "  " * depth[ds.id] + ds.name, str(count)))
    print()
    _table(rows) if datasets else print("no datasets")
    meta = platform.project.get_meta(info.id)
    print()
    if meta.obj_classes:
        _table([("CLASS", "SHAPE", "COLOR")] + [(c.name, c.shape, c.color or "") for c in meta.obj_classes])
    else:
        print("no classes")
    if meta.tag_metas:
        print()
        _table([("TAG", "VALUE TYPE")] + [(t.name, t.value_type) for t in meta.tag_metas])
    return 0


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def cmd_gc(args: argparse.Namespace) -> int:
    import math

    from pipeline.exceptions import InvalidArgumentError

    if not math.isfinite(args.min_age) or args.min_age < 0:
        raise InvalidArgumentError(f"pipeline platform gc: --min-age must be a number of seconds >= 0; got "
                                   f"{args.min_age}")
    platform = _platform(args)
    print(platform.collect_garbage(min_age_s=args.min_age, dry_run=args.dry_run))
    return 0
