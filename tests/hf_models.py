"""Tiny random-weight Hugging Face transformers models, built offline and saved with `save_pretrained`.

Each builder returns `(model, processor)`; `save_tiny(kind, dir)` writes the directory the adapter deploys. The
weights are perturbed after initialisation (`_spread`): freshly initialised DETR-family heads give every query
the same score and box, which would make a parity test blind to ordering and matching mistakes.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["BUILDERS", "CLASSES", "Direct", "assert_same", "build", "save_tiny", "tiny_tokenizer"]

CLASSES = ["a", "b", "c"]


def _labels() -> dict:
    return {"id2label": dict(enumerate(CLASSES)), "label2id": {c: i for i, c in enumerate(CLASSES)}}


def _resnet():
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                        out_features=["stage2", "stage3", "stage4"])


def conditional_detr():
    import transformers as T

    cfg = T.ConditionalDetrConfig(backbone_config=_resnet(), use_timm_backbone=False, d_model=16, encoder_layers=1,
                                  decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=12, **_labels())
    return (T.ConditionalDetrForObjectDetection(cfg),
            T.ConditionalDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}))


def detr():
    """DETR with a timm backbone, as `facebook/detr-resnet-50` and the models fine-tuned from it are built
    (`use_timm_backbone`); timm's own tiny test network stands in for ResNet-50."""
    import transformers as T

    cfg = T.DetrConfig(use_timm_backbone=True, backbone="test_resnet", use_pretrained_backbone=False, d_model=16,
                       encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                       encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=12, **_labels())
    return T.DetrForObjectDetection(cfg), T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def rt_detr():
    import transformers as T

    cfg = T.RTDetrConfig(backbone_config=_resnet(), encoder_in_channels=[16, 16, 16], encoder_hidden_dim=16,
                         encoder_ffn_dim=16, d_model=16, decoder_layers=1, decoder_ffn_dim=16, num_queries=12,
                         decoder_in_channels=[16, 16, 16], num_feature_levels=3, decoder_attention_heads=2,
                         encoder_attention_heads=2, **_labels())
    return T.RTDetrForObjectDetection(cfg), T.RTDetrImageProcessor(size={"height": 64, "width": 64})


def mask2former():
    import transformers as T

    swin = T.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                        out_features=["stage1", "stage2", "stage3", "stage4"])
    # hidden sizes of 32: the pixel decoder's GroupNorm has 32 groups
    cfg = T.Mask2FormerConfig(backbone_config=swin, hidden_dim=32, mask_feature_size=32, feature_size=32,
                              encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                              num_attention_heads=2, num_queries=10, common_stride=4, **_labels())
    return (T.Mask2FormerForUniversalSegmentation(cfg),
            T.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}))


def segformer():
    import transformers as T

    cfg = T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                            patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                            decoder_hidden_size=16, **_labels())
    return T.SegformerForSemanticSegmentation(cfg), T.SegformerImageProcessor(size={"height": 64, "width": 64})


def tiny_tokenizer():
    """A CLIP byte-level BPE tokenizer from a local vocabulary: the 256 byte symbols, each also as a word end,
    two merges, and CLIP's two special tokens."""
    import transformers as T
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab.update({ch + "</w>": len(chars) + i for i, ch in enumerate(chars)})
    merges = [("a", "b</w>"), ("c", "d</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return T.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def owlv2():
    import transformers as T

    tok = tiny_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = T.Owlv2TextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16, pad_token_id=eos, eos_token_id=eos,
                             bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"))
    vision = T.Owlv2VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=64, patch_size=16)
    cfg = T.Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    processor = T.Owlv2Processor(image_processor=T.Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                                 tokenizer=tok)
    return T.Owlv2ForObjectDetection(cfg), processor


def grounding_dino():
    import transformers as T

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "b", "c", "red", "car", "person", "##s"]
    tok = T.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    text = T.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    # d_model 32: GroupNorm(32); two decoder layers: the box heads of layers 1.. are tied to layer 0's
    cfg = T.GroundingDinoConfig(backbone_config=_resnet(), text_config=text, num_queries=10, encoder_layers=1,
                                decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                decoder_attention_heads=2, d_model=32, num_feature_levels=3, encoder_n_points=2,
                                decoder_n_points=2, max_text_len=32)
    processor = T.GroundingDinoProcessor(
        image_processor=T.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tok)
    return T.GroundingDinoForObjectDetection(cfg), processor


