"""Small torchvision-detection architectures that are trained from scratch (the demo model `checkpoints/shapes.pth`).

`SMALL_ARCHITECTURES` maps an architecture name to a builder ``builder(num_classes, **arch_kwargs) -> nn.Module``.
Every structural choice comes from `arch_kwargs` (all JSON-plain: ints, floats, strings, lists), which a checkpoint
stores, so a loader rebuilds the exact model with::

    model = SMALL_ARCHITECTURES[ckpt.architecture](num_classes=len(ckpt.classes) + 1, **ckpt.arch_kwargs)
    model.load_state_dict(ckpt.state_dict, strict=True)

The models follow torchvision's detection contract: input a list of CHW float tensors in [0, 1] (any size; the
transform rescales so the short side is `min_size`, capped by `max_size`, and maps the outputs back); eval output a
list of dicts with `boxes` (N, 4) xyxy in input-image pixels, `labels` (N,) int64 (0 is background, label i >= 1 is
classes[i - 1]), `scores` (N,) and, for Mask R-CNN, `masks` (N, 1, H, W) float probabilities.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["SMALL_ARCHITECTURES", "TINY_FPN_DEFAULTS", "TinyBackboneFPN", "fasterrcnn_tiny_fpn", "maskrcnn_tiny_fpn"]


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "gn":
        g = groups
        while channels % g:
            g //= 2
        return nn.GroupNorm(max(g, 1), channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'gn', 'bn' or 'none'; got {kind!r}")


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none"),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class _BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm + identity, relu (ResNet basic block, constant width)."""

    def __init__(self, channels: int, norm: str, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            _ConvNormAct(channels, channels, 1, norm, groups), _ConvNormAct(channels, channels, 1, norm, groups, False)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class TinyBackboneFPN(nn.Module):
    """A compact from-scratch conv backbone (stride 2 per stage) with a feature pyramid on its last stages.

    Stage s (s = 0..len(channels)-1) is a stride-2 3x3 conv to `channels[s]` followed by `blocks[s]` basic blocks,
    so its output has stride 2**(s+1). The FPN takes the stages `fpn_stages` (e.g. [2, 3, 4] = strides 8, 16, 32)
    and returns an OrderedDict {"0": finest, "1": ..., ...} of `fpn_channels`-channel maps (`out_channels`).
    """

    def __init__(
        self,
        channels: Sequence[int],
        blocks: Sequence[int],
        fpn_stages: Sequence[int],
        fpn_channels: int,
        norm: str = "gn",
        norm_groups: int = 8,
    ):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        if len(channels) != len(blocks):
            raise ValueError("channels and blocks must have the same length")
        self.stages = nn.ModuleList()
        cin = 3
        for cout, nblocks in zip(channels, blocks):
            layers: list[nn.Module] = [_ConvNormAct(cin, cout, 2, norm, norm_groups)]
            layers += [_BasicBlock(cout, norm, norm_groups) for _ in range(nblocks)]
            self.stages.append(nn.Sequential(*layers))
            cin = cout
        self.fpn_stages = [int(s) for s in fpn_stages]
        self.fpn = FeaturePyramidNetwork([channels[s] for s in self.fpn_stages], fpn_channels)
        self.out_channels = fpn_channels
        for m in self.stages.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last norm of each residual block: every block starts as the identity
        for m in self.stages.modules():
            if isinstance(m, _BasicBlock) and isinstance(m.body[1][1], nn.GroupNorm | nn.BatchNorm2d):
                nn.init.zeros_(m.body[1][1].weight)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.fpn_stages:
                feats[str(len(feats))] = x
        return self.fpn(feats)


TINY_FPN_DEFAULTS: dict[str, Any] = {
    # backbone: stage s is stride 2**(s+1)
    "channels": [16, 32, 64, 96, 128],
    "blocks": [0, 0, 1, 1, 1],
    "fpn_stages": [2, 3, 4],  # strides 8, 16, 32
    "fpn_channels": 64,
    "norm": "gn",
    "norm_groups": 8,
    # transform: the training image size, so a 256x256 image is not rescaled
    "min_size": 256,
    "max_size": 256,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.25, 0.25],
    # RPN: one size tuple per FPN level (pixels in the transformed image), shared aspect ratios
    "anchor_sizes": [[24, 34], [48, 68], [96, 136]],
    "aspect_ratios": [0.5, 1.0, 2.0],
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 128,
    # RoI heads
    "roi_canonical_scale": 224,  # RoIs smaller than ~224 px pool from the finest level
    "roi_sampling_ratio": 1,  # bilinear samples per RoIAlign bin side (1 is 4x cheaper than torchvision's 2)
    "box_representation_size": 256,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 50,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "mask_layers": [32, 32],
    "mask_dim_reduced": 32,
}


