"""`PromptedViT`: a frozen ViT encoder + one PEFT method (`vapt.peft`) + a linear head, and `build_model`."""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import nn

from vapt.backbones import ViTEncoder, build_backbone
from vapt.fileio.state_dict import check_state_dict
from vapt.peft import MethodConfig, PeftMethod, PromptConfig, build_method


def official_head_bias(prior: float = 0.01) -> float:
    """The official head bias ``-log((1 - prior) / prior)`` (-4.595 for prior 0.01)."""
    return -math.log((1.0 - prior) / prior)


class PromptedViT(nn.Module):
    """A frozen ViT adapted by one PEFT method (VPT / VAPT / LoRA / Adapter / ...), a linear probe or full
    fine-tuning.

    Parameters
    ----------
    backbone : ViTEncoder
    num_classes : int
    prompt : PromptConfig or any `vapt.peft` method config
        The method, chosen by its ``method`` field; default VAPT with the official settings.
    head_bias_prior : float or None
        Head bias starts at ``-log((1 - prior) / prior)`` and the weight at kaiming-normal (fan_out), as in
        the official code; ``None`` keeps PyTorch's default Linear init.

    Forward: images (B, 3, H, W) -> logits (B, num_classes).
    """

    def __init__(self, backbone: ViTEncoder, num_classes: int, prompt: PromptConfig | None = None,
                 head_bias_prior: float | None = 0.01):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
        self.prompt_config: MethodConfig = prompt or PromptConfig()
        self.backbone = backbone
        self.num_classes = num_classes
        backbone.freeze()
        method = build_method(self.prompt_config, backbone)
        if method.trains_backbone:
            backbone.unfreeze()
        self._method_attribute = method.attribute
        setattr(self, method.attribute, method)
        if method.attribute != "prompts":
            self.prompts = None  # VPT / VAPT prompt generator, None for every other method
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        if head_bias_prior is not None:
            nn.init.kaiming_normal_(self.head.weight, a=0, mode="fan_out")
            nn.init.constant_(self.head.bias, official_head_bias(head_bias_prior))
        self.train()

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "PromptedViT":
        """Prompt modules and head follow ``mode``; a frozen backbone always stays in eval mode (its dropout and
        drop-path never fire during prompt tuning, as in the official code). Full fine-tuning trains it."""
        self.training = mode
        for child in self.children():
            child.train(mode)
        if not self.method.trains_backbone:
            self.backbone.eval()
        return self

    @property
    def method(self) -> PeftMethod:
        """The PEFT method module (``self.prompts`` for VPT / VAPT, ``self.peft`` otherwise)."""
        return getattr(self, self._method_attribute)

    # ------------------------------------------------------------------ forward
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features after the final norm, as the head sees them. (B, 3, H, W) -> (B, feature_dim)."""
        enc = self.backbone
        h, num_skip = self.method.forward_tokens(enc, enc.embed(images))
        return self.method.head_input(enc.pool(enc.final_norm(h), num_skip=num_skip), images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes)."""
        return self.head(self.forward_features(images))

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: the trainable tensors (prompts / adapters + head; everything for ``full``) and the
        whole method module, frozen parts included (e.g. E2VPT's pruned masks)."""
        names = set(self.trainable_parameters())
        names |= {f"{self._method_attribute}.{k}" for k in self.method.state_dict()}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a dict from :meth:`trainable_state_dict`; every trainable key must be present."""
        check_state_dict(self.state_dict(), sd, what="Trainable state does not fit this model",
                         hint="Was it saved for another method or backbone?", expected=self.trainable_parameters())
        self.load_state_dict(sd, strict=False)


def build_model(
    backbone: str = "vit_base_patch16_224",
    num_classes: int = 100,
    prompt: PromptConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    img_size: int | Sequence[int] | None = None,
    pretrained: bool = False,
    head_bias_prior: float | None = 0.01,
    **backbone_kwargs,
) -> PromptedViT:
    """Backbone name (+ optional local checkpoint) -> ready `PromptedViT`.

    Parameters
    ----------
    backbone : str
        timm ViT name or ``open_clip:<name>`` (see :func:`vapt.backbones.build_encoder`).
    num_classes : int
    prompt : PromptConfig or any `vapt.peft` method config, optional
        Defaults to VAPT with the official defaults.
    checkpoint : path, optional
        Local backbone weights.
    img_size : int or (H, W), optional
    """
    encoder = build_backbone(backbone, checkpoint=checkpoint, img_size=img_size, pretrained=pretrained,
                             **backbone_kwargs)
    return PromptedViT(encoder, num_classes=num_classes, prompt=prompt or PromptConfig(),
                       head_bias_prior=head_bias_prior)
