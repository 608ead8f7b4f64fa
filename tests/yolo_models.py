"""Tiny random-weight Ultralytics models for the tests, built offline from Ultralytics' bundled YAMLs.

`build_pt(yaml_name, path)` writes a `.pt` the way Ultralytics' trainer leaves its final checkpoint
(`strip_optimizer`): the fp16 model under "model", `train_args` (with `imgsz`), metadata. The class-logit biases of
the detection head are raised so that random weights find dozens of boxes per image (a parity test over zero boxes
would prove nothing).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

# Ultralytics resolves DNS names and writes a settings file on import unless told otherwise.
os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="test-yolo-cfg-"))
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="test-mpl-"))

IMGSZ = 160
CLASSES = ["cat", "dog", "bird", "car", "tree"]
# square, landscape, portrait, a small odd one; the list mixes sizes
IMAGE_SIZES = [(160, 160), (120, 200), (210, 130), (97, 61)]
# parity tolerances of the issue: boxes and keypoints in pixels, scores absolute, masks IoU
BOX_PX, SCORE_TOL, KPT_PX, MASK_IOU = 1.0, 1e-3, 1.0, 0.98


def images(seed: int = 0, sizes=IMAGE_SIZES) -> list[np.ndarray]:
    """Smooth random RGB images (blobs, not noise: masks and boxes then have some extent)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        small = rng.integers(0, 256, size=(max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return out


def build_model(yaml_name: str, nc: int = len(CLASSES), seed: int = 0, bias: float = -2.5):
    """`YOLO(<bundled yaml with nc classes>)` whose random weights give varied, plausible outputs.

    A freshly initialised YOLO's activations shrink to ~0 through its layers (batch norms at their initial
    statistics), so every box sits at its anchor with the same score: a parity test over that would compare ties.
    The batch norms are therefore calibrated on a few images, the head's last convolutions scaled to outputs of
    unit-ish spread, and the class logits centred on `bias` (-2.5: dozens of boxes above conf 0.25 per image).
    """
    import torch
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(yaml_name)  # the bundled YAML, its scale guessed from the name ("n")
    if "nc" in cfg:
        cfg["nc"] = nc
    torch.manual_seed(seed)
    yolo = _from_cfg(cfg, yaml_name)
    model = yolo.model
    _calibrate(model, seed)
    if yolo.task != "classify":
        _tame_head(model, bias, seed)
    model.names = {i: CLASSES[i] if i < len(CLASSES) else f"class{i}" for i in range(len(model.names))}
    if yolo.task == "pose":  # as Ultralytics' pose trainer sets them (from the dataset YAML)
        model.kpt_names = {i: [f"kp{j}" for j in range(model.kpt_shape[0])] for i in range(len(model.names))}
    return yolo


def _batch(seed: int, n: int = 8):
    import torch

    return torch.from_numpy(np.stack(images(seed, [(IMGSZ, IMGSZ)] * n))).permute(0, 3, 1, 2).float() / 255


def _calibrate(model, seed: int) -> None:
    """Batch-norm statistics of a few images (cumulative average), as after a little training."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(_batch(seed + 100))
    model.eval()


# output spread of the head's last convolutions: box distances, class logits, mask coefficients / keypoints
_HEAD_SPREAD = {"cv2": 1.0, "cv3": 1.5, "cv4": 0.5, "one2one_cv2": 1.0, "one2one_cv3": 1.5, "one2one_cv4": 0.5}


def _tame_head(model, bias: float, seed: int) -> None:
    import torch

    head = model.model[-1]
    convs = [(n, seq[-1]) for n in _HEAD_SPREAD for seq in (getattr(head, n, None) or [])]
    convs = [(n, c) for n, c in convs if isinstance(c, torch.nn.Conv2d)]
    seen: dict = {}
    hooks = [c.register_forward_hook(lambda m, i, o: seen.__setitem__(m, o - m.bias.view(1, -1, 1, 1))) for _, c in convs]
    with torch.no_grad():
        model(_batch(seed + 200))
    for h in hooks:
        h.remove()
    for name, conv in convs:
        out = seen[conv]
        k = _HEAD_SPREAD[name] / max(out.std().item(), 1e-12)
        conv.weight.data *= k
        target = bias if name.endswith("cv3") else conv.bias.data
        conv.bias.data[:] = target - out.mean((0, 2, 3)) * k


def _from_cfg(cfg: dict, yaml_name: str):
    """`YOLO(<yaml file>)`: the file keeps the bundled name, from which Ultralytics guesses the model scale."""
    import yaml as pyyaml
    from ultralytics import YOLO

    tmp = Path(tempfile.mkdtemp(prefix="test-yolo-yaml-")) / yaml_name
    tmp.write_text(pyyaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
    return YOLO(str(tmp))


def save_trainer_style(model, path: Path, imgsz=IMGSZ, extra: dict | None = None) -> Path:
    """`model` (a `DetectionModel`, ...) saved as Ultralytics' trainer leaves `best.pt`."""
    import copy

    import torch
    from ultralytics import __version__
    from ultralytics.utils import DEFAULT_CFG_DICT

    m = copy.deepcopy(model)
    args = {**DEFAULT_CFG_DICT, "imgsz": imgsz, "task": getattr(m, "task", "detect"), "model": "yolo.yaml"}
    m.args = dict(args)
    m = m.half()
    for p in m.parameters():
        p.requires_grad = False
    ckpt = {
        "date": "2026-01-01T00:00:00", "version": __version__, "license": "AGPL-3.0 License", "docs": "",
        "epoch": -1, "best_fitness": None, "stopper": None, "model": m, "ema": None, "updates": None,
        "modelopt": None, "optimizer": None, "scaler": None, "train_args": args,
        "train_metrics": {"fitness": 0.0}, "train_results": {"epoch": [1]}, "git": {},
    }
    ckpt.update(extra or {})
    path = Path(path)
    torch.save(ckpt, path)
    return path


def build_rtdetr(folder: Path, seed: int = 0) -> Path:
    """Ultralytics' RT-DETR-l (`RTDETR("rtdetr-l.yaml")`, 33 M parameters: the smallest bundled) with CLASSES, its
    batch norms calibrated and its score heads scaled and biased so that random weights score queries from ~0.05 to
    ~0.9 (a few dozen above conf 0.25), saved trainer-style as `<folder>/rtdetr-l.pt`."""
    import torch
    import yaml as pyyaml
    from ultralytics import RTDETR
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("rtdetr-l.yaml")
    cfg["nc"] = len(CLASSES)
    tmp = Path(tempfile.mkdtemp(prefix="test-yolo-yaml-")) / "rtdetr-l.yaml"
    tmp.write_text(pyyaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
    torch.manual_seed(seed)
    model = RTDETR(str(tmp)).model
    _calibrate(model, seed)
    for linear in model.model[-1].dec_score_head:
        linear.weight.data *= 2.0
        linear.bias.data[:] = -3.0
    model.names = dict(enumerate(CLASSES))
    model.task = "detect"
    return save_trainer_style(model, Path(folder) / "rtdetr-l.pt")


def build_calibrated_only(yaml_name: str, folder: Path, seed: int = 0) -> Path:
    """A bundled YAML built as it is (`YOLO(yaml)`, 80 classes), batch norms calibrated, head untouched: for models
    whose heads `_tame_head` does not know (YOLO-World's contrastive head, whose random text embeddings are
    built in). Saved trainer-style as `<folder>/<stem>.pt`."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(yaml_name)
    model = yolo.model
    _calibrate(model, seed)
    model.names = {i: f"class{i}" for i in range(len(model.names))}
    model.task = yolo.task
    return save_trainer_style(model, Path(folder) / (Path(yaml_name).stem + ".pt"))


def build_pt(yaml_name: str, folder: Path, **kwargs) -> Path:
    """Build a tiny model from a bundled YAML and save it trainer-style as `<folder>/<stem>.pt`."""
    yolo = build_model(yaml_name, **kwargs)
    yolo.model.task = yolo.task
    return save_trainer_style(yolo.model, Path(folder) / (Path(yaml_name).stem + ".pt"))


# ------------------------------------------------------------------------------------ built once per session

_ROOT: Path | None = None
_PT: dict[str, str] = {}
_EXPORTS: dict[str, tuple[str, str]] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        import atexit
        import shutil

        _ROOT = Path(tempfile.mkdtemp(prefix="test-yolo-models-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return _ROOT


def cached_pt(name: str) -> str:
    """The `.pt` of the bundled YAML `name` ("yolo11n-seg"), built once per test session (every test module that
    asks gets the same file)."""
    if name not in _PT:
        folder = _root() / "pt"
        folder.mkdir(exist_ok=True)
        if name == "rtdetr-l":
            _PT[name] = str(build_rtdetr(folder))
        else:  # an oriented-box head's random boxes are large and few: a higher class bias finds 10+ on the small image
            _PT[name] = str(build_pt(f"{name}.yaml", folder, **({"bias": -1.5} if name.endswith("-obb") else {})))
    return _PT[name]


def cached_export(name: str, **kwargs) -> tuple[str, str]:
    """(.pt, .onnx): `cached_pt(name)` copied into a folder of its own and exported there with Ultralytics at
    imgsz IMGSZ (`kwargs`: its export options, e.g. dynamic=True, nms=False); once per session and options."""
    import shutil

    from ultralytics import YOLO

    key = name + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    if key not in _EXPORTS:
        sub = _root() / "onnx" / key
        sub.mkdir(parents=True)
        pt = shutil.copy(cached_pt(name), sub / f"{name}.pt")
        onnx_path = YOLO(str(pt)).export(format="onnx", imgsz=IMGSZ, simplify=False, verbose=False, **kwargs)
        _EXPORTS[key] = (str(pt), str(onnx_path))
    return _EXPORTS[key]


# ------------------------------------------------------------------------------------------- comparisons


def match(out, b) -> np.ndarray:
    """Index into Ultralytics' boxes of each of ours. Boxes of equal score may come in either order (a batch of
    two runs other kernels than a batch of one), so the two sets are matched, not the two lists."""
    from scipy.optimize import linear_sum_assignment

    b = _boxes_of(b)
    theirs_xyxy, theirs_cls = b.xyxy.numpy(), b.cls.numpy().astype(np.int64)
    cost = np.abs(out.boxes[:, None, :] - theirs_xyxy[None]).max(-1)
    cost += 1e6 * (out.class_ids[:, None] != theirs_cls[None]) + 1e3 * np.abs(out.scores[:, None] - b.conf.numpy()[None])
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order


def _boxes_of(b):
    """Ultralytics' `Boxes`, given them or a `Results` (its `boxes`, or for an obb model its `obb`, whose `xyxy` are
    the enclosing boxes)."""
    if hasattr(b, "orig_img"):
        return b.boxes if b.boxes is not None else b.obb
    return b


def assert_same_boxes(out, res, min_boxes: int = 5) -> np.ndarray:
    """Same number of boxes (at least `min_boxes`), each within BOX_PX, SCORE_TOL and of the same class; returns
    the matching (see `match`). An obb model's oriented boxes are compared too (`cx, cy, w, h` within BOX_PX, the
    angle within 1e-3 rad)."""
    b = _boxes_of(res)
    assert len(out.boxes) == len(b) >= min_boxes, (len(out.boxes), len(b))
    order = match(out, b)
    np.testing.assert_allclose(out.boxes, b.xyxy.numpy()[order], atol=BOX_PX)
    np.testing.assert_allclose(out.scores, b.conf.numpy()[order], atol=SCORE_TOL)
    np.testing.assert_array_equal(out.class_ids, b.cls.numpy().astype(np.int64)[order])
    assert np.all(np.diff(out.scores) <= 1e-6)  # best first, as Ultralytics lists them
    if getattr(res, "obb", None) is not None:
        ref = res.obb.xywhr.numpy()[order]
        np.testing.assert_allclose(out.obb[:, :4], ref[:, :4], atol=BOX_PX)
        np.testing.assert_allclose(out.obb[:, 4], ref[:, 4], atol=1e-3)
    return order


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty masks agree
