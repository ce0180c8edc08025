"""Training pieces of the baselines' official recipes (``recipe: official``), each re-stated from its source.

- :func:`smooth_top1_svm`: the smooth top-1 multiclass SVM loss (Berrada, Zisserman & Kumar, ICLR 2018),
  ``topk.svm.SmoothTop1SVM(n_classes, alpha=1, tau=1)`` of oval-group/smooth-topk (12c1645), which CLAM's
  README commands use as the instance loss (``--inst_loss svm``).
- :func:`orthogonal_init_`: DSMIL's ``apply_sparse_init`` (binli123/dsmil-wsi ``train_tcga.py``, 80465ed):
  orthogonal weights, zero biases of every Linear / Conv1d / Conv2d.
- :func:`no_decay_groups`: TransMIL's ``add_weight_decay`` (szc19990412/TransMIL
  ``MyOptimizer/optim_factory.py``, 9d6aee5): no weight decay on biases and 1-D parameters (norms).
- :class:`Lookahead`: the Lookahead wrapper of TransMIL's ``MyOptimizer/lookahead.py`` (alpha 0.5, k 6),
  including its slow-weight start: the slow copy is taken at the first synchronisation (step k), so the first
  synchronisation leaves the weights unchanged.
- :class:`EarlyStoppingAfter`: Lightning ``EarlyStopping`` that may stop only after ``start_epoch``
  (CLAM's ``EarlyStopping(patience=20, stop_epoch=50)`` on the validation loss).
- :func:`dsmil_selection_score`: the score DSMIL's ``train_tcga.py`` (80465ed) selects its model on,
  ``(sum of per-class AUCs + exact-match accuracy at the per-class optimal thresholds) / 2``
  (``multi_label_roc``, ``optimal_thresh``, ``test``, ``get_current_score``).

TransMIL's RAdam (``MyOptimizer/radam.py``, from LiyuanLucasLiu/RAdam) applies weight decay to the weights
(``p -= lr * wd * p``) before the update, which is ``torch.optim.RAdam(decoupled_weight_decay=True)``.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

__all__ = ["EarlyStoppingAfter", "Lookahead", "dsmil_selection_score", "no_decay_groups", "orthogonal_init_",
           "smooth_top1_svm"]


def smooth_top1_svm(logits: torch.Tensor, target: torch.Tensor, tau: float = 1.0, alpha: float = 1.0,
                    thresh: float = 1e3) -> torch.Tensor:
    """Smooth top-1 SVM loss, mean over the batch.

    Per sample ``tau * logsumexp((x + alpha * [j != y] - x_y) / tau)``; samples whose top score leads the
    second by at least ``tau * log(thresh)`` take the hard form ``max_j(x_j + alpha * [j != y]) - x_y``.

    Parameters
    ----------
    logits : (B, C) scores.
    target : (B,) class indices.
    """
    margin = alpha * (torch.arange(logits.shape[1], device=logits.device)[None] != target[:, None]).to(logits)
    shifted = logits + margin - logits.gather(1, target[:, None])
    top2 = logits.topk(2, dim=1).values
    hard = (top2[:, 0] - top2[:, 1] >= tau * math.log(thresh)).detach()
    smooth = tau * torch.logsumexp(shifted / tau, dim=1)
    return torch.where(hard, shifted.max(1).values, smooth).sum() / logits.shape[0]


def _auc_and_optimal_threshold(target: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC AUC of binary ``target`` (N,) against ``score`` (N,) and the threshold minimising ``fpr - tpr`` over
    the ROC points (the first, i.e. highest, among equals). When ``target`` has one value only: AUC 1.0 and
    threshold ``inf`` (DSMIL's fallback; its ``fpr - tpr`` is all NaN then and ``argmin`` takes the first)."""
    pos, neg = int(target.sum()), int(len(target) - target.sum())
    if pos == 0 or neg == 0:
        return 1.0, float("inf")
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    above = score[None, :] >= thresholds[:, None]  # (thresholds, N)
    tpr, fpr = above[:, target == 1].sum(1) / pos, above[:, target == 0].sum(1) / neg
    best = float(thresholds[int(np.argmin(fpr - tpr))])
    diff = score[target == 1][:, None] - score[target == 0][None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos * neg)), best


