"""Reading the weights files of timm ViTs and open_clip towers into a built model, checked key by key.

Formats are recognised by content: timm ``.pth``/``.bin``/``.safetensors`` state dicts, big_vision / ViT ``.npz``,
MAE and MoCo v3 wrappers, open_clip checkpoints (full CLIP or the visual tower). Files are read without running
code (:mod:`vapt.fileio.weights`); a mismatch raises :class:`BackboneError` listing the keys.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from vapt.backbones.errors import BackboneError
from vapt.fileio.state_dict import check_state_dict
from vapt.fileio.weights import WeightsFileError, load_weights_file

__all__ = ["load_open_clip_checkpoint", "load_timm_checkpoint", "read_checkpoint_file", "resize_open_clip_pos_embed",
           "unwrap_state_dict"]


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint file safely (:func:`vapt.fileio.weights.load_weights_file`); errors as :class:`BackboneError`.

    ``.safetensors`` through safetensors, ``.npz`` with ``allow_pickle=False``, everything else through
    ``torch.load(weights_only=True)``; a file that needs full unpickling is refused.
    """
    try:
        return load_weights_file(path)
    except WeightsFileError as err:
        raise BackboneError(str(err)) from None


def unwrap_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common wrappers (``model``, ``state_dict``, ``module``) and strip prefixes.

    MoCo v3 checkpoints keep the ViT under ``module.base_encoder.``; DDP checkpoints under ``module.``.
    """
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    for prefix in ("module.base_encoder.", "base_encoder.", "module.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    return sd


_HEAD_PREFIXES = ("head.", "head_drop.", "fc_norm.", "pre_logits.")


def load_timm_checkpoint(model: nn.Module, path) -> None:
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import _load_weights

    path = os.fspath(path)
    if path.endswith(".npz"):
        raw = read_checkpoint_file(path)  # validates the file before timm touches it
        _check_npz_keys(model, raw, path)
        try:
            _load_weights(model, path)
        except Exception as err:
            raise BackboneError(f"Could not load the .npz checkpoint {path} into {type(model).__name__} "
                                f"({type(err).__name__}: {err}); is it a ViT of the same size?") from err
        return
    sd = unwrap_state_dict(read_checkpoint_file(path))
    if not sd:
        raise BackboneError(f"Checkpoint {path} holds no tensors; it is not a model state dict.")
    own = model.state_dict()
    uses_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    if uses_fc_norm and isinstance(model.norm, nn.Identity):
        # MAE pretrain files carry `norm.*` but a mean-pooling model uses fc_norm; the official VPT/VAPT
        # MAE code loads with strict=False, so fc_norm keeps its (1, 0) init. We do the same, knowingly.
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        num_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"], new_size=model.patch_embed.grid_size, num_prefix_tokens=num_prefix)
    if "patch_embed.proj.weight" in sd and sd["patch_embed.proj.weight"].shape != own["patch_embed.proj.weight"].shape:
        raise BackboneError(f"Checkpoint {path} has patch embedding {tuple(sd['patch_embed.proj.weight'].shape)} but "
                            f"the model expects {tuple(own['patch_embed.proj.weight'].shape)}; wrong architecture.")
    backbone_sd = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    _strict_load(model, backbone_sd, path, ignore_missing_prefixes=_HEAD_PREFIXES)


def _check_npz_keys(model: nn.Module, raw: dict, path: str) -> None:
    prefix = "opt/target/" if "opt/target/embedding/kernel" in raw else ""
    needed = [f"{prefix}embedding/kernel", f"{prefix}Transformer/encoder_norm/scale"]
    needed += [f"{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale" for i in range(len(model.blocks))]
    missing = [k for k in needed if k not in raw]
    extra_blocks = [k for k in raw if k.startswith(f"{prefix}Transformer/encoderblock_{len(model.blocks)}/")]
    if missing or extra_blocks:
        raise BackboneError(f"Checkpoint {path} does not match a {len(model.blocks)}-block ViT: missing "
                            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}; unexpected {extra_blocks[:4]}.")
    kernel = raw[f"{prefix}embedding/kernel"]
    expected = tuple(model.patch_embed.proj.weight.shape)
    if (kernel.shape[3], kernel.shape[2], kernel.shape[0], kernel.shape[1]) != expected:
        raise BackboneError(f"Checkpoint {path} has patch embedding kernel {kernel.shape} (HWIO) but the model "
                            f"expects {expected} (OIHW); wrong architecture.")


def _strict_load(model: nn.Module, sd: dict, path, ignore_missing_prefixes: tuple = ()) -> None:
    check_state_dict(model.state_dict(), sd, what=f"Checkpoint {path} does not fit {type(model).__name__}",
                     hint="Check that the backbone name matches the checkpoint.",
                     ignore_missing_prefixes=ignore_missing_prefixes, error=BackboneError)
    model.load_state_dict(sd, strict=False)


def load_open_clip_checkpoint(visual: nn.Module, path) -> None:
    sd = unwrap_state_dict(read_checkpoint_file(path))
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    own = visual.state_dict()
    pos = sd.get("positional_embedding")
    if pos is not None and pos.shape != own["positional_embedding"].shape:
        sd["positional_embedding"] = resize_open_clip_pos_embed(pos, own["positional_embedding"].shape[0])
    _strict_load(visual, sd, path)


def resize_open_clip_pos_embed(pos: torch.Tensor, new_len: int) -> torch.Tensor:
    """Bicubic resize of an open_clip position table (1 + g*g, D) -> (new_len, D), CLS row kept."""
    cls, grid = pos[:1], pos[1:]
    old, new = math.isqrt(grid.shape[0]), math.isqrt(new_len - 1)
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)
