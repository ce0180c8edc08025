"""Pathology ViT presets that timm rebuilds exactly: UNI, UNI2-h, Prov-GigaPath, Virchow(2), H-optimus,
H0-mini, kaiko, Lunit, GPFM, and CONCH v1's vision side (timm trunk + open_clip attentional pooler).

Each entry gives the publisher's ``timm.create_model`` keywords (as TRIDENT and the model cards build them),
the publisher's transform and output rule; their weights are plain timm state dicts unless said otherwise
(CONCH: the full CoCa file, remapped by :func:`conch_remap`).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from vapt.backbones import files
from vapt.backbones.errors import BackboneError
from vapt.backbones.preset_table import HUB_CONFIG, IMAGENET, PRESET_INFO, Preprocess
from vapt.backbones.registry import PRESETS, Preset, register
from vapt.backbones.vit import ViTEncoder


def _swiglu() -> dict:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


# ------------------------------------------------------------------------------------------------- building
def create_timm(arch: str, kwargs: dict, img_size: int | None, overrides: dict) -> nn.Module:
    """``timm.create_model(arch, num_classes=0, **kwargs, **overrides)`` with ``img_size`` applied."""
    import timm

    kw = {**kwargs, **overrides}
    if img_size is not None:
        kw["img_size"] = int(img_size)
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    except (TypeError, AssertionError, RuntimeError) as err:
        raise BackboneError(f"timm could not build {arch} with {sorted(kw)}: {err}") from err


def fit_pos_embed(model: nn.Module, sd: dict) -> dict:
    """Resample a file's ``pos_embed`` to the model's grid (timm's bicubic resample, as dynamic_img_size)."""
    from timm.layers import resample_abs_pos_embed

    own = model.state_dict().get("pos_embed")
    pos = sd.get("pos_embed")
    if own is None or pos is None or pos.shape == own.shape or pos.shape[-1] != own.shape[-1]:
        return sd
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = round((pos.shape[1] - prefix) ** 0.5)
    if pos.ndim != 3 or side * side != pos.shape[1] - prefix:
        raise BackboneError(f"The file's pos_embed {tuple(pos.shape)} is not a square grid after {prefix} prefix "
                            f"token(s); it does not belong to this model ({type(model).__name__}).")
    return {**sd, "pos_embed": resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size),
                                                      num_prefix_tokens=prefix)}


def warn_random(name: str) -> None:
    warnings.warn(f"Encoder preset {name} built WITHOUT weights (random initialisation): its features mean "
                  "nothing; pass checkpoint=PATH (--checkpoint PATH).", stacklevel=3)


def _build_timm_preset(preset: Preset, checkpoint, img_size, **overrides) -> ViTEncoder:
    opts = preset.options
    output = overrides.pop("output", opts.get("output", "token"))
    if output not in opts.get("outputs", (opts.get("output", "token"),)):
        raise BackboneError(f"Preset {preset.name} has outputs {list(opts.get('outputs', ['token']))}; got "
                            f"output={output!r}.")
    kwargs, pre, arch = dict(opts["kwargs"]), preset.preprocess, preset.arch
    weights = files.resolve(checkpoint) if checkpoint is not None else None
    if opts.get("hub_config"):  # architecture and transform come from the publisher's timm config.json
        arch, kwargs, pre = _hub_config(preset, weights, kwargs)
    sd = files.read_state_dict(weights.file) if weights is not None else None  # a bad file fails fast
    model = create_timm(arch, kwargs, img_size, overrides)
    if sd is None:
        warn_random(preset.name)
    else:
        files.load_checked(model, sd, weights.file, preset.name, ignore_unexpected=("head.",), identify=identify,
                           resample=lambda d: fit_pos_embed(model, d))
    return ViTEncoder(model, "timm", preset.name, data_config=pre.data_config(img_size), output=output)


