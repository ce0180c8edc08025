"""vapt: visual prompt tuning (VPT shallow/deep, VAPT adaptive prompts) of frozen Vision Transformers.

The public names are imported lazily so that `import vapt` stays cheap for command-line tools.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vapt import moved_modules
from vapt.lazy_exports import lazy_getattr

if TYPE_CHECKING:  # the same names, visible to type checkers and to the API docs (griffe)
    from vapt.backbones.errors import BackboneError  # noqa: F401
    from vapt.backbones.factory import build_backbone, build_encoder  # noqa: F401
    from vapt.backbones.vit import ViTEncoder  # noqa: F401
    from vapt.checkpoints import export_official_checkpoint, load_official_checkpoint  # noqa: F401
    from vapt.model import PromptedViT, build_model  # noqa: F401
    from vapt.peft.vpt import PromptConfig  # noqa: F401

__version__ = "0.1.0"

_EXPORTS = {
    "PromptConfig": "vapt.peft.vpt",
    "PromptedViT": "vapt.model",
    "build_model": "vapt.model",
    "ViTEncoder": "vapt.backbones.vit",
    "build_backbone": "vapt.backbones.factory",  # what prompt tuning accepts: a frozen ViTEncoder
    "build_encoder": "vapt.backbones.factory",  # any encoder preset, timm model or open_clip tower
    "BackboneError": "vapt.backbones.errors",
    "load_official_checkpoint": "vapt.checkpoints",
    "export_official_checkpoint": "vapt.checkpoints",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr("vapt", _EXPORTS)
moved_modules.install()  # old module paths (vapt.module, vapt.encoders ...) still import, with a notice
