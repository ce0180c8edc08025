"""Frozen backbones and the named encoders of the field: one name plus a local file -> a ready frozen model.

Two factories, one vocabulary:

- ``build_backbone(name, checkpoint=None, img_size=None, ...)``: what prompt tuning accepts, a frozen
  :class:`ViTEncoder` (timm ViT names, ``open_clip:<model>`` and the ViT presets).
- ``build_encoder(name, checkpoint=None, img_size=None, ...)``: any encoder: a preset of computational
  pathology (UNI, CONCH, Virchow, GigaPath, Phikon, CTransPath, ResNet-50 ...; names follow TRIDENT's), any timm
  model or ``open_clip:<model>``; it loads the publisher's file from your disk (never downloads) and returns
  a frozen encoder that knows its input size, mean/std, interpolation, output rule and feature dimension.

Every ViT preset is also a ``vapt`` backbone (``vapt.build_model("uni_v1", checkpoint=...)``). See
``docs/encoders.md`` for the table. Names are imported on first use, so ``import vapt.backbones`` is cheap.
"""
from __future__ import annotations

from vapt.lazy_exports import lazy_getattr

_EXPORTS = {
    "BackboneError": "vapt.backbones.errors",
    "ViTEncoder": "vapt.backbones.vit",
    "build_vit": "vapt.backbones.vit",
    "build_backbone": "vapt.backbones.factory",
    "build_encoder": "vapt.backbones.factory",
    "get_preset": "vapt.backbones.factory",
    "list_presets": "vapt.backbones.factory",
    "PRESETS": "vapt.backbones.factory",
    "Preset": "vapt.backbones.registry",
    "Preprocess": "vapt.backbones.preprocess",
    "preprocess_tiles": "vapt.backbones.preprocess",
    "resize_tiles": "vapt.backbones.preprocess",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr("vapt.backbones", _EXPORTS)
