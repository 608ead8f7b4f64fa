"""Decoding at the size the model needs (issue 16): reduced JPEG decoding, decoding on the replica's device, and
reduced precision refused on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.exceptions import InvalidArgumentError
from workers.decode import decode_reduced, jpeg_size, load_batch, needed_scale
from workers.messages import DecodeOptions, LoadRequest

DEMO = "checkpoints/shapes.pth"


@pytest.mark.parametrize("hint, hw, expected", [
    (None, (3000, 4000), 1.0),
    (("fit", 800, 1333), (3000, 4000), 800 / 3000),   # the shorter side binds
    (("fit", 800, 1333), (1000, 8000), 1333 / 8000),  # the longer side binds
    (("fit", 256, 256), (3000, 4000), 256 / 4000),    # an int img_size: the longer side
    (("fit", 520, float("inf")), (3000, 4000), 520 / 3000),  # semantic segmentation: the shorter side
    (("cover", 300, 300), (3000, 4000), 300 / 3000),  # a fixed square (SSD)
    (("contain", 640, 640), (3000, 4000), 640 / 4000),  # a letterbox (YOLO)
    (("contain", 480, 640), (1000, 4000), 640 / 4000),
    (("contain", 480, 640), (3000, 1000), 480 / 3000),
])
def test_needed_scale(hint, hw, expected):
    assert needed_scale(hint, *hw) == pytest.approx(expected)


def _jpeg(h: int, w: int, orientation: int | None = None) -> bytes:
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(img).save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_reduced_never_below_what_the_model_keeps():
    data = _jpeg(1200, 1600)
    img, orig = decode_reduced(data, 10**9, ("fit", 256, 256))
    assert orig == (1200, 1600)
    assert img.shape[:2] == (300, 400)  # 1/4: 1/8 would give a longer side of 200 < 256
    full, _ = decode_reduced(data, 10**9, None)
    assert full.shape[:2] == (1200, 1600)
    small, _ = decode_reduced(_jpeg(300, 400), 10**9, ("fit", 256, 256))
    assert small.shape[:2] == (300, 400)  # less than twice the size: decoded whole


def test_the_original_size_follows_exif_orientation():
    data = _jpeg(400, 800, orientation=6)  # stored 800 wide, shown turned: 800 high
    img, orig = decode_reduced(data, 10**9, ("fit", 100, 100))
    assert orig == (800, 400) and img.shape[0] > img.shape[1]
    assert jpeg_size(data, 10**9) == (800, 400)


def test_load_batch_modes(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(1200, 1600))
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png)
    reqs = [LoadRequest(0, path=str(path)), LoadRequest(1, path=str(png))]
    full = load_batch(reqs, DecodeOptions(mode="full", hint=("fit", 256, 256)))
    reduced = load_batch(reqs, DecodeOptions(mode="reduced", hint=("fit", 256, 256)))
    gpu = load_batch(reqs, DecodeOptions(mode="gpu"))
    assert full.images[0].shape[:2] == (1200, 1600) and reduced.images[0].shape[:2] == (300, 400)
    assert full.orig_sizes == reduced.orig_sizes == gpu.orig_sizes == [(1200, 1600), (20, 30)]
    assert gpu.images[0] is None and gpu.encoded[0] == path.read_bytes()  # only read: the replica decodes it
    assert gpu.images[1].shape == (20, 30, 3) and gpu.encoded[1] is None  # not a JPEG: decoded here


def _upscaled_shapes(tmp_path, n: int = 3, factor: int = 8):
    from pipeline.app.shapes import get_sample

    paths, boxes = [], []
    for i in range(n):
        s = get_sample(7, i)
        big = Image.fromarray(s.image).resize((256 * factor, 256 * factor), Image.BILINEAR)
        p = tmp_path / f"big_{i}.jpg"
        big.save(p, quality=90)
        paths.append(p)
        boxes.append(s.boxes * factor)
    return paths, boxes


@pytest.fixture(scope="module")
def demo_model(ray_session, tmp_path_factory):
    import pipeline

    model = pipeline.Api(data_dir=tmp_path_factory.mktemp("demo-home")).nn.deploy(DEMO, device="cpu")
    yield model
    model.shutdown()


def test_reduced_decode_finds_the_same_objects_as_full_decode(demo_model, tmp_path):
    """A 2048 x 2048 photo for a model that sees 256 px: decoded at 1/8 it gives the same objects, boxes within a
    few original pixels (1/8 of the photo's pixels decoded)."""
    paths, _ = _upscaled_shapes(tmp_path)
    full = demo_model.predict(input=paths, settings={"decode": "full", "conf": 0.3}, progress=False)
    reduced = demo_model.predict(input=paths, settings={"decode": "reduced", "conf": 0.3}, progress=False)
    for f, r in zip(full, reduced):
        assert f.error is None and r.error is None and f.orig_size == r.orig_size == (2048, 2048)
        assert (f.scores >= 0.7).sum() > 0
        _all_found(f, r)  # every confident object of one decode is in the other: same class, box within 2%
        _all_found(r, f)
        if f.masks is not None:
            assert r.masks.shape[1:] == (2048, 2048)


def _all_found(a, b, confident: float = 0.7) -> None:
    for box, cls, score in zip(a.boxes, a.classes, a.scores):
        if score >= confident:
            same = [x for x, c in zip(b.boxes, b.classes) if c == cls]
            assert same and min(np.abs(np.asarray(same) - box).max(axis=1)) < 0.02 * 2048


def test_a_corrupt_jpeg_decoded_on_the_replica_fails_alone(demo_model, tmp_path):
    """decode="gpu" on the CPU code path: the replica decodes the batch's JPEGs with torchvision's decoder; a
    corrupt one fails alone, the others are predicted as with a CPU decode."""
    paths, _ = _upscaled_shapes(tmp_path, n=2, factor=1)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(paths[0].read_bytes()[:600] + b"\x00" * 4000)  # a JPEG header, then garbage
    inputs = [paths[0], bad, paths[1]]
    on_replica = demo_model.predict(input=inputs, batch_size=3, settings={"decode": "gpu", "conf": 0.5},
                                    progress=False)
    on_cpu = demo_model.predict(input=[paths[0], paths[1]], settings={"decode": "full", "conf": 0.5}, progress=False)
    assert on_replica[1].error and "corrupt" in on_replica[1].error
    for a, b in zip([on_replica[0], on_replica[2]], on_cpu):
        assert a.error is None and len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1.0)