def _hub_config(preset: Preset, weights, kwargs: dict):
    """timm hub layout (``config.json`` with ``architecture``, ``model_args``, ``pretrained_cfg``)."""
    cfg = weights.config() if weights is not None else None
    if not cfg or "architecture" not in cfg:
        raise BackboneError(f"Preset {preset.name} needs the publisher's model folder (its config.json names "
                            f"the architecture and mean/std): pass --checkpoint FOLDER ({preset.source}).")
    args = {k: v for k, v in cfg.get("model_args", {}).items() if k != "num_classes"}
    pc = cfg.get("pretrained_cfg", {})
    size = int(pc.get("input_size", [3, 224, 224])[-1])
    crop_pct = float(pc.get("crop_pct", 1.0))
    mean, std = tuple(pc.get("mean", IMAGENET[0])), tuple(pc.get("std", IMAGENET[1]))
    pre = Preprocess(size, (mean, std), pc.get("interpolation", "bicubic"), crop=True,
                     resize=int(size / crop_pct))
    return cfg["architecture"], {**args, **kwargs}, pre


# ------------------------------------------------------------------------------------------------- CONCH v1
class ConchPool(nn.Module):
    """CONCH v1's contrastive head: attentional pooler (1 query) -> LayerNorm -> optional ``proj_contrast``.

    Forward: all post-norm trunk tokens (B, L, 768) -> (B, 512).
    """

    def __init__(self, width: int = 768, dim: int = 512, heads: int = 8, proj: bool = True):
        super().__init__()
        from open_clip.transformer import AttentionalPooler

        self.attn_pool = AttentionalPooler(d_model=dim, context_dim=width, n_head=heads, n_queries=1)
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.empty(dim, dim)) if proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.ln(self.attn_pool(x)[:, 0])
        return pooled @ self.proj if self.proj is not None else pooled


def conch_remap(sd: dict) -> tuple[dict, dict]:
    """CONCH CoCa state dict -> (trunk state dict, contrastive-head state dict); captioning/text keys dropped."""
    sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    trunk = {k.removeprefix("trunk."): v for k, v in sd.items() if k.startswith("trunk.")}
    head = {k.replace("attn_pool_contrast.", "attn_pool.").replace("ln_contrast.", "ln."): v
            for k, v in sd.items() if k.startswith(("attn_pool_contrast.", "ln_contrast."))}
    if "proj_contrast" in sd:
        head["proj"] = sd["proj_contrast"]
    return trunk, head


def _build_conch(preset: Preset, checkpoint, img_size, **overrides) -> ViTEncoder:
    output = overrides.pop("output", "proj_contrast")
    if output not in ("proj_contrast", "trident", "trunk_cls"):
        raise BackboneError(f"conch_v1 output must be 'proj_contrast' (512, aligned with CONCH text, default), "
                            f"'trident' (512, pooled + LN, no projection) or 'trunk_cls' (768); got {output!r}.")
    weights = files.resolve(checkpoint) if checkpoint is not None else None
    sd = files.read_state_dict(weights.file) if weights is not None else None
    trunk = create_timm(preset.arch, preset.options["kwargs"], img_size, overrides)
    head = ConchPool(proj=output == "proj_contrast") if output != "trunk_cls" else None
    if sd is None:
        warn_random(preset.name)
    else:
        trunk_sd, head_sd = conch_remap(sd)
        if not trunk_sd:
            raise BackboneError(f"Checkpoint {weights.file} has no 'visual.trunk.*' keys: not CONCH's "
                                f"pytorch_model.bin{_other(sd, weights.file)}.")
        files.load_checked(trunk, trunk_sd, weights.file, preset.name, identify=identify,
                           resample=lambda d: fit_pos_embed(trunk, d))
        if head is not None:
            if head.proj is None:
                head_sd.pop("proj", None)
            files.load_checked(head, head_sd, weights.file, preset.name)
    cfg = preset.preprocess.data_config(img_size)
    if head is None:
        return ViTEncoder(trunk, "timm", preset.name, data_config=cfg, output="token")
    return ViTEncoder(trunk, "timm", preset.name, data_config=cfg, output="head", head=head, head_dim=512)


