"""Checkpoint selection as the official MGPATH code does it: on a tie of the monitored metric, the later epoch.

The official ``EarlyStopping`` saves whenever ``val_f1 >= best`` (so with validation macro-F1
``[.70, .80, .80, .75, .80, .78]`` it keeps epoch 4); Lightning's ``ModelCheckpoint`` replaces the best only
on a strict improvement (it would keep epoch 1). :class:`BestCheckpoint` is a ``ModelCheckpoint`` with
``ties="latest"`` (default, official rule) or ``ties="first"`` (Lightning's rule). Use it in the config::

    callbacks:
      - class_path: mgpath.selection.BestCheckpoint
        init_args: {monitor: val/f1, mode: max, ties: latest, filename: "best-{epoch}", save_last: true}
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["BestCheckpoint"]


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ties go to the latest epoch (``ties="latest"``) or the first (``"first"``).

    Parameters
    ----------
    ties : ``"latest"`` (official MGPATH: save when ``metric >= best``) or ``"first"`` (save on ``>`` only).
    *args, **kwargs : as ``lightning.pytorch.callbacks.ModelCheckpoint``.
    """

    def __init__(self, *args, ties: str = "latest", **kwargs):
        super().__init__(*args, **kwargs)
        if ties not in ("latest", "first"):
            raise ValueError(f"mgpath/selection.py: ties must be 'latest' or 'first', got {ties!r}")
        self.ties = ties

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if (self.ties == "first" or current is None or self.save_top_k == -1
                or len(self.best_k_models) < self.save_top_k):
            return super().check_monitor_top_k(trainer, current)
        op = {"min": torch.le, "max": torch.ge}[self.mode]
        better = bool(op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better)

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        if self.ties == "latest":  # among equal best scores the one saved last (dicts keep insertion order)
            best = self.best_model_score
            self.best_model_path = [p for p, v in self.best_k_models.items() if bool(v == best)][-1]
