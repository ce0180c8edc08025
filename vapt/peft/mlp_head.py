"""MLP-k: a k-layer MLP head on the frozen trunk's pooled feature (the VPT paper's "MLP-3" row).

Official source: KMnP/vpt @ 4410440, ``src/models/mlp.py`` (class ``MLP``) built by ``src/models/vit_models.py``
as ``MLP(feat_dim, [feat_dim] * MODEL.MLP_NUM + [num_classes], special_bias=True)``; MLP-3 is ``MLP_NUM = 2``.
For the pooled feature ``f`` (B, F) each of the ``k - 1`` hidden layers is::

    f <- Dropout_0.1( BatchNorm1d( ReLU( W f + b ) ) )       W: (F, F) kaiming_normal(fan_out), b: PyTorch default

(in that order: ReLU before BatchNorm) and the last layer is the model's head (kaiming_normal fan_out, bias
``-log(99)``), exactly the official ``last_layer``. The trunk is frozen, so its output can be cached. On
ViT-B/16 (F = 768) MLP-3 trains 2 x (768 x 768 + 768) + 2 x 2 x 768 = 1,184,256 parameters besides the head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.peft.base import MethodConfig, PeftMethod, register


@dataclass
class MlpHeadConfig(MethodConfig):
    """MLP-k options: ``num_layers`` k (linear layers, the head included; the VPT paper's MLP-3 has 3) and
    ``dropout`` after each hidden layer (official 0.1)."""

    method: str = "mlp"
    num_layers: int = 3
    dropout: float = 0.1

    def __post_init__(self):
        if self.num_layers < 2:
            raise ValueError(f"mlp: num_layers must be >= 2 (1 is the linear probe, method 'linear'); "
                             f"got {self.num_layers}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"mlp: dropout must be in [0, 1); got {self.dropout}.")


@register
class MlpHead(PeftMethod):
    """``hidden``: the k - 1 hidden layers (Linear, ReLU, BatchNorm1d, Dropout) in front of the model's head."""

    names: ClassVar[tuple[str, ...]] = ("mlp",)
    config_class: ClassVar[type] = MlpHeadConfig

    def __init__(self, cfg: MlpHeadConfig, encoder):
        super().__init__(cfg, encoder)
        self.depth = len(encoder.blocks)
        f = encoder.feature_dim
        layers: list[nn.Module] = []
        for _ in range(cfg.num_layers - 1):
            fc = nn.Linear(f, f)
            nn.init.kaiming_normal_(fc.weight, a=0, mode="fan_out")
            layers += [fc, nn.ReLU(), nn.BatchNorm1d(f)]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
        self.hidden = nn.Sequential(*layers)

    @property
    def frozen_prefix_blocks(self) -> int:
        return self.depth

    def head_input(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, F) pooled features -> (B, F) input of the head."""
        return self.hidden(features)
