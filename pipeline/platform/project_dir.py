"""Import and export of Supervisely project folders (what the SDK's `sly.Project` / `sly.VideoProject` read and
write; layout in the SDK's `supervisely/project/project.py` and `video_project.py`):

    <project>/meta.json                           classes, tags, "projectType": "images" | "videos"
    <project>/key_id_map.json                     videos only: {"tags", "objects", "figures", "videos"}: {key: id}
    <project>/<dataset>/img/<name>                images ("video/<name>" in a videos project)
    <project>/<dataset>/ann/<name>.json           its annotation (the SDK's older "<stem>.json" is read too)
    <project>/<dataset>/img_info/, meta/, seg/    ignored on import
    <project>/<dataset>/datasets/<child>/...      a nested dataset, recursively

Files in an item folder without an image (or video) extension are skipped with a warning, as the SDK's reader skips
them; so are junk files that operating systems leave (`.DS_Store`, `._*`, `Thumbs.db`), silently. Any other name
starting with '.' is refused: the platform does not take such names (`ops.check_item_name`).

Import validates everything first (every JSON file, every image or video, every name) and only then writes all
rows in one transaction: a bad folder is a `FormatError` naming the file and the problem, and leaves no project
behind (files already copied into the blob store are unreferenced, harmless). Export writes into an empty or new
folder and refuses any path that would leave it; it writes into a temporary folder next to the target and renames
it into place at the end, so the target is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.exceptions import FormatError, InvalidArgumentError, NotFoundError, PipelineError
from pipeline.platform import media, ops
from workers.formats import SDK_IMAGE_EXTENSIONS, SDK_VIDEO_EXTENSIONS

if TYPE_CHECKING:
    from pipeline.annotation import ProjectMeta
    from pipeline.platform.apis import Platform

__all__ = ["export_dir", "import_dir"]

_ITEM_DIRS = {"images": "img", "videos": "video"}
_PAGE = 500  # images exported per query page: bounded memory for projects of any size
_JUNK_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")  # left by file managers; "._*" too (macOS AppleDouble)


@dataclass
class _Item:
    name: str
    path: Path
    ann_path: Path | None
    sha256: str = ""
    size: int = 0
    probe: Any = None
    ann_json: str | None = None
    objects: int = 0


@dataclass
class _Dataset:
    name: str
    path: Path
    parent: int | None  # index of the parent in the plan list
    items: list[_Item] = field(default_factory=list)


# -------------------------------------------------------------------------------------------------------- import


def import_dir(platform: Platform, path: str | os.PathLike) -> int:
    """Import the Supervisely project folder at `path` as a new project named after the folder (made unique with
    `get_free_name`); returns the new project's id. See the module docstring for the layout and the guarantees."""
    from pipeline.annotation import ProjectMeta

    root = Path(path).expanduser()
    if not root.exists():
        raise NotFoundError(f"project folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise InvalidArgumentError(f"{str(root)!r} is a file; a Supervisely project is a folder with meta.json")
    root = root.resolve()
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FormatError(f"{meta_path}: missing meta.json; a Supervisely project folder has one at its root")
    meta_data = _load_json(meta_path)
    meta = _wrap(meta_path, ProjectMeta.from_json, meta_data)
    project_type = meta.project_type
    if "projectType" not in meta_data and _has_video_dirs(root):
        project_type = "videos"
    if (root / "key_id_map.json").is_file():
        _read_key_id_map(root / "key_id_map.json")
    plans = _scan(root, project_type)
    store = platform.store
    for plan in plans:  # validate and store the files; nothing is written to the database yet
        for item in plan.items:
            _prepare(store, item, meta, project_type)
    with store.write() as conn:
        name = ops.free_project_name(conn, root.name or "project")
        project_id = ops.insert_project(conn, name, project_type, meta)
        ids: list[int] = []
        for plan in plans:
            parent_id = ids[plan.parent] if plan.parent is not None else None
            ids.append(ops.insert_dataset(conn, project_id, plan.name, parent_id))
            for item in plan.items:
                _insert(conn, ids[-1], item, project_type)
    return project_id


def _insert(conn: Any, dataset_id: int, item: _Item, project_type: str) -> None:
    p = item.probe
    stamp = ops.now()
    if project_type == "images":
        item_id = ops.insert_image(conn, dataset_id, item.name, p.width, p.height, item.sha256, item.size, p.ext)
        if item.ann_json is not None:  # validated already: stored as read
            conn.execute(
                "INSERT INTO annotations (image_id, ann, objects_count, updated_at) VALUES (?, ?, ?, ?)",
                (item_id, item.ann_json, item.objects, stamp),
            )
    else:
        item_id = ops.insert_video(conn, dataset_id, item.name, p.frames_count, p.fps, p.width, p.height,
                                   item.sha256, item.size, p.ext)
        if item.ann_json is not None:  # validated already: stored as read, in rows
            ops.put_video_annotation_json(conn, item_id, json.loads(item.ann_json))


def _prepare(store: Any, item: _Item, meta: ProjectMeta, project_type: str) -> None:
    """Copy the item into the blob store, check it decodes, parse and check its annotation."""
    from pipeline.annotation import Annotation, VideoAnnotation

    probe = media.probe_image if project_type == "images" else media.probe_video
    try:
        f = open(item.path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        raise FormatError(f"{item.path}: cannot be read ({exc})") from None
    with f:
        try:
            item.sha256, item.size, item.probe = store.store_blob(f, lambda tmp: _wrap(item.path, probe, tmp, item.name))
        except OSError as exc:
            raise FormatError(f"{item.path}: cannot be read ({exc})") from None
    if item.ann_path is None:
        return
    data = _load_json(item.ann_path)
    if project_type == "images":
        ann = _wrap(item.ann_path, Annotation.from_json, data, meta)
        if ann.img_size != (item.probe.height, item.probe.width):
            raise FormatError(
                f"{item.ann_path}: annotation size {ann.img_size[0]}x{ann.img_size[1]} (height x width) does not "
                f"match the image {item.path.name} ({item.probe.height}x{item.probe.width})"
            )
        item.objects = len(ann.labels)
    else:
        ann = _wrap(item.ann_path, VideoAnnotation.from_json, data, meta)
        ops.check_video_fits(ann, (item.probe.height, item.probe.width), item.probe.frames_count,
                             f"{item.ann_path} (video {item.path.name})")
        item.objects = len(ann.objects)
    item.ann_json = ops.dumps(data)


def _scan(root: Path, project_type: str) -> list[_Dataset]:
    """The datasets under `root`, parents before children, with their items paired with annotation files."""
    plans: list[_Dataset] = []
    item_dir, extensions = _ITEM_DIRS[project_type], media.item_extensions(project_type)

    def visit(ds_dir: Path, parent: int | None) -> None:
        _inside(root, ds_dir)
        name = _name(ds_dir, "dataset", top_level=parent is None)
        plan = _Dataset(name, ds_dir, parent)
        plans.append(plan)
        index = len(plans) - 1
        plan.items = _pair(root, ds_dir / item_dir, ds_dir / "ann", extensions)
        nested = ds_dir / "datasets"
        if nested.is_dir():
            for child in sorted(nested.iterdir()):  # a hidden folder that holds no dataset is no dataset
                if child.is_dir() and (not child.name.startswith(".") or _is_dataset(child, item_dir)):
                    visit(child, index)

    for child in sorted(root.iterdir()):
        if child.is_dir() and _is_dataset(child, item_dir):  # a hidden one is refused by name, not skipped
            visit(child, None)
    return plans


def _is_dataset(path: Path, item_dir: str) -> bool:
    return any((path / d).is_dir() for d in (item_dir, "ann", "datasets"))


def _has_video_dirs(root: Path) -> bool:
    return any((d / "video").is_dir() for d in root.iterdir() if d.is_dir())


def _pair(root: Path, item_dir: Path, ann_dir: Path, extensions: frozenset[str]) -> list[_Item]:
    items = []
    files = sorted(p for p in item_dir.iterdir() if not _junk(p)) if item_dir.is_dir() else []
    anns: dict[str, Path] = {}
    if ann_dir.is_dir():
        anns = {p.name: p for p in ann_dir.iterdir() if p.suffix == ".json" and not _junk(p) and p.is_file()}
    used: dict[str, Path] = {}
    for path in files:
        _inside(root, path)
        if not path.is_file():
            raise FormatError(f"{path}: expected a file in {item_dir.name}/, found a folder")
        if not media.has_ext(path.name, extensions):  # the SDK's reader skips it too
            kind = "an image" if item_dir.name == _ITEM_DIRS["images"] else "a video"
            warnings.warn(f"{path}: skipped, its extension is not that of {kind}", stacklevel=2)
            continue
        name = _name(path, "item")
        ann_name = name + ".json" if name + ".json" in anns else (Path(name).stem + ".json")  # SDK: old "<stem>.json"
        ann_path = anns.get(ann_name)
        if ann_path is not None:
            if ann_name in used:
                raise FormatError(f"{ann_path}: annotation file matches two items, {used[ann_name].name} and {name}")
            used[ann_name] = path
            _inside(root, ann_path)
        items.append(_Item(name, path, ann_path))
    for ann_name, ann_path in sorted(anns.items()):
        if ann_name not in used:
            expected = item_dir / ann_name[: -len(".json")]
            raise FormatError(f"{ann_path}: annotation file without its item: {expected} does not exist")
    return items


def _junk(path: Path) -> bool:
    """A file that file managers leave, or a hidden folder (e.g. of thumbnails): no item, skipped silently."""
    return path.name in _JUNK_FILES or path.name.startswith("._") or (path.name.startswith(".") and path.is_dir())


def _name(path: Path, kind: str, top_level: bool = False) -> str:
    try:
        if kind == "dataset":
            return ops.check_dataset_name(path.name, top_level)
        return ops.check_item_name(path.name, kind)
    except InvalidArgumentError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _inside(root: Path, path: Path) -> None:
    """`FormatError` if `path` (through links) resolves outside `root`: an import reads only the project folder."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise FormatError(f"{path}: links to {resolved}, outside the project folder {root}")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot be read ({exc})") from None


def _wrap(path: Path, fn: Any, *args: Any) -> Any:
    """`fn(*args)`, with a `FormatError` prefixed by the file it came from."""
    try:
        return fn(*args)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _read_key_id_map(path: Path) -> dict[str, Any]:
    """key_id_map.json, tolerated: ids of another platform mean nothing here, so a malformed file is ignored."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -------------------------------------------------------------------------------------------------------- export


def export_dir(platform: Platform, project_id: int, path: str | os.PathLike) -> None:
    """Write project `project_id` as a Supervisely project folder at `path` (created; if it exists it must be an
    empty folder). Every image gets an annotation file, empty datasets get their `img/` and `ann/` folders, and a
    videos project gets a `key_id_map.json`, as the SDK's reader expects. An image name without an image extension
    the SDK knows gets its format's extension appended (".png", ".jpg").

    The folder is written as a temporary sibling of `path` and renamed into place at the end: a failed export
    leaves nothing behind. A file system error is a `PipelineError` naming the path."""
    info = platform.project.get(project_id)
    target = Path(path).expanduser().resolve()  # a link to an empty folder: the folder is replaced, not the link
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidArgumentError(f"export target {str(target)!r} exists and is not an empty folder; choose another")
    meta = platform.project.get_meta(project_id)
    datasets = platform.dataset.list(project_id)
    rel: dict[int, tuple[str, ...]] = {}
    for ds in datasets:  # parents come before children
        _check_export_name(ds.name, f"dataset {ds.id}", top_level=not ds.parent_id)
        rel[ds.id] = (rel[ds.parent_id] + ("datasets", ds.name)) if ds.parent_id else (ds.name,)
    _check_item_names(platform, info.type, [ds.id for ds in datasets])
    tmp = target.parent / f".{target.name[:64]}.export-{uuid.uuid4().hex[:12]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise PipelineError(f"cannot create the export folder {target}: {exc}") from None
    try:
        _write_project(platform, info.type, meta, datasets, rel, tmp.resolve())
        os.replace(tmp, target)  # a target that exists is an empty folder, which the rename replaces
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = str(exc).replace(str(tmp.resolve()), str(target)).replace(str(tmp), str(target))
        raise PipelineError(f"export of project {project_id} to {target} failed: {why}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_project(platform: Platform, project_type: str, meta: ProjectMeta, datasets: list[Any],
                   rel: dict[int, tuple[str, ...]], root: Path) -> None:
    """Write the project folder's contents into the empty folder `root`."""
    _write_json(root / "meta.json", meta.to_json())
    key_id_map: dict[str, dict[str, int]] = {"tags": {}, "objects": {}, "figures": {}, "videos": {}}
    for ds in datasets:
        ds_dir = _safe(root, *rel[ds.id])
        item_dir, ann_dir = ds_dir / _ITEM_DIRS[project_type], ds_dir / "ann"
        item_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        if project_type == "images":
            _export_images(platform, ds.id, root, item_dir, ann_dir)
        else:
            _export_videos(platform, ds.id, root, item_dir, ann_dir, key_id_map)
    if project_type == "videos":
        _write_json(root / "key_id_map.json", key_id_map)


def _export_images(platform: Platform, dataset_id: int, root: Path, item_dir: Path, ann_dir: Path) -> None:
    page: list[Any] = []
    for info in platform.image.iterate(dataset_id=dataset_id, batch=_PAGE):
        page.append(info)
        if len(page) == _PAGE:
            _write_image_page(platform, page, root, item_dir, ann_dir)
            page = []
    if page:
        _write_image_page(platform, page, root, item_dir, ann_dir)


def _write_image_page(platform: Platform, infos: list[Any], root: Path, item_dir: Path, ann_dir: Path) -> None:
    anns = platform.annotation.get_many([i.id for i in infos])
    for info in infos:
        name = export_name(info.name, info.ext)
        _copy(Path(info.path), _safe(root, *item_dir.relative_to(root).parts, name), f"image {info.id}")
        _write_json(_safe(root, *ann_dir.relative_to(root).parts, name + ".json"), anns[info.id].to_json())


def _export_videos(platform: Platform, dataset_id: int, root: Path, item_dir: Path, ann_dir: Path,
                   key_id_map: dict[str, dict[str, int]]) -> None:
    for info in platform.video.list(dataset_id):
        ann = platform.video.get_annotation(info.id)
        name = export_name(info.name, Path(info.path).suffix.lstrip("."), "videos")
        _copy(Path(info.path), _safe(root, *item_dir.relative_to(root).parts, name), f"video {info.id}")
        _write_json(_safe(root, *ann_dir.relative_to(root).parts, name + ".json"), ann.to_json())
        key_id_map["videos"][ann.key] = info.id
        for tag in ann.tags:  # the video's tags (objects' tags carry no key)
            key_id_map["tags"][tag.key] = len(key_id_map["tags"]) + 1
        for obj in ann.objects:  # ids of this platform's objects do not exist: number them in export order
            key_id_map["objects"][obj.key] = len(key_id_map["objects"]) + 1
        for fig in ann.figures:
            key_id_map["figures"][fig.key] = len(key_id_map["figures"]) + 1


def export_name(name: str, ext: str, project_type: str = "images") -> str:
    """The file name an item is exported under: its name, plus ".<ext>" when the SDK would not read the name as an
    image (or video): its reader skips files without a known extension."""
    known = SDK_IMAGE_EXTENSIONS if project_type == "images" else SDK_VIDEO_EXTENSIONS
    return name if media.has_ext(name, known) else f"{name}.{ext}"


def _check_item_names(platform: Platform, project_type: str, dataset_ids: list[int]) -> None:
    """Every item name of the project is a safe, unique file name in its dataset folder, checked before any write."""
    table = "images" if project_type == "images" else "videos"
    with platform.store.read() as conn:
        for dataset_id in dataset_ids:
            seen: dict[str, int] = {}
            for row in conn.execute(f"SELECT id, name, ext FROM {table} WHERE dataset_id = ?", (dataset_id,)):
                _check_export_name(row["name"], f"{table[:-1]} {row['id']}")
                name = export_name(row["name"], row["ext"], project_type)
                if name in seen:
                    raise FormatError(
                        f"{table[:-1]} {row['id']} ({row['name']!r}) would be exported as {name!r}, the name of "
                        f"{table[:-1]} {seen[name]}; rename one"
                    )
                seen[name] = row["id"]


def _check_export_name(name: str, what: str, top_level: bool | None = None) -> None:
    """A name stored before the API refused it (or written to the database directly) stops the export here;
    `top_level` is given for a dataset's name."""
    try:
        if top_level is None:
            ops.check_item_name(name, what)
        else:
            ops.check_dataset_name(name, top_level)
    except InvalidArgumentError as exc:
        raise FormatError(f"{what}: {exc}; rename it to export the project") from None


def _safe(root: Path, *parts: str) -> Path:
    """`root / parts`, refusing a path that leaves `root` (through '..', an absolute part or a link)."""
    path = root.joinpath(*parts)
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise FormatError(f"refusing to write {path}: it resolves to {resolved}, outside the export folder {root}")
    return path


def _copy(src: Path, dest: Path, what: str) -> None:
    try:
        shutil.copyfile(src, dest)
    except FileNotFoundError:
        raise FormatError(f"the stored file of {what} is missing: {src}") from None


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:  # the whole folder is renamed into place when complete
        json.dump(data, f, ensure_ascii=False, indent=2)
