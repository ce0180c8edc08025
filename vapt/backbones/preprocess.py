"""Each publisher's tile preprocessing, applied to uint8 tiles as 8-bit PIL images (as the publishers do).

A ``data_config`` dict (what every encoder carries) says it all:

``input_size`` (3, H, W) the encoder's input; ``resize`` the shorter side the tile is resized to first (an int,
aspect kept, as torchvision ``Resize(int)``); ``crop`` whether a centre crop to (H, W) follows (otherwise the
resize is to (H, W) exactly, which equals ``Resize(int)`` for square tiles); ``interpolation`` (``bilinear``
| ``bicubic``); ``mean`` / ``std`` on the 0-1 scale; ``pixels`` how resampling is done (on 8-bit PIL images).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vapt.backbones.preset_table import (
    GENBIO,
    HALF,
    HIBOU,
    HOPTIMUS,
    IMAGENET,
    OPENAI_CLIP,
    PIXELS,
    Preprocess,
)

__all__ = ["GENBIO", "HALF", "HIBOU", "HOPTIMUS", "IMAGENET", "OPENAI_CLIP", "PIXELS", "Preprocess", "preprocess_tiles",
           "resize_tiles"]


def resize_tiles(tiles: torch.Tensor, data_config: dict) -> list[Image.Image]:
    """uint8 tiles (B, H, W, 3) or (B, 3, H, W) -> the resized (and cropped) 8-bit PIL images, one per tile.

    The publishers resize 8-bit PIL images (torchvision ``Resize`` / ``CenterCrop`` on PIL, as timm's, open_clip's
    and the model cards' eval transforms do), so this does too: the pixels are the publisher's, bit for bit.
    A tile already at the target size is not resampled.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if tiles.ndim != 4:
        raise ValueError(f"tiles must be (B, H, W, 3) or (B, 3, H, W); got {tuple(tiles.shape)}")
    if tiles.shape[-1] != 3 and tiles.shape[1] == 3:
        tiles = tiles.permute(0, 2, 3, 1)
    if tiles.dtype != torch.uint8:
        raise ValueError(f"tiles must be uint8 RGB; got {tiles.dtype}")
    h, w = data_config["input_size"][-2:]
    mode = InterpolationMode(data_config.get("interpolation", "bilinear"))
    crop = data_config.get("crop", False)
    out = []
    for tile in tiles.cpu().numpy():
        img = Image.fromarray(np.ascontiguousarray(tile), "RGB")
        if crop:
            img = TF.center_crop(TF.resize(img, int(data_config.get("resize", min(h, w))), interpolation=mode), [h, w])
        else:
            img = TF.resize(img, [h, w], interpolation=mode)
        out.append(img)
    return out


def preprocess_tiles(tiles: torch.Tensor, data_config: dict) -> torch.Tensor:
    """uint8 tiles (B, H, W, 3) or (B, 3, H, W) -> normalised float32 (B, 3, h, w) at the encoder's input size.

    :func:`resize_tiles` (8-bit PIL, as the publishers) -> ``ToTensor`` -> ``Normalize``: equal to the
    publisher's eval transform applied to the same PIL image.
    """
    from torchvision.transforms import functional as TF

    mean, std = list(data_config["mean"]), list(data_config["std"])
    return torch.stack([TF.normalize(TF.to_tensor(img), mean, std) for img in resize_tiles(tiles, data_config)])
