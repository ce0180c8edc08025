"""Each publisher's tile preprocessing, applied to uint8 tiles on tensors.

A ``data_config`` dict (what every encoder carries) says it all:

``input_size`` (3, H, W) the encoder's input; ``resize`` the shorter side the tile is resized to first (an int,
aspect kept, as torchvision ``Resize(int)``); ``crop`` whether a centre crop to (H, W) follows (otherwise the
resize is to (H, W) exactly, which equals ``Resize(int)`` for square tiles); ``interpolation`` (``bilinear``
| ``bicubic``); ``mean`` / ``std`` on the 0-1 scale.
"""
from __future__ import annotations

import torch

from vapt.backbones.preset_table import HALF, HIBOU, HOPTIMUS, IMAGENET, OPENAI_CLIP, Preprocess

__all__ = ["HALF", "HIBOU", "HOPTIMUS", "IMAGENET", "OPENAI_CLIP", "Preprocess", "preprocess_tiles"]


def preprocess_tiles(tiles: torch.Tensor, data_config: dict) -> torch.Tensor:
    """uint8 tiles (B, H, W, 3) or (B, 3, H, W) -> normalised float32 (B, 3, h, w) at the encoder's input size.

    Resize uses torchvision on tensors (antialiased); a tile already at the target size is not resampled.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if tiles.ndim != 4:
        raise ValueError(f"tiles must be (B, H, W, 3) or (B, 3, H, W); got {tuple(tiles.shape)}")
    if tiles.shape[-1] == 3 and tiles.shape[1] != 3:
        tiles = tiles.permute(0, 3, 1, 2)
    if tiles.dtype != torch.uint8:
        raise ValueError(f"tiles must be uint8 RGB; got {tiles.dtype}")
    h, w = data_config["input_size"][-2:]
    mode = InterpolationMode(data_config.get("interpolation", "bilinear"))
    x = tiles.float() / 255.0
    if data_config.get("crop", False):
        x = TF.resize(x, [int(data_config.get("resize", min(h, w)))], interpolation=mode, antialias=True)
        x = TF.center_crop(x, [h, w])
    elif tuple(x.shape[-2:]) != (h, w):
        x = TF.resize(x, [h, w], interpolation=mode, antialias=True)
    return TF.normalize(x, list(data_config["mean"]), list(data_config["std"]))
