"""Helpers shared by the tests (import as `from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, size=(96, 128), seed: int = 0, fmt: str = "jpg") -> list[Path]:
    """`n` random RGB images of `size` (h, w) written to `folder`; returns their paths (sorted)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        p = folder / f"img_{i:04d}.{fmt}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths



class DirectModel:
    """The checkpoint's model called directly in this process: what pipeline predictions must equal."""

    def __init__(self, checkpoint: Path):
        from workers.models import get_adapter, load_checkpoint
        from workers.models.base import ModelSpec

        ckpt = load_checkpoint(str(checkpoint))
        self.spec = ModelSpec(framework=ckpt.framework, architecture=ckpt.architecture, task_type=ckpt.task_type,
                              classes=ckpt.classes, img_size=ckpt.img_size, arch_kwargs=ckpt.arch_kwargs)
        self.adapter = get_adapter(ckpt.framework)(self.spec, "cpu")
        self.adapter.load(ckpt.state_dict)

    def __call__(self, images: list[np.ndarray], settings: dict | None = None, img_size=None):
        """Outputs for HWC RGB uint8 `images`; an (h, w) `img_size` resizes them first as the loading stage does,
        an int is the model's own fitting rule."""
        from workers.decode import resize_to

        sizes = [tuple(img.shape[:2]) for img in images]
        if isinstance(img_size, tuple | list):
            img_size = tuple(img_size)
            images = [resize_to(img, img_size) for img in images]
        outs, _ = self.adapter.run(images, sizes, {**(settings or {}), "img_size": img_size})
        return outs


def assert_same_objects(pred, out, atol: float = 1e-2) -> None:
    """A `Prediction` holds the same objects as a direct model output (boxes within `atol` pixels)."""
    assert pred.error is None, pred.error
    assert len(pred) == len(out.boxes), (len(pred), len(out.boxes))
    np.testing.assert_allclose(pred.boxes, out.boxes, atol=atol)
    np.testing.assert_allclose(pred.scores, out.scores, atol=1e-4)
    np.testing.assert_array_equal(pred.class_ids, out.class_ids)


class RunsShell:
    """A pickle that runs `touch marker` when unpickled: what a malicious checkpoint does. A loader that is safe
    refuses it and the marker file never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))
