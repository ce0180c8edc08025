"""E2VPT pruning search: mask importance scores and the masks to prune (ChengHan111/E2VPT @ 7a66e75,
``src/engine/trainer.py``: ``calculate_importance``, ``determine_mask_sequence``, ``what_tokens_to_mask``,
``what_tokens_pieces_to_mask``; driven by ``tune_vtab_PruningRewind_CVK.py``).

Importance of a visual prompt token ``t`` (and of piece ``s`` of that token) is the gradient of the training
loss with respect to its mask value (all masks start at 1), averaged over the training batches::

    I_t = 1/B sum_b dL_b/dm_t,        I_{t,s} = 1/B sum_b dL_b/dM_{t,s}

The official loop runs the model in eval mode and takes an optimiser step after each batch (its
``forward_one_batch(..., is_train=True)``), so later batches see updated parameters; pass ``optimizer`` to do the
same. Without an optimiser the parameters stay as they are. Optionally each score vector is divided by its L2 norm (``NORMALIZE_SCORES_BY_TOKEN``).

Candidates: for each percentage p the count ``int(n * p / 100)`` capped at ``n - min_keep`` (the list stops
at the first capped count), sorted. Tokens are pruned lowest score first (``MASK_RESERVE=False``); piece
pruning removes the same number of lowest-score pieces from every token. Each candidate pruning is then
retrained from the initial prompt values with those masks fixed at 0 (:meth:`vapt.peft.e2vpt.E2VPT.prune`)
and the best on the validation set is kept.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

OFFICIAL_PERCENTS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def mask_importance(method, loss_fn: Callable[[object], torch.Tensor], batches: Iterable,
                    optimizer: torch.optim.Optimizer | None = None, normalize: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Average mask gradients over ``batches``.

    Parameters
    ----------
    method : vapt.peft.e2vpt.E2VPT
        With ``token_mask`` (N,) and ``piece_mask`` (N, S) requiring grad.
    loss_fn : callable
        ``loss_fn(batch)`` -> scalar loss of the whole model (method's encoder and head).
    batches : iterable
        Training batches, passed to ``loss_fn`` one at a time.
    optimizer : torch.optim.Optimizer, optional
        When given, ``zero_grad()`` before and ``step()`` after each batch, as the official loop.
    normalize : bool
        Divide each score vector by its L2 norm (+1e-20).

    Returns
    -------
    (token_scores (N,), piece_scores (N, S)), float32 on the masks' device.
    """
    tm, pm = method.token_mask, method.piece_mask
    if tm is None or pm is None or not (tm.requires_grad and pm.requires_grad):
        raise ValueError("e2vpt pruning needs both trainable masks (token_mask=True, piece_mask=True, not pruned).")
    tok = torch.zeros_like(tm, dtype=torch.float32)
    pie = torch.zeros_like(pm, dtype=torch.float32)
    n = 0
    for batch in batches:
        if optimizer is not None:
            optimizer.zero_grad()
        tm.grad = None
        pm.grad = None
        loss_fn(batch).backward()
        tok += tm.grad.float()
        pie += pm.grad.float()
        n += 1
        if optimizer is not None:
            optimizer.step()
    if n == 0:
        raise ValueError("e2vpt pruning: no training batches to score the masks on.")
    tok /= n
    pie /= n
    if normalize:
        tok = tok / (tok.pow(2).sum().sqrt() + 1e-20)
        pie = pie / (pie.pow(2).sum(-1).sqrt().unsqueeze(-1) + 1e-20)
    return tok, pie


def mask_counts(n: int, percents: Sequence[float] = OFFICIAL_PERCENTS, min_keep: int = 1) -> list[int]:
    """Sorted cumulative numbers of units to prune (``determine_mask_sequence`` before differencing).

    ``n`` units (tokens, or pieces per token); percentages ``percents``; at least ``min_keep`` units kept
    when ``min_keep > 0``. Repeated counts are kept, as the official list does.
    """
    counts = []
    for p in percents:
        k = int(n * p / 100)
        if min_keep > 0 and k > n - min_keep:
            counts.append(n - min_keep)
            break
        counts.append(k)
    return sorted(counts)


def _lowest_first(scores: torch.Tensor) -> list[int]:
    """Indices by ascending score, ties in index order (Python's stable ``sorted``)."""
    vals = scores.detach().cpu().tolist()
    return sorted(range(len(vals)), key=lambda i: vals[i])


def tokens_to_prune(token_scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` lowest-score prompt tokens (sorted indices)."""
    return sorted(_lowest_first(token_scores)[:count])


def pieces_to_prune(piece_scores: torch.Tensor, count: int) -> dict[int, list[int]]:
    """Per token, its ``count`` lowest-score pieces: ``{token: sorted piece indices}``."""
    return {t: sorted(_lowest_first(piece_scores[t])[:count]) for t in range(piece_scores.shape[0])}


def candidate_prunings(token_scores: torch.Tensor, piece_scores: torch.Tensor,
                       percents: Sequence[float] = OFFICIAL_PERCENTS, min_tokens: int = 1,
                       min_pieces: int = 4) -> list[tuple[list[int], dict[int, list[int]]]]:
    """Every (tokens, pieces) pruning the official search retrains: all pairs of distinct token counts and
    distinct piece counts (``MIN_NUMBER_CLS_TOKEN=1``, ``MIN_NUMBER_CLS_TOKEN_PIECE=4`` by default)."""
    n, s = piece_scores.shape
    tcs = sorted(set(mask_counts(n, percents, min_tokens)))
    pcs = sorted(set(mask_counts(s, percents, min_pieces)))
    return [(tokens_to_prune(token_scores, a), pieces_to_prune(piece_scores, b)) for a in tcs for b in pcs]


@torch.no_grad()
def rewind(method, initial: dict[str, torch.Tensor], tokens: Iterable[int],
           pieces: dict[int, Iterable[int]]) -> None:
    """Reset ``method``'s trainable tensors to ``initial`` (a ``{name: tensor}`` copy taken before the search
    run, e.g. ``{n: p.detach().clone() for n, p in method.named_parameters()}``), masks to 1, then prune
    ``tokens`` and ``pieces`` (masks at 0 and frozen) for the rewind run."""
    params = dict(method.named_parameters())
    missing = set(params) - set(initial)
    if missing:
        raise ValueError(f"e2vpt rewind: initial values lack {sorted(missing)}.")
    for name, p in params.items():
        p.copy_(initial[name])
    method.token_mask.fill_(1.0)
    method.piece_mask.fill_(1.0)
    method.token_mask.requires_grad_(True)
    method.piece_mask.requires_grad_(True)
    method.prune(tokens=tokens, pieces=pieces)
