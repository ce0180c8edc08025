"""Fixtures for the vapt tests: tiny open_clip configs and checkpoint writers."""
from __future__ import annotations

import json

import pytest

TINY_OPEN_CLIP = "vapt-test-tiny-vit"


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> str:
    """Register a tiny open_clip ViT config (32 px, patch 16, width 32) and return its ``open_clip:`` name."""
    import open_clip

    cfg = {"embed_dim": 24,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path_factory.mktemp("open_clip_cfg")
    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return f"open_clip:{TINY_OPEN_CLIP}"
