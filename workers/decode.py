"""Decoding, run inside the loading tasks: image files, URLs and arrays -> HWC RGB uint8 arrays.

Every failure becomes a message (`ItemError`) for that item only; the batch and the run go on.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from workers.messages import LoadedBatch, LoadRequest

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_URL_TIMEOUT_S", "ItemError", "decode_image", "decode_image_bytes", "fetch_bytes", "fetch_url", "load_batch", "load_one", "read_image_file", "resize_to", "to_rgb_array"]

# Decompression-bomb guard: an image that claims more pixels than this is refused before it is decoded.
# 178,956,970 is Pillow's own warning threshold (about 13,000 x 13,000); raise it with settings["max_pixels"].
DEFAULT_MAX_PIXELS = 178_956_970
# Seconds to wait for a URL to answer (connect and each read); a slow server fails that item, not the run.
DEFAULT_URL_TIMEOUT_S = 20.0

class ItemError(Exception):
    """One item could not be loaded; the message says why."""


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image or an ndarray (HW gray, HWC RGB or RGBA, uint8 or float in [0, 1]) -> HWC RGB uint8."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = (np.clip(arr, 0.0, 1.0) * 255.0).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3])
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}")


def decode_image(stream: Any, max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = False) -> tuple[np.ndarray, str]:
    """An encoded image (a binary stream or a path) -> (HWC RGB uint8 with EXIF orientation applied, Pillow's
    format name). The one decoding policy of the project, for loading tasks and the platform alike: an image that
    claims more than `max_pixels` is refused before it is decoded, and the whole image is decoded, so a truncated
    file fails here. `verify` also checks the file's own checksums first (PNG chunks), as an upload does. Raises
    `ItemError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and max_pixels > pillow_limit:
        # Pillow refuses images over twice its own limit before we can look: a higher max_pixels raises it too
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        if verify:
            with Image.open(stream) as img:
                img.verify()
            if hasattr(stream, "seek"):
                stream.seek(0)
        with Image.open(stream) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ItemError(
                    f"the image claims {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                    "(a decompression bomb?); raise settings['max_pixels'] if it is genuine"
                )
            fmt = img.format or ""
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB")), fmt
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise ItemError("not an image: the file's content is not an image format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ItemError(f"refused as a decompression bomb: {exc}") from None
    except FileNotFoundError:
        raise ItemError(f"file not found: {stream}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ItemError(f"the image is corrupt or truncated: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> HWC RGB uint8, EXIF orientation applied. Raises `ItemError`."""
    if not data:
        raise ItemError("the file is empty (0 bytes)")
    return decode_image(io.BytesIO(data), max_pixels)[0]


def read_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ItemError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ItemError(f"is a directory, not an image: {path}") from None
    except OSError as exc:
        raise ItemError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image_bytes(data, max_pixels)


# An image download larger than this is refused (no image file is this big; a stream that never ends is no image).
MAX_URL_BYTES = 512 * 2**20
# The whole download may take this many times `url_timeout` (which bounds connecting and each read): a server that
# trickles bytes cannot hold a loading task forever.
URL_TOTAL_TIMEOUT_FACTOR = 6


def fetch_url(url: str, timeout: float = DEFAULT_URL_TIMEOUT_S, max_bytes: int | None = None) -> bytes:
    """The body of `url`: `timeout` s to connect and for each read, `URL_TOTAL_TIMEOUT_FACTOR` x `timeout` in all,
    at most `max_bytes` (`MAX_URL_BYTES`). Raises `ItemError`."""
    import requests

    max_bytes = MAX_URL_BYTES if max_bytes is None else max_bytes
    deadline = time.monotonic() + URL_TOTAL_TIMEOUT_FACTOR * timeout
    try:
        with requests.get(url, timeout=(timeout, timeout), stream=True) as resp:
            if resp.status_code != 200:
                raise ItemError(f"HTTP {resp.status_code} {resp.reason or ''} for {url}".replace("  ", " "))
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ItemError(f"the URL's body is {int(declared):,} bytes, over the limit of {max_bytes:,}: {url}")
            chunks, size = [], 0
            for chunk in resp.iter_content(chunk_size=1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise ItemError(f"the URL's body is over the limit of {max_bytes:,} bytes: {url}")
                if time.monotonic() > deadline:
                    raise ItemError(f"the download took over {URL_TOTAL_TIMEOUT_FACTOR * timeout:g}s: {url}")
            return b"".join(chunks)
    except ItemError:
        raise
    except requests.Timeout:
        raise ItemError(f"the URL did not answer within {timeout:g}s: {url}") from None
    except requests.RequestException as exc:
        raise ItemError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None


def fetch_bytes(url: str, timeout: float = DEFAULT_URL_TIMEOUT_S) -> bytes:
    """The body of an http(s) URL (`fetch_url`) or an object-store URI (`workers.objects.read_object`: the store's
    credentials come from this process's environment). Raises `ItemError`."""
    from workers.objects import ObjectError, is_object_uri, read_object

    if is_object_uri(url):
        try:
            return read_object(url)
        except ObjectError as exc:
            raise ItemError(str(exc)) from None
    return fetch_url(url, timeout)


def resize_to(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize HWC uint8 to `size = (h, w)` (bilinear); unchanged when it already has that size."""
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def load_one(req: LoadRequest, max_pixels: int, url_timeout: float) -> np.ndarray:
    if req.error is not None:
        raise ItemError(req.error)
    if req.array is not None:
        return to_rgb_array(req.array)
    if req.url is not None:
        return decode_image_bytes(fetch_bytes(req.url, url_timeout), max_pixels)
    if req.path is not None:
        return read_image_file(req.path, max_pixels)
    raise ItemError("nothing to load")


def load_batch(
    requests_: list[LoadRequest],
    img_size: tuple[int, int] | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    url_timeout: float = DEFAULT_URL_TIMEOUT_S,
) -> LoadedBatch:
    """Decode a batch of items (one Ray task). A failed item gets its error and `None` image."""
    t0 = time.perf_counter()
    images, sizes, errors = [], [], []
    for req in requests_:
        try:
            img = load_one(req, max_pixels, url_timeout)
            sizes.append((int(img.shape[0]), int(img.shape[1])))
            images.append(resize_to(img, img_size))
            errors.append(None)
        except ItemError as exc:
            images.append(None)
            sizes.append(None)
            errors.append(str(exc))
        except Exception as exc:  # anything unexpected still only fails this item
            images.append(None)
            sizes.append(None)
            errors.append(f"cannot load: {type(exc).__name__}: {exc}")
    return LoadedBatch(
        indices=[r.index for r in requests_],
        images=images,
        orig_sizes=sizes,
        errors=errors,
        decode_seconds=time.perf_counter() - t0,
    )
