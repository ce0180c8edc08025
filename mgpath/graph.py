"""Tile graphs: the 4-neighbour adjacency of grid tiles, edge lists, and the neighbour index of a bag.

The adjacency is stored in features h5 files (column order :data:`ADJACENCY_ORDER`) and feeds the
graph attention of :mod:`mgpath.granular`.
"""

from __future__ import annotations

import numpy as np
import torch

from mgpath.granular import neighbours_from_edges

__all__ = ["ADJACENCY_ORDER", "adjacency_to_edge_index", "bag_neighbours", "infer_step", "tile_adjacency"]

#: column order of :func:`tile_adjacency`
ADJACENCY_ORDER = ("left", "right", "up", "down")


def tile_adjacency(coords: np.ndarray | torch.Tensor, step: float, tol: int = 1) -> np.ndarray:
    """4-neighbour adjacency of grid tiles from their coordinates.

    Parameters
    ----------
    coords : ``(N, 2)`` level-0 top-left ``(x, y)`` of each tile.
    step : grid step in level-0 pixels (the ``step_level0`` attribute; ``patch_size_level0`` when tiles do
        not overlap).
    tol : a neighbour may be off by up to ``tol`` pixels per axis (coordinates are rounded to integers).

    Returns
    -------
    ``(N, 4)`` int64: column 0 = index of the tile at ``x - step`` (left), 1 = ``x + step`` (right),
    2 = ``y - step`` (up), 3 = ``y + step`` (down); ``-1`` where there is no such tile. Indices are 0-based
    rows of ``coords`` (index 0 is a valid neighbour). ``N = 0`` gives ``(0, 4)``, ``N = 1`` gives ``[[-1]*4]``.
    """
    c = np.asarray(coords.cpu() if isinstance(coords, torch.Tensor) else coords, dtype=np.float64).reshape(
        -1, 2
    )
    n = len(c)
    adj = np.full((n, 4), -1, dtype=np.int64)
    if n == 0:
        return adj
    if not step > 0:
        raise ValueError(f"tile_adjacency: step must be > 0, got {step}")
    c = np.round(c).astype(np.int64)
    pad = int(np.ceil(step)) + tol + 1
    x, y = c[:, 0] - c[:, 0].min() + pad, c[:, 1] - c[:, 1].min() + pad
    span = int(y.max()) + 2 * pad + 1
    keys = x * span + y
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    offsets = [(0, 0)] + [(dx, dy) for dx in range(-tol, tol + 1) for dy in range(-tol, tol + 1) if dx or dy]
    for col, (ux, uy) in enumerate([(-1, 0), (1, 0), (0, -1), (0, 1)]):
        tx = np.round(x + ux * step).astype(np.int64)
        ty = np.round(y + uy * step).astype(np.int64)
        found = np.full(n, -1, dtype=np.int64)
        for dx, dy in offsets:
            q = (tx + dx) * span + (ty + dy)
            pos = np.clip(np.searchsorted(skeys, q), 0, n - 1)
            hit = (skeys[pos] == q) & (found < 0)
            found[hit] = order[pos[hit]]
        adj[:, col] = found
    return adj


def adjacency_to_edge_index(adj: np.ndarray) -> np.ndarray:
    """``(N, 4)`` adjacency -> ``(2, E)`` int64 edge index (source row 0, target row 1), both directions present."""
    adj = np.asarray(adj)
    src = np.repeat(np.arange(len(adj)), adj.shape[1] if adj.ndim == 2 else 0)
    dst = adj.reshape(-1)
    keep = dst >= 0
    return np.stack([src[keep], dst[keep]]).astype(np.int64)


def infer_step(coords: np.ndarray) -> int:
    """Level-0 tile step when no attribute gives it: the smallest positive spacing of the coordinates along x
    or y (1 if there is none)."""
    diffs = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        if len(u) > 1:
            diffs.append(np.diff(u).min())
    return int(min(diffs)) if diffs else 1


def bag_neighbours(rec: dict, path) -> torch.Tensor:
    """Neighbour index ``(N, K)`` long (-1 = none) of a record from :func:`mgpath.io.read_features`.

    A stored 4-neighbour index is used as is, an edge list ``(2, E)`` is converted, and without either the
    index is computed from the coordinates (``(N, 0)`` when there are none: self loops only).
    """
    n = len(rec["features"])
    adj = rec["adjacency"]
    if adj is not None:
        adj = np.asarray(adj)
        if adj.ndim == 2 and adj.shape[0] == n and (adj.shape[0] != 2 or adj.shape[1] == 4):
            return torch.as_tensor(adj, dtype=torch.long)
        if adj.ndim == 2 and adj.shape[0] == 2:
            return neighbours_from_edges(adj, n)
        raise ValueError(f"adjacency in {path} has shape {adj.shape}; expected (N, K) neighbour "
                         "index or (2, E) edges")
    if rec["coords"] is None:
        return torch.full((n, 0), -1, dtype=torch.long)
    step = rec["step"] or infer_step(rec["coords"])
    return torch.from_numpy(tile_adjacency(rec["coords"], step))
