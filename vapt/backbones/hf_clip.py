"""Hugging Face ``CLIPModel`` folders (PLIP) as open_clip ``CLIP`` models: config and key remapping.

Used for PLIP's vision side (a preset) and its text side (``mgpath.text``). The HF layers map one to one onto
open_clip's: q/k/v projections are concatenated into ``in_proj``, ``visual_projection`` / ``text_projection``
(Linear, no bias) become the transposed open_clip matrices.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from vapt.backbones.errors import BackboneError

_LAYER = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(.+)$")
_LAYER_MAP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}


def hf_layers_to_open_clip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix}encoder.layers.i.*`` (HF CLIP) -> ``transformer.resblocks.i.*`` (open_clip)."""
    out, qkv = {}, {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        m = _LAYER.match(k[len(prefix):])
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        module, kind = rest.rsplit(".", 1)
        if module in _LAYER_MAP:
            out[f"transformer.resblocks.{i}.{_LAYER_MAP[module]}.{kind}"] = v
        elif module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((i, kind), {})[module[10]] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise BackboneError(f"HF CLIP layer {i} lacks one of q/k/v_proj.{kind}")
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


#: per tower: HF prefix, {HF name: open_clip name} (weights and biases of norms), HF projection, open_clip name
_TOWERS = {
    "visual": ("vision_model.", {"embeddings.class_embedding": "class_embedding",
                                 "embeddings.patch_embedding.weight": "conv1.weight",
                                 "embeddings.position_embedding.weight": "positional_embedding",
                                 "pre_layrnorm": "ln_pre", "post_layernorm": "ln_post"},
               "visual_projection.weight", "proj"),
    "text": ("text_model.", {"embeddings.token_embedding.weight": "token_embedding.weight",
                             "embeddings.position_embedding.weight": "positional_embedding",
                             "final_layer_norm": "ln_final"},
             "text_projection.weight", "text_projection"),
}


def hf_clip_to_open_clip(sd: dict[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` state dict -> open_clip keys of one tower (``"visual"`` -> ``VisionTransformer`` keys,
    ``"text"`` -> the text keys of ``open_clip.CLIP``)."""
    sd = {k.removeprefix("clip."): v for k, v in sd.items()}
    prefix, names, proj, proj_name = _TOWERS[tower]
    out = hf_layers_to_open_clip(sd, prefix + "encoder.")
    for src, dst in names.items():
        for suffix in ("", ".weight", ".bias"):
            if prefix + src + suffix in sd:
                out[dst + suffix] = sd[prefix + src + suffix]
    if proj in sd:  # HF Linear (out, in) -> open_clip matrix (in, out)
        out[proj_name] = sd[proj].t().contiguous()
    return out


def open_clip_from_hf_config(cfg: dict, path) -> nn.Module:
    """An open_clip ``CLIP`` (random init) with the architecture of an HF ``CLIPModel`` ``config.json``."""
    import open_clip

    if cfg.get("model_type") not in ("clip", None) or "vision_config" not in cfg or "text_config" not in cfg:
        raise BackboneError(f"{path} is not an HF CLIPModel config (model_type {cfg.get('model_type')!r}).")
    v, t = cfg["vision_config"], cfg["text_config"]
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    eps = {v.get("layer_norm_eps", 1e-5), t.get("layer_norm_eps", 1e-5)}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"} or eps != {1e-5}:
        raise BackboneError(f"{path}: activation {acts} / layer-norm eps {eps} not rebuildable with open_clip.")
    vision_cfg = {"image_size": v.get("image_size", 224), "patch_size": v.get("patch_size", 32),
                  "width": v.get("hidden_size", 768), "layers": v.get("num_hidden_layers", 12),
                  "head_width": v.get("hidden_size", 768) // v.get("num_attention_heads", 12),
                  "mlp_ratio": v.get("intermediate_size", 3072) / v.get("hidden_size", 768)}
    text_cfg = {"context_length": t.get("max_position_embeddings", 77), "vocab_size": t.get("vocab_size", 49408),
                "width": t.get("hidden_size", 512), "heads": t.get("num_attention_heads", 8),
                "layers": t.get("num_hidden_layers", 12),
                "mlp_ratio": t.get("intermediate_size", 2048) / t.get("hidden_size", 512)}
    return open_clip.CLIP(embed_dim=cfg.get("projection_dim", 512), vision_cfg=vision_cfg, text_cfg=text_cfg,
                          quick_gelu=acts == {"quick_gelu"})