def _other(sd: dict, path) -> str:
    other = identify(sd)
    return f"; it looks like a {other} checkpoint" if other else ""


# ------------------------------------------------------------------------------------------------- identify
def _signature(sd: dict) -> tuple | None:
    """Depth-independent fingerprint of a timm ViT state dict (patch embed, registers, MLP, layer scale)."""
    if "patch_embed.proj.weight" not in sd:
        return None
    shape = lambda k: tuple(sd[k].shape) if k in sd else None
    return (shape("patch_embed.proj.weight"), shape("reg_token"), shape("blocks.0.mlp.fc1.weight"),
            "blocks.0.ls1.gamma" in sd, "cls_token" in sd)


def identify(sd: dict) -> str | None:
    """Name the preset a state dict belongs to (``"a or b"`` when several share its layout; None when none)."""
    keys = set(sd)
    if any(k.startswith("visual.attn_pool_contrast.") for k in keys):
        return "conch_v1"
    if "layer3.0.conv1.weight" in keys:
        return "resnet50"
    if any("relative_position_bias_table" in k for k in keys):
        return "ctranspath"
    if "embeddings.patch_embeddings.projection.weight" in keys:
        return "phikon_v2" if any("layer_scale1" in k for k in keys) else "phikon"
    if any(k.startswith("vision_model.") for k in keys):
        return "plip"
    sig = _signature(sd)
    if sig is None:
        return None
    found = []
    for p in PRESETS.values():
        if p.build is _build_timm_preset and not p.options.get("hub_config"):
            with torch.device("meta"):
                meta = create_timm(p.arch, p.options["kwargs"], None, {"depth": 1})
            if _signature(meta.state_dict()) == sig:
                found.append(p.name)
    return " or ".join(found) or None


# ------------------------------------------------------------------------------------------------- table
def _vit(name, kwargs, *, output="token", outputs=None):
    """Register a timm-built preset: its metadata from :data:`PRESET_INFO`, its ``timm.create_model`` keywords."""
    register(Preset(name=name, **PRESET_INFO[name], build=_build_timm_preset,
                    options={"kwargs": kwargs, "output": output, "outputs": outputs or (output,),
                             "hub_config": name in HUB_CONFIG}))


_dyn = {"img_size": 224, "dynamic_img_size": True}
_vit("uni_v1", {**_dyn, "patch_size": 16, "init_values": 1e-5})
_vit("uni_v2", {**_dyn, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, **_swiglu()})
register(Preset(name="conch_v1", **PRESET_INFO["conch_v1"], build=_build_conch,
                options={"kwargs": {"img_size": 448, "patch_size": 16, "embed_dim": 768, "depth": 12,
                                    "num_heads": 12, "mlp_ratio": 4, "dynamic_img_size": True}}))
_vit("gigapath", {**_dyn, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                  "mlp_ratio": 5.33334})
_virchow = {**_dyn, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", **_swiglu()}
_vit("virchow", _virchow, output="cls_mean", outputs=("cls_mean", "token"))
_vit("virchow2", {**_virchow, "reg_tokens": 4}, output="cls_mean", outputs=("cls_mean", "token"))
_hopt = {**_dyn, "global_pool": "token", "init_values": 1e-5}
_vit("hoptimus0", _hopt)
_vit("hoptimus1", _hopt)
_vit("h0-mini", {**_dyn, **_swiglu()}, outputs=("token", "cls_mean"))
for _n in ("vits8", "vits16", "vitb8", "vitb16", "vitl14"):
    _vit(f"kaiko-{_n}", dict(_dyn))
_vit("lunit-vits8", dict(_dyn))
_vit("gpfm", {**_dyn, "init_values": 1e-5})
