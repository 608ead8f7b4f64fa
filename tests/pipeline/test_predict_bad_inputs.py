"""A bad item becomes that item's error and the run goes on; a bad whole input fails before any work."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from helpers import write_images
from PIL import Image

from pipeline.exceptions import InvalidArgumentError


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.fixture
def bad_dir(tmp_path):
    root = tmp_path / "mixed"
    good = write_images(root, 3, size=(64, 80))
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a JPEG")
    full = (root / "img_0000.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    _png_claiming(root / "bomb.png", 30_000, 30_000)
    os.symlink(root / "gone.jpg", root / "dangling.jpg")  # a file that cannot be read
    return root, good


EXPECTED = {
    "zero.jpg": "empty",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated",
    "bomb.png": "decompression bomb",
    "dangling.jpg": "file not found",
}


def test_bad_files_in_a_directory_are_item_errors(tiny_model, bad_dir):
    root, good = bad_dir
    session = tiny_model.predict_detached(input=root, conf=0.0)
    preds = sorted(session, key=lambda p: p.index)
    by_name = {p.name: p for p in preds}
    assert set(by_name) == {g.name for g in good} | set(EXPECTED)
    for name, words in EXPECTED.items():
        p = by_name[name]
        assert p.error is not None and words in p.error, (name, p.error)
        assert len(p) == 0 and p.orig_size is None
    for g in good:
        assert by_name[g.name].error is None and len(by_name[g.name]) > 0
    status = session.status()
    assert status["failed"] == len(EXPECTED) and status["done"] == len(preds) == status["total"]


def test_urls_that_fail_are_item_errors(tiny_model, tmp_path, http_server):
    [img] = write_images(tmp_path / "www", 1)
    ok = http_server.url(img.name, root=tmp_path / "www")
    slow = http_server.url(img.name, root=tmp_path / "www", prefix="/slow/")
    preds = tiny_model.predict(input=[http_server.missing(), ok, slow], settings={"conf": 0.0, "url_timeout": 1},
                               progress=False)
    assert "HTTP 404" in preds[0].error
    assert preds[1].error is None
    assert "did not answer within 1s" in preds[2].error


def test_missing_files_in_a_list_are_item_errors(tiny_model, tmp_path):
    [img] = write_images(tmp_path, 1)
    preds = tiny_model.predict(input=[str(tmp_path / "nope.jpg"), img, str(tmp_path)], progress=False)
    assert "file not found" in preds[0].error
    assert preds[1].error is None
    assert "is a directory" in preds[2].error


def test_a_missing_path_as_the_whole_input_fails_at_once(tiny_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match="input path does not exist"):
        tiny_model.predict(input=tmp_path / "nothing-here")


def test_a_bomb_can_be_allowed_explicitly(tiny_model, tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    [refused] = tiny_model.predict(input=path, settings={"max_pixels": 50_000}, progress=False)
    assert "over the limit of 50,000" in refused.error
    [allowed] = tiny_model.predict(input=path, settings={"max_pixels": 60_000}, progress=False)
    assert allowed.error is None and allowed.orig_size == (200, 300)


def test_max_pixels_above_pillows_own_limit_is_honoured(monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS before we look; a higher max_pixels lifts that too
    (and Pillow's own limit is back afterwards)."""
    from workers.decode import ItemError, decode_image_bytes

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # a stand-in for Pillow's 89 M pixels
    import io

    buf = io.BytesIO()
    Image.new("RGB", (100, 50)).save(buf, format="PNG")  # 5,000 pixels: over twice Pillow's limit
    assert decode_image_bytes(buf.getvalue(), max_pixels=10_000).shape == (50, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(ItemError, match="over the limit of 4,000"):
        decode_image_bytes(buf.getvalue(), max_pixels=4_000)


def test_a_url_body_over_the_size_limit_is_refused(tmp_path, http_server):
    from workers.decode import ItemError, fetch_url

    [img] = write_images(tmp_path / "www", 1)
    url = http_server.url(img.name, root=tmp_path / "www")
    assert fetch_url(url, timeout=5) == img.read_bytes()
    with pytest.raises(ItemError, match="over the limit of 100"):
        fetch_url(url, timeout=5, max_bytes=100)


def test_an_array_of_16_bit_pixels_is_refused_not_clipped_to_white():
    """A uint16 frame (thermal, scientific cameras) used to become a white image with no objects and no error."""
    import numpy as np

    from pipeline.stages.source.files import loose_plan
    from workers.decode import to_rgb_array

    frame = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)
    with pytest.raises(InvalidArgumentError, match=r"input item 1: an integer image array must hold pixel values "
                                                   r"0\.\.255; this uint16 one holds 0\.\.61420.*a // 257"):
        loose_plan([np.zeros((8, 8, 3), np.uint8), frame], "a list of 2 inputs")
    # integers within 0..255 are fine, whatever their type; floats in [0, 1] are scaled
    np.testing.assert_array_equal(to_rgb_array(np.full((2, 2), 200, np.int64))[0, 0], [200, 200, 200])
    np.testing.assert_array_equal(to_rgb_array(np.full((2, 2, 3), 0.5))[0, 0], [128, 128, 128])
