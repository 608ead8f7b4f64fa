"""Predictions exported without the platform: Parquet parts, one row per object, each part carrying the manifest of
the items it holds. COCO and YOLO files are assembled from these parts when the run ends (`coco.py`, `yolo.py`).

`output.parquet` is a directory of part files (`part-00000.parquet`, ...), each written atomically (see
`location.py`) and so complete and readable as soon as it exists: a crash keeps every part written before it. Read
it with `pyarrow.parquet.read_table(path)` or `pandas.read_parquet(path)` (a URI with `filesystem=`).

**The manifest.** A part's Parquet key-value metadata (`pipeline.manifest`) holds the job id and one record per
item whose result the part holds: its key, position in the run, name, dataset, size, error and how many rows it
has (0 for an item where nothing was found). Rows and manifest are one file, written in one atomic step, so an
item is either recorded as done together with all its rows, or neither: a job resumed after a crash (even
SIGKILL) skips exactly the items of its parts and predicts the rest, and no row is lost or written twice. Nothing
needs reconciling: a part that was not completely written does not exist under its name (a hidden `.part-*.tmp`
is ignored by Parquet readers and deleted by the next run).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.exceptions import InvalidArgumentError
from pipeline.prediction import Prediction
from pipeline.stages.source import check_same_source
from pipeline.stages.upload.location import Location

__all__ = ["MANIFEST_KEY", "OUTPUT_KEYS", "ParquetWriter", "check_output", "mask_from_row", "mask_to_rle",
           "read_parts", "rle_to_mask"]

# A part file is written once this many rows (or items) are buffered (big enough for efficient Parquet) or once
# the oldest buffered item is this many seconds old, whichever comes first: a crash loses at most that much.
PARQUET_ROWS_PER_PART = 20_000
PARQUET_FLUSH_S = 10.0
MANIFEST_KEY = b"pipeline.manifest"
OUTPUT_KEYS = ("parquet", "coco", "yolo", "yolo_images")
_PART = re.compile(r"part-(\d+)\.parquet")
_TEMP = re.compile(r"\.part-\d+\.parquet\.[0-9a-f]+\.tmp")


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("source", pa.string()), ("name", pa.string()), ("dataset", pa.string()),
        ("project_id", pa.int64()), ("dataset_id", pa.int64()), ("image_id", pa.int64()),
        ("video_id", pa.int64()), ("frame_idx", pa.int64()),
        ("target_project_id", pa.int64()), ("target_image_id", pa.int64()),
        ("image_height", pa.int32()), ("image_width", pa.int32()),
        ("object_idx", pa.int32()), ("class", pa.string()), ("class_id", pa.int32()), ("score", pa.float32()),
        ("track_id", pa.int64()),  # the object's track in its video (-1: in none); null without tracking
        ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
        ("mask_png", pa.binary()), ("mask_x", pa.int32()), ("mask_y", pa.int32()),
        ("keypoints", pa.list_(pa.float32())),  # pose: x, y, score per keypoint, in pixels
        ("obb", pa.list_(pa.float32())),  # oriented boxes: cx, cy, w, h, angle (radians); x1..y2 enclose it
        ("error", pa.string()),
    ])


def _source_text(p: Prediction) -> str:
    if isinstance(p.source, np.ndarray):
        return f"array:{p.index}"
    return str(p.source) if p.source is not None else ""


def _mask_png(mask: np.ndarray) -> tuple[bytes, int, int]:
    """A 1-bit PNG of the mask cropped to its bounding box, and the crop's (x, y) origin."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    buf = io.BytesIO()
    Image.fromarray(mask[y0:y1, x0:x1]).convert("1").save(buf, format="PNG")
    return buf.getvalue(), int(x0), int(y0)


def check_output(output: dict[str, Any]) -> dict[str, Location]:
    """Refuse outputs that cannot be written, before any work (and before an old Parquet output is replaced):
    {format: its `Location`}. Local paths and object-store URIs alike (see `location.py`)."""
    unknown = set(output) - set(OUTPUT_KEYS)
    if unknown:
        raise InvalidArgumentError(f"output: unknown key(s) {sorted(unknown)}; use {', '.join(OUTPUT_KEYS)}")
    found: dict[str, Location] = {}
    for key, kind, wanted in (("parquet", "a directory of part files", "dir"), ("coco", "one JSON file", "file"),
                              ("yolo", "a dataset folder", "dir")):
        if not output.get(key):
            continue
        loc = Location(output[key], f"output {key}")
        loc.check_writable()
        there = loc.kind()
        if there not in ("missing", wanted):
            raise InvalidArgumentError(
                f"output {key} {loc} is a {'directory' if there == 'dir' else 'file'}; the {key.upper()} output is "
                f"{kind}: give {'a file path' if wanted == 'file' else 'a new path or a folder'}"
            )
        found[key] = loc
    images = output.get("yolo_images", "copy")
    if images not in ("copy", "link"):
        raise InvalidArgumentError(f"output yolo_images must be 'copy' or 'link'; got {images!r}")
    if images == "link" and "yolo" in found and found["yolo"].is_uri:
        raise InvalidArgumentError("output yolo_images='link' needs a local yolo folder (an object store has no "
                                   "links); use 'copy'")
    return found

