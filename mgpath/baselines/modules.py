"""LightningModules of the baselines, selectable with ``model.class_path`` in any MGPATH config.

They share :class:`mgpath.lit.SlideClassifier` (loss, metrics, checkpoint selection, exact resume) with
MGPATH, so every method runs under the same splits, features, seeds and fold runner. The MIL baselines read
one magnification (``magnification``, default the last of ``data.magnifications``, i.e. the highest).

Each MIL module trains by one of two recipes (``recipe``):

- ``fewshot`` (default): the shared recipe: cross-entropy on the slide logits (+ the method's auxiliary
  term), Adam / RAdam with the lr and weight decay below, checkpoint selection by the config's callback.
- ``official``: the authors' training code, re-stated (sources and commits in ``docs/baselines.md``).

=====================  ============================================  =============================================
class_path             ``recipe: fewshot``                           ``recipe: official``
=====================  ============================================  =============================================
``ABMILModule``        CE; Adam lr 2e-4, wd 1e-5 (CLAM's defaults)   CLAM ``main.py --no_inst_cluster``: the same,
                                                                      early stopping on val loss (20 / from 50),
                                                                      class-balanced slide sampling
``CLAMModule``         0.7 CE + 0.3 instance CE; Adam 2e-4, 1e-5      CLAM README: instance loss smooth top-1 SVM,
                                                                      early stopping on val loss (20 / from 50),
                                                                      class-balanced slide sampling
``TransMILModule``     CE; RAdam lr 2e-4, wd 1e-5 (L2)                Lookahead(RAdam) lr 2e-4, wd 1e-5 decoupled,
                                                                      none on biases / norms; grad accumulation 2;
                                                                      early stopping on val loss (patience 10)
``DSMILModule``        0.5 CE + 0.5 max-instance CE; Adam 2e-4,       0.5 BCE + 0.5 max-instance BCE on one-hot
                       betas (0.5, 0.9), wd 5e-3 (train_tcga.py       labels, orthogonal init, Adam 1e-4, betas
                       before 2024-03)                                (0.5, 0.9), wd 1e-3, cosine to 5e-6; sigmoid;
                                                                      selection / early stopping on its val score
``PoolingModule``      CE; Adam lr 1e-3, wd 1e-5                     (no official code: same as fewshot)
``CoOpModule``         CoOp: learnable context, mean-pooled slide feature, cosine logits; Adam (MGPATH's lr / wd)
``ViLaMILModule``,     the vision-language few-shot MIL methods: :mod:`mgpath.baselines.prompt_modules`
``TOPModule``
=====================  ============================================  =============================================

``lr`` / ``weight_decay`` left unset take the recipe's value. Zero-shot: :class:`mgpath.zeroshot.ZeroShotModule`
(MGPATH's towers and adaptors); with a publisher's towers: :class:`mgpath.baselines.TowerZeroShotModule`.
MGPATH ablations are MGPATHModule settings: patch level only ``use_graph: false``; region level only
``ratio_graph: 1.0``; no OT (mean cosine) ``ot: {backend: uniform}``.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler

from mgpath.baselines.mil import ABMIL, CLAMSB, DSMIL, PoolingLinear
from mgpath.baselines.recipes import (
    EarlyStoppingAfter,
    Lookahead,
    dsmil_selection_score,
    no_decay_groups,
    orthogonal_init_,
)
from mgpath.baselines.transmil import TransMIL
from mgpath.lit import SlideClassifier
from mgpath.module import MGPATHModule
from mgpath.selection import BestCheckpoint

__all__ = [
    "RECIPES",
    "ABMILModule",
    "CLAMModule",
    "CoOpModule",
    "DSMILModule",
    "PoolingModule",
    "TransMILModule",
]

RECIPES = ("fewshot", "official")


class _BagModule(SlideClassifier):
    """One bag per slide at ``magnification`` through ``self.model`` (N, D) -> (C,).

    Subclasses set ``LR`` / ``WD`` (recipe -> default) and may override :meth:`slide_loss`."""

    LR: ClassVar[dict[str, float]] = {"fewshot": 2e-4, "official": 2e-4}
    WD: ClassVar[dict[str, float]] = {"fewshot": 1e-5, "official": 1e-5}
    #: the official recipe samples slides with class-balanced weights (CLAM's README commands: --weighted_sample)
    CLASS_BALANCED_OFFICIAL: ClassVar[bool] = False

    def __init__(self, feature_dim: int, classes, magnifications, magnification, lr, weight_decay, recipe):
        if recipe not in RECIPES:
            raise ValueError(f"mgpath/baselines: {type(self).__name__}: recipe must be one of {RECIPES}, got "
                             f"{recipe!r}")
        self.recipe = recipe
        super().__init__(classes, self.LR[recipe] if lr is None else lr,
                         self.WD[recipe] if weight_decay is None else weight_decay)
        mags = list(magnifications or ["5x", "10x"])
        self.magnification = magnification or mags[-1]
        if self.magnification not in mags:
            raise ValueError(f"mgpath/baselines: magnification {self.magnification!r} is not among the data's "
                             f"{mags}")

    def _bag(self, slide: dict, i: int) -> torch.Tensor:
        if self.magnification not in slide:
            raise KeyError(f"mgpath/baselines: slide {i} has no bag at {self.magnification!r} (it has "
                           f"{sorted(slide)})")
        x = slide[self.magnification].features
        if not torch.isfinite(x).all():
            raise ValueError(f"mgpath/baselines: slide {i} has NaN/inf features at {self.magnification}")
        return x

    def forward(self, slides: list[dict]) -> torch.Tensor:
        return torch.stack([self.model(self._bag(s, i)) for i, s in enumerate(slides)])

    def slide_loss(self, x: torch.Tensor, label: int, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (), logits (C,)) of one bag (N, D); cross-entropy."""
        logits = self.model(x)
        return F.cross_entropy(logits[None], torch.tensor([label], device=x.device)), logits

    def _objective(self, batch, train: bool):
        out = [self.slide_loss(self._bag(s, i), int(y), train)
               for i, (s, y) in enumerate(zip(batch["slides"], batch["labels"]))]
        return torch.stack([o[0] for o in out]).mean(), torch.stack([o[1] for o in out])

    def loss(self, batch):
        return self._objective(batch, train=True)

    def eval_loss(self, batch):
        return self._objective(batch, train=False)

    @property
    def class_balanced_sampling(self) -> bool:
        """Whether the recipe draws training slides with class-balanced weights (read by the data module)."""
        return self.recipe == "official" and self.CLASS_BALANCED_OFFICIAL

    def _official_stopping(self, patience: int, start_epoch: int = 0, ties: str = "latest",
                           monitor: str = "val/loss", mode: str = "min") -> list:
        """Early stopping on ``monitor`` and checkpoint selection on its best value (they replace the config's)."""
        return [EarlyStoppingAfter(monitor=monitor, mode=mode, patience=patience, start_epoch=start_epoch),
                BestCheckpoint(monitor=monitor, mode=mode, ties=ties, save_last=True, save_top_k=1,
                               filename=f"best-{{epoch}}-{{{monitor}:.4f}}", auto_insert_metric_name=False)]