BUILDERS = {"detr": detr, "conditional_detr": conditional_detr, "rt_detr": rt_detr, "mask2former": mask2former,
            "segformer": segformer, "owlv2": owlv2, "grounding_dino": grounding_dino}


def _spread(model, std: float) -> None:
    """Add noise to every weight matrix: outputs then differ between queries, pixels and images."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g) * std)


def _calm_owl(model) -> None:
    """OWLv2's random class-logit scale and box head saturate (every score 1.0, boxes of zero size): shrink them
    so scores spread over (0, 1) and boxes sit around OWLv2's grid prior."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("class_head.logit_s", "box_head.dense2")):
                p.mul_(0.01)


def build(kind: str, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model, processor = BUILDERS[kind]()
    if kind == "owlv2":
        _spread(model, 0.05)
        _calm_owl(model)
    else:
        _spread(model, 0.3)
    if kind == "mask2former":  # queries must not all pick the "no object" class: panoptic would drop them all
        with torch.no_grad():
            model.class_predictor.bias[-1] = -5.0
    return model.eval(), processor


def save_tiny(kind: str, path, seed: int = 0) -> str:
    """Build the tiny `kind` model and save it (weights as model.safetensors) with its processor into `path`."""
    model, processor = build(kind, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------------------------
# Comparing outputs with the reference (tolerances of issue 14: boxes 1 px, scores 1e-3, labels equal, masks
# IoU >= 0.98)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _fits(out, i: int, ref: dict, j: int) -> bool:
    """Is adapter object i the reference object j?"""
    if out.class_ids[i] != ref["labels"][j] or abs(out.scores[i] - ref["scores"][j]) > 1e-3:
        return False
    if "masks" in ref:
        return _iou(out.masks[i], ref["masks"][j]) >= 0.98
    return np.abs(out.boxes[i] - ref["boxes"][j]).max() <= 1.0


def assert_same(out, ref: dict) -> None:
    """Each reference object has one adapter object (`out`: a ModelOutput or a Prediction) with the same label, score (1e-3) and box (1 px) or mask
    (IoU >= 0.98), and the counts are equal. Greedy in score order: near-equal scores may swap places."""
    if "label_map" in ref:  # semantic: one mask per present class, exactly the post-processing's label map
        present = sorted(int(c) for c in np.unique(ref["label_map"]))
        assert sorted(out.class_ids.tolist()) == present
        for cid, mask, score in zip(out.class_ids, out.masks, out.scores):
            assert _iou(mask, ref["label_map"] == cid) >= 0.98
            if "class_scores" in ref:
                assert abs(score - ref["class_scores"][int(cid)]) <= 1e-3
        return
    assert len(out.scores) == len(ref["scores"]), (len(out.scores), len(ref["scores"]))
    free = set(range(len(out.scores)))
    for j in np.argsort(-ref["scores"], kind="stable"):
        match = next((i for i in sorted(free, key=lambda i: abs(out.scores[i] - ref["scores"][j]))
                      if _fits(out, i, ref, j)), None)
        assert match is not None, f"reference object {j} (label {ref['labels'][j]}, score {ref['scores'][j]})"
        free.discard(match)



# ---------------------------------------------------------------------------------------------------------------
# The reference: the saved model called directly, one image at a time, through its own processor


class Direct:
    """The saved model loaded with `from_pretrained` and called one image at a time through its own processor and
    post-processing: what the adapter's outputs must equal. Results are dicts of numpy arrays, boxes clipped to
    the image (the adapter clips; DETR-family post-processing does not)."""

    def __init__(self, path, kind: str):
        import transformers as T

        self.kind = kind
        model_cls = {"detr": T.DetrForObjectDetection, "conditional_detr": T.ConditionalDetrForObjectDetection,
                     "rt_detr": T.RTDetrForObjectDetection, "mask2former": T.Mask2FormerForUniversalSegmentation,
                     "segformer": T.SegformerForSemanticSegmentation, "owlv2": T.Owlv2ForObjectDetection,
                     "grounding_dino": T.GroundingDinoForObjectDetection}[kind]
        self.model = model_cls.from_pretrained(path, local_files_only=True).eval()
        proc = T.AutoProcessor if kind in ("owlv2", "grounding_dino") else T.AutoImageProcessor
        self.processor = proc.from_pretrained(path, local_files_only=True)

    def __call__(self, image, conf: float = 0.0, size=None, prompts=None) -> dict:
        import numpy as np
        import torch

        h, w = image.shape[:2]
        kwargs = {} if size is None else {"size": size}
        if prompts is not None:
            inputs = self.processor(text=[prompts], images=[image], return_tensors="pt", **kwargs)
        else:
            inputs = self.processor(images=[image], return_tensors="pt", **kwargs)
        extra = {"interpolate_pos_encoding": True} if size is not None and self.kind == "owlv2" else {}
        with torch.inference_mode():
            out = self.model(**inputs, **extra)
            p = self.processor
            if self.kind == "owlv2":
                r = p.post_process_grounded_object_detection(out, threshold=conf, target_sizes=[(h, w)])[0]
            elif self.kind == "grounding_dino":
                r = dict(p.post_process_grounded_object_detection(out, input_ids=inputs["input_ids"], threshold=conf,
                                                             target_sizes=[(h, w)])[0])
                r["labels"] = self._prompt_of_each_box(out, inputs["input_ids"][0].tolist(), prompts, conf)
            elif self.kind == "mask2former":
                r = p.post_process_instance_segmentation(out, threshold=conf, target_sizes=[(h, w)],
                                                         return_binary_maps=True)[0]
                info = r["segments_info"]
                masks = (r["segmentation"] > 0.5).numpy() if info else np.zeros((0, h, w), bool)
                return {"masks": masks, "scores": np.array([s["score"] for s in info], np.float32),
                        "labels": np.array([s["label_id"] for s in info], np.int64)}
            elif self.kind == "segformer":
                r = p.post_process_semantic_segmentation(out, target_sizes=[(h, w)], return_segmentation_scores=True)[0]
                label, probs = r["segmentation"], r["segmentation_scores"].softmax(0)
                # a class's score: the mean of its softmax probability over its pixels
                scores = {int(c): float(probs[c][label == c].mean()) for c in label.unique()}
                return {"label_map": label.numpy(), "class_scores": scores}
            else:
                r = p.post_process_object_detection(out, threshold=conf, target_sizes=[(h, w)])[0]
        boxes = r["boxes"].numpy().copy()
        r["labels"] = torch.as_tensor(r["labels"])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return {"boxes": boxes, "scores": r["scores"].numpy(), "labels": r["labels"].numpy().astype(np.int64)}

    def _prompt_of_each_box(self, out, ids: list[int], prompts: list[str], conf: float):
        """Grounding DINO's library post-processing names boxes by decoded words only: the prompt of a box is the
        one whose tokens (found by tokenizing each prompt alone) it scores highest."""
        import torch

        tok = self.processor.tokenizer
        spans, start = [], 1  # after [CLS]
        for p in prompts:
            n = len(tok(p.strip().lower(), add_special_tokens=False)["input_ids"])
            spans.append(list(range(start, start + n)))
            start += n + 1  # the "." after each prompt
        probs = out.logits[0].sigmoid()
        kept = probs[probs.max(-1).values > conf]
        return torch.stack([kept[:, s].max(-1).values for s in spans], 1).argmax(1)
