"""The LightningModule every slide classifier shares: cross-entropy, Adam, AUC / macro-F1 / accuracy,
per-slide predictions and the RNG states that make a resumed ``fit`` bit-exact.

Metrics (torchmetrics ``MetricCollection`` per stage, prefixes ``val/`` and ``test/``, computed over the
whole epoch): ``auc`` binary = AUROC of the probability of class 1, multiclass = one-vs-rest macro AUROC over
the classes present in the targets; ``f1`` = macro-F1 of the argmax; ``acc`` = accuracy (micro).

Resume: every checkpoint also stores the torch (CPU and CUDA), numpy and python RNG states; resuming ``fit``
from it (``--ckpt_path``) restores them, so the next epoch draws the same shuffling (and DataLoader worker
seeds, and dropout masks) as the uninterrupted run.
"""
from __future__ import annotations

import os
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

from vapt.training.module import check_loss, check_optimisation

__all__ = ["SlideAUROC", "SlideClassifier", "get_rng_state", "set_rng_state"]


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


def slide_metrics(num_classes: int) -> MetricCollection:
    """``auc``, ``f1`` (macro), ``acc`` (micro) of (B, C) probabilities against (B,) targets."""
    return MetricCollection({"auc": SlideAUROC(num_classes), "f1": MulticlassF1Score(num_classes, average="macro"),
                             "acc": MulticlassAccuracy(num_classes, average="micro")})


def get_rng_state() -> dict:
    """Every global RNG a training epoch draws from (torch CPU + CUDA, numpy, python)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # as torch/python types: loads with weights_only
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SlideClassifier(pl.LightningModule):
    """Base of MGPATH and the baselines: ``self.model(slides) -> logits (B, C)``; subclasses build ``model``.

    Parameters
    ----------
    classes : class names in logit order (linked from ``data.classes`` by the CLI).
    lr, weight_decay : Adam on the trainable parameters.
    """

    def __init__(self, classes: list[str] | None, lr: float, weight_decay: float):
        super().__init__()
        if not classes:
            raise ValueError(f"mgpath: {type(self).__name__}: `classes` is empty; set data.classes in the config")
        self.classes = list(classes)
        check_optimisation(lr=lr, weight_decay=weight_decay)
        self.lr, self.weight_decay = lr, weight_decay
        base = slide_metrics(len(self.classes))
        self.metrics = torch.nn.ModuleDict({"val": base.clone(prefix="val/"), "test": base.clone(prefix="test/")})
        self._predictions: list[dict] = []

    @property
    def feature_dim(self) -> int | None:
        return self.hparams.get("feature_dim")

    def forward(self, slides):
        return self.model(slides)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "feature_dim") and self.feature_dim is not None:
            d = dm.feature_dim
            if d != self.feature_dim:
                raise ValueError(f"mgpath: the feature files have dimension {d} but model.feature_dim is "
                                 f"{self.feature_dim}; set model.feature_dim: {d} in the config")
        if dm is not None and hasattr(dm, "classes") and list(dm.classes) != self.classes:
            raise ValueError(f"mgpath: data.classes {dm.classes} != model.classes {self.classes}")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        batch["labels"] = batch["labels"].to(device)
        batch["slides"] = [{m: b.to(device) for m, b in s.items()} for s in batch["slides"]]
        return batch

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits (B, C)); cross-entropy by default (CLAM adds its instance loss)."""
        logits = self(batch["slides"])
        return F.cross_entropy(logits, batch["labels"]), logits

    def training_step(self, batch, batch_idx):
        loss, _ = self.loss(batch)
        check_loss(loss, self.current_epoch, self.global_step)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def eval_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(validation / test loss, logits (B, C)); cross-entropy by default."""
        logits = self(batch["slides"])
        return F.cross_entropy(logits, batch["labels"]), logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) of logits (B, C) for the metrics and predictions; softmax by default."""
        return logits.softmax(-1)

    def eval_outputs(self, stage: str, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Called with each validation / test batch's probabilities (B, C) and labels (B,); nothing by default
        (a model selecting on a score of its own collects them here)."""

    def _eval_step(self, batch, stage: str):
        y = batch["labels"]
        loss, logits = self.eval_loss(batch)
        probs = self.probabilities(logits)
        self.metrics[stage].update(probs, y)
        self.eval_outputs(stage, probs.detach(), y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_end(self, stage: str):
        values = self.metrics[stage].compute()
        for name, v in values.items():
            self.log(name, v, prog_bar=name.endswith("/f1"))
        self.metrics[stage].reset()

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def predict_step(self, batch, batch_idx):
        probs = self.probabilities(self(batch["slides"]))
        out = {"slide_ids": batch["slide_ids"], "probs": probs.cpu(), "labels": batch["labels"].cpu()}
        self._predictions.append(out)
        return out

    def on_predict_epoch_start(self):
        self._predictions = []

    def on_predict_epoch_end(self):
        """Write ``<default_root_dir>/predictions.csv`` (slide_id, label, p_<class>...) atomically; when that
        file exists, ``predictions_2.csv``, ``predictions_3.csv`` ... (an earlier file is never replaced)."""
        import pandas as pd

        from vapt.fileio.atomic import atomic_path
        from vapt.training.run_folders import fresh_path

        rows = []
        for out in self._predictions:
            for sid, y, p in zip(out["slide_ids"], out["labels"].tolist(), out["probs"].tolist()):
                rows.append({"slide_id": sid, "label": self.classes[y],
                             **{f"p_{c}": v for c, v in zip(self.classes, p)}})
        if not self.trainer.is_global_zero:
            return
        path = fresh_path(os.path.join(self.trainer.default_root_dir, "predictions.csv"))
        with atomic_path(path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        print(f"wrote {path}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of another model in one line; restore the RNG states when resuming ``fit``."""
        sd = checkpoint.get("state_dict", {})
        if sd and not any(k.startswith("model.") for k in sd):
            kind = "a vapt (ViT prompt-tuning) checkpoint" if any(
                k.startswith(("backbone.", "prompt", "head.")) for k in sd) else "not a checkpoint of this model"
            where = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            raise ValueError(f"mgpath: {where or 'the checkpoint'} is {kind} (keys such as {list(sd)[:2]}); "
                             f"give a checkpoint written by `mgpath fit` for {type(self).__name__}")
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "rng_states" in checkpoint:
            set_rng_state(checkpoint["rng_states"])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
