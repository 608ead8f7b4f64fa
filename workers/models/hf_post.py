"""Post-processing of the `transformers` adapter: the model's own image processor / processor post-processing,
turned into `ModelOutput`s (boxes xyxy in pixels of the target size, masks (N, H, W) bool).

Each function takes one group of images (same input size, run as one batch) and returns one `ModelOutput` per
image. `sizes` are the target (height, width) in pixels: the images' own sizes, so boxes and masks come back in
the pixels of the images the adapter was given.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from workers.messages import ModelOutput

__all__ = ["detections", "instances", "panoptic", "semantic", "owl", "grounding", "finish"]


def _accepted(fn, **kwargs) -> dict[str, Any]:
    """The keyword arguments `fn` takes (post-processing signatures differ between families)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _boxes_output(boxes, scores, labels, size) -> ModelOutput:
    """Boxes clipped to the image: DETR-family post-processing does not clip, annotations must lie inside."""
    h, w = size
    b = boxes.detach().float().cpu().numpy().reshape(-1, 4).astype(np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return ModelOutput(
        boxes=b,
        scores=np.asarray(scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else scores,
                          np.float32).reshape(-1),
        class_ids=np.asarray(labels.cpu().numpy() if hasattr(labels, "cpu") else labels, np.int64).reshape(-1),
    )


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy: the tight box of each mask, right/bottom edges exclusive."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))  # cheaper than the pixels' nonzero
        out[i] = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    return out


def _masks_output(masks: np.ndarray, scores, labels, size) -> ModelOutput:
    """Masks -> ModelOutput; empty masks (a segment that lost all its pixels to others) are dropped."""
    masks = np.asarray(masks, bool).reshape(-1, *size)
    if not len(masks):
        return ModelOutput.empty(with_masks=True, size=size)
    keep = masks.reshape(len(masks), -1).any(1)
    masks = masks[keep]
    if not len(masks):
        return ModelOutput.empty(with_masks=True, size=size)
    return ModelOutput(boxes=_mask_boxes(masks), scores=np.asarray(scores, np.float32)[keep],
                       class_ids=np.asarray(labels, np.int64)[keep], masks=masks)


def detections(proc, outputs, sizes, settings) -> list[ModelOutput]:
    """`post_process_object_detection` (DETR, Conditional / Deformable DETR, RT-DETR, D-FINE, YOLOS, ...)."""
    fn = proc.post_process_object_detection
    kwargs = _accepted(fn, threshold=float(settings["conf"]), target_sizes=list(sizes),
                       top_k=int(settings["max_det"]))
    res = fn(outputs, **kwargs)
    return [_boxes_output(r["boxes"], r["scores"], r["labels"], s) for r, s in zip(res, sizes)]


def _segments(r: dict, size) -> ModelOutput:
    """One result of instance / panoptic post-processing: binary maps (N, H, W) or a segment-id map (H, W)."""
    seg, info = r["segmentation"], r["segments_info"]
    if seg is None or not info:
        return ModelOutput.empty(with_masks=True, size=size)
    seg = seg.detach().cpu()
    if seg.dim() == 3:  # return_binary_maps: one map per segment, in segments_info order
        masks = (seg > 0.5).numpy()
    else:
        masks = np.stack([(seg == s["id"]).numpy() for s in info])
    return _masks_output(masks, [s["score"] for s in info], [s["label_id"] for s in info], size)


def instances(proc, outputs, sizes, settings) -> list[ModelOutput]:
    """`post_process_instance_segmentation` (Mask2Former, MaskFormer, DETR panoptic head, RF-DETR seg)."""
    fn = proc.post_process_instance_segmentation
    kwargs = _accepted(fn, threshold=float(settings["conf"]), mask_threshold=float(settings["mask_threshold"]),
                       overlap_mask_area_threshold=float(settings["overlap_mask_area_threshold"]),
                       target_sizes=list(sizes), return_binary_maps=True)
    return [_segments(r, s) for r, s in zip(fn(outputs, **kwargs), sizes)]


def panoptic(proc, outputs, sizes, settings) -> list[ModelOutput]:
    """`post_process_panoptic_segmentation`: non-overlapping segments, things and stuff alike."""
    fn = proc.post_process_panoptic_segmentation
    kwargs = _accepted(fn, threshold=float(settings["conf"]), mask_threshold=float(settings["mask_threshold"]),
                       overlap_mask_area_threshold=float(settings["overlap_mask_area_threshold"]),
                       target_sizes=list(sizes), label_ids_to_fuse=set())  # every instance its own segment
    return [_segments(r, s) for r, s in zip(fn(outputs, **kwargs), sizes)]


def semantic(proc, outputs, sizes, settings, universal: bool) -> list[ModelOutput]:
    """`post_process_semantic_segmentation` -> one mask per present class.

    A class's score is the mean, over its pixels, of its per-pixel probability: the softmax of the per-class
    scores for logits heads (SegFormer, UperNet, DPT), the per-class scores divided by their sum for universal
    heads (Mask2Former, whose scores are sums of class x mask probabilities, not logits).
    """
    import torch

    res = proc.post_process_semantic_segmentation(outputs, target_sizes=list(sizes), return_segmentation_scores=True)
    conf = float(settings["conf"])
    out = []
    for r, size in zip(res, sizes):
        label, scores = r["segmentation"].long(), r["segmentation_scores"].float()  # (H, W) ids, (C, H, W)
        # the probability of each pixel's own class (softmax over C is faster than a logsumexp on CPU)
        if universal:
            own = scores.gather(0, label[None])[0] / scores.sum(0).clamp_min(1e-12)
        else:
            own = scores.softmax(0).gather(0, label[None])[0]
        # per class: the sum of its probability over its pixels, and its pixel count, in one pass each
        flat, n = label.reshape(-1), scores.shape[0]
        counts = torch.bincount(flat, minlength=n)
        mean = torch.bincount(flat, weights=own.reshape(-1), minlength=n) / counts.clamp_min(1)
        keep = torch.nonzero((counts > 0) & (mean >= conf)).flatten()
        masks = label[None] == keep[:, None, None]  # (K, H, W)
        out.append(_masks_output(masks.cpu().numpy(), mean[keep].cpu().numpy(), keep.cpu().numpy(), size))
    return out


def owl(processor, outputs, sizes, settings) -> list[ModelOutput]:
    """OWL-ViT / OWLv2 `post_process_grounded_object_detection`: labels index into the prompts. OWLv2 pads
    every image to a square; its post-processing accounts for that when given the (h, w) of the image."""
    prompts = list(settings["prompts"])
    res = processor.post_process_grounded_object_detection(
        outputs, threshold=float(settings["conf"]), target_sizes=list(sizes), text_labels=[prompts] * len(sizes)
    )
    return [_boxes_output(r["boxes"], r["scores"], r["labels"], s) for r, s in zip(res, sizes)]


def _prompt_spans(tokenizer, prompts: list[str], input_ids) -> list[list[int]]:
    """Token positions of each prompt in the merged Grounding DINO text "p1. p2. ...".

    The tokenizer's offsets map tokens back to characters; a prompt owns the tokens that fall in its characters.
    """
    text = ". ".join(p.strip().lower() for p in prompts) + "."
    enc = tokenizer(text, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(input_ids[: len(enc["input_ids"])]):
        raise RuntimeError("the Grounding DINO text input does not match the prompts")
    starts, pos = [], 0
    for p in prompts:
        p = p.strip().lower()
        starts.append((pos, pos + len(p)))
        pos += len(p) + 2
    spans: list[list[int]] = [[] for _ in prompts]
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        for i, (s, e) in enumerate(starts):
            if b > a and a >= s and b <= e:
                spans[i].append(t)
    return spans


def grounding(processor, outputs, input_ids, sizes, settings) -> list[ModelOutput]:
    """Grounding DINO: boxes and scores from `post_process_grounded_object_detection`; each box's class is the
    prompt whose tokens it scores highest (the library returns only the decoded words of its tokens)."""
    import torch

    prompts = list(settings["prompts"])
    conf = float(settings["conf"])
    res = processor.post_process_grounded_object_detection(
        outputs, input_ids=input_ids, threshold=conf, text_threshold=float(settings["text_threshold"]),
        target_sizes=list(sizes),
    )
    spans = _prompt_spans(processor.tokenizer, prompts, input_ids[0].tolist())
    probs = outputs.logits.sigmoid()  # (B, queries, 256 text positions)
    out = []
    for i, (r, size) in enumerate(zip(res, sizes)):
        kept = probs[i][probs[i].max(-1).values > conf]  # the library's own selection, in its order
        per_prompt = torch.stack([kept[:, s].max(-1).values if s else torch.zeros(len(kept)) for s in spans], 1)
        out.append(_boxes_output(r["boxes"], r["scores"], per_prompt.argmax(1), size))
    return out


def finish(out: ModelOutput, settings) -> ModelOutput:
    """Highest scores first, optional class-wise NMS (`iou`), at most `max_det` objects."""
    import torch
    from torchvision.ops import batched_nms

    order = np.argsort(-out.scores, kind="stable")
    iou = settings.get("iou")
    if iou is not None and out.masks is None and len(order):
        keep = batched_nms(torch.from_numpy(out.boxes), torch.from_numpy(out.scores),
                           torch.from_numpy(out.class_ids), float(iou)).numpy()
        order = keep  # batched_nms returns indices sorted by decreasing score
    order = order[: int(settings["max_det"])]
    return ModelOutput(boxes=out.boxes[order], scores=out.scores[order], class_ids=out.class_ids[order],
                       masks=None if out.masks is None else out.masks[order], error=out.error)
