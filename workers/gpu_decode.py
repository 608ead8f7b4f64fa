"""JPEGs decoded on the replica's device (nvJPEG on a GPU), for decode mode "gpu": the loading tasks only read the
files, and a batch's JPEGs are decoded in one call where the model runs. On the CPU the same code runs with
torchvision's CPU decoder (what the tests exercise)."""

from __future__ import annotations

from typing import Any

__all__ = ["decode_jpegs"]


def decode_jpegs(datas: list[bytes], device: str) -> list[Any]:
    """For each JPEG of `datas`: an (H, W, 3) uint8 RGB tensor on `device`, EXIF orientation applied, or the
    message (a str) of why it does not decode. One corrupt file fails alone: the batch call is retried file by
    file when it fails."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        return [t.permute(1, 2, 0) for t in decoded]
    except RuntimeError:
        pass
    out: list[Any] = []
    for t in tensors:
        try:
            (img,) = decode_jpeg([t], mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
            out.append(img.permute(1, 2, 0))
        except RuntimeError as exc:
            out.append(f"the image is corrupt or truncated: {str(exc).strip().splitlines()[0][:200]}")
    return out
