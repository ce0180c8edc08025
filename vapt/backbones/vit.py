"""Frozen Vision Transformer encoders from timm or open_clip, with local checkpoint loading.

`build_vit` turns a timm or open_clip name plus an optional local file into a ready, frozen `ViTEncoder`: a uniform view
over a timm ``VisionTransformer`` or an open_clip vision tower that exposes the pieces prompt tuning needs
(token embedding, the block list, the final norm, pooling) without re-implementing any of them.

Names
-----
* any timm ViT name: ``vit_base_patch16_224``, ``vit_small_patch14_reg4_dinov2``, ``vit_huge_patch14_224`` ...
  (timm keywords such as ``img_size`` are passed through);
* ``open_clip:<model name>``: the vision tower of an open_clip model, e.g. ``open_clip:ViT-B-32``.

Checkpoint files (``checkpoint=``) are recognised by their content:
timm ``.pth``/``.bin``/``.safetensors`` state dicts, the original big_vision / ViT ``.npz`` (the ImageNet-21k
ViT-B/16 file VPT and VAPT use), MAE pretrain ``.pth`` (``model`` key), MoCo v3 ``.pth.tar`` (``state_dict``,
``module.base_encoder.`` prefix) and open_clip checkpoints (full CLIP or visual tower only).
Nothing is downloaded unless ``pretrained=True`` or an ``hf-hub:`` name is given explicitly.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from vapt.backbones.errors import BackboneError
from vapt.backbones.names import similar_names
from vapt.backbones.preprocess import preprocess_tiles
from vapt.backbones.vit_files import load_open_clip_checkpoint, load_timm_checkpoint
from vapt.quiet import drop_log_records

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPEN_CLIP_PREFIX = "open_clip:"


class ViTEncoder(nn.Module):
    """A frozen ViT seen through one interface, whatever library built it.

    Token layout produced by :meth:`embed`: ``[CLS, (register tokens,) patches]``, position embeddings added.

    Attributes
    ----------
    embed_dim : int
        Token width D.
    feature_dim : int
        Width of :meth:`pool` output (D, or the CLIP projection width for open_clip towers).
    patch_size : tuple[int, int]
    img_size : tuple[int, int]
        Input size the position embeddings were built for.
    num_prefix_tokens : int
        CLS plus register tokens in front of the patches.
    blocks : nn.ModuleList
        Transformer blocks; each maps (B, L, D) -> (B, L, D).
    global_pool : str
        ``"token"`` (CLS after the final norm) or ``"avg"`` (mean of non-CLS tokens, then ``fc_norm``).
    data_config : dict
        ``input_size`` (3, H, W), ``mean``, ``std``, ``interpolation`` for preprocessing.
    """

    def __init__(self, model: nn.Module, library: str, name: str, *, data_config: dict | None = None,
                 output: str | None = None, head: nn.Module | None = None, head_dim: int | None = None):
        super().__init__()
        self.model = model
        self.library = library
        self.name = name
        if library == "timm":
            self.blocks = model.blocks
            self.embed_dim = model.embed_dim
            self.patch_size = tuple(model.patch_embed.patch_size)
            self.img_size = tuple(model.patch_embed.img_size)
            self.num_prefix_tokens = model.num_prefix_tokens
            self.global_pool = "avg" if model.global_pool == "avg" else "token"
            self.feature_dim = self.embed_dim
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
            interpolation = cfg.get("interpolation", "bicubic")
        else:
            self.blocks = model.transformer.resblocks
            self.embed_dim = model.conv1.out_channels
            self.patch_size = tuple(model.conv1.kernel_size)
            self.img_size = tuple(model.image_size) if isinstance(model.image_size, Sequence) else (
                model.image_size, model.image_size)
            self.num_prefix_tokens = 1
            self.global_pool = "token" if model.pool_type == "tok" else "avg"
            self.feature_dim = model.proj.shape[1] if model.proj is not None else self.embed_dim
            mean, std = getattr(model, "image_mean", None), getattr(model, "image_std", None)
            mean = tuple(mean) if mean is not None else (0.48145466, 0.4578275, 0.40821073)
            std = tuple(std) if std is not None else (0.26862954, 0.26130258, 0.27577711)
            interpolation = "bicubic"
        self.data_config = data_config or {"input_size": (3, *self.img_size), "mean": tuple(mean),
                                           "std": tuple(std), "interpolation": interpolation}
        # output rule: "token"/"avg" (the library's pooling), "cls_mean" (CLS concatenated with the mean of the
        # patch tokens, Virchow style) or "head" (a module over all normalised tokens, e.g. CONCH's pooler)
        self.output = output or self.global_pool
        if self.output not in ("token", "avg", "cls_mean", "head"):
            raise BackboneError(f"Unknown output rule {self.output!r} for {name}.")
        if (self.output == "head") != (head is not None):
            raise BackboneError(f"Output rule 'head' needs a head module (and only it takes one) for {name}.")
        self.head = head
        if self.output == "cls_mean":
            self.feature_dim = 2 * self.embed_dim
        elif head is not None:
            self.feature_dim = int(head_dim)
        self.freeze()

    # ------------------------------------------------------------------ pieces used by prompt models
    def grid_size(self, hw: Sequence[int] | None = None) -> tuple[int, int]:
        """Patch grid (gh, gw) for an input of spatial size ``hw`` (default: the built size)."""
        h, w = hw if hw is not None else self.img_size
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise BackboneError(f"Image size {h}x{w} is not divisible by the patch size {ph}x{pw} of {self.name}; "
                                f"resize inputs to a multiple of the patch size (e.g. {h // ph * ph}x{w // pw * pw}).")
        return h // ph, w // pw

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when ``x`` (B, 3, H, W) does not match the size the encoder was built for."""
        if x.ndim != 4:
            raise BackboneError(f"{self.name} expects images shaped (B, 3, H, W); got {tuple(x.shape)}.")
        self.grid_size(x.shape[-2:])
        if tuple(x.shape[-2:]) != self.img_size:
            raise BackboneError(f"{self.name} was built for {self.img_size[0]}x{self.img_size[1]} inputs but got "
                                f"{x.shape[-2]}x{x.shape[-1]}; build it with img_size={tuple(x.shape[-2:])}.")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + prefix tokens + position embedding (+ pre-norm). (B, 3, H, W) -> (B, P + G, D)."""
        self.check_input(x)
        m = self.model
        if self.library == "timm":
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            return m.norm_pre(x)
        return m._embeds(x)

    def run_block(self, block: nn.Module, x: torch.Tensor, tensors: dict[str, torch.Tensor] | None = None
                  ) -> torch.Tensor:
        """One transformer block, (B, L, D) -> (B, L, D).

        ``tensors`` ({name inside the block: tensor}) stand in for the block's own parameters of those names for
        this call only (`torch.func.functional_call`), e.g. a LoRA-merged projection weight.
        """
        def call(t: torch.Tensor) -> torch.Tensor:
            return block(t) if tensors is None else torch.func.functional_call(block, tensors, (t,))

        if self.library == "open_clip" and not self.model.transformer.batch_first:
            return call(x.transpose(0, 1)).transpose(0, 1)
        return call(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm over all tokens (identity where the model normalises after pooling). (B, L, D)."""
        m = self.model
        if self.library == "timm":
            return m.norm(x)
        if m.final_ln_after_pool:
            return x
        return m.ln_post(x)

    def pool(self, x: torch.Tensor, num_skip: int = 1) -> torch.Tensor:
        """Pool normalised tokens (B, L, D) -> (B, feature_dim).

        ``"token"``: the CLS token. ``"avg"``: mean over ``x[:, num_skip:]`` then ``fc_norm`` (MAE style; the
        official VPT/VAPT MAE code averages over everything after CLS, prompts included). ``"cls_mean"``:
        ``[CLS, mean(x[:, num_skip:])]`` (B, 2D). ``"head"``: the head module over all tokens.
        """
        m = self.model
        if self.output == "head":
            return self.head(x)
        if self.output == "cls_mean":
            return torch.cat([x[:, 0], x[:, num_skip:].mean(dim=1)], dim=-1)
        pooled = x[:, 0] if self.global_pool == "token" else x[:, num_skip:].mean(dim=1)
        if self.library == "timm":
            return m.fc_norm(pooled)
        if m.final_ln_after_pool:
            pooled = m.ln_post(pooled)
        return pooled @ m.proj if m.proj is not None else pooled

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block and final norm. (B, 3, H, W) -> (B, P + G, D)."""
        h = self.embed(x)
        for block in self.blocks:
            h = self.run_block(block, h)
        return self.final_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled frozen features. (B, 3, H, W) -> (B, feature_dim)."""
        return self.pool(self.forward_tokens(x), num_skip=self.num_prefix_tokens)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles (B, H, W, 3) -> the normalised input (B, 3, H', W') of ``data_config``."""
        return preprocess_tiles(tiles, self.data_config)

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> None:
        """No gradients and eval mode for every backbone parameter."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        """Make every backbone parameter trainable (full fine-tuning)."""
        for p in self.parameters():
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------------------------- build
def build_vit(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    img_size: int | Sequence[int] | None = None,
    pretrained: bool = False,
    global_pool: str | None = None,
    **timm_kwargs,
) -> ViTEncoder:
    """Build a frozen ViT encoder from a timm or open_clip name, optionally from a local checkpoint file.

    Named presets (``uni_v1`` ...) are built by :func:`vapt.backbones.build_backbone`, which calls this.

    Parameters
    ----------
    name : str
        timm ViT name or ``open_clip:<model name>``.
    checkpoint : path, optional
        Local weights (see module docstring for the formats). Backbone keys that are missing or unexpected
        raise :class:`BackboneError` listing them; classification heads are ignored.
    img_size : int or (H, W), optional
        Input size; position embeddings of a checkpoint are resized to it.
    pretrained : bool
        Download the library's pretrained weights (the only path that touches the network).
    global_pool : {"token", "avg"}, optional
        Pooling for the timm model (``"avg"`` gives MAE-style mean pooling + fc_norm).
    """
    if name.startswith(OPEN_CLIP_PREFIX):
        if global_pool is not None or timm_kwargs:
            raise BackboneError(f"open_clip towers take no timm keywords; got {sorted(timm_kwargs)} / global_pool.")
        return _build_open_clip(name[len(OPEN_CLIP_PREFIX):], checkpoint, img_size, pretrained)
    return _build_timm(name, checkpoint, img_size, pretrained, global_pool, **timm_kwargs)


def _as_hw(img_size) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    return tuple(int(v) for v in img_size)


def _unknown_name_error(name: str, candidates: Iterable[str], library: str) -> BackboneError:
    close = similar_names(name, candidates, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return BackboneError(f"Unknown {library} backbone {name!r}.{hint}")


def _build_timm(name, checkpoint, img_size, pretrained, global_pool, **kwargs) -> ViTEncoder:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    arch = name.split(".")[0]
    if not name.startswith("hf-hub:") and not timm.is_model(arch):
        raise _unknown_name_error(name, timm.list_models("*vit*"), "timm")
    hw = _as_hw(img_size)
    if hw is not None:
        kwargs["img_size"] = hw
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
        if global_pool == "avg":
            kwargs.setdefault("fc_norm", True)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except (AssertionError, RuntimeError, TypeError) as err:
        raise BackboneError(f"timm could not build {name!r} with {kwargs}: {err}") from err
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"{name!r} is a {type(model).__name__}, not a Vision Transformer; "
                            "prompt tuning needs a timm VisionTransformer (e.g. vit_base_patch16_224).")
    ph, pw = model.patch_embed.patch_size
    h, w = model.patch_embed.img_size
    if h % ph or w % pw:
        raise BackboneError(f"Image size {h}x{w} is not divisible by the patch size {ph}x{pw} of {name}; "
                            f"choose img_size as a multiple of the patch size (e.g. {h // ph * ph}).")
    if checkpoint is not None:
        load_timm_checkpoint(model, checkpoint)
    return ViTEncoder(model, "timm", name)


def _build_open_clip(model_name, checkpoint, img_size, pretrained) -> ViTEncoder:
    import open_clip
    from open_clip.transformer import VisionTransformer as OpenClipViT

    if model_name not in open_clip.list_models():
        raise _unknown_name_error(model_name, open_clip.list_models(), "open_clip")
    kwargs = {}
    if img_size is not None:
        hw = _as_hw(img_size)
        if hw[0] != hw[1]:
            raise BackboneError("open_clip vision towers take square inputs; pass a single img_size.")
        kwargs["force_image_size"] = hw[0]
    tag = pretrained if isinstance(pretrained, str) else None
    # open_clip logs "No pretrained weights loaded ... initialized randomly"; untrue when the user's file follows
    with drop_log_records("No pretrained weights loaded", enabled=checkpoint is not None):
        # the current default device (cpu, or meta under ``with torch.device("meta")`` for shape-only counts)
        model = open_clip.create_model(model_name, pretrained=tag, device=torch.get_default_device(), **kwargs)
    visual = model.visual
    if not isinstance(visual, OpenClipViT):
        raise BackboneError(f"open_clip model {model_name!r} has a {type(visual).__name__} vision tower; "
                            "only ViT towers (open_clip VisionTransformer) are supported.")
    if checkpoint is not None:
        load_open_clip_checkpoint(visual, checkpoint)
    return ViTEncoder(visual, "open_clip", OPEN_CLIP_PREFIX + model_name)
