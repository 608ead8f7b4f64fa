"""Where an output goes: a local path or an object-store URI (`s3://`, `gs://`, `hdfs://`: any `pyarrow.fs` URI),
behind one small interface, with the writes made atomic the way each store allows.

A file appears complete or not at all: on a local disk (and HDFS) it is written under a hidden temporary name in
its folder and renamed into place; on S3 and GCS an object becomes visible only when its upload completes (a
single PUT, or the completion of a multipart upload when the stream is closed), so it is written in place: a
process killed mid-write leaves no object (an unfinished multipart upload, which the bucket's lifecycle rules
clean up), and a rename there would be a copy.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Any

from pipeline.exceptions import InvalidArgumentError
from workers.objects import ObjectError, display_uri, filesystem, is_object_uri, store_error

__all__ = ["Location"]

_DIRECT_WRITE = ("s3", "gcs")  # stores whose objects appear only once complete


class Location:
    """A local path or an object-store URI `target`, for the output named `what` ("output parquet")."""

    def __init__(self, target: str | os.PathLike, what: str):
        import pyarrow.fs as pafs

        text = os.fspath(target)
        self.what = what
        self.is_uri = is_object_uri(text)
        if self.is_uri:
            try:
                self.fs, self.path = filesystem(text)
            except ObjectError as exc:
                raise InvalidArgumentError(f"{what}: {exc}") from None
            self.shown = display_uri(text)
            scheme, netloc = text.split("://", 1)[0], text.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
            self._prefix = f"{scheme}://" + ("" if self.fs.type_name in _DIRECT_WRITE else netloc)
        else:
            local = text[len("file://"):] if text.startswith("file://") else text
            self.fs = pafs.LocalFileSystem()
            self.path = os.path.abspath(os.path.expanduser(local))
            self.shown = self.path
        self.direct = self.fs.type_name in _DIRECT_WRITE

    def at(self, path: str, what: str | None = None) -> Location:
        """The location `path` (a path of this one's file system, e.g. `self.join(...)`) in the same store."""
        loc = object.__new__(Location)
        loc.__dict__.update(self.__dict__)
        loc.path = path
        loc.what = what or self.what
        loc.shown = self._prefix + path if self.is_uri else path
        return loc

    def __str__(self) -> str:
        return self.shown

    def join(self, *names: str) -> str:
        return "/".join([self.path.rstrip("/"), *names]) if self.is_uri else os.path.join(self.path, *names)

    def sibling(self, name: str) -> str:
        """A path next to this location (in the same folder), e.g. its hidden working folder."""
        return f"{self.parent}/{name}" if self.is_uri else os.path.join(self.parent, name)

    @property
    def parent(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[0] if self.is_uri else os.path.dirname(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def kind(self, path: str | None = None) -> str:
        """"missing", "file" or "dir" (an S3 prefix with objects under it is a dir). Errors are argument errors:
        this is asked before any work."""
        try:
            info = self.fs.get_file_info(self.path if path is None else path)
        except Exception as exc:
            raise InvalidArgumentError(f"{self.what}: {store_error(exc, self.shown)}") from None
        return {"NotFound": "missing", "File": "file", "Directory": "dir"}.get(info.type.name, "file")

    def check_writable(self) -> None:
        """Before any work: a bucket that exists and that these credentials may see, or a local folder that can
        be created and written."""
        if self.is_uri:
            if self.direct:
                bucket = self.path.split("/", 1)[0]
                if self.kind(bucket) == "missing":
                    raise InvalidArgumentError(f"{self.what} {self.shown}: the bucket {bucket!r} does not exist (or "
                                               "these credentials may not see it)")
            return
        # the folder itself when it exists (a Parquet or YOLO folder written before), else its nearest existing
        # parent, where it would be created
        parent = self.path if os.path.isdir(self.path) else os.path.dirname(self.path)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise InvalidArgumentError(f"{self.what} {self.path}: cannot write there ({parent} is not a writable "
                                       "folder)")
        try:  # access() says yes to root everywhere, and /proc, read-only mounts, full disks say no only when tried
            import tempfile

            os.rmdir(tempfile.mkdtemp(prefix=".cv-pipeline-probe-", dir=parent))
        except OSError as exc:
            raise InvalidArgumentError(f"{self.what} {self.path}: cannot write there (creating a folder in {parent} "
                                       f"failed: {exc.strerror or exc})") from None

    def makedirs(self, path: str | None = None) -> None:
        """Create the folder `path` (this location by default) with its parents. Nothing on S3 and GCS, where a
        folder is only a prefix of the objects under it (an empty marker object would be clutter)."""
        if not self.direct:
            self.fs.create_dir(self.path if path is None else path, recursive=True)

    def list_names(self, path: str | None = None) -> list[str]:
        """The names directly under `path` (this location by default), sorted; [] when it does not exist."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path if path is None else path, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector))

    def write(self, path: str, fill: Callable[[Any], None]) -> None:
        """Write the file `path` atomically: `fill(stream)` writes its bytes (see the module docstring)."""
        if self.direct:
            with self.fs.open_output_stream(path) as stream:
                fill(stream)
            return
        folder, name = path.rsplit("/", 1) if self.is_uri else os.path.split(path)
        tmp = f"{folder}/.{name}.{secrets.token_hex(4)}.tmp" if self.is_uri else \
            os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as stream:
                fill(stream)
            self.fs.move(tmp, path)  # a part is either complete or absent
        except BaseException:
            self._delete_quietly(tmp)
            raise
        if not self.is_uri:
            os.chmod(path, 0o644)  # others on a shared volume read results too

    def write_bytes(self, path: str, data: bytes) -> None:
        self.write(path, lambda stream: stream.write(data))

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def open_input(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except Exception:  # a temporary file that was never created
            pass