class ABMILModule(_BagModule):
    """Gated-attention MIL (:class:`mgpath.baselines.mil.ABMIL`). Official recipe: CLAM's ``main.py`` for its
    attention MIL without instance clustering (``--no_inst_cluster``): CE, Adam lr 2e-4 (README commands),
    wd 1e-5 (``--reg``), early stopping on the validation loss (patience 20, not before epoch 50),
    class-balanced slide sampling (``--weighted_sample``)."""

    CLASS_BALANCED_OFFICIAL = True

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, hidden: int = 512,
                 attention_dim: int = 256, dropout: float = 0.25, lr: float | None = None,
                 weight_decay: float | None = None, recipe: str = "fewshot"):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay, recipe)
        self.save_hyperparameters()
        self.model = ABMIL(feature_dim, len(self.classes), hidden, attention_dim, dropout)

    def configure_callbacks(self):
        return self._official_stopping(20, 50) if self.recipe == "official" else []


class CLAMModule(_BagModule):
    """CLAM-SB (:class:`mgpath.baselines.mil.CLAMSB`): ``bag_weight * CE + (1 - bag_weight) * instance loss``
    of one forward pass (CLAM ``utils/core_utils.py`` ``train_loop_clam``); the validation loss is the bag CE
    (``validate_clam``). ``inst_loss`` unset: ``"ce"`` (fewshot) or ``"svm"`` (official, CLAM's README
    commands). ``subtyping`` True as CLAM's README command for subtyping tasks (``CLAM_SB``'s own default is
    False). Official recipe: lr 2e-4, wd 1e-5, early stopping on the validation loss (patience 20, not before
    epoch 50; the checkpoint is the lowest validation loss, ties to the later epoch), class-balanced slide
    sampling (``--weighted_sample``)."""

    CLASS_BALANCED_OFFICIAL = True

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, hidden: int = 512,
                 attention_dim: int = 256, dropout: float = 0.25, k_sample: int = 8, subtyping: bool = True,
                 inst_loss: str | None = None, bag_weight: float = 0.7, lr: float | None = None,
                 weight_decay: float | None = None, recipe: str = "fewshot"):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay, recipe)
        self.save_hyperparameters()
        if not 0.0 <= bag_weight <= 1.0:
            raise ValueError(f"mgpath/baselines: bag_weight must be in [0, 1], got {bag_weight}")
        self.bag_weight = float(bag_weight)
        inst_loss = inst_loss or ("svm" if recipe == "official" else "ce")
        self.model = CLAMSB(feature_dim, len(self.classes), hidden, attention_dim, dropout, k_sample, subtyping,
                            inst_loss)

    def slide_loss(self, x, label, train):
        if not train:
            return super().slide_loss(x, label, train)
        logits, inst = self.model.forward_train(x, label)
        bag = F.cross_entropy(logits[None], torch.tensor([label], device=x.device))
        return self.bag_weight * bag + (1 - self.bag_weight) * inst, logits

    def configure_callbacks(self):
        return self._official_stopping(20, 50) if self.recipe == "official" else []


