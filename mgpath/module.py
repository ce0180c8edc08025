"""LightningModule for MGPATH: cross-entropy on the OT logits, Adam, AUC / macro-F1 / accuracy.

Loss, optimiser, metrics (``val/auc``, ``val/f1``, ``val/acc``, ``test/...``), predictions and the RNG states
of exact resume come from :class:`mgpath.lit.SlideClassifier`, shared with the baselines.

Checkpoints: when the frozen text tower can be rebuilt from a file (``text_checkpoint``, or an
``init_checkpoint`` that holds every tower tensor), Lightning checkpoints omit it and keep the trainable
tensors plus the prompt buffers (token prefix/suffix, end-of-text index: small, and they pin the descriptions
the context was trained with); loading completes the state dict with the freshly built tower. A random-init
tower (``mgpath-tiny`` without a file) cannot be rebuilt, so it is stored too; see ``store_frozen``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch

from mgpath.lit import SlideAUROC, SlideClassifier
from mgpath.model import Bag, build_mgpath
from mgpath.ot import OTConfig
from vapt.fileio.state_dict import check_state_dict, complete_state_dict
from vapt.fileio.weights import safe_torch_load

__all__ = ["CHECKPOINT_FORMAT", "MGPATHModule", "SlideAUROC", "load_init_checkpoint", "ot_config"]

CHECKPOINT_FORMAT = "mgpath-trainable-v1"
_TOWER = "model.text.tower."
_OT_ALIASES = {"ot_eps": "eps", "ot_max_iter": "max_iter", "ot_tol": "tol", "ot_reg_m": "reg_m",
               "ot_backend": "backend", "ot_detach_plan": "detach_plan", "ot_on_nonconvergence": "on_nonconvergence"}


def ot_config(ot: OTConfig | dict | None = None, **flat) -> OTConfig:
    """The OT block from ``ot`` (an :class:`OTConfig` or its dict) plus deprecated flat ``ot_*`` keywords."""
    cfg = ot if isinstance(ot, OTConfig) else OTConfig(**(ot or {}))
    given = {k: v for k, v in flat.items() if v is not None}
    unknown = set(given) - set(_OT_ALIASES)
    if unknown:
        raise TypeError(f"mgpath/module.py: unknown OT keyword(s) {sorted(unknown)}")
    if given:
        warnings.warn(f"mgpath: the flat keys {sorted(given)} are deprecated; write them as a nested block "
                      "`ot: {" + ", ".join(f"{_OT_ALIASES[k]}: {v}" for k, v in given.items()) + "}`",
                      FutureWarning, stacklevel=3)
        cfg = dataclasses.replace(cfg, **{_OT_ALIASES[k]: v for k, v in given.items()})
    return cfg


def load_init_checkpoint(path: str) -> tuple[dict, list[str]]:
    """``(state dict of the inner model, prefixes kept at their fresh initialisation)`` from a file written by
    ``mgpath import-official`` (``{"state_dict", "config", "fresh"}``), a Lightning checkpoint of ``mgpath
    fit`` or a plain state dict."""
    from pathlib import Path

    from mgpath.text import load_state_dict_file

    fresh: list[str] = []
    if Path(path).suffix not in (".safetensors",) and Path(path).is_file():
        try:
            obj = safe_torch_load(path)
        except (RuntimeError, OSError, EOFError, ValueError, __import__("pickle").UnpicklingError):
            # not a plain tensor file: the general loader below says why
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("fresh"), list):
            fresh = [str(f) for f in obj["fresh"]]
    sd = load_state_dict_file(path)
    return {k.removeprefix("model."): v for k, v in sd.items()}, fresh


class MGPATHModule(SlideClassifier):
    """Few-shot training of :class:`~mgpath.model.MGPATH` (hyperparameters as in the paper's code).

    Parameters
    ----------
    descriptions : class-description file (``data/prompts/*.json`` or the official line-per-prompt CSV).
    feature_dim : dimension of the tile features (must match the feature files).
    classes : class names in logit order (linked from ``data.classes`` by the CLI).
    embed_dim : shared visual-text dimension (official 1024).
    magnifications : default ``["5x", "10x"]``.
    text_model, text_checkpoint, text_model_cfg, quick_gelu : the open_clip text tower (see
        :func:`mgpath.text.build_text_tower`); ``"mgpath-tiny"`` is a small random tower.
    n_ctx, n_sets, placement : prompt learner (16, 4, ``"insert"``).
    n_prompts, ratio_graph, use_graph : visual prompt queries (64), region-level weight (0.2).
    ot : the OT head as one block (:class:`~mgpath.ot.OTConfig`: eps 0.1, 100 iterations, tol 1e-2,
        balanced, torch backend, plan detached); YAML ``ot: {eps: 0.1, reg_m: 10}``.
    ot_eps, ot_max_iter, ot_tol, ot_reg_m, ot_backend, ot_detach_plan, ot_on_nonconvergence : deprecated
        flat aliases of the ``ot`` fields (a warning says how to write them).
    logit_scale : initial log temperature.
    init_checkpoint : optional state dict file of the inner model (e.g. from ``mgpath import-official``; a
        PLIP-G alignment import leaves the context, visual prompts, graph layer and norm freshly initialised).
    lr, weight_decay : Adam (9e-4, 1e-5).
    store_frozen : also store the frozen text tower in checkpoints. Default (None): only when it cannot be
        rebuilt from a file, i.e. no ``text_checkpoint`` and no ``init_checkpoint`` holding the whole tower.
    """

    def __init__(self, descriptions: str, feature_dim: int, classes: list[str] | None = None, *,
                 embed_dim: int = 1024, magnifications: list[str] | None = None, text_model: str = "ViT-B-32",
                 text_checkpoint: str | None = None, text_model_cfg: dict | None = None, quick_gelu: bool = False,
                 n_ctx: int = 16, n_sets: int = 4, placement: str = "insert", n_prompts: int = 64,
                 ratio_graph: float = 0.2, use_graph: bool = True, image_adaptor_hidden: int | None = None,
                 text_adaptor_hidden: int | None = None, ot: OTConfig | None = None,
                 ot_eps: float | None = None, ot_max_iter: int | None = None, ot_tol: float | None = None,
                 ot_reg_m: float | None = None, ot_backend: str | None = None, ot_detach_plan: bool | None = None,
                 ot_on_nonconvergence: str | None = None, logit_scale: float = math.log(1 / 0.02),
                 init_checkpoint: str | None = None, lr: float = 9e-4, weight_decay: float = 1e-5,
                 store_frozen: bool | None = None):
        super().__init__(classes, lr, weight_decay)
        cfg = ot_config(ot, ot_eps=ot_eps, ot_max_iter=ot_max_iter, ot_tol=ot_tol, ot_reg_m=ot_reg_m,
                        ot_backend=ot_backend, ot_detach_plan=ot_detach_plan,
                        ot_on_nonconvergence=ot_on_nonconvergence)
        self.save_hyperparameters(ignore=["ot", *_OT_ALIASES])
        self.hparams["ot"] = dataclasses.asdict(cfg)  # plain dict: checkpoints load with weights_only
        self.model = build_mgpath(
            descriptions, self.classes, feature_dim, embed_dim=embed_dim,
            magnifications=magnifications or ["5x", "10x"], text_model=text_model,
            text_checkpoint=text_checkpoint, text_model_cfg=text_model_cfg, quick_gelu=quick_gelu, n_ctx=n_ctx,
            n_sets=n_sets, placement=placement, n_prompts=n_prompts, ratio_graph=ratio_graph, use_graph=use_graph,
            image_adaptor_hidden=image_adaptor_hidden, text_adaptor_hidden=text_adaptor_hidden, ot=cfg,
            logit_scale=logit_scale)
        self._tower_from_file = bool(text_checkpoint)
        if init_checkpoint:
            self._load_init(init_checkpoint)

    def _load_init(self, path: str) -> None:
        sd, fresh = load_init_checkpoint(path)
        if sd and not any(k.startswith(("text.", "visual.", "logit_scale")) for k in sd):
            raise ValueError(f"mgpath/module.py: init_checkpoint {path} is not an MGPATH state dict (keys such as "
                             f"{list(sd)[:2]}); give a file from `mgpath import-official` or `mgpath fit`")
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        bad = [k for k in missing if not k.startswith(("text.tower.", *fresh))]
        if unexpected or bad:
            raise KeyError(f"mgpath/module.py: {path} does not match the model: missing {bad[:5]}, unexpected "
                           f"{unexpected[:5]}")
        if not any(k.startswith("text.tower.") for k in missing):
            self._tower_from_file = True
        if any(k.startswith("text.prompts.token_") for k in missing):
            self.model.text.prompts.refresh(self.model.text.tower)  # descriptions through the loaded embeddings

    def forward(self, slides: list[dict[str, Bag]]) -> torch.Tensor:
        return self.model(slides)

    # ------------------------------------------------------------------ checkpoints
    def frozen_keys(self) -> set[str]:
        """State-dict keys the constructor rebuilds: the frozen text tower (parameters and buffers)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k for k in self.state_dict() if k.startswith(_TOWER) and k not in trainable}

    def _stores_frozen(self) -> bool:
        store = self.hparams.get("store_frozen")
        return (not self._tower_from_file) if store is None else bool(store)

    def _describe(self) -> str:
        hp = self.hparams
        return (f"classes {self.classes}, magnifications {self.model.magnifications}, n_sets {hp.n_sets}, "
                f"n_ctx {hp.n_ctx}, text_model {hp.text_model!r}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen text tower (rebuilt from ``text_checkpoint`` / ``init_checkpoint``) unless it cannot
        be rebuilt or ``store_frozen`` asks for it; record what was stored."""
        super().on_save_checkpoint(checkpoint)
        store = self._stores_frozen()
        if not store:
            frozen = self.frozen_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        hp = self.hparams
        checkpoint["mgpath"] = {
            "format": CHECKPOINT_FORMAT,
            "trainable_only": not store,
            "text_model": hp.text_model,
            "text_checkpoint": hp.text_checkpoint,
            "init_checkpoint": hp.init_checkpoint,
            "classes": list(self.classes),
            "magnifications": list(self.model.magnifications),
            "n_sets": hp.n_sets,
            "n_ctx": hp.n_ctx,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Complete a checkpoint without the tower with this module's frozen tower; refuse mismatches."""
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint.get("mgpath", {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            return  # older checkpoints hold the whole state dict; Lightning loads them strictly
        sd, own = checkpoint["state_dict"], self.state_dict()
        saved = (f"classes {meta.get('classes')}, magnifications {meta.get('magnifications')}, n_sets "
                 f"{meta.get('n_sets')}, n_ctx {meta.get('n_ctx')}, text_model {meta.get('text_model')!r}")
        hint = (f"The checkpoint was written for {saved}; this model has {self._describe()}. Build the model with "
                "the checkpoint's hyper-parameters (MGPATHModule.load_from_checkpoint does).")
        frozen = self.frozen_keys() if meta.get("trainable_only") else set()
        check_state_dict(own, sd, expected=[k for k in own if k not in frozen], hint=hint,
                         what="mgpath/module.py: checkpoint does not fit this model")
        if meta.get("classes") not in (None, self.classes):
            raise KeyError(f"mgpath/module.py: checkpoint classes {meta['classes']} != model classes "
                           f"{self.classes} (same count, other names or order). {hint}")
        checkpoint["state_dict"] = complete_state_dict(own, sd)
