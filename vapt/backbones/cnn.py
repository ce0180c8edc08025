"""Non-ViT tile encoders: CLAM's truncated ResNet-50, CTransPath (Swin-T + ConvStem), and any timm model.

These are feature extractors only (no prompt tuning): :class:`TileEncoder` gives them the interface of
``ViTEncoder`` that extraction uses (``feature_dim``, ``data_config``, ``preprocess``, frozen forward).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from vapt.backbones import files
from vapt.backbones.errors import BackboneError
from vapt.backbones.preprocess import preprocess_tiles
from vapt.backbones.preset_table import PRESET_INFO, Preprocess
from vapt.backbones.registry import Preset, register, unknown_name
from vapt.backbones.timm_vits import identify, warn_random
from vapt.backbones.vit import build_vit


class TileEncoder(nn.Module):
    """A frozen ``model`` whose ``pool`` turns its output into (B, feature_dim). Forward: (B, 3, H, W) -> (B, D)."""

    def __init__(self, model: nn.Module, name: str, feature_dim: int, data_config: dict, pool: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.pool = pool if pool is not None else nn.Identity()
        self.name = name
        self.feature_dim = int(feature_dim)
        self.data_config = data_config
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TileEncoder:
        return super().train(False)  # frozen: batch norm statistics never update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.model(x))

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles (B, H, W, 3) -> the normalised input (B, 3, H', W') of ``data_config``."""
        return preprocess_tiles(tiles, self.data_config)


class LastFeatureAvgPool(nn.Module):
    """``features_only`` output list -> global average pool of its last map, (B, C)."""

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[-1].mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------------- resnet50
def _build_resnet50(preset: Preset, checkpoint, img_size, **overrides) -> TileEncoder:
    import timm

    if overrides:
        raise BackboneError(f"Preset resnet50 takes no options; got {sorted(overrides)}.")
    w = files.resolve(checkpoint) if checkpoint is not None else None
    sd = files.read_state_dict(w.file) if w is not None else None
    model = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3])
    if sd is None:
        warn_random(preset.name)
    else:
        files.load_checked(model, sd, w.file, preset.name, ignore_unexpected=("layer4.", "fc."), identify=identify)
    return TileEncoder(model, preset.name, 1024, preset.preprocess.data_config(img_size), LastFeatureAvgPool())


# ------------------------------------------------------------------------------------------------- CTransPath
class ConvStem(nn.Module):
    """CTransPath's patch embedding (patch 4): 2 x [Conv3x3 s2, BN, ReLU] -> Conv1x1 -> LayerNorm, NHWC out."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None, output_fmt="NHWC",
                 strict_img_size=True, **_):
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise BackboneError(f"ConvStem needs patch_size 4 and embed_dim % 8 == 0; got {patch_size}, {embed_dim}.")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers, cin, cout = [], in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def ctranspath_remap(sd: dict) -> dict:
    """TransPath / CHIEF file (timm 0.5 Swin layout) -> timm 1.x keys: downsample moves to the next stage,
    ``attn_mask`` / ``relative_position_index`` buffers and the classifier dropped."""
    out = {}
    for k, v in sd.items():
        if "attn_mask" in k or "relative_position_index" in k or k.startswith("head."):
            continue
        out[re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)] = v
    return out


def _build_ctranspath(preset: Preset, checkpoint, img_size, **overrides) -> TileEncoder:
    from timm.models.swin_transformer import SwinTransformer

    if overrides:
        raise BackboneError(f"Preset ctranspath takes no options; got {sorted(overrides)}.")
    w = files.resolve(checkpoint) if checkpoint is not None else None
    sd = ctranspath_remap(files.read_state_dict(w.file)) if w is not None else None
    model = SwinTransformer(img_size=img_size or 224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
                            num_heads=(3, 6, 12, 24), window_size=7, num_classes=0, embed_layer=ConvStem)
    if sd is None:
        warn_random(preset.name)
    else:
        files.load_checked(model, sd, w.file, preset.name, identify=identify)
    return TileEncoder(model, preset.name, 768, preset.preprocess.data_config(img_size))


# ------------------------------------------------------------------------------------------------- generic timm
def build_generic_timm(name, checkpoint, img_size, pretrained, **overrides) -> nn.Module:
    """Any timm model by name: ViTs as ``ViTEncoder`` (prompt-tunable), others as pooled ``TileEncoder``."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    arch = name.split(".")[0]
    if not name.startswith("hf-hub:") and not timm.is_model(arch):
        raise unknown_name(name, timm.list_models())
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, num_classes=0)
    if isinstance(probe, VisionTransformer):
        return build_vit(name, checkpoint, img_size, pretrained, **overrides)
    kw = dict(overrides)
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kw)
    if checkpoint is not None:
        w = files.resolve(checkpoint)
        sd = files.read_state_dict(w.file)
        head = model.default_cfg.get("classifier", "fc") if hasattr(model, "default_cfg") else "fc"
        files.load_checked(model, sd, w.file, name, ignore_unexpected=(f"{head}.",))
    data = timm.data.resolve_data_config({}, model=model)
    size = int(img_size or data["input_size"][-1])
    pre = Preprocess(size, (tuple(data["mean"]), tuple(data["std"])), data.get("interpolation", "bicubic"),
                     crop=True, resize=int(size / data.get("crop_pct", 1.0)) if not img_size else size)
    return TileEncoder(model, name, model.num_features, pre.data_config())


register(Preset("resnet50", **PRESET_INFO["resnet50"], build=_build_resnet50))
register(Preset("ctranspath", **PRESET_INFO["ctranspath"], build=_build_ctranspath))