def _manifest_of(loc: Location, name: str) -> dict[str, Any] | None:
    """The manifest of part `name` (None for a part written without one, by an older version)."""
    import pyarrow.parquet as pq

    try:
        with loc.open_input(loc.join(name)) as f:
            meta = pq.read_metadata(f).metadata or {}
    except Exception as exc:  # parts are written atomically: an unreadable one was damaged by something else
        raise InvalidArgumentError(f"{loc.what}: the part {loc.join(name)} cannot be read ({exc}); move it "
                                   "away, or write to a new folder") from None
    raw = meta.get(MANIFEST_KEY)
    return json.loads(raw) if raw else None


def _item_record(p: Prediction, rows: int) -> dict[str, Any]:
    """What the manifest keeps of an item: enough to resume (key) and to assemble COCO / YOLO (the rest)."""
    return {"key": p.key, "index": p.index, "name": p.name, "dataset": list(p.dataset),
            "size": list(p.orig_size) if p.orig_size else None, "frame_idx": p.frame_idx, "error": p.error,
            "rows": rows, "masks": p.masks is not None, "keypoints": p.keypoints is not None,
            "path": p.item.path or p.image_path, "url": p.image_url, "array": p.image is not None}


class ParquetWriter:
    """Appends one row per object (and one per failed item, with `error`) to a directory of Parquet parts, each
    carrying its manifest (module docstring).

    Parts of job `job_id` already in the folder are kept and their items are `done_keys` (a resumed job); parts of
    any other job are deleted (replaced, as a new COCO file replaces the old), and so are parts without a manifest
    unless `keep_unmarked` (an upload job resuming output written before manifests existed).
    """

    def __init__(self, target: str | Location, job_id: str, keep_unmarked: bool = False,
                 identity: str | None = None):
        self.loc = target if isinstance(target, Location) else Location(target, "output parquet")
        self.path = self.loc.shown
        self.job_id = job_id
        self.identity = identity  # the run's input (`source_identity`), recorded in each part's manifest
        if self.loc.kind() == "file":
            raise InvalidArgumentError(f"{self.loc.what} {self.loc} is a file; the Parquet output is a directory "
                                       "of part files: give a new path or a folder")
        self.loc.makedirs()
        self.done_keys: set[str] = set()
        self.replaced = 0
        kept = []
        names = self.loc.list_names()
        manifests = {name: _manifest_of(self.loc, name) for name in names if _PART.fullmatch(name)}
        for manifest in manifests.values():  # before anything is deleted
            if manifest is not None and manifest["job_id"] == job_id:
                check_same_source(job_id, manifest.get("source"), identity)
        for name in names:
            if _TEMP.fullmatch(name):
                self.loc.delete(self.loc.join(name))  # a part whose writer died before it was complete
            elif _PART.fullmatch(name):
                manifest = manifests[name]
                if (manifest is None and keep_unmarked) or (manifest is not None and manifest["job_id"] == job_id):
                    kept.append(name)
                    self.done_keys.update(r["key"] for r in (manifest or {"items": []})["items"])
                else:
                    self.loc.delete(self.loc.join(name))
                    self.replaced += 1
        self.resumed = bool(kept)
        self._part = max((int(_PART.fullmatch(f).group(1)) for f in kept), default=-1) + 1
        self._rows: dict[str, list] = {f.name: [] for f in _schema()}
        self._n = 0
        self._items: list[dict[str, Any]] = []
        self._oldest: float | None = None  # monotonic time of the oldest buffered item
        self.rows_written = 0

    def add(self, preds: list[Prediction]) -> None:
        for p in preds:
            self._items.append(_item_record(p, self._add_rows(p)))
            if self._oldest is None:
                self._oldest = time.monotonic()
        if max(self._n, len(self._items)) >= PARQUET_ROWS_PER_PART or (
                self._oldest is not None and time.monotonic() - self._oldest >= PARQUET_FLUSH_S):
            self.flush()

    def _add_rows(self, p: Prediction) -> int:
        target = p.target
        common = {
            "source": _source_text(p), "name": p.name, "dataset": "/".join(p.dataset),
            "project_id": p.project_id, "dataset_id": p.dataset_id, "image_id": p.image_id,
            "video_id": p.video_id, "frame_idx": p.frame_idx,
            "target_project_id": target.project_id if target else None,
            "target_image_id": (target.image_id if target else None),
            "image_height": p.orig_size[0] if p.orig_size else None,
            "image_width": p.orig_size[1] if p.orig_size else None,
        }
        if p.error is not None:
            self._append({**common, "error": p.error})
            return 1
        extra = 0
        if p.top_class is not None:  # a classifier: one row, its top class and probability, no box
            self._append({**common, "class": p.top_class, "class_id": int(np.argmax(p.probs)), "score": p.top_score})
            extra = 1
        for i in range(len(p)):
            x1, y1, x2, y2 = (float(v) for v in p.boxes[i])
            row = {**common, "object_idx": i, "class": p.classes[i], "class_id": int(p.class_ids[i]),
                   "score": float(p.scores[i]), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                   "track_id": int(p.track_ids[i]) if p.track_ids is not None else None}
            if p.masks is not None and p.masks[i].any():
                row["mask_png"], row["mask_x"], row["mask_y"] = _mask_png(p.masks[i])
            if p.keypoints is not None:
                row["keypoints"] = p.keypoints[i].reshape(-1).tolist()
            if p.obb is not None:
                row["obb"] = p.obb[i].tolist()
            self._append(row)
        return len(p) + extra

    def _append(self, row: dict[str, Any]) -> None:
        for k, col in self._rows.items():
            col.append(row.get(k))
        self._n += 1

    def flush(self) -> None:
        """Write the buffered rows and their items' manifest as the next part (module docstring)."""
        if not self._items:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        manifest = json.dumps({"job_id": self.job_id, "source": self.identity, "items": self._items},
                              separators=(",", ":"))
        table = pa.table(self._rows, schema=_schema()).replace_schema_metadata({MANIFEST_KEY: manifest.encode()})
        self.loc.write(self.loc.join(f"part-{self._part:05d}.parquet"), lambda stream: pq.write_table(table, stream))
        self._part += 1
        self.rows_written += self._n
        self._rows = {k: [] for k in self._rows}
        self._n = 0
        self._items = []
        self._oldest = None

    def close(self) -> None:
        self.flush()


