"""Freeing the disk space of files no record uses: `pipeline platform gc`, `Platform.collect_garbage()`.

Deleting an image, a video or a project removes its records but not its stored file (the blob is content
addressed and may be shared by other records, in this or another project), and the viewer's thumbnails are made
once and kept. Over a long life the blob and thumbnail folders hold files nothing refers to; this removes them:

* a blob `<blobs>/<hash[:2]>/<hash>.<ext>` that no image or video record names (its hash and extension);
* a thumbnail `<thumbs>/<hash[:2]>/<hash>...jpg` whose hash no record names;
* the leftovers of interrupted writes: `.incoming-*` (a staged upload), `.thumb-*` (a thumbnail being made) and
  `.gc-*` (a collection's own, stopped between its rename and its delete).

Only files older than `min_age_s` (one hour by default) go: an upload stores its blob before it commits the
record that names it, so a younger unnamed blob may be about to be named. And a blob is never deleted from under
an upload that is about to name it: the candidate is first renamed away (an upload of the same content then
writes the file anew) and deleted only if its age still allows, which an upload that found the file refreshes
first (`Store.commit_blob`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.exceptions import InvalidArgumentError

__all__ = ["GcReport", "collect_garbage"]


@dataclass
class GcReport:
    """What `collect_garbage` removed (or would remove, `dry_run`): files and bytes of each kind."""

    blobs: int = 0
    blob_bytes: int = 0
    thumbnails: int = 0
    thumbnail_bytes: int = 0
    leftovers: int = 0
    leftover_bytes: int = 0
    dry_run: bool = False

    def add(self, kind: str, size: int) -> None:
        """Count one file of `kind` ("blob", "thumbnail" or "leftover") and its size."""
        setattr(self, kind + "s", getattr(self, kind + "s") + 1)
        setattr(self, kind + "_bytes", getattr(self, kind + "_bytes") + size)

    @property
    def bytes(self) -> int:
        return self.blob_bytes + self.thumbnail_bytes + self.leftover_bytes

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        mb = 1024 * 1024
        return (f"{verb} {self.blobs} stored files ({self.blob_bytes / mb:.1f} MiB) no image or video uses, "
                f"{self.thumbnails} thumbnails ({self.thumbnail_bytes / mb:.1f} MiB) and {self.leftovers} leftovers "
                f"of interrupted writes ({self.leftover_bytes / mb:.1f} MiB)")


def collect_garbage(store: Any, min_age_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Remove the blobs and thumbnails no record uses and the leftovers of interrupted writes, each older than
    `min_age_s` seconds (module doc); `dry_run`: only count them."""
    if not (isinstance(min_age_s, int | float) and 0 <= min_age_s < float("inf")):  # NaN too
        raise InvalidArgumentError(f"min_age_s must be a number of seconds >= 0; got {min_age_s!r}")
    cutoff = time.time() - min_age_s
    with store.read() as conn:
        named = {(str(h), str(e)) for h, e in conn.execute("SELECT hash, ext FROM images UNION "
                                                           "SELECT hash, ext FROM videos")}
    report = GcReport(dry_run=dry_run)
    for kind, path in _unused(store, named):
        size = _remove(path, cutoff, dry_run, guarded=kind == "blob")
        if size is not None:
            report.add(kind, size)
    return report


def _unused(store: Any, named: set[tuple[str, str]]) -> Iterator[tuple[str, Path]]:
    """("blob" | "thumbnail" | "leftover", path) of each file no record uses (module doc), whatever its age."""
    hashes = {h for h, _ in named}
    for path in _files(store.blobs_dir):
        name = path.name
        if path.parent == store.blobs_dir:  # only staged uploads live at the top
            if name.startswith(".incoming-"):
                yield "leftover", path
        elif name.startswith(".gc-"):  # a collection that stopped between its rename and its delete
            yield "leftover", path
        elif (name.partition(".")[0], name.partition(".")[2]) not in named:
            yield "blob", path
    for path in _files(store.data_dir / "thumbs"):
        if path.name.startswith(".thumb-"):
            yield "leftover", path
        elif path.name.split("-", 1)[0] not in hashes:
            yield "thumbnail", path


def _files(root: Path) -> list[Path]:
    """The files of `root` and of its sub-folders one level down (the hash[:2] folders)."""
    if not root.is_dir():
        return []
    out = []
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False):
            out.append(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            out += [Path(e.path) for e in os.scandir(entry.path) if e.is_file(follow_symlinks=False)]
    return out


def _remove(path: Path, cutoff: float, dry_run: bool, guarded: bool = False) -> int | None:
    """Delete `path` if it was last modified before `cutoff`; its size, or None when it stays. `guarded`: renamed
    away first and deleted only if still old enough (an upload of the same content may refresh it meanwhile: the
    rename makes that upload write the file anew, and a refresh that came first is seen and the file restored)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mtime >= cutoff:
        return None
    if dry_run:
        return st.st_size
    if not guarded:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return st.st_size
        return None
    doomed = path.with_name(f".gc-{os.getpid()}-{path.name}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return None
    if doomed.stat().st_mtime >= cutoff:  # refreshed by an upload before the rename: it is about to be named
        if path.exists():  # the upload wrote it anew meanwhile (same content)
            doomed.unlink()
        else:
            os.replace(doomed, path)
        return None
    doomed.unlink()
    return st.st_size
