"""The preset table: one :class:`Preset` per named encoder, and the factory :func:`build_encoder`.

A preset knows how its publisher builds the model (``build``), how tiles are preprocessed (``preprocess``),
what the output is (``dim``) and where its weights come from. Presets register themselves from the modules
beside this one (``timm_vits``, ``hf``, ``cnn``); the table is filled on first use.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from vapt.backbones import OPEN_CLIP_PREFIX, BackboneError
from vapt.encoders.preprocess import Preprocess
from vapt.names import similar_names

__all__ = ["PRESETS", "Preset", "build_encoder", "get_preset", "list_presets", "register"]


@dataclass(frozen=True)
class Preset:
    """A named tile encoder as its publisher builds it.

    ``build(preset, checkpoint, img_size, **overrides) -> encoder`` (a ``ViTEncoder`` or
    ``TileEncoder``). ``unavailable`` (a one-line reason naming the package or file it needs) marks presets
    that cannot be rebuilt exactly here; they are listed but refuse to build.
    """

    name: str
    dim: int
    preprocess: Preprocess
    build: Callable | None
    arch: str
    layout: str
    source: str
    licence: str = "unverified"
    magnification: str = "unverified"
    vit: bool = True
    extra: str | None = None
    unavailable: str | None = None
    notes: str = ""
    options: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


def _load_tables() -> None:
    """Import the modules that register presets (every one: importing one of them first must not hide the rest)."""
    from vapt.encoders import cnn, hf, timm_vits  # noqa: F401 - registration side effect


def list_presets() -> list[Preset]:
    """Every preset, in registration order."""
    _load_tables()
    return list(PRESETS.values())


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises with the closest preset names."""
    _load_tables()
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
    _load_tables()
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.unavailable:
            raise BackboneError(f"Encoder preset {name!r} is not available: {preset.unavailable}")
        if pretrained:
            raise BackboneError(f"Preset {name!r} loads the publisher's file from your disk; download it (see "
                                f"{preset.source}) and pass checkpoint=PATH (--checkpoint PATH).")
        enc = preset.build(preset, checkpoint, img_size, **overrides)
    elif name.startswith(OPEN_CLIP_PREFIX):
        from vapt.backbones import build_encoder as build_vit

        enc = build_vit(name, checkpoint, img_size, pretrained, **overrides)
    else:
        from vapt.encoders.cnn import build_generic_timm

        enc = build_generic_timm(name, checkpoint, img_size, pretrained, **overrides)
    if mean is not None or std is not None:
        enc.data_config = {**enc.data_config, "mean": tuple(mean or enc.data_config["mean"]),
                           "std": tuple(std or enc.data_config["std"])}
    enc.preset_name = name
    enc.overrides = {k: repr(v) for k, v in overrides.items()}
    return enc


def unknown_name(name: str, timm_names: list[str]) -> BackboneError:
    """Error for a name that is neither a preset nor a timm / open_clip model (closest names of both)."""
    _load_tables()
    close = similar_names(name, list(PRESETS) + timm_names, n=4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return BackboneError(f"Unknown encoder {name!r}: not a preset, timm model or open_clip:<name>.{hint} "
                         "`mgpath encoders` lists the presets.")
