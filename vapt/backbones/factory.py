"""The two factories of the backbones package: one name plus an optional local file -> a ready frozen encoder.

- :func:`build_encoder`: any preset (``uni_v1``, ``conch_v1``, ``resnet50`` ...), any timm model (CNNs give pooled
  features) or ``open_clip:<model>``; used for tile features (``mgpath extract``).
- :func:`build_backbone`: what prompt tuning accepts, a :class:`~vapt.backbones.vit.ViTEncoder` (timm ViT names,
  ``open_clip:<model>`` and the ViT presets); used by :func:`vapt.build_model`.

Importing this module fills the preset table (the preset modules register themselves on import).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from torch import nn

from vapt.backbones import cnn, hf, timm_vits  # noqa: F401 - each registers its presets on import
from vapt.backbones.cnn import build_generic_timm
from vapt.backbones.errors import BackboneError
from vapt.backbones.names import similar_names
from vapt.backbones.registry import PRESETS, Preset
from vapt.backbones.vit import IMAGENET_MEAN, IMAGENET_STD, OPEN_CLIP_PREFIX, ViTEncoder, build_vit

__all__ = ["build_backbone", "build_encoder", "get_preset", "list_presets"]


def list_presets() -> list[Preset]:
    """Every preset, in registration order."""
    return list(PRESETS.values())


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises with the closest preset names."""
    if name in PRESETS:
        return PRESETS[name]
    close = similar_names(name, PRESETS)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(f"Unknown encoder preset {name!r}.{hint} `mgpath encoders` lists them.")


def build_encoder(name: str, checkpoint: str | os.PathLike | None = None, img_size: int | None = None, *,
                  mean=None, std=None, pretrained: bool = False,
                  **overrides) -> nn.Module:
    """Build a frozen tile encoder by name, from the user's local weights.

    Parameters
    ----------
    name : str
        A preset (``uni_v1``, ``conch_v1``, ``virchow2``, ``resnet50`` ... see :func:`list_presets`), any timm
        model name (CNNs included: pooled features) or ``open_clip:<model>`` (its vision tower).
    checkpoint : path, optional
        The publisher's file or folder: a state dict (``pytorch_model.bin`` / ``.safetensors`` / ``.pth``), a
        Hugging Face model folder (``config.json`` + weights) or a hub-cache folder (``models--org--name``).
        Training-checkpoint wrappers (``model`` / ``state_dict`` / ``teacher`` / ``module``) are unwrapped.
    img_size : int, optional
        Input size other than the publisher's (a multiple of the patch size); position embeddings are
        resampled once, as timm's ``dynamic_img_size`` does at run time.
    mean, std : 3-tuples, optional
        Override the publisher's normalisation (recorded by the caller; never needed for presets).
    pretrained : bool
        Generic timm / open_clip names only: download the library's weights (the only network path).
    **overrides
        Preset options (e.g. ``output="trident"`` for conch_v1) or timm constructor keywords (e.g. ``depth``).

    Returns
    -------
    encoder : nn.Module
        Frozen, eval mode; ``encoder(x)`` maps normalised (B, 3, H, W) to (B, feature_dim); carries ``name``,
        ``feature_dim``, ``data_config`` and ``preprocess(tiles_uint8) -> (B, 3, H, W)``.
    """
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.unavailable:
            raise BackboneError(f"Encoder preset {name!r} is not available: {preset.unavailable}")
        if pretrained:
            raise BackboneError(f"Preset {name!r} loads the publisher's file from your disk; download it (see "
                                f"{preset.source}) and pass checkpoint=PATH (--checkpoint PATH).")
        enc = preset.build(preset, checkpoint, img_size, **overrides)
    elif name.startswith(OPEN_CLIP_PREFIX):
        enc = build_vit(name, checkpoint, img_size, pretrained, **overrides)
    else:
        enc = build_generic_timm(name, checkpoint, img_size, pretrained, **overrides)
    if mean is not None or std is not None:
        enc.data_config = {**enc.data_config, "mean": tuple(mean or enc.data_config["mean"]),
                           "std": tuple(std or enc.data_config["std"])}
    enc.preset_name = name
    enc.overrides = {k: repr(v) for k, v in overrides.items()}
    return enc


def build_backbone(name: str, checkpoint: str | os.PathLike | None = None,
                   img_size: int | Sequence[int] | None = None, pretrained: bool = False,
                   global_pool: str | None = None, **timm_kwargs) -> ViTEncoder:
    """Build a frozen, prompt-tunable ViT encoder, optionally from a local checkpoint file.

    ``name`` is a timm ViT name, ``open_clip:<model name>``, or a ViT preset (``uni_v1``, ``virchow2``,
    ``phikon`` ...: the publisher's architecture, preprocessing and output rule); CNN presets are refused.
    The other arguments are those of :func:`vapt.backbones.vit.build_vit` (checkpoint formats, ``img_size``
    resampling, ``pretrained`` downloads, ``global_pool``).

    Returns
    -------
    ViTEncoder
        Frozen; ``encoder(x)`` maps (B, 3, H, W) to (B, feature_dim).
    """
    if name not in PRESETS:
        return build_vit(name, checkpoint, img_size, pretrained, global_pool, **timm_kwargs)
    if not PRESETS[name].vit:
        raise BackboneError(f"Preset {name!r} is a {PRESETS[name].arch}, not a Vision Transformer; prompt "
                            "tuning needs a ViT preset (e.g. uni_v1, phikon, virchow2).")
    if global_pool is not None:
        timm_kwargs["global_pool"] = global_pool
    enc = build_encoder(name, checkpoint, img_size, pretrained=pretrained, **timm_kwargs)
    if not isinstance(enc, ViTEncoder):
        raise BackboneError(f"Preset {name!r} is not a Vision Transformer; prompt tuning needs a ViT preset.")
    mean, std = tuple(enc.data_config["mean"]), tuple(enc.data_config["std"])
    if (mean, std) != (IMAGENET_MEAN, IMAGENET_STD):
        warnings.warn(f"Preset {name} expects inputs normalised with mean {mean} / std {std}; the vapt data "
                      "modules normalise with ImageNet statistics, so feed it data normalised with the "
                      "preset's (model.backbone.data_config).", stacklevel=2)
    return enc