def dsmil_selection_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """DSMIL's model-selection score of one validation pass.

    Parameters
    ----------
    probs : (N, C) per-class probabilities (``sigmoid`` of the bag logits).
    labels : (N,) class indices.

    Returns
    -------
    ``(sum_c AUC_c + acc) / 2``: ``AUC_c`` one class against the rest, ``acc`` the fraction of slides whose
    thresholded vector (``probs[:, c] >= t_c``, ``t_c`` the optimal threshold of class ``c``) equals the one-hot
    label.
    """
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1], dtype=np.int64)[np.asarray(labels, dtype=np.int64)]
    aucs, thresholds = zip(*(_auc_and_optimal_threshold(onehot[:, c], probs[:, c]) for c in range(probs.shape[1])))
    predicted = (probs >= np.asarray(thresholds)[None]).astype(np.int64)
    accuracy = float((predicted == onehot).all(axis=1).mean())
    return (sum(aucs) + accuracy) / 2


def orthogonal_init_(module: nn.Module) -> nn.Module:
    """Orthogonal weights and zero biases for every Linear / Conv1d / Conv2d in ``module`` (in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def no_decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups of the trainable parameters: biases and 1-D tensors without weight decay, the rest
    with ``weight_decay`` (in the order TransMIL builds them: no-decay group first)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al., NeurIPS 2019) around ``base``: every ``k`` steps the slow weights move
    ``alpha`` of the way to the fast ones and the fast weights are reset to them.

    Parameters
    ----------
    base : the inner optimiser (its ``param_groups`` are shared).
    alpha, k : slow step size and synchronisation period (TransMIL: 0.5, 6).
    """

    def __init__(self, base: torch.optim.Optimizer, alpha: float = 0.5, k: int = 6):
        if not 0.0 <= alpha <= 1.0 or k < 1:
            raise ValueError(f"mgpath/baselines: Lookahead needs 0 <= alpha <= 1 and k >= 1, got {alpha}, {k}")
        self.base_optimizer = base
        self.param_groups = base.param_groups
        self.defaults = {**base.defaults, "lookahead_alpha": alpha, "lookahead_k": k, "lookahead_step": 0}
        self.state = defaultdict(dict)
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        for group in self.param_groups:
            group.setdefault("lookahead_alpha", alpha)
            group.setdefault("lookahead_k", k)
            group.setdefault("lookahead_step", 0)

    def _sync(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if "slow_buffer" not in st:
                st["slow_buffer"] = p.detach().clone()
            slow = st["slow_buffer"]
            slow.add_(p.detach() - slow, alpha=group["lookahead_alpha"])
            p.data.copy_(slow)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.base_optimizer.step(closure)
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self._sync(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The inner optimiser's state plus the slow weights, by parameter position."""
        params = [p for g in self.param_groups for p in g["params"]]
        slow = {i: self.state[p]["slow_buffer"] for i, p in enumerate(params) if "slow_buffer" in self.state[p]}
        return {**self.base_optimizer.state_dict(), "slow_state": slow}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        slow = state_dict.pop("slow_state", {})
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = defaultdict(dict)
        for i, buf in slow.items():
            self.state[params[int(i)]]["slow_buffer"] = buf.to(params[int(i)])


class EarlyStoppingAfter(EarlyStopping):
    """``EarlyStopping`` that stops only once the epoch index exceeds ``start_epoch`` (CLAM: patience 20,
    ``stop_epoch`` 50, on the validation loss)."""

    def __init__(self, *args, start_epoch: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_epoch = int(start_epoch)
        self._epoch = 0

    def _run_early_stopping_check(self, trainer) -> None:
        self._epoch = trainer.current_epoch
        super()._run_early_stopping_check(trainer)

    def _evaluate_stopping_criteria(self, current: torch.Tensor):
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop and self._epoch <= self.start_epoch and self.wait_count >= self.patience:
            return False, reason
        return should_stop, reason
