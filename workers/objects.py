"""Objects in a store `pyarrow.fs` opens (`s3://`, `gs://`, `hdfs://`, ...): recognising their URIs, the file
system of a URI (one per store, kept for the process), and reading one object's bytes.

Used on both sides: the driver lists and checks (`pipeline/stages/source/objects.py`, the outputs), a loading task
reads the objects of its batch itself (`workers/decode.py`), so pixels never pass through the driver.

Credentials are never part of a URI: pyarrow reads them from the environment of the process that opens the store
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` / `AWS_PROFILE` / `~/.aws`, an instance role;
`GOOGLE_APPLICATION_CREDENTIALS` for GCS; Kerberos for HDFS). A URI with a password in it is refused, so no URI
this project prints, logs or writes to a file (item keys, `Prediction.source`, Parquet rows) can hold a secret.
Store options that are not secrets travel in the URI's query, as pyarrow reads them
(`s3://bucket/prefix/?endpoint_override=127.0.0.1:9000&scheme=http` for MinIO and other S3-compatible servers).
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from workers.formats import URL_PREFIXES

__all__ = ["MAX_OBJECT_BYTES", "ObjectError", "child_uri", "display_uri", "filesystem", "is_object_uri",
           "read_object", "store_error"]

# An object larger than this is refused as an image (no image file is this big).
MAX_OBJECT_BYTES = 512 * 2**20

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCK = threading.Lock()
_FILESYSTEMS: dict[str, Any] = {}  # the URI without its path -> (FileSystem, the path prefix it maps to)


class ObjectError(Exception):
    """An object store could not be opened or an object could not be read; the message says why."""


def is_object_uri(value: object) -> bool:
    """True for a string `scheme://...` other than http(s) and file: an object in a store pyarrow may open."""
    if not isinstance(value, str):
        return False
    m = _SCHEME.match(value)
    return m is not None and not value.startswith(URL_PREFIXES) and m.group(1).lower() != "file"


def display_uri(uri: str) -> str:
    """`uri` without its query (store options such as `endpoint_override`), for messages."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _check_no_secret(uri: str) -> None:
    if urlsplit(uri).password is not None:
        raise ObjectError(
            f"{_without_password(uri)}: a URI with a password is refused, so that no secret reaches a log, a "
            "message or an output file; give the credentials through the environment (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...)"
        )


def _without_password(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path in it) of `uri`. One FileSystem per store (scheme, bucket or host, options) is
    kept for the process: creating one can cost a request (S3 resolves the bucket's region). Raises `ObjectError`
    for a scheme pyarrow does not know or a store it cannot open."""
    import pyarrow.fs as pafs

    _check_no_secret(uri)
    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
    with _LOCK:
        cached = _FILESYSTEMS.get(base)
    if cached is None:
        try:
            fs, root = pafs.FileSystem.from_uri(urlunsplit((parts.scheme, parts.netloc, "/", parts.query, "")))
        except Exception as exc:  # ArrowInvalid (unknown scheme), ArrowNotImplementedError, OSError
            raise ObjectError(f"cannot open the store of {display_uri(uri)}: {_first_line(exc)}") from None
        cached = (fs, root.rstrip("/"))
        with _LOCK:
            _FILESYSTEMS[base] = cached
    fs, root = cached
    # s3 / gs paths start with the bucket (the URI's host); hdfs paths are the URI's path
    return fs, (root + unquote(parts.path)).rstrip("/") or "/"


def child_uri(uri: str, root_path: str, path: str) -> str:
    """The URI of `path` (a path `filesystem(uri)` listed under `root_path`, the path of `uri`), with `uri`'s
    store options: what a loading task opens."""
    parts = urlsplit(uri)
    rel = path[len(root_path.rstrip("/")):]
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + quote(rel, safe="/"), parts.query, ""))


def store_error(exc: BaseException, what: str) -> str:
    """A short, plain message for a store's error about `what`: access refused, no such bucket, ...; never
    the credentials (pyarrow's messages hold none)."""
    text = _first_line(exc)
    upper = text.upper()
    if isinstance(exc, FileNotFoundError):
        return f"{what} does not exist"
    if "ACCESS_DENIED" in upper or "INVALID_ACCESS_KEY" in upper or "SIGNATURE" in upper or "FORBIDDEN" in upper \
            or "403" in text or isinstance(exc, PermissionError):
        return (f"{what}: access refused by the store ({text}); check the credentials in this process's "
                "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, "
                "GOOGLE_APPLICATION_CREDENTIALS) and that they may read it")
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper:
        return f"{what}: the bucket does not exist ({text})"
    return f"{what}: {text}"


def read_object(uri: str, max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
    """The bytes of the object at `uri`, at most `max_bytes`. Raises `ObjectError` (missing, refused,
    too large, the store failing)."""
    try:
        fs, path = filesystem(uri)
        with fs.open_input_file(path) as f:
            size = f.size()
            if size > max_bytes:
                raise ObjectError(f"{display_uri(uri)} is {size:,} bytes, over the limit of {max_bytes:,}")
            return f.read()
    except ObjectError:
        raise
    except FileNotFoundError:
        raise ObjectError(f"object not found (deleted since it was listed?): {display_uri(uri)}") from None
    except Exception as exc:  # OSError from the store, ArrowInvalid, ...
        raise ObjectError(f"cannot read {store_error(exc, display_uri(uri))}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
