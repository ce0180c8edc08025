"""`PromptTuningModule`: the LightningModule that trains a `PromptedViT` (any `vapt.peft` method) with the
official recipe.

Optimisation (official VPT / VAPT defaults; other methods' configs set their own, e.g. AdamW for LoRA): SGD with momentum 0.9, weight decay on prompts and the head
weight but not the head bias, linear warmup + cosine decay stepped once per epoch (so epoch 0 runs at
lr = 0), learning rate given as a *base* rate scaled by ``global_batch / 256``, cross-entropy loss, top-1
accuracy. When the backbone comes from a weights file, checkpoints hold only the trainable tensors (prompts +
head) plus the hyper-parameters that rebuild the model, so a ViT-B/16 VAPT checkpoint is about 0.5 MB instead
of 340 MB (a random-init backbone cannot be rebuilt, so it is stored too; see ``store_frozen``).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from vapt.fileio.state_dict import check_state_dict, complete_state_dict
from vapt.model import PromptedViT, build_model
from vapt.peft import PromptConfig, make_config, method_names
from vapt.training.resume import CheckpointMismatchError

CHECKPOINT_FORMAT = "vapt-trainable-v1"


class ModelConfigError(ValueError):
    """The model / optimisation keywords of a config cannot be used; the message says how to fix it."""


class NonFiniteLossError(ModelConfigError):
    """Training produced a NaN or infinite loss; the message names the epoch and step."""


def check_optimisation(prefix: str = "model.init_args.", **values: float) -> None:
    """`ModelConfigError` naming the key when a learning rate / weight decay / momentum is NaN, infinite or
    negative (``check_optimisation(lr=0.1, weight_decay=1e-4)``)."""
    for name, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ModelConfigError(f"{prefix}{name}={value!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise ModelConfigError(f"{prefix}{name}={value!r} is invalid: it must be a finite number >= 0")


def check_loss(loss: torch.Tensor, epoch: int, step: int) -> None:
    """`NonFiniteLossError` when the training ``loss`` is NaN or infinite (training stops before the update)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"the training loss is {float(loss.detach().float().mean())} at epoch {epoch} (step {step}); training "
            "stopped before the weights were updated. Lower the learning rate or check the data for NaN/inf")


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """LR multiplier of the official ``WarmupCosineSchedule`` (cycles = 0.5).

    ``step / warmup`` for ``step < warmup`` (0 at step 0), then ``0.5 (1 + cos(pi (step - warmup) / (total - warmup)))``.
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


_PROMPT_DEFAULTS = PromptConfig(method="vapt")


def method_config(method: str, named: dict[str, Any], extra: dict[str, Any]):
    """The method config of a `PromptTuningModule`: the VPT-style ``named`` keywords (PromptConfig methods only;
    another method refuses one that differs from its default, naming ``method_kwargs``) plus ``extra``."""
    if method not in method_names():
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(method_names())}.")
    cfg = make_config(method)
    if isinstance(cfg, PromptConfig):
        return make_config(method, **{**named, **extra})
    changed = sorted(k for k, v in named.items() if v != getattr(_PROMPT_DEFAULTS, k))
    if changed:
        raise ValueError(f"{', '.join(changed)} belong(s) to vpt / vapt; give {method}'s options in "
                         f"method_kwargs (its options: {', '.join(sorted(cfg.field_names() - {'method'}))}).")
    return make_config(method, **extra)


class PromptTuningModule(pl.LightningModule):
    """Train a `PromptedViT` (linear probe, full fine-tuning, VPT shallow/deep, VAPT).

    Parameters
    ----------
    num_classes : int
        Linked from the DataModule by the CLI.
    backbone, checkpoint, img_size, backbone_kwargs
        Passed to :func:`vapt.build_model`: timm / open_clip name, local weights file (must exist), input size
        (linked from the DataModule), extra timm keywords (e.g. a tiny ``depth`` for tests).
    method : str
        A registered `vapt.peft` method: linear, full, vpt, vapt, lora, adapter, ... (``vapt summary --help``).
    num_tokens, deep, dropout, project, kernel_size, hidden_dim, mlp_dropout, conv_dropout, share_projector,
    vpt_depth
        Fields of :class:`vapt.PromptConfig` (linear / full / vpt / vapt); ``prompt_kwargs`` sets any other
        field. Other methods take all their options from ``method_kwargs`` (for them, these keywords must keep
        their defaults).
    method_kwargs : dict, optional
        Options of the method's config class (e.g. ``{rank: 8}`` for lora); for linear / full / vpt / vapt the
        same as ``prompt_kwargs``.
    optimizer : {"sgd", "adamw"}
    lr : float
        Base learning rate; the optimiser uses ``lr * global_batch / 256`` when ``scale_lr`` (VAPT
        ``train.py`` and both tune scripts), ``lr`` itself otherwise (VPT ``train.py``).
    weight_decay, momentum : float
    no_decay : {"auto", "head_bias", "biases_and_norms", "none"}
        Tensors without weight decay. ``auto``: the official choice, the head bias for SGD, biases and
        norm parameters for AdamW.
    warmup_epochs : int
    schedule : {"cosine", "constant"}
    schedule_interval : {"epoch", "step"}
        ``epoch`` is the official semantics (one scheduler step per epoch, epoch 0 at lr 0).
    label_smoothing : float
    store_frozen : bool, optional
        Also store the frozen backbone in checkpoints. Default (None): only when ``checkpoint`` is None, i.e.
        when the backbone is a random initialisation that could not be rebuilt from a file.
    compile, compile_mode, compile_backend
        ``torch.compile`` the model in place (state-dict keys unchanged). On a fast GPU at small batch an eager
        prompt-tuning step is bound by per-operator dispatch, which compilation removes.
    """

    def __init__(
        self,
        num_classes: int = 100,
        backbone: str = "vit_base_patch16_224",
        checkpoint: str | None = None,
        img_size: int = 224,
        backbone_kwargs: dict[str, Any] | None = None,
        method: str = "vapt",
        num_tokens: int = 10,
        deep: bool = True,
        dropout: float = 0.0,
        project: int = -1,
        kernel_size: int = 2,
        hidden_dim: int = 8,
        mlp_dropout: float = 0.1,
        conv_dropout: float = 0.1,
        share_projector: bool = True,
        vpt_depth: int = 1,
        prompt_kwargs: dict[str, Any] | None = None,
        method_kwargs: dict[str, Any] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.01,
        scale_lr: bool = True,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        no_decay: Literal["auto", "head_bias", "biases_and_norms", "none"] = "auto",
        warmup_epochs: int = 10,
        schedule: Literal["cosine", "constant"] = "cosine",
        schedule_interval: Literal["epoch", "step"] = "epoch",
        label_smoothing: float = 0.0,
        store_frozen: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimisation(lr=lr, weight_decay=weight_decay, momentum=momentum, label_smoothing=label_smoothing)
        named = dict(num_tokens=num_tokens, deep=deep, dropout=dropout, project=project, kernel_size=kernel_size,
                     hidden_dim=hidden_dim, mlp_dropout=mlp_dropout, conv_dropout=conv_dropout,
                     share_projector=share_projector, vpt_depth=vpt_depth)
        try:
            self.prompt_config = method_config(method, named, {**(prompt_kwargs or {}), **(method_kwargs or {})})
        except (TypeError, ValueError) as e:
            raise ModelConfigError(f"model.init_args: {e}") from e
        if checkpoint is not None and not os.path.exists(os.path.expanduser(checkpoint)):  # files or HF folders
            raise ModelConfigError(
                f"Backbone weights {checkpoint} do not exist. The shipped configs expect the ImageNet-21k ViT-B/16 "
                "(ViT-B_16.npz of the original ViT release) there; see data/vtab/README.md. Pass "
                "--model.checkpoint PATH, or --model.checkpoint null for a random-init backbone (tests only)."
            )
        self.model: PromptedViT = build_model(
            backbone, num_classes=num_classes, prompt=self.prompt_config, checkpoint=checkpoint,
            img_size=img_size, **(backbone_kwargs or {}),
        )
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.effective_lr: float | None = None
        if compile:
            self.model.compile(mode=compile_mode, backend=compile_backend)

    # ------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.model(images)

    def _shared_step(self, batch, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        metric(logits.detach(), labels)
        bs = labels.shape[0]
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=bs,
                 prog_bar=stage != "train")
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, batch_size=bs, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train", self.train_acc)
        check_loss(loss, self.current_epoch, self.global_step)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self.model(images).softmax(-1)
        return {"pred": probs.argmax(-1), "probs": probs}

    def on_train_epoch_start(self) -> None:
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("lr", opt.param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=1)

    # ------------------------------------------------------------------ optimisation
    def global_batch_size(self) -> int:
        """Images per optimiser step over all devices: ``batch_size x world_size x accumulate``."""
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        bs = getattr(dm, "batch_size", None)
        if bs is None:
            raise ValueError("PromptTuningModule: cannot find the batch size (the DataModule has no batch_size); "
                             "set scale_lr: false and give the actual lr.")
        return int(bs) * trainer.world_size * trainer.accumulate_grad_batches

    def param_groups(self) -> list[dict[str, Any]]:
        """Two groups of trainable tensors: with and without weight decay (see ``no_decay``)."""
        rule = self.hparams.no_decay
        if rule == "auto":
            rule = "head_bias" if self.hparams.optimizer == "sgd" else "biases_and_norms"
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if rule == "head_bias":
                skip = name == "head.bias"
            elif rule == "biases_and_norms":
                skip = name.endswith(".bias") or p.ndim == 1 and "norm" in name.lower()
            else:
                skip = False
            (no_decay if skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        lr = hp.lr * self.global_batch_size() / 256 if hp.scale_lr else hp.lr
        self.effective_lr = lr
        groups = self.param_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=hp.momentum)
        else:
            opt = torch.optim.AdamW(groups, lr=lr)
        if hp.schedule == "constant":
            return opt
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 < max_epochs <= hp.warmup_epochs:
            warnings.warn(f"warmup_epochs ({hp.warmup_epochs}) >= trainer.max_epochs ({max_epochs}): the learning "
                          f"rate never leaves its linear warmup (it ends at {(max_epochs - 1) / hp.warmup_epochs:.0%}"
                          " of lr), so little or nothing trains; lower --model.init_args.warmup_epochs or raise "
                          "--trainer.max_epochs.", UserWarning, stacklevel=2)
        if hp.schedule_interval == "epoch":
            total = self.trainer.max_epochs
            if total is None or total < 1:
                raise ModelConfigError("The cosine schedule needs trainer.max_epochs >= 1 (official: 100); "
                                 f"got {total}. Set --trainer.max_epochs.")
            warmup = hp.warmup_epochs
        else:
            total = int(self.trainer.estimated_stepping_batches)
            steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
            warmup = hp.warmup_epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_factor(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.schedule_interval}}

    # ------------------------------------------------------------------ checkpoints
    def trainable_keys(self) -> list[str]:
        return [f"model.{k}" for k in self.model.trainable_state_dict()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable tensors (the frozen backbone is rebuilt from ``backbone`` / ``checkpoint``)."""
        store_frozen = self.hparams.store_frozen
        if store_frozen is None:
            store_frozen = self.hparams.checkpoint is None
        if not store_frozen:
            keys = set(self.trainable_keys())
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["vapt"] = {
            "format": CHECKPOINT_FORMAT,
            "trainable_only": not store_frozen,
            "prompt_config": self.prompt_config.to_dict(),
            "backbone": self.hparams.backbone,
            "backbone_checkpoint": self.hparams.checkpoint,
            "num_classes": self.hparams.num_classes,
            "effective_lr": self.effective_lr,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Complete a trainable-only state dict with this module's frozen backbone; refuse mismatches."""
        meta = checkpoint.get("vapt", {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            return
        sd, own = checkpoint["state_dict"], self.state_dict()
        source = getattr(self, "checkpoint_source", None)  # set by the command line: the file to name
        check_state_dict(
            own, sd, expected=self.trainable_keys(), error=CheckpointMismatchError,
            what=(f"Checkpoint {source + ' ' if source else ''}does not fit this model (method "
                  f"{self.prompt_config.method!r}, backbone {self.hparams.backbone!r}, "
                  f"{self.hparams.num_classes} classes)"),
            hint=("Use the settings it was trained with (its task, num_tokens, ...) or another checkpoint; "
                  "PromptTuningModule.load_from_checkpoint builds the model from the file."))
        checkpoint["state_dict"] = complete_state_dict(own, sd)


def load_trained_model(path: str, map_location: str | torch.device = "cpu", **overrides) -> PromptedViT:
    """Rebuild a trained `PromptedViT` from a checkpoint written by `PromptTuningModule`.

    ``overrides`` replace saved hyper-parameters, e.g. ``checkpoint="/new/place/ViT-B_16.npz"`` when the
    backbone weights moved. Returns the model in eval mode.
    """
    module = PromptTuningModule.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)
    return module.model.eval()