def read_parts(loc: Location, with_rows: bool = True) -> Iterator[tuple[dict[str, Any], list[dict]]]:
    """Every item recorded in the parts at `loc`, in part order, with its rows (`[]` without `with_rows`): what
    COCO and YOLO are assembled from. One part is in memory at a time."""
    import pyarrow.parquet as pq

    for name in loc.list_names():
        if not _PART.fullmatch(name):
            continue
        with loc.open_input(loc.join(name)) as f:
            pf = pq.ParquetFile(f)
            raw = (pf.metadata.metadata or {}).get(MANIFEST_KEY)
            if raw is None:
                continue  # written before manifests existed: its items cannot be told apart
            rows = pf.read().to_pylist() if with_rows else []
        at = 0
        for record in json.loads(raw)["items"]:
            yield record, rows[at:at + record["rows"]]
            at += record["rows"]


def mask_from_row(row: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of a Parquet row (its PNG crop placed at its origin); all False when it has none."""
    from PIL import Image

    mask = np.zeros(size, bool)
    if row.get("mask_png"):
        crop = np.asarray(Image.open(io.BytesIO(row["mask_png"])).convert("1"), dtype=bool)
        y, x = row["mask_y"], row["mask_x"]
        mask[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return mask

def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros. Computed from the mask's
    bounding box only (the runs outside it are zeros), so a small object in a large frame costs little."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return {"size": [int(h), int(w)], "counts": [int(h * w)]}
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.zeros((y1 - y0 + 2, x1 - x0), np.int8)
    padded[1:-1] = mask[y0:y1, x0:x1]
    rr, cc = np.nonzero(np.diff(padded, axis=0))  # a run starts at local row rr of crop column cc
    starts = np.sort((x0 + cc).astype(np.int64) * h + y0 + rr)
    counts = np.diff(np.concatenate([[0], starts, [h * w]])).tolist()
    return {"size": [int(h), int(w)], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        if val:
            flat[pos:pos + c] = True
        pos += c
        val = not val
    return flat.reshape((w, h)).T
