"""vapt: visual prompt tuning (VPT shallow/deep, VAPT adaptive prompts) of frozen Vision Transformers."""
from __future__ import annotations

__version__ = "0.1.0"

from vapt.prompts import PromptConfig  # noqa: E402
from vapt.model import PromptedViT, build_model  # noqa: E402
from vapt.backbones import ViTEncoder, build_encoder  # noqa: E402
from vapt.checkpoints import export_official_checkpoint, load_official_checkpoint  # noqa: E402

__all__ = [
    "PromptConfig",
    "PromptedViT",
    "build_model",
    "ViTEncoder",
    "build_encoder",
    "load_official_checkpoint",
    "export_official_checkpoint",
]