class TransMILModule(_BagModule):
    """TransMIL (:class:`mgpath.baselines.transmil.TransMIL`). Fewshot: RAdam (L2 weight decay). Official
    (TransMIL ``Camelyon/TransMIL.yaml`` + ``MyOptimizer``): Lookahead(RAdam, alpha 0.5, k 6), lr 2e-4, wd 1e-5
    applied to the weights (decoupled, as its RAdam) and not to biases / 1-D parameters, gradient accumulation
    2, early stopping on the validation loss (patience 10; checkpoint: lowest validation loss, ties to the
    first epoch as Lightning's ``ModelCheckpoint``)."""

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, dim: int = 512,
                 dropout: float = 0.1, pinned_nystrom: bool = False, lr: float | None = None,
                 weight_decay: float | None = None, recipe: str = "fewshot"):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay, recipe)
        self.save_hyperparameters()
        self.model = TransMIL(feature_dim, len(self.classes), dim, dropout, pinned_nystrom=pinned_nystrom)

    def configure_optimizers(self):
        if self.recipe == "official":
            radam = torch.optim.RAdam(no_decay_groups(self.model, self.weight_decay), lr=self.lr,
                                      decoupled_weight_decay=True)
            return Lookahead(radam, alpha=0.5, k=6)
        return torch.optim.RAdam([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)

    def configure_callbacks(self):
        if self.recipe != "official":
            return []
        return [GradientAccumulationScheduler({0: 2}), *self._official_stopping(10, ties="first")]


class DSMILModule(_BagModule):
    """DSMIL (:class:`mgpath.baselines.mil.DSMIL`): ``0.5 * bag loss + 0.5 * max-instance loss`` of one pass.
    Fewshot: cross-entropy, softmax probabilities. Official (binli123/dsmil-wsi ``train_tcga.py``, 80465ed):
    ``BCEWithLogitsLoss`` on one-hot labels for both terms (train and validation), orthogonal weights and
    zero biases, Adam lr 1e-4, betas (0.5, 0.9), wd 1e-3, ``CosineAnnealingLR(T_max=max_epochs,
    eta_min=5e-6)`` stepped per epoch, probabilities ``sigmoid(bag logits)``; model selection and early
    stopping on ``val/dsmil_score`` (:func:`~mgpath.baselines.recipes.dsmil_selection_score`, the first best
    epoch kept, stop after 11 epochs without a better score: ``counter > stop_epochs`` with ``stop_epochs`` 10)."""

    LR: ClassVar[dict[str, float]] = {"fewshot": 2e-4, "official": 1e-4}
    WD: ClassVar[dict[str, float]] = {"fewshot": 5e-3, "official": 1e-3}

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, q_dim: int = 128,
                 dropout_v: float = 0.0, passing_v: bool = False, lr: float | None = None,
                 weight_decay: float | None = None, recipe: str = "fewshot"):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay, recipe)
        self.save_hyperparameters()
        self.model = DSMIL(feature_dim, len(self.classes), q_dim, dropout_v, passing_v)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if recipe == "official":
            orthogonal_init_(self.model)

    def slide_loss(self, x, label, train):
        scores, logits = self.model.streams(x)
        top = scores.max(0).values
        if self.recipe == "official":
            target = F.one_hot(torch.tensor(label, device=x.device), len(self.classes)).to(logits)
            crit = F.binary_cross_entropy_with_logits
            return 0.5 * crit(logits, target) + 0.5 * crit(top, target), logits
        y = torch.tensor([label], device=x.device)
        return 0.5 * F.cross_entropy(logits[None], y) + 0.5 * F.cross_entropy(top[None], y), logits

    def probabilities(self, logits):
        return torch.sigmoid(logits) if self.recipe == "official" else logits.softmax(-1)

    def eval_outputs(self, stage, probs, labels):
        if stage == "val" and self.recipe == "official":
            self._val_outputs.append((probs.float().cpu(), labels.cpu()))

    def on_validation_epoch_start(self):
        self._val_outputs = []

    def on_validation_epoch_end(self):
        if self.recipe == "official" and self._val_outputs:
            probs, labels = (torch.cat(t).numpy() for t in zip(*self._val_outputs))
            self.log("val/dsmil_score", dsmil_selection_score(probs, labels))
        self._val_outputs = []
        super().on_validation_epoch_end()

    def configure_callbacks(self):
        return (self._official_stopping(11, ties="first", monitor="val/dsmil_score", mode="max")
                if self.recipe == "official" else [])

    def configure_optimizers(self):
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr, betas=(0.5, 0.9),
                               weight_decay=self.weight_decay)
        if self.recipe != "official":
            return opt
        epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 50
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, 5e-6)}


