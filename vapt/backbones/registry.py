"""The preset table: one :class:`Preset` per named encoder.

A preset knows how its publisher builds the model (``build``), how tiles are preprocessed (``preprocess``),
what the output is (``dim``) and where its weights come from. Presets register themselves from the modules
beside this one (``timm_vits``, ``hf``, ``cnn``); :mod:`vapt.backbones.factory` imports those, so the table is
complete wherever a preset is looked up or built.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vapt.backbones.errors import BackboneError
from vapt.backbones.names import similar_names
from vapt.backbones.preset_table import Preprocess

__all__ = ["PRESETS", "Preset", "register", "unknown_name"]


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


def unknown_name(name: str, timm_names: list[str]) -> BackboneError:
    """Error for a name that is neither a preset nor a timm / open_clip model (closest names of both)."""
    close = similar_names(name, list(PRESETS) + timm_names, n=4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return BackboneError(f"Unknown encoder {name!r}: not a preset, timm model or open_clip:<name>.{hint} "
                         "`mgpath encoders` lists the presets.")
