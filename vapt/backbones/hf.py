"""Presets distributed as Hugging Face / open_clip model folders: Phikon (HF ViTModel), Phikon-v2 (HF Dinov2Model),
PLIP (HF CLIPModel), QuiltNet (open_clip), and the presets that need a package or code not rebuilt here.

HF ViT / DINOv2 folders are rebuilt as timm ``VisionTransformer`` (so they are vapt backbones too) from their
``config.json``, with :func:`hf_vit_to_timm` remapping the keys; PLIP as an open_clip vision tower.
"""
from __future__ import annotations

import re
import warnings
from functools import partial

import torch
from torch import nn

from vapt.backbones import files
from vapt.backbones.errors import BackboneError
from vapt.backbones.hf_clip import hf_clip_to_open_clip, open_clip_from_hf_config
from vapt.backbones.preset_table import PRESET_INFO
from vapt.backbones.registry import Preset, register
from vapt.backbones.timm_vits import fit_pos_embed, identify, warn_random
from vapt.backbones.vit import ViTEncoder
from vapt.backbones.vit_files import load_open_clip_checkpoint
from vapt.quiet import drop_log_records

_BLOCK = re.compile(r"^encoder\.layers?\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
#: HF ViT / DINOv2 block modules (files as published, and transformers 5 in-memory names) -> timm
_BLOCK_MAP = {"attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
              "layernorm_before": "norm1", "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
              "output.dense": "mlp.fc2", "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
              "mlp.fc2": "mlp.fc2", "layer_scale1": "ls1", "layer_scale2": "ls2"}
_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
        "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}


def hf_vit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``ViTModel`` / ``Dinov2Model`` state dict -> timm ``VisionTransformer`` keys (mask token, pooler dropped)."""
    sd = {re.sub(r"^(vit|dinov2)\.", "", k).replace("encoder.layers.", "encoder.layer.")
          if not k.startswith("layers.") else "encoder.layer." + k[len("layers."):]: v for k, v in sd.items()}
    out, qkv = {}, {}
    top = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
            continue
        m = _BLOCK.match(k)
        if not m:
            if not k.startswith(("embeddings.mask_token", "pooler.")):
                out[k] = v  # left as is: reported as unexpected by the strict load
            continue
        i, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module in _QKV:
            qkv.setdefault((i, kind), {})[_QKV[module]] = v
        elif module in _BLOCK_MAP:
            out[f"blocks.{i}.{_BLOCK_MAP[module]}.{'gamma' if kind == 'lambda1' else kind}"] = v
        else:
            out[k] = v
    for (i, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _timm_from_hf_config(cfg: dict, path, img_size: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    kind = cfg.get("model_type")
    if kind not in ("vit", "dinov2"):
        raise BackboneError(f"{path}: model_type {kind!r} is not an HF ViT / DINOv2 config.")
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("use_swiglu_ffn"):
        raise BackboneError(f"{path}: hidden_act {cfg.get('hidden_act')!r} / SwiGLU FFN is not rebuilt here.")
    width = cfg["hidden_size"]
    ratio = cfg.get("mlp_ratio", 4) if kind == "dinov2" else cfg.get("intermediate_size", 4 * width) / width
    return VisionTransformer(
        img_size=img_size, patch_size=cfg.get("patch_size", 16), embed_dim=width,
        depth=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"], mlp_ratio=ratio,
        qkv_bias=cfg.get("qkv_bias", True), num_classes=0,
        init_values=cfg.get("layerscale_value", 1.0) if kind == "dinov2" else None,
        norm_layer=partial(nn.LayerNorm, eps=cfg.get("layer_norm_eps", 1e-12 if kind == "vit" else 1e-6)))


def _build_hf_vit(preset: Preset, checkpoint, img_size, **overrides) -> ViTEncoder:
    if overrides:
        raise BackboneError(f"Preset {preset.name} takes its architecture from config.json; got {sorted(overrides)}.")
    if checkpoint is None:
        raise BackboneError(f"Preset {preset.name} is built from the publisher's folder (config.json + weights); "
                            f"pass --checkpoint FOLDER ({preset.source}).")
    weights = files.resolve(checkpoint)
    cfg = weights.config()
    if cfg is None:
        raise BackboneError(f"{weights.file}: preset {preset.name} needs the config.json beside the weights; "
                            f"pass the model folder ({preset.source}).")
    if cfg.get("model_type") != preset.options["model_type"]:
        raise BackboneError(f"{weights.folder}/config.json is a {cfg.get('model_type')!r} model, not the "
                            f"{preset.options['model_type']!r} of preset {preset.name}; check --encoder.")
    raw = files.read_state_dict(weights.file)
    model = _timm_from_hf_config(cfg, weights.folder, int(img_size or preset.preprocess.size))
    files.load_checked(model, hf_vit_to_timm(raw), weights.file, preset.name, identify=lambda _: identify(raw),
                       resample=lambda d: fit_pos_embed(model, d))
    return ViTEncoder(model, "timm", preset.name, data_config=preset.preprocess.data_config(img_size))


def _build_clip_visual(preset: Preset, checkpoint, img_size, **overrides) -> ViTEncoder:
    """PLIP (HF CLIPModel folder; ``plip_pooled``: without its projection) or QuiltNet (open_clip file / folder):
    the CLIP vision tower.

    QuiltNet's activation (GELU or QuickGELU) comes from the publisher's ``open_clip_config.json`` beside the
    weights; without it the tower is open_clip's ``ViT-B-32`` (GELU) unless ``activation="quick_gelu"`` is
    passed, and a warning says so.
    """
    import open_clip

    activation = overrides.pop("activation", None) if preset.name == "quiltnet" else None
    if overrides or img_size:
        raise BackboneError(f"Preset {preset.name} is the CLIP tower as published; got overrides "
                            f"{sorted(overrides) + (['img_size'] if img_size else [])}.")
    if activation not in (None, "gelu", "quick_gelu"):
        raise BackboneError(f"quiltnet activation must be 'gelu' or 'quick_gelu'; got {activation!r}.")
    cfg = preset.preprocess.data_config()
    if preset.name in ("plip", "plip_pooled"):
        if checkpoint is None:
            raise BackboneError(f"Preset plip is built from the HF folder (config.json + weights); pass "
                                f"--checkpoint FOLDER ({preset.source}).")
        weights = files.resolve(checkpoint)
        if weights.config() is None:
            raise BackboneError(f"{weights.file}: preset plip needs the HF folder with config.json.")
        visual = open_clip_from_hf_config(weights.config(), weights.folder).visual
        sd = hf_clip_to_open_clip(files.read_state_dict(weights.file), "visual")
        files.load_checked(visual, sd, weights.file, preset.name)
        if preset.name == "plip_pooled":
            visual.proj = None  # the pooled output before visual_projection
        return ViTEncoder(visual, "open_clip", preset.name, data_config=cfg)
    weights = files.resolve(checkpoint) if checkpoint is not None else None
    oc_cfg = weights.configs.get("open_clip_config.json") if weights else None
    if oc_cfg is not None:
        model_cfg = oc_cfg["model_cfg"]
        own = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
        if activation not in (None, own):
            raise BackboneError(f"{weights.folder}/open_clip_config.json builds QuiltNet with {own}; got "
                                f"activation={activation!r}. Drop the option (the publisher's config decides).")
        model = open_clip.CLIP(**model_cfg)
    else:
        if weights is not None and activation is None:
            warnings.warn(f"{weights.file} has no open_clip_config.json beside it: QuiltNet built as open_clip "
                          "ViT-B-32 with GELU activations. Put the publisher's open_clip_config.json next to the "
                          "weights to use its settings, or pass activation='quick_gelu'.", stacklevel=3)
        arch = preset.arch + ("-quickgelu" if activation == "quick_gelu" else "")
        with drop_log_records("No pretrained weights loaded", enabled=weights is not None):  # the file follows
            model = open_clip.create_model(arch, pretrained=None)
    visual = model.visual
    if weights is None:
        warn_random(preset.name)
    else:
        load_open_clip_checkpoint(visual, weights.file)
    return ViTEncoder(visual, "open_clip", preset.name, data_config=cfg)


register(Preset("phikon", **PRESET_INFO["phikon"], build=_build_hf_vit, options={"model_type": "vit"}))
register(Preset("phikon_v2", **PRESET_INFO["phikon_v2"], build=_build_hf_vit, options={"model_type": "dinov2"}))
for _name in ("plip", "plip_pooled", "quiltnet"):
    register(Preset(_name, **PRESET_INFO[_name], build=_build_clip_visual))
for _name, _info in PRESET_INFO.items():  # listed, refused when built: the reason is their ``unavailable``
    if _info.get("unavailable"):
        register(Preset(_name, **_info, build=None))
