"""Side-tuning: a trainable AlexNet beside the frozen ViT, blended into the pooled feature (the VPT paper's
"Sidetune" row; Zhang et al. 2020).

Official source: KMnP/vpt @ 4410440, ``src/models/vit_models.py`` (``MODEL.TRANSFER_TYPE = "side"``). For images
``x`` and the frozen trunk's pooled feature ``f`` (B, F)::

    s = P flatten(avgpool_6x6(AlexNet.features(x)))      P: (F, 9216), no bias, PyTorch's default init
    head input = sigmoid(alpha) f + (1 - sigmoid(alpha)) s      alpha = 0 at the start

The side network is torchvision's AlexNet feature stack (ImageNet weights in the official code,
``models.alexnet(pretrained=True)``) and trains with P and alpha; the ViT stays frozen. Give the torchvision
AlexNet weights file (``alexnet-owt-7be5be79.pth``, or its tensors as ``.safetensors``) as ``side_checkpoint``;
without it the side network starts from random weights (a warning says so). Only ``features.*`` tensors are
read. On ViT-B/16: 2,469,696 (AlexNet features) + 7,077,888 (P) + 1 = 9,547,585 trained parameters besides the
head. Inputs must be at least 63 px for AlexNet's three max-pools.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.fileio.state_dict import check_state_dict
from vapt.fileio.weights import WeightsFileError, load_weights_file
from vapt.peft.base import MethodConfig, PeftMethod, register

SIDE_DIM = 256 * 6 * 6


def alexnet_features() -> nn.Sequential:
    """torchvision's ``AlexNet.features`` (same layers, indices and default init), (B, 3, H, W) -> (B, 256, h, w)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


@dataclass
class SideTuneConfig(MethodConfig):
    """Side-tuning options: ``side_checkpoint``, the torchvision AlexNet weights file (None: random weights)."""

    method: str = "sidetune"
    side_checkpoint: str | None = None


@register
class SideTune(PeftMethod):
    """``features`` (AlexNet's convolutional stack), ``projection`` (F, 9216) and the blend logit ``alpha``."""

    names: ClassVar[tuple[str, ...]] = ("sidetune",)
    config_class: ClassVar[type] = SideTuneConfig

    def __init__(self, cfg: SideTuneConfig, encoder):
        super().__init__(cfg, encoder)
        self.depth = len(encoder.blocks)
        self.features = alexnet_features()
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.projection = nn.Linear(SIDE_DIM, encoder.feature_dim, bias=False)
        self.alpha = nn.Parameter(torch.tensor(0.0))
        if cfg.side_checkpoint is None:
            warnings.warn("sidetune: the AlexNet side network starts from random weights (the VPT paper's row used "
                          "ImageNet weights); pass side_checkpoint=PATH to torchvision's alexnet-owt-7be5be79.pth.",
                          stacklevel=2)
        else:
            self._load(cfg.side_checkpoint)

    def _load(self, path: str) -> None:
        sd = load_weights_file(path)
        if not isinstance(sd, dict):
            raise WeightsFileError(f"sidetune: {path} holds a {type(sd).__name__}, not AlexNet's state dict.")
        sd = {k.removeprefix("features."): torch.as_tensor(v) for k, v in sd.items() if k.startswith("features.")}
        check_state_dict(self.features.state_dict(), sd, error=WeightsFileError,
                         what=f"Side-network weights {path} do not fit torchvision's AlexNet features",
                         hint="pass torchvision's alexnet-owt-7be5be79.pth (keys features.0.weight ...).")
        self.features.load_state_dict(sd)

    @property
    def frozen_prefix_blocks(self) -> int:
        return self.depth

    def head_input(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, F) pooled ViT features and (B, 3, H, W) images -> (B, F) blend with the side network's feature."""
        side = self.projection(self.avgpool(self.features(images)).flatten(1))
        a = torch.sigmoid(self.alpha)
        return a * features + (1 - a) * side
