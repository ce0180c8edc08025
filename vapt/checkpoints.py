"""Official VPT / VAPT checkpoint layouts in and out.

The official code (KMnP/vpt and its VAPT extension) wraps a jeonsworld-style ViT as ``enc.transformer`` with
separate ``query/key/value`` projections and a head ``head.last_layer``. Key names (ViT-B, L blocks):

==========================================================  ==========================================
official                                                    this package (``PromptedViT``)
==========================================================  ==========================================
enc.transformer.embeddings.cls_token                        backbone.model.cls_token
enc.transformer.embeddings.position_embeddings              backbone.model.pos_embed
enc.transformer.embeddings.patch_embeddings.{weight,bias}   backbone.model.patch_embed.proj.*
enc.transformer.encoder.layer.i.attention_norm.*            backbone.model.blocks.i.norm1.*
enc.transformer.encoder.layer.i.attn.{query,key,value}.*    backbone.model.blocks.i.attn.qkv.* (chunks)
enc.transformer.encoder.layer.i.attn.out.*                  backbone.model.blocks.i.attn.proj.*
enc.transformer.encoder.layer.i.ffn_norm.*                  backbone.model.blocks.i.norm2.*
enc.transformer.encoder.layer.i.ffn.fc{1,2}.*               backbone.model.blocks.i.mlp.fc{1,2}.*
enc.transformer.encoder.encoder_norm.*                      backbone.model.norm.*
enc.transformer.prompt_embeddings (1, N, d)                 prompts.prompt_embeddings
enc.transformer.deep_prompt_embeddings (L-1, N, d)          prompts.deep_prompt_embeddings
enc.transformer.prompt_proj.*                               prompts.prompt_proj.*
enc.transformer.deep_prompt_norm.j.*                        prompts.norms.j.*
enc.transformer.deep_prompt_downsample.j.conv.kernel        prompts.downsamples.j.kernel
enc.transformer.deep_prompt_downsample.j.linear.*           prompts.downsamples.j.linear.*
enc.transformer.deep_prompt_embeddings_mlp.block.{0,2}.w    prompts.projectors.0.fc{1,2}.weight
head.last_layer.{weight,bias}                               head.{weight,bias}
==========================================================  ==========================================

The adaptive lists (``deep_prompt_norm``, ``deep_prompt_downsample`` and unshared projectors) are indexed
``j = block - VPT_DEPTH`` as in the official model (``total_d_layer = num_layers - VPT_DEPTH`` entries), which is
also the index of our ``prompts.norms`` / ``downsamples`` lists. With ``share_projector=False`` the projectors are written as ``deep_prompt_embeddings_mlp.j.block.{0,2}``.
The per-epoch prompt files of the official trainer (``{"shallow_prompt": (1, N, d), "deep_prompt": (L-1, N, d)}``)
load too (prompts only). The layout is defined for timm ViTs with a class token, fused qkv and no registers,
which is the architecture of the official code.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vapt.model import PromptedViT

ENC = "enc.transformer."


def _tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value


def _key_map(model: PromptedViT) -> list[tuple[str, str, int | None]]:
    """(official key, our key, qkv chunk index or None) for every tensor the official layout holds."""
    enc = model.backbone
    if model.prompt_config.method not in ("linear", "full", "vpt", "vapt"):
        raise ValueError(f"The official VPT/VAPT layout holds linear, full, vpt and vapt models only; this model is "
                         f"{model.prompt_config.method!r} (save it with trainable_state_dict instead).")
    if enc.library != "timm" or enc.num_prefix_tokens != 1 or not hasattr(enc.model.blocks[0].attn, "qkv"):
        raise ValueError("The official VPT/VAPT layout exists only for timm ViTs with a class token, fused qkv "
                         f"and no register tokens; {enc.name} is not one.")
    b = "backbone.model."
    rows = [
        (ENC + "embeddings.cls_token", b + "cls_token", None),
        (ENC + "embeddings.position_embeddings", b + "pos_embed", None),
        (ENC + "embeddings.patch_embeddings.weight", b + "patch_embed.proj.weight", None),
        (ENC + "embeddings.patch_embeddings.bias", b + "patch_embed.proj.bias", None),
        (ENC + "encoder.encoder_norm.weight", b + "norm.weight", None),
        (ENC + "encoder.encoder_norm.bias", b + "norm.bias", None),
    ]
    for i in range(len(enc.blocks)):
        o, t = f"{ENC}encoder.layer.{i}.", f"{b}blocks.{i}."
        for p in ("weight", "bias"):
            rows += [(o + f"attention_norm.{p}", t + f"norm1.{p}", None),
                     (o + f"attn.out.{p}", t + f"attn.proj.{p}", None),
                     (o + f"ffn_norm.{p}", t + f"norm2.{p}", None),
                     (o + f"ffn.fc1.{p}", t + f"mlp.fc1.{p}", None),
                     (o + f"ffn.fc2.{p}", t + f"mlp.fc2.{p}", None)]
            rows += [(o + f"attn.{name}.{p}", t + f"attn.qkv.{p}", c) for c, name in enumerate(("query", "key", "value"))]
    rows += _prompt_key_map(model)
    rows += [("head.last_layer.weight", "head.weight", None), ("head.last_layer.bias", "head.bias", None)]
    return rows


def _prompt_key_map(model: PromptedViT) -> list[tuple[str, str, None]]:
    g = model.prompts
    if g is None:
        return []
    rows = [(ENC + "prompt_embeddings", "prompts.prompt_embeddings", None)]
    if g.deep_prompt_embeddings is not None:
        rows.append((ENC + "deep_prompt_embeddings", "prompts.deep_prompt_embeddings", None))
    if not isinstance(g.prompt_proj, torch.nn.Identity):
        rows += [(ENC + f"prompt_proj.{p}", f"prompts.prompt_proj.{p}", None) for p in ("weight", "bias")]
    # The official lists hold total_d_layer = num_layers - VPT_DEPTH entries, entry i - VPT_DEPTH serving block i;
    # our adaptive modules start at block first_adaptive_block = vpt_depth, so both indices are j.
    for j in range(len(g.norms)):
        k = j
        rows += [(ENC + f"deep_prompt_norm.{k}.{p}", f"prompts.norms.{j}.{p}", None) for p in ("weight", "bias")]
        rows += [(ENC + f"deep_prompt_downsample.{k}.conv.kernel", f"prompts.downsamples.{j}.kernel", None)]
        rows += [(ENC + f"deep_prompt_downsample.{k}.linear.{p}", f"prompts.downsamples.{j}.linear.{p}", None)
                 for p in ("weight", "bias")]
    shared = g.cfg.share_projector
    for j in range(len(g.projectors)):
        base = ENC + "deep_prompt_embeddings_mlp." + ("" if shared else f"{j}.")
        rows += [(base + "block.0.weight", f"prompts.projectors.{j}.fc1.weight", None),
                 (base + "block.2.weight", f"prompts.projectors.{j}.fc2.weight", None)]
    return rows


def export_official_checkpoint(model: PromptedViT) -> dict[str, torch.Tensor]:
    """This model's weights in the official VPT/VAPT state-dict layout (see module docstring)."""
    own = model.state_dict()
    out = {}
    for official, ours, chunk in _key_map(model):
        value = own[ours]
        if chunk is not None:
            value = value.chunk(3, dim=0)[chunk]
        out[official] = value.detach().clone()
    return out