def _tiny_rcnn_parts(name: str, num_classes: int, arch_kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any],
                                                                                        dict[str, Any]]:
    """The backbone, the torchvision R-CNN keyword arguments shared by the tiny Faster and Mask R-CNN, and the
    resolved settings."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    unknown = set(arch_kwargs) - set(TINY_FPN_DEFAULTS)
    if unknown:
        raise ValueError(f"{name}: unknown arch_kwargs {sorted(unknown)}")
    k = {**TINY_FPN_DEFAULTS, **arch_kwargs}
    backbone = TinyBackboneFPN(
        k["channels"], k["blocks"], k["fpn_stages"], int(k["fpn_channels"]), k["norm"], int(k["norm_groups"])
    )
    levels = [str(i) for i in range(len(k["fpn_stages"]))]
    if len(k["anchor_sizes"]) != len(levels):
        raise ValueError("anchor_sizes needs one list of sizes per FPN level")
    sizes = tuple(tuple(int(s) for s in level) for level in k["anchor_sizes"])
    ratios = tuple(tuple(float(r) for r in k["aspect_ratios"]) for _ in sizes)
    fc = int(k["fpn_channels"])
    rep = int(k["box_representation_size"])
    sr = int(k["roi_sampling_ratio"])
    kwargs = dict(
        num_classes=None,
        min_size=int(k["min_size"]),
        max_size=int(k["max_size"]),
        image_mean=[float(v) for v in k["image_mean"]],
        image_std=[float(v) for v in k["image_std"]],
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=int(k["rpn_pre_nms_top_n_train"]),
        rpn_post_nms_top_n_train=int(k["rpn_post_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=int(k["rpn_pre_nms_top_n_test"]),
        rpn_post_nms_top_n_test=int(k["rpn_post_nms_top_n_test"]),
        rpn_batch_size_per_image=int(k["rpn_batch_size_per_image"]),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, sr, canonical_scale=int(k["roi_canonical_scale"])),
        box_head=TwoMLPHead(fc * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        box_batch_size_per_image=int(k["box_batch_size_per_image"]),
        box_detections_per_img=int(k["box_detections_per_img"]),
        box_score_thresh=float(k["box_score_thresh"]),
        box_nms_thresh=float(k["box_nms_thresh"]),
    )
    return backbone, kwargs, {**k, "levels": levels}


def maskrcnn_tiny_fpn(num_classes: int, **arch_kwargs: Any) -> nn.Module:
    """A ~2M-parameter Mask R-CNN (torchvision) on `TinyBackboneFPN`; `arch_kwargs` override `TINY_FPN_DEFAULTS`.

    Args:
        num_classes: including background (len(classes) + 1).
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    backbone, kwargs, k = _tiny_rcnn_parts("maskrcnn_tiny_fpn", num_classes, arch_kwargs)
    mask_layers = [int(c) for c in k["mask_layers"]]
    return MaskRCNN(
        backbone,
        **kwargs,
        mask_roi_pool=MultiScaleRoIAlign(k["levels"], 14, int(k["roi_sampling_ratio"]),
                                         canonical_scale=int(k["roi_canonical_scale"])),
        mask_head=MaskRCNNHeads(int(k["fpn_channels"]), mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], int(k["mask_dim_reduced"]), num_classes),
    )


def fasterrcnn_tiny_fpn(num_classes: int, **arch_kwargs: Any) -> nn.Module:
    """The box-only sibling of `maskrcnn_tiny_fpn` (same backbone and heads, no mask branch); the mask-only keys
    of `TINY_FPN_DEFAULTS` are accepted and ignored."""
    from torchvision.models.detection import FasterRCNN

    backbone, kwargs, _ = _tiny_rcnn_parts("fasterrcnn_tiny_fpn", num_classes, arch_kwargs)
    return FasterRCNN(backbone, **kwargs)


SMALL_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "maskrcnn_tiny_fpn": maskrcnn_tiny_fpn,
    "fasterrcnn_tiny_fpn": fasterrcnn_tiny_fpn,
}
