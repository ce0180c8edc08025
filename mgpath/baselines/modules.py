"""LightningModules of the baselines, selectable with ``model.class_path`` in any MGPATH config.

They share :class:`mgpath.lit.SlideClassifier` (loss, metrics, checkpoint selection, exact resume) with
MGPATH, so every method runs under the same splits, features, seeds and fold runner. The MIL baselines read
one magnification (``magnification``, default the last of ``data.magnifications``, i.e. the highest).

=====================  =========================================  ==========================================
class_path             model                                      optimiser (published defaults)
=====================  =========================================  ==========================================
``ABMILModule``        gated-attention MIL (Ilse et al. 2018)     Adam lr 2e-4, wd 1e-5 (CLAM's defaults)
``CLAMModule``         CLAM-SB + instance clustering loss         Adam lr 2e-4, wd 1e-5, bag_weight 0.7
``TransMILModule``     TransMIL (Shao et al. 2021)                RAdam lr 2e-4, wd 1e-5 (paper: +Lookahead)
``DSMILModule``        DSMIL (Li et al. 2021)                     Adam lr 2e-4, betas (0.5, 0.9), wd 5e-3
``PoolingModule``      mean / max pooling + linear                Adam lr 1e-3, wd 1e-5
``CoOpModule``         CoOp: learnable context, mean-pooled       Adam (MGPATH's lr / wd)
                       slide feature, cosine logits
=====================  =========================================  ==========================================

Zero-shot: :class:`mgpath.zeroshot.ZeroShotModule`. MGPATH ablations are MGPATHModule settings:
patch level only ``use_graph: false``; region level only ``ratio_graph: 1.0``; no OT (mean cosine)
``ot: {backend: uniform}``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mgpath.baselines.mil import ABMIL, CLAMSB, DSMIL, PoolingLinear
from mgpath.baselines.transmil import TransMIL
from mgpath.lit import SlideClassifier
from mgpath.module import MGPATHModule

__all__ = ["ABMILModule", "CLAMModule", "CoOpModule", "DSMILModule", "PoolingModule", "TransMILModule"]


class _BagModule(SlideClassifier):
    """One bag per slide at ``magnification`` through ``self.model`` (N, D) -> (C,); optional auxiliary loss
    ``(1 - bag_weight) * model.aux_loss``."""

    bag_weight = 1.0

    def __init__(self, feature_dim: int, classes, magnifications, magnification, lr, weight_decay):
        super().__init__(classes, lr, weight_decay)
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

    def loss(self, batch):
        logits = self(batch["slides"])
        loss = F.cross_entropy(logits, batch["labels"])
        if self.bag_weight < 1:
            aux = torch.stack([self.model.aux_loss(self._bag(s, i), int(y)) for i, (s, y) in
                               enumerate(zip(batch["slides"], batch["labels"]))]).mean()
            loss = self.bag_weight * loss + (1 - self.bag_weight) * aux
        return loss, logits


class ABMILModule(_BagModule):
    """Gated-attention MIL (:class:`mgpath.baselines.mil.ABMIL`)."""

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, hidden: int = 512,
                 attention_dim: int = 256, dropout: float = 0.25, lr: float = 2e-4, weight_decay: float = 1e-5):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay)
        self.save_hyperparameters()
        self.model = ABMIL(feature_dim, len(self.classes), hidden, attention_dim, dropout)


class CLAMModule(_BagModule):
    """CLAM-SB with the instance clustering loss (:class:`mgpath.baselines.mil.CLAMSB`)."""

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, hidden: int = 512,
                 attention_dim: int = 256, dropout: float = 0.25, k_sample: int = 8, subtyping: bool = True,
                 bag_weight: float = 0.7, lr: float = 2e-4, weight_decay: float = 1e-5):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay)
        self.save_hyperparameters()
        self.bag_weight = float(bag_weight)
        self.model = CLAMSB(feature_dim, len(self.classes), hidden, attention_dim, dropout, k_sample, subtyping)


class TransMILModule(_BagModule):
    """TransMIL (:class:`mgpath.baselines.transmil.TransMIL`), RAdam."""

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, dim: int = 512,
                 dropout: float = 0.1, lr: float = 2e-4, weight_decay: float = 1e-5):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay)
        self.save_hyperparameters()
        self.model = TransMIL(feature_dim, len(self.classes), dim, dropout)

    def configure_optimizers(self):
        return torch.optim.RAdam([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)


class DSMILModule(_BagModule):
    """DSMIL (:class:`mgpath.baselines.mil.DSMIL`): 0.5 bag CE + 0.5 max-instance CE."""

    bag_weight = 0.5

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None, q_dim: int = 128,
                 dropout_v: float = 0.0, passing_v: bool = False, lr: float = 2e-4, weight_decay: float = 5e-3):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay)
        self.save_hyperparameters()
        self.model = DSMIL(feature_dim, len(self.classes), q_dim, dropout_v, passing_v)

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr, betas=(0.5, 0.9),
                                weight_decay=self.weight_decay)


class PoolingModule(_BagModule):
    """Mean or max pooling + linear (:class:`mgpath.baselines.mil.PoolingLinear`)."""

    def __init__(self, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None,
                 pooling: str = "mean", lr: float = 1e-3, weight_decay: float = 1e-5):
        super().__init__(feature_dim, classes, magnifications, magnification, lr, weight_decay)
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