def load_official_checkpoint(model: PromptedViT, state_dict: Mapping) -> PromptedViT:
    """Load an official VPT/VAPT state dict, or an official per-epoch prompt file, into ``model``.

    A full state dict must match this model's method and shapes exactly; otherwise a ``KeyError`` lists the
    keys that are missing, unexpected or of the wrong shape. Returns ``model``.
    """
    sd = dict(state_dict)
    for wrapper in ("model", "state_dict"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = dict(sd[wrapper])
    if "shallow_prompt" in sd or "deep_prompt" in sd:
        return _load_prompt_file(model, sd)
    sd = {k.removeprefix("module."): _tensor(v) for k, v in sd.items()}
    if not any(k.startswith("enc.") for k in sd) and any(k.startswith("transformer.") for k in sd):
        sd = {("enc." + k if k.startswith("transformer.") else k): v for k, v in sd.items()}
    rows = _key_map(model)
    own = model.state_dict()
    wanted = {official for official, _, _ in rows}
    missing = sorted(wanted - set(sd))
    unexpected = sorted(set(sd) - wanted)
    mismatched = []
    for official, ours, chunk in rows:
        if official not in sd:
            continue
        target = own[ours].chunk(3, dim=0)[chunk] if chunk is not None else own[ours]
        if tuple(sd[official].shape) != tuple(target.shape):
            mismatched.append(f"{official}: checkpoint {tuple(sd[official].shape)} vs model {tuple(target.shape)}")
    if missing or unexpected or mismatched:
        raise KeyError(
            f"Official checkpoint does not fit this {model.prompt_config.method} model "
            f"(num_tokens={model.prompt_config.num_tokens}): missing {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; shape mismatches {mismatched[:8]}. "
            "Build the model with the method, num_tokens, kernel_size and hidden_dim the checkpoint was trained with.")
    new = {}
    for official, ours, chunk in rows:
        if chunk is None:
            new[ours] = sd[official]
        else:
            new.setdefault(ours, [None, None, None])[chunk] = sd[official]
    new = {k: torch.cat(v, dim=0) if isinstance(v, list) else v for k, v in new.items()}
    with torch.no_grad():
        for k, v in new.items():
            own[k].copy_(v.to(own[k].dtype))
    return model


def _load_prompt_file(model: PromptedViT, sd: dict) -> PromptedViT:
    g = model.prompts
    if g is None:
        raise KeyError("This is an official prompt file but the model has no prompts (method linear/full).")
    pairs = [("shallow_prompt", g.prompt_embeddings)]
    if "deep_prompt" in sd:
        if g.deep_prompt_embeddings is None:
            raise KeyError("The prompt file has 'deep_prompt' but the model has no static deep prompts "
                           "(build it with method='vpt', deep=True).")
        pairs.append(("deep_prompt", g.deep_prompt_embeddings))
    elif g.deep_prompt_embeddings is not None:
        raise KeyError("The prompt file has no 'deep_prompt' but the model is VPT-deep; it was saved from VPT-shallow.")
    with torch.no_grad():
        for key, param in pairs:
            value = _tensor(sd[key])
            if value.ndim == 2:
                value = value.unsqueeze(0)
            if tuple(value.shape) != tuple(param.shape):
                raise KeyError(f"{key}: file {tuple(value.shape)} vs model {tuple(param.shape)}; "
                               "the number of prompt tokens or layers differs.")
            param.copy_(value.to(param.dtype))
    return model
