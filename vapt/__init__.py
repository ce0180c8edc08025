"""vapt: visual prompt tuning (VPT shallow/deep, VAPT adaptive prompts) of frozen Vision Transformers.

The public names are imported lazily so that `import vapt` stays cheap for command-line tools.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, visible to type checkers and to the API docs (griffe)
    from vapt.backbones import BackboneError, ViTEncoder, build_encoder  # noqa: F401
    from vapt.checkpoints import export_official_checkpoint, load_official_checkpoint  # noqa: F401
    from vapt.model import PromptedViT, build_model  # noqa: F401
    from vapt.prompts import PromptConfig  # noqa: F401

__version__ = "0.1.0"

_EXPORTS = {
    "PromptConfig": "vapt.prompts",
    "PromptedViT": "vapt.model",
    "build_model": "vapt.model",
    "ViTEncoder": "vapt.backbones",
    "build_encoder": "vapt.backbones",
    "BackboneError": "vapt.backbones",
    "load_official_checkpoint": "vapt.checkpoints",
    "export_official_checkpoint": "vapt.checkpoints",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vapt' has no attribute {name!r}")
