"""LightningModule for MGPATH: cross-entropy on the OT logits, Adam, AUC / macro-F1 / accuracy.

Metrics (torchmetrics, computed over the whole epoch): ``auc`` binary = AUROC of the probability of class 1,
multiclass = one-vs-rest macro AUROC over the classes present in the targets; ``f1`` = macro-F1 of the argmax;
``acc`` = accuracy (micro). Logged as ``val/auc``, ``val/f1``, ``val/acc``, ``test/...``.

Checkpoints: when the frozen text tower can be rebuilt from a file (``text_checkpoint``, or an
``init_checkpoint`` that holds every tower tensor), Lightning checkpoints omit it and keep the trainable
tensors plus the prompt buffers (token prefix/suffix, end-of-text index: small, and they pin the descriptions
the context was trained with); loading completes the state dict with the freshly built tower. A random-init
tower (``mgpath-tiny`` without a file) cannot be rebuilt, so it is stored too; see ``store_frozen``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover
    import pytorch_lightning as pl

from mgpath.model import Bag, build_mgpath
from mgpath.ot import OTConfig
from vapt.state_dict import check_state_dict, complete_state_dict

__all__ = ["CHECKPOINT_FORMAT", "MGPATHModule", "SlideAUROC"]

CHECKPOINT_FORMAT = "mgpath-trainable-v1"
_TOWER = "model.text.tower."


class SlideAUROC(Metric):
    """AUROC over an epoch: binary on p(class 1), multiclass one-vs-rest macro over the present classes."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach())

    def compute(self) -> torch.Tensor:
        p = torch.cat(self.probs) if isinstance(self.probs, list) else self.probs
        t = torch.cat(self.target) if isinstance(self.target, list) else self.target
        present = torch.bincount(t, minlength=self.num_classes) > 0
        if present.sum() < 2:
            return torch.tensor(float("nan"), device=p.device)
        if self.num_classes == 2:
            return binary_auroc(p[:, 1], t)
        per = multiclass_auroc(p, t, self.num_classes, average=None)
        return per[present].mean()


class MGPATHModule(pl.LightningModule):
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
    ot_* : OT head (eps 0.1, 100 iterations, tol 1e-2, balanced, torch backend, plan detached).
    logit_scale : initial log temperature.
    init_checkpoint : optional state dict file of the inner model (e.g. from ``mgpath import-official``).
    lr, weight_decay : Adam (9e-4, 1e-5).
    store_frozen : also store the frozen text tower in checkpoints. Default (None): only when it cannot be
        rebuilt from a file, i.e. no ``text_checkpoint`` and no ``init_checkpoint`` holding the whole tower.
    """

    def __init__(self, descriptions: str, feature_dim: int, classes: list[str] | None = None,
                 embed_dim: int = 1024, magnifications: list[str] | None = None, text_model: str = "ViT-B-32",
                 text_checkpoint: str | None = None, text_model_cfg: dict | None = None, quick_gelu: bool = False,
                 n_ctx: int = 16, n_sets: int = 4, placement: str = "insert", n_prompts: int = 64,
                 ratio_graph: float = 0.2, use_graph: bool = True, image_adaptor_hidden: int | None = None,
                 text_adaptor_hidden: int | None = None, ot_eps: float = 0.1, ot_max_iter: int = 100,
                 ot_tol: float = 1e-2, ot_reg_m: float | None = None, ot_backend: str = "torch",
                 ot_detach_plan: bool = True, ot_on_nonconvergence: str = "raise",
                 logit_scale: float = math.log(1 / 0.02), init_checkpoint: str | None = None,
                 lr: float = 9e-4, weight_decay: float = 1e-5, store_frozen: bool | None = None):
        super().__init__()
        if not classes:
            raise ValueError("mgpath/module.py: `classes` is empty; set data.classes in the config")
        self.save_hyperparameters()
        self.classes = list(classes)
        ot = OTConfig(ot_eps, ot_max_iter, ot_tol, ot_reg_m, ot_backend, ot_detach_plan, ot_on_nonconvergence)
        self.model = build_mgpath(descriptions, self.classes, feature_dim, embed_dim,
                                  magnifications or ["5x", "10x"], text_model, text_checkpoint, text_model_cfg,
                                  quick_gelu, n_ctx, n_sets, placement, n_prompts, ratio_graph, use_graph,
                                  image_adaptor_hidden, text_adaptor_hidden, ot, logit_scale)
        self._tower_from_file = bool(text_checkpoint)
        if init_checkpoint:
            from mgpath.text import load_state_dict_file

            sd = load_state_dict_file(init_checkpoint)
            sd = {k.removeprefix("model."): v for k, v in sd.items()}
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            if unexpected or [k for k in missing if not k.startswith("text.tower.")]:
                raise KeyError(f"mgpath/module.py: {init_checkpoint} does not match the model: missing "
                               f"{missing[:5]}, unexpected {unexpected[:5]}")
            if not any(k.startswith("text.tower.") for k in missing):
                self._tower_from_file = True
        C = len(self.classes)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": m for stage in ("val", "test") for name, m in (
                ("auc", SlideAUROC(C)), ("f1", MulticlassF1Score(C, average="macro")),
                ("acc", MulticlassAccuracy(C, average="micro")))})

    def forward(self, slides: list[dict[str, Bag]]) -> torch.Tensor:
        return self.model(slides)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "feature_dim"):
            d = dm.feature_dim
            if d != self.hparams.feature_dim:
                raise ValueError(f"mgpath/module.py: the feature files have dimension {d} but model.feature_dim is "
                                 f"{self.hparams.feature_dim}; set model.feature_dim: {d} in the config")
            if list(dm.classes) != self.classes:
                raise ValueError(f"mgpath/module.py: data.classes {dm.classes} != model.classes {self.classes}")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        batch["labels"] = batch["labels"].to(device)
        batch["slides"] = [{m: b.to(device) for m, b in s.items()} for s in batch["slides"]]
        return batch

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["slides"])
        loss = F.cross_entropy(logits, batch["labels"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, batch, stage: str):
        logits = self.model(batch["slides"])
        y = batch["labels"]
        loss = F.cross_entropy(logits, y)
        probs = logits.softmax(-1)
        self.metrics[f"{stage}_auc"].update(probs, y)
        self.metrics[f"{stage}_f1"].update(probs, y)
        self.metrics[f"{stage}_acc"].update(probs, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_end(self, stage: str):
        for name in ("auc", "f1", "acc"):
            m = self.metrics[f"{stage}_{name}"]
            self.log(f"{stage}/{name}", m.compute(), prog_bar=name == "f1")
            m.reset()

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def predict_step(self, batch, batch_idx):
        probs = self.model(batch["slides"]).softmax(-1)
        out = {"slide_ids": batch["slide_ids"], "probs": probs.cpu(), "labels": batch["labels"].cpu()}
        self._predictions.append(out)
        return out

    def on_predict_epoch_start(self):
        self._predictions = []

    def on_predict_epoch_end(self):
        """Write ``<default_root_dir>/predictions.csv`` (slide_id, label, p_<class>...) atomically."""
        import os

        import pandas as pd

        from vapt.atomic import atomic_path

        rows = []
        for out in self._predictions:
            for sid, y, p in zip(out["slide_ids"], out["labels"].tolist(), out["probs"].tolist()):
                rows.append({"slide_id": sid, "label": self.classes[y], **{f"p_{c}": v for c, v in zip(self.classes, p)}})
        with atomic_path(os.path.join(self.trainer.default_root_dir, "predictions.csv")) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