class PoolingModule(_BagModule):
    """Mean or max pooling + linear (:class:`mgpath.baselines.mil.PoolingLinear`); one recipe (no official
    code): CE, Adam lr 1e-3, wd 1e-5."""

    LR: ClassVar[dict[str, float]] = {"fewshot": 1e-3, "official": 1e-3}

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None,
                 pooling: str = "mean", lr: float | None = None, weight_decay: float | None = None,
                 recipe: str = "fewshot"):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay, recipe)
        self.save_hyperparameters()
        self.model = PoolingLinear(feature_dim, len(self.classes), pooling)


class CoOpModule(MGPATHModule):
    """CoOp on slides (Zhou et al., IJCV 2022, "Learning to prompt for vision-language models"): learnable
    context vectors on the frozen text tower (one prompt set), the slide feature is the mean of the
    image-adapted tile features, logits ``exp(t) * cos(slide, class text)``.

    Takes MGPATHModule's keywords (text tower, descriptions, ``init_checkpoint`` e.g. a PLIP-G import);
    ``n_sets`` is 1. Only the context is trained unless ``train_adaptors`` (then also the two adaptors and
    the temperature). ``magnification``: the bag and the descriptions used (default the last).
    """

    def __init__(self, descriptions: str, feature_dim: int, classes: list[str] | None = None, *,
                 magnification: str | None = None, train_adaptors: bool = False, n_ctx: int = 16,
                 n_sets: int = 1, n_prompts: int = 1, use_graph: bool = False, **kwargs):
        if n_sets != 1 or n_prompts != 1:
            raise ValueError(f"mgpath/baselines: CoOp has one prompt set and no visual prompts (n_sets = 1, "
                             f"n_prompts = 1; got {n_sets}, {n_prompts})")
        super().__init__(descriptions, feature_dim, classes, n_ctx=n_ctx, n_sets=1, n_prompts=1,
                         use_graph=use_graph, **kwargs)
        self.save_hyperparameters()
        mags = self.model.magnifications
        self.magnification = magnification or mags[-1]
        if self.magnification not in mags:
            raise ValueError(f"mgpath/baselines: magnification {self.magnification!r} not among {mags}")
        for name, p in self.model.named_parameters():
            keep = name == "text.prompts.ctx" or (train_adaptors and name.startswith(
                ("text.adaptor.", "visual.adaptor.", "logit_scale")))
            p.requires_grad_(keep)

    def forward(self, slides: list[dict]) -> torch.Tensor:
        text = self.model.text()[self.magnification][0]  # (C, D), L2-normalised
        v = torch.stack([F.normalize(self.model.visual.adaptor(s[self.magnification].features).mean(0), dim=-1)
                         for s in slides])
        return self.model.logit_scale.exp() * v @ text.T


def count_parameters(module: torch.nn.Module, trainable: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


