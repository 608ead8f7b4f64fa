"""GPU checks: run where torch sees a CUDA device (the lent GPU machines), skipped elsewhere (CI has no GPU).

    python -m pytest -q tests/pipeline/test_gpu.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes.pth"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _covered(src_boxes, src_scores, src_cls, dst_boxes, dst_cls, conf: float) -> None:
    """Every confident detection of one side has a same-class twin on the other (GPU convolutions use TF32, so
    scores and boxes differ in the last digits; a detection right at the threshold may fall either side)."""
    for box, score, cls in zip(src_boxes, src_scores, src_cls):
        if score < conf + 0.05:
            continue
        best = max((_iou(box, b) for b, c in zip(dst_boxes, dst_cls) if c == cls), default=0.0)
        assert best > 0.95, (box, score, cls, best)


def test_cuda_deployment_predicts_what_the_model_predicts_on_cpu(api):
    from helpers import DirectModel

    from pipeline.app.shapes import get_sample

    images = [get_sample(seed=7, index=i).image for i in range(12)]  # 256x256, the model's img_size
    model = api.nn.deploy(str(SHAPES), device="cuda", replicas=1)
    try:
        info = model.info()
        assert info["device"] == "cuda"
        assert info["replicas_info"][0]["gpu"] == torch.cuda.get_device_name(0)
        preds = model.predict(input=images, conf=0.5, batch_size=4, progress=False)
    finally:
        model.shutdown()
    direct = DirectModel(SHAPES)(images, settings={"conf": 0.5})
    found = 0
    for pred, out in zip(preds, direct):
        assert pred.error is None, pred.error
        _covered(out.boxes, out.scores, out.class_ids, pred.boxes, pred.class_ids, 0.5)
        _covered(pred.boxes, pred.scores, pred.class_ids, out.boxes, out.class_ids, 0.5)
        found += len(pred)
    assert found >= 12  # the trained demo model finds the shapes


def test_device_none_picks_the_gpu(api):
    model = api.nn.deploy(str(SHAPES), replicas=1)
    try:
        assert model.device == "cuda"
        pred = model.predict(input=get_image(), progress=False)[0]
        assert pred.error is None and len(pred) >= 1
    finally:
        model.shutdown()


def get_image() -> np.ndarray:
    from pipeline.app.shapes import get_sample

    return get_sample(seed=7, index=0).image
