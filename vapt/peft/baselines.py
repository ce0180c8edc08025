"""The VPT paper's classical rows that need no new modules: linear probe, full fine-tuning, BitFit, Partial-k.

* ``linear`` (PromptConfig): only the head trains; the whole trunk is frozen, so its output can be cached.
* ``full`` (PromptConfig): every backbone parameter trains, the backbone follows train/eval mode.
* ``bitfit``: the backbone's bias vectors train (Zaken et al. 2022; the VPT paper's "Bias" row).
* ``partial``: the last ``k`` blocks and the final norm train (the VPT paper's "Partial-1" with ``k = 1``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vapt.peft.base import MethodConfig, PeftMethod, register
from vapt.peft.vpt import PromptConfig


@register
class LinearProbe(PeftMethod):
    """Frozen trunk, trainable head (the head belongs to `PromptedViT`)."""

    names: ClassVar[tuple[str, ...]] = ("linear",)
    config_class: ClassVar[type] = PromptConfig

    def __init__(self, cfg: PromptConfig, encoder):
        super().__init__(cfg, encoder)
        self.depth = len(encoder.blocks)

    @property
    def frozen_prefix_blocks(self) -> int:
        return self.depth


@register
class FullFineTuning(PeftMethod):
    """Every backbone parameter trains (`PromptedViT` unfreezes it and lets it follow train/eval mode)."""

    names: ClassVar[tuple[str, ...]] = ("full",)
    config_class: ClassVar[type] = PromptConfig
    trains_backbone: ClassVar[bool] = True


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit: no options."""

    method: str = "bitfit"


@register
class BitFit(PeftMethod):
    """Unfreeze every bias vector of the backbone (qkv, proj, fc1, fc2 and LayerNorm biases; patch embedding bias).

    The trainable tensors stay in the backbone (``backbone.model....bias``); the backbone stays in eval mode.
    """

    names: ClassVar[tuple[str, ...]] = ("bitfit",)
    config_class: ClassVar[type] = BitFitConfig

    def __init__(self, cfg: BitFitConfig, encoder):
        super().__init__(cfg, encoder)
        for name, p in encoder.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)


@dataclass
class PartialConfig(MethodConfig):
    """Partial-k: ``num_blocks`` last blocks train (the VPT paper's Partial-1 has 1)."""

    method: str = "partial"
    num_blocks: int = 1

    def __post_init__(self):
        if self.num_blocks < 1:
            raise ValueError(f"partial: num_blocks must be >= 1; got {self.num_blocks}.")


@register
class PartialFineTuning(PeftMethod):
    """Unfreeze the last ``num_blocks`` blocks and the final norm; earlier blocks stay frozen (and cacheable)."""

    names: ClassVar[tuple[str, ...]] = ("partial",)
    config_class: ClassVar[type] = PartialConfig

    def __init__(self, cfg: PartialConfig, encoder):
        super().__init__(cfg, encoder)
        depth = len(encoder.blocks)
        if cfg.num_blocks > depth:
            raise ValueError(f"partial: num_blocks={cfg.num_blocks} but {encoder.name} has {depth} blocks.")
        self.first_trained = depth - cfg.num_blocks
        for block in list(encoder.blocks)[self.first_trained:]:
            block.requires_grad_(True)
        if encoder.library == "timm":
            encoder.model.norm.requires_grad_(True)
            encoder.model.fc_norm.requires_grad_(True)
        else:
            encoder.model.ln_post.requires_grad_(True)

    @property
    def frozen_prefix_blocks(self) -> int:
        return self.first_trained
