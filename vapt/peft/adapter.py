"""Adapter as in the VPT paper's "Adapter" row (KMnP/vpt @ 4410440, ``src/models/vit_adapter/vit.py``).

Pfeiffer style, after the MLP of every block and before its residual::

    m   = MLP(LN2(x))
    out = x + m + W_up GELU(W_down m + b_down) + b_up      W_down: (D/rf, D), W_up: (D, D/rf), all zero-init

``reduction_factor`` rf = 8 (official default ``MODEL.ADAPTER.REDUCATION_FACTOR``; the paper searches
{8, 64, 256}); exact-erf GELU. The VPT paper's Adapter numbers (VTAB-1k 70.67 / 77.80 / 33.09, FGVC 85.46) are
the Adapter row of the VAPT / E2VPT / VFPT tables. The adapter is added by a forward hook on the frozen
``mlp`` (its output is replaced by ``m + adapter(m)``), so the backbone's keys stay unchanged. The same hook
serves timm ViTs (``block.mlp``; a layer scale ``ls2`` then scales ``m + adapter(m)``) and open_clip towers
(``block.mlp``, then ``ls_2``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vapt.peft.base import MethodConfig, OutputHook, PeftMethod, register


@dataclass
class AdapterConfig(MethodConfig):
    """Adapter options: ``reduction_factor`` (bottleneck D / rf), ``style`` (only "pfeiffer")."""

    method: str = "adapter"
    reduction_factor: int = 8
    style: str = "pfeiffer"

    def __post_init__(self):
        if self.reduction_factor < 1:
            raise ValueError(f"adapter: reduction_factor must be >= 1; got {self.reduction_factor}.")
        if self.style != "pfeiffer":
            raise ValueError(f"adapter: style must be 'pfeiffer' (the official code supports no other); got {self.style!r}.")


class Bottleneck(nn.Module):
    """``W_up GELU(W_down m + b_down) + b_up``, (B, L, D) -> (B, L, D), exactly zero at init."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


@register
class Adapter(PeftMethod):
    """One `Bottleneck` per block (``adapters.{i}``), applied to the block's MLP output."""

    names: ClassVar[tuple[str, ...]] = ("adapter",)
    config_class: ClassVar[type] = AdapterConfig

    def __init__(self, cfg: AdapterConfig, encoder):
        super().__init__(cfg, encoder)
        if encoder.library not in ("timm", "open_clip") or not all(
                isinstance(getattr(b, "mlp", None), nn.Module) for b in encoder.blocks):
            raise ValueError(f"adapter needs blocks with an mlp module (timm ViT or open_clip tower); "
                             f"{encoder.name} has {type(encoder.blocks[0]).__name__} blocks.")
        d = encoder.embed_dim
        hidden = d // cfg.reduction_factor
        if hidden < 1:
            raise ValueError(f"adapter: reduction_factor {cfg.reduction_factor} leaves no units of D={d}.")
        self.adapters = nn.ModuleList(Bottleneck(d, hidden) for _ in encoder.blocks)
        for i, block in enumerate(encoder.blocks):
            block.mlp.register_forward_hook(OutputHook(self, "add_adapter", i))

    def add_adapter(self, i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Forward hook body: MLP output (B, L, D) -> ``out + adapter_i(out)``."""
        return out + self.adapters[i](out)
