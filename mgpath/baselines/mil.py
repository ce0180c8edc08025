"""Multiple-instance-learning baselines on one bag of tile features (N, D) -> slide logits (C,).

Plain ``nn.Module`` s, standard published architectures with their published default sizes:

- :class:`ABMIL`: gated attention pooling (Ilse, Tomczak & Welling, ICML 2018, "Attention-based deep multiple
  instance learning"), sized as CLAM's attention network for pre-extracted features (``fc`` D->512 + ReLU +
  dropout 0.25, gated attention 512->256, linear classifier); CLAM's defaults: Adam lr 2e-4, wd 1e-5.
- :class:`CLAMSB`: CLAM single branch (Lu et al., Nature Biomedical Engineering 2021, "Data-efficient and
  weakly supervised computational pathology on whole-slide images"; mahmoodlab/CLAM ``models/model_clam.py``,
  53e2409): the same gated attention plus one binary instance classifier per class trained, in the same
  forward pass, on the ``k_sample=8`` highest- and lowest-attention tiles (``inst_loss``: ``"ce"``, CLAM's
  default, or ``"svm"``, the smooth top-1 SVM of CLAM's README commands; with ``subtyping`` the other
  classes' top tiles are negatives).
- :class:`DSMIL`: dual-stream MIL (Li, Li & Eliceiri, CVPR 2021; binli123/dsmil-wsi ``dsmil.py``, 80465ed):
  instance classifier (linear), critical instance per class, attention by query similarity to it (``q``:
  128-d, nonlinear), ``Conv1d`` bag classifier; :meth:`DSMIL.streams` gives both streams of one pass.
- :class:`PoolingLinear`: mean or max pooling of the tile features and one linear layer.

Each forward returns the logits (C,); the training objectives live in :mod:`mgpath.baselines.modules`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgpath.baselines.recipes import smooth_top1_svm

__all__ = ["ABMIL", "CLAMSB", "DSMIL", "GatedAttention", "PoolingLinear"]


class GatedAttention(nn.Module):
    """``A = w^T (tanh(V h) * sigmoid(U h))`` (N, 1) for h (N, L); Ilse et al. 2018 eq. 9."""

    def __init__(self, dim: int = 512, hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))


def _check(x: torch.Tensor, dim: int, who: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"mgpath/baselines: {who} expects tile features (N, {dim}), got {tuple(x.shape)}; set "
                         "feature_dim to the extractor's dimension")
    if x.shape[0] == 0:
        raise ValueError(f"mgpath/baselines: {who} got an empty bag (0 tiles)")


class ABMIL(nn.Module):
    """Gated-attention MIL. Forward: (N, feature_dim) -> logits (C,); ``attention`` (N,) after softmax."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 512, attention_dim: int = 256,
                 dropout: float = 0.25):
        super().__init__()
        self.feature_dim = feature_dim
        self.fc = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attention_dim, dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tile embeddings h (N, hidden), raw attention scores (N,))."""
        _check(x, self.feature_dim, type(self).__name__)
        h = self.fc(x)
        return h, self.attention(h)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, a = self.embed(x)
        self.last_attention = a.softmax(0).detach()
        return self.classifier(a.softmax(0) @ h)


class CLAMSB(ABMIL):
    """CLAM single branch: :class:`ABMIL` plus instance-level clustering.

    :meth:`forward_train` ``(x, label) -> (logits (C,), instance loss)`` in one pass, as CLAM's
    ``forward(h, label, instance_eval=True)``: the per-class instance classifiers see the ``k`` tiles of
    highest attention (positive for the slide's class; with ``subtyping`` negative for the other classes)
    and the ``k`` of lowest attention (negative for the slide's class); the loss is the mean over the
    classifiers used. ``k = k_sample`` (CLAM's rule, top and bottom may overlap); a bag with fewer tiles than
    ``k_sample``, on which CLAM's ``topk`` raises, uses all its tiles.
    """

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 512, attention_dim: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, subtyping: bool = True, inst_loss: str = "ce"):
        super().__init__(feature_dim, num_classes, hidden, attention_dim, dropout)
        if inst_loss not in ("ce", "svm"):
            raise ValueError(f"mgpath/baselines: inst_loss must be 'ce' or 'svm', got {inst_loss!r}")
        if k_sample < 1:
            raise ValueError(f"mgpath/baselines: k_sample must be >= 1, got {k_sample}")
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(num_classes))
        self.k_sample, self.subtyping, self.inst_loss = k_sample, subtyping, inst_loss

    def _instance_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target) if self.inst_loss == "ce" else smooth_top1_svm(logits, target)

    def forward_train(self, x: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide logits (C,), instance loss ()) of one forward pass."""
        h, a = self.embed(x)
        attn = a.softmax(0)
        self.last_attention = attn.detach()
        k = min(self.k_sample, h.shape[0])
        top, bottom = torch.topk(attn, k).indices, torch.topk(-attn, k).indices
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            if c == label:
                inst = torch.cat([h[top], h[bottom]])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(x.device)
            elif self.subtyping:
                inst, target = h[top], torch.zeros(k, dtype=torch.long, device=x.device)
            else:
                continue
            losses.append(self._instance_loss(clf(inst), target))
        return self.classifier(attn @ h), torch.stack(losses).mean()


class DSMIL(nn.Module):
    """Dual-stream MIL. Forward: (N, feature_dim) -> bag logits (C,); :meth:`streams` -> (instance scores
    (N, C), bag logits (C,))."""

    def __init__(self, feature_dim: int, num_classes: int, q_dim: int = 128, dropout_v: float = 0.0,
                 passing_v: bool = False):
        super().__init__()
        self.feature_dim = feature_dim
        self.instance = nn.Linear(feature_dim, num_classes)
        self.q = nn.Sequential(nn.Linear(feature_dim, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
        self.v = (nn.Sequential(nn.Dropout(dropout_v), nn.Linear(feature_dim, feature_dim), nn.ReLU())
                  if passing_v else nn.Identity())
        self.fcc = nn.Conv1d(num_classes, num_classes, kernel_size=feature_dim)

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(instance scores (N, C), bag logits (C,))."""
        _check(x, self.feature_dim, "DSMIL")
        scores = self.instance(x)
        V, Q = self.v(x), self.q(x)
        critical = x[scores.argmax(0)]  # (C, D): the highest-scoring tile of each class
        A = torch.softmax(Q @ self.q(critical).T / math.sqrt(Q.shape[1]), dim=0)  # (N, C)
        B = A.T @ V  # (C, D)
        return scores, self.fcc(B[None])[0, :, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.streams(x)[1]


class PoolingLinear(nn.Module):
    """Mean or max pooling of the tile features, then ``Linear(feature_dim, C)``."""

    def __init__(self, feature_dim: int, num_classes: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"mgpath/baselines: pooling must be 'mean' or 'max', got {pooling!r}")
        self.feature_dim, self.pooling = feature_dim, pooling
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.feature_dim, "PoolingLinear")
        return self.classifier(x.mean(0) if self.pooling == "mean" else x.max(0).values)
