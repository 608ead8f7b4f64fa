"""Decoding, run inside the loading tasks: image files, URLs and arrays -> HWC RGB uint8 arrays.

Every failure becomes a message (`ItemError`) for that item only; the batch and the run go on.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.messages import DecodeOptions, LoadedBatch, LoadRequest

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_URL_TIMEOUT_S", "ItemError", "decode_image", "decode_image_bytes",
           "decode_reduced", "fetch_bytes", "fetch_url", "is_jpeg", "jpeg_size", "load_batch", "load_one", "needed_scale",
           "read_file", "read_image_file", "resize_to", "to_rgb_array"]

# Decompression-bomb guard: an image that claims more pixels than this is refused before it is decoded.
# 178,956,970 is Pillow's own warning threshold (about 13,000 x 13,000); raise it with settings["max_pixels"].
DEFAULT_MAX_PIXELS = 178_956_970
# Seconds to wait for a URL to answer (connect and each read); a slow server fails that item, not the run.
DEFAULT_URL_TIMEOUT_S = 20.0

class ItemError(Exception):
    """One item could not be loaded; the message says why."""


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image or an ndarray (HW gray, HWC RGB or RGBA) -> HWC RGB uint8. uint8 as is; floats in [0, 1] are
    scaled by 255 (other floats are read as 0..255 and clipped); other integer types must hold 0..255 (a 16-bit
    image is refused rather than clipped to white: `ValueError` saying how to scale it)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = (np.clip(arr, 0.0, 1.0) * 255.0).round()
        elif np.issubdtype(arr.dtype, np.integer) and arr.size and (int(arr.max()) > 255 or int(arr.min()) < 0):
            raise ValueError(
                f"an integer image array must hold pixel values 0..255; this {arr.dtype} one holds "
                f"{int(arr.min())}..{int(arr.max())}. Scale it to uint8 first (16-bit pixels: "
                "(a // 257).astype(np.uint8)) or give floats in [0, 1]"
            )
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
    pixels, fmt, _ = _decode(stream, max_pixels, verify)
    return pixels, fmt


def _decode(stream: Any, max_pixels: int, verify: bool = False,
            before_load: Callable[[Any], Any] | None = None) -> tuple[np.ndarray, str, Any]:
    """`decode_image`, with `before_load(opened image)` called before the pixels are decoded (to set a reduced
    decode); returns what it returned too."""
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
            extra = before_load(img) if before_load is not None else None
            if not verify and fmt == "JPEG" and img.mode in ("RGB", "L") and img.size == (w, h):
                pixels = _jpeg_pixels(stream)  # not reduced by before_load: libjpeg-turbo straight into numpy
                if pixels is not None:
                    return _oriented(pixels, img.getexif().get(0x0112, 1)), fmt, extra
            img.load()
            # in place: no copy of the pixels unless the EXIF orientation turns them (a 12 MP photo's copy costs
            # about half its decoding); converted only when not RGB already (the same)
            ImageOps.exif_transpose(img, in_place=True)
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB")), fmt, extra
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


def _jpeg_pixels(stream: Any) -> np.ndarray | None:
    """A whole JPEG held in memory (`io.BytesIO`) decoded by simplejpeg (libjpeg-turbo into a numpy array: the
    same pixels as Pillow, bit for bit, in a third of the time Pillow's decode and its copy into numpy take on a
    12 MP photo); None when it is not in memory or simplejpeg is missing (then Pillow decodes). A corrupt or
    truncated file raises ValueError, as Pillow's OSError, so it fails alike."""
    if not isinstance(stream, io.BytesIO):
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg.decode_jpeg(stream.getbuffer(), colorspace="RGB")


# EXIF orientation -> the Pillow transpose that shows the image upright (as `ImageOps.exif_transpose`)
_ORIENT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
           7: "TRANSVERSE", 8: "ROTATE_90"}


def _oriented(pixels: np.ndarray, orientation: Any) -> np.ndarray:
    method = _ORIENT.get(orientation)
    if method is None:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).transpose(getattr(Image.Transpose, method)))


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> HWC RGB uint8, EXIF orientation applied. Raises `ItemError`."""
    if not data:
        raise ItemError("the file is empty (0 bytes)")
    return decode_image(io.BytesIO(data), max_pixels)[0]


def read_file(path: str) -> bytes:
    """The bytes of a local file. Raises `ItemError`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ItemError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ItemError(f"is a directory, not an image: {path}") from None
    except OSError as exc:
        raise ItemError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return decode_image_bytes(read_file(path), max_pixels)


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