def test_reduced_precision_is_refused_on_the_cpu(ray_session, api):
    with pytest.raises(InvalidArgumentError, match="precision='fp16' needs a GPU"):
        api.nn.deploy(DEMO, device="cpu", precision="fp16")
    with pytest.raises(InvalidArgumentError, match="precision must be one of"):
        api.nn.deploy(DEMO, device="cpu", precision="int8")


def test_unknown_decode_mode_is_refused(demo_model):
    with pytest.raises(InvalidArgumentError, match=r"settings\['decode'\] must be one of"):
        demo_model.predict(input=np.zeros((8, 8, 3), np.uint8), settings={"decode": "fast"})


@pytest.mark.parametrize("decode, gpu_ok, cpus_per_gpu, expected", [
    ("auto", False, None, "full"),          # CPU replicas: every pixel, as the framework's predictor decodes
    ("auto", True, 4.0, "gpu"),             # a GPU with few CPUs to feed it: nvJPEG on the replica
    ("auto", True, 16.0, "full"),           # enough CPUs: the CPUs decode
    ("auto", False, 2.0, "full"),           # an adapter that takes no device tensors
    ("reduced", False, None, "reduced"),    # asked for
    ("gpu", False, None, "gpu"),
    ("full", True, 1.0, "full"),
])
def test_decode_options_choose_the_mode(decode, gpu_ok, cpus_per_gpu, expected):
    from pipeline.stages.loading import decode_options

    opts = decode_options({"decode": decode}, None, ("fit", 256, 256), gpu_ok, cpus_per_gpu)
    assert opts.mode == expected and opts.hint == ("fit", 256, 256)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_decodes_to_pillow_s_pixels_upright(orientation, mode):
    """JPEGs are decoded by simplejpeg (libjpeg-turbo into numpy) when whole: bit for bit what Pillow decodes, turned
    upright by the EXIF orientation as `ImageOps.exif_transpose` turns it."""
    from PIL import ImageOps

    from workers.decode import decode_image_bytes

    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((90, 60), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=90, exif=exif)
    data = buf.getvalue()
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = decode_image_bytes(data)
    assert got.shape == want.shape == ((90, 60, 3) if orientation >= 5 else (60, 90, 3))
    np.testing.assert_array_equal(got, want)


def test_a_truncated_jpeg_is_an_item_error():
    from workers.decode import ItemError, decode_image_bytes

    data = _jpeg(120, 160)
    for cut in (data[: len(data) // 2], data[:-2]):
        with pytest.raises(ItemError, match="corrupt or truncated"):
            decode_image_bytes(cut)
