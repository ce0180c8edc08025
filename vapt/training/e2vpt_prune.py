"""E2VPT pruning stage of `vapt tune --e2vpt_prune` (ChengHan111/E2VPT @ 7a66e75,
``tune_vtab_PruningRewind_CVK.py`` driving ``src/engine/trainer.py``).

Between the lr / wd grid and the final seeds, at the best (lr, wd), in ``<task>/<method>/prune/``:

1. ``search/``: train on the tuning split, saving the method's initial tensors first (``initial.safetensors``),
   then score the masks over the training loader (:func:`vapt.peft.e2vpt_pruning.mask_importance`, model in eval
   mode, one optimiser step per batch as the official loop); the scores go into its ``result.json``;
2. ``t<tokens>_p<pieces>/``: one rewind run per candidate pruning
   (:func:`vapt.peft.e2vpt_pruning.candidate_prunings`): the method starts again from the saved initial tensors
   with the pruned token / piece masks at 0 and frozen (``method_kwargs.rewind_from``, ``prune_tokens``,
   ``prune_pieces``), trained on the tuning split and scored on the validation split;
3. the best validation accuracy wins (ties: the most tokens pruned, as the official ``find_best_MtMtp``, then
   the fewest pieces); the final seeds run with that pruning, rewound to the same initial tensors (the official
   final runs set ``REWIND_STATUS`` with the search run's folder).

Each step is a unit with its own ``result.json``: a killed search or rewind run resumes like any other run.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vapt.fileio.atomic import atomic_path
from vapt.peft.e2vpt_pruning import OFFICIAL_PERCENTS, candidate_prunings, mask_importance
from vapt.training.runs import RunSpec, run_one
from vapt.training.sweep_errors import SweepError

INITIAL_FILE = "initial.safetensors"


class PruneError(SweepError):
    """An E2VPT pruning request that cannot run; the message says how to fix it."""


def parse_percents(spec: str | None) -> tuple[float, ...]:
    """``None`` / ``official`` -> 10, 20, ..., 90; ``"50,60"`` -> those percentages."""
    if spec in (None, "", "official"):
        return OFFICIAL_PERCENTS
    try:
        values = tuple(float(v) for v in spec.split(",") if v.strip())
    except ValueError as e:
        raise PruneError(f"--e2vpt_prune {spec!r}: {e}; give 'official' or percentages, e.g. '10,20,50'.") from e
    if not values or any(not 0 < v < 100 for v in values):
        raise PruneError(f"--e2vpt_prune {spec!r}: give percentages between 0 and 100, e.g. '10,20,50'.")
    return values


def with_method_kwargs(base_kwargs: dict | None, **extra: Any) -> dict[str, str]:
    """The override replacing ``model.init_args.method_kwargs`` by the config's ones plus ``extra`` (JSON)."""
    return {"model.init_args.method_kwargs": json.dumps({**(base_kwargs or {}), **extra})}


def search_run(cli_args: Sequence[str], spec: RunSpec, log: Callable[[str], Any], overwrite: bool = False) -> dict:
    """Train ``spec`` (a separate `run_one`, resumable) saving the initial method tensors first, then score the
    masks over the training loader; the result holds ``initial`` (the file) and the scores."""
    initial = Path(spec.run_dir) / INITIAL_FILE

    def save_initial(module, run_dir: Path) -> None:
        method = module.model.method
        if method.cfg.method != "e2vpt" or method.token_mask is None or method.piece_mask is None:
            raise PruneError("--e2vpt_prune needs method e2vpt with token_mask and piece_mask on.")
        if not initial.is_file():  # a resumed run keeps the file of its first start
            with atomic_path(initial) as tmp:
                save_file({k: p.detach().cpu().contiguous() for k, p in method.named_parameters()}, tmp)

    def scores(trainer, module, data) -> dict:
        module.to(trainer.strategy.root_device)  # where the optimiser's state lives
        tok, pie = score_masks(module, data, trainer.optimizers[0])
        return {"initial": str(initial), "token_scores": tok.tolist(), "piece_scores": pie.tolist()}

    log("  the E2VPT pruning search:")
    return run_one(cli_args, spec.run_dir, spec.overrides, spec.evaluate, log, overwrite,
                   before_fit=save_initial, after_fit=scores)


def score_masks(module, data, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask importance of a trained `PromptTuningModule` over ``data``'s training loader (official
    ``calculate_importance``: eval mode, an optimiser step after each batch)."""
    model = module.model
    device = next(model.parameters()).device
    model.eval()

    def loss(batch):
        images, labels = batch
        return F.cross_entropy(model(images.to(device)), labels.to(device))

    return mask_importance(model.method, loss, data.train_dataloader(), optimizer=optimizer)


def prune_stage(cli_args: Sequence[str], base: Path, grid_overrides: dict[str, Any], method_kwargs: dict | None,
                percents: Sequence[float], run: Callable[[list[RunSpec]], list[dict]],
                log: Callable[[str], Any], overwrite: bool = False) -> dict:
    """Search, rewind runs and choice; returns ``{"method_kwargs": override of the final runs, "candidates":
    [{"tokens", "pieces", "val_acc"}...], "best": index}``."""
    root = base / "prune"
    search = search_run(cli_args, RunSpec(root / "search", dict(grid_overrides), "validate"), log, overwrite)
    tok = torch.tensor(search["token_scores"])
    pie = torch.tensor(search["piece_scores"])
    candidates = candidate_prunings(tok, pie, percents)
    if not candidates:
        raise PruneError("--e2vpt_prune: no candidate pruning; give larger percentages.")
    kwargs = [{"rewind_from": search["initial"], "prune_tokens": t, "prune_pieces": [p[i] for i in range(len(p))]}
              for t, p in candidates]
    specs = [RunSpec(root / f"t{len(t)}_p{len(p[0]) if p else 0}", {**grid_overrides,
                     **with_method_kwargs(method_kwargs, **kw)}, "validate") for (t, p), kw in zip(candidates, kwargs)]
    results = run(specs)
    scores = [res["metrics"].get("val/acc", float("nan")) for res in results]
    for spec, acc in zip(specs, scores):
        log(f"    {spec.run_dir.name}: val/acc={acc:.4f}")
    finite = [i for i, s in enumerate(scores) if not math.isnan(s)]
    if not finite:
        raise PruneError("--e2vpt_prune: every rewind run gave NaN validation accuracy.")
    # ties: the most tokens pruned (official find_best_MtMtp), then the first in candidate order
    best = max(finite, key=lambda i: (scores[i], len(candidates[i][0]), -i))
    log(f"  best pruning: {specs[best].run_dir.name} (val/acc {scores[best]:.4f})")
    return {"method_kwargs": with_method_kwargs(method_kwargs, **kwargs[best]), "best": best,
            "candidates": [{"run": s.run_dir.name, "tokens": kw["prune_tokens"], "pieces": kw["prune_pieces"],
                            "val_acc": a} for s, kw, a in zip(specs, kwargs, scores)]}