def _raw(req: LoadRequest, options: DecodeOptions) -> bytes:
    """The encoded bytes of a file or URL item."""
    if req.url is not None:  # an http(s) URL or an object-store URI
        return fetch_bytes(req.url, options.url_timeout)
    return read_file(req.path)


def load_one(req: LoadRequest, options: DecodeOptions) -> tuple[np.ndarray | bytes, tuple[int, int]]:
    """One item: (its pixels, HWC RGB uint8, or its JPEG bytes in "gpu" mode; its original (h, w)). Raises
    `ItemError`."""
    if req.error is not None:
        raise ItemError(req.error)
    if req.array is not None:
        img = to_rgb_array(req.array)
        return resize_to(img, options.resize), (int(img.shape[0]), int(img.shape[1]))
    if req.url is None and req.path is None:
        raise ItemError("nothing to load")
    data = _raw(req, options)
    if not data:
        raise ItemError("the file is empty (0 bytes)")
    if options.mode == "gpu" and is_jpeg(data):
        return data, jpeg_size(data, options.max_pixels)
    hint = options.hint if options.mode == "reduced" else None
    if options.resize is not None and options.mode == "reduced":
        hint = ("cover", *options.resize)
    img, orig = decode_reduced(data, options.max_pixels, hint)
    return resize_to(img, options.resize), orig


def load_batch(requests_: list[LoadRequest], options: DecodeOptions) -> LoadedBatch:
    """Decode a batch of items (one Ray task). A failed item gets its error and `None` image."""
    t0 = time.perf_counter()
    images, sizes, errors, encoded = [], [], [], []
    for req in requests_:
        image = size = error = blob = None
        try:
            pixels, size = load_one(req, options)
            if isinstance(pixels, bytes):
                blob = pixels
            else:
                image = pixels
        except ItemError as exc:
            error = str(exc)
        except Exception as exc:  # anything unexpected still only fails this item
            error = f"cannot load: {type(exc).__name__}: {exc}"
        images.append(image)
        sizes.append(size)
        errors.append(error)
        encoded.append(blob)
    return LoadedBatch(
        indices=[r.index for r in requests_],
        images=images,
        orig_sizes=sizes,
        errors=errors,
        decode_seconds=time.perf_counter() - t0,
        encoded=encoded if any(b is not None for b in encoded) else None,
    )


# --- decoding at the size the model needs --------------------------------------------------------------------

_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees: width and height trade places


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def needed_scale(hint: tuple | None, h: int, w: int) -> float:
    """The smallest scale of an (h, w) image that keeps every pixel the model's own resize keeps (1.0 when the
    hint is unknown)."""
    if hint is None:
        return 1.0
    if hint[0] == "fit":
        _, min_side, max_side = hint
        return min(float(min_side) / min(h, w), float(max_side) / max(h, w))
    if hint[0] == "cover":
        _, th, tw = hint
        return max(th / h, tw / w)
    if hint[0] == "contain":
        _, th, tw = hint
        return min(th / h, tw / w)
    raise ValueError(f"unknown decode hint {hint!r}")


def decode_reduced(data: bytes, max_pixels: int, hint: tuple | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(HWC RGB uint8, the original (h, w) after EXIF orientation) of encoded image bytes. A JPEG at least twice
    the size the model keeps (`hint`) is decoded reduced by the JPEG decoder's DCT scaling (1/2, 1/4 or 1/8,
    never smaller than needed): a fraction of the work. Raises `ItemError`."""

    if hint is None or not is_jpeg(data):
        img = decode_image(io.BytesIO(data), max_pixels)[0]
        return img, (int(img.shape[0]), int(img.shape[1]))

    def reduce(im: Any) -> tuple[int, int]:
        w, h = im.size
        swapped = im.getexif().get(0x0112, 1) in _SWAPS_SIDES
        oh, ow = (w, h) if swapped else (h, w)
        scale = needed_scale(hint, oh, ow)
        if scale <= 0.5:  # the decoder picks the largest reduction that still gives at least this size
            im.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        return oh, ow

    img, _, orig = _decode(io.BytesIO(data), max_pixels, before_load=reduce)
    return img, orig


def jpeg_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The (h, w) of a JPEG after EXIF orientation, from its header (nothing decoded); the pixel limit applies."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ItemError(f"the image claims {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                "(a decompression bomb?); raise settings['max_pixels'] if it is genuine")
            return (w, h) if img.getexif().get(0x0112, 1) in _SWAPS_SIDES else (h, w)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ItemError(f"the image is corrupt or truncated: {exc}") from None
