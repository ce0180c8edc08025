"""Visual side of MGPATH: image adaptor, region-level graph attention, visual prompt queries.

Per slide and magnification (all modules shared between magnifications):

``H = adaptor(x)`` (N, D) patch level; ``H_gr = GAT(H, neighbours)`` (N, D) region level (one graph-attention
layer over the 4-neighbour tile adjacency, self loop included); with the M learnable queries ``P`` (M, D):
``A_p = softmax(P H^T / sqrt(D)) H``, ``A_gr = softmax(P H_gr^T / sqrt(D)) H_gr`` and
``Z = LayerNorm((1 - r) A_p + r A_gr + P)``, L2-normalised (``r`` = ``ratio_graph``, default 0.2).

The graph layer is written with plain tensor ops: neighbours are a padded index (N, K) with -1 for "none";
self loops are always added. The 4-neighbour index itself comes from :func:`mgpath.graph.tile_adjacency`
(the official graph builder dropped neighbour index 0; that one does not).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgpath.text import MLPAdaptor

__all__ = ["GranularAttention", "GraphAttention", "neighbours_from_edges"]


def neighbours_from_edges(edges: torch.Tensor | np.ndarray, n: int) -> torch.Tensor:
    """Directed edge list (2, E) ``source -> target`` into a padded neighbour index (n, K) of sources per target.

    Self loops in the list are dropped (the layer adds its own); -1 pads rows with fewer neighbours.
    """
    e = torch.as_tensor(np.asarray(edges), dtype=torch.long)
    if e.dim() != 2 or e.shape[0] != 2:
        raise ValueError(f"mgpath/granular.py: edges must be (2, E), got {tuple(e.shape)}")
    if e.numel() and (e.min() < 0 or e.max() >= n):
        raise ValueError(f"mgpath/granular.py: edge index out of range for {n} tiles")
    src, dst = e[0], e[1]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if src.numel() == 0:
        return torch.full((n, 0), -1, dtype=torch.long)
    order = torch.argsort(dst * n + src)
    src, dst = src[order], dst[order]
    counts = torch.bincount(dst, minlength=n)
    K = int(counts.max())
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(dst)) - start[dst]
    out = torch.full((n, K), -1, dtype=torch.long)
    out[dst, slot] = src
    return out


class GraphAttention(nn.Module):
    """One graph-attention layer (GAT, one head, LeakyReLU 0.2, self loops), PyG ``GATConv`` math.

    ``h = W x``; ``e_ij = LeakyReLU(a_src . h_j + a_dst . h_i)`` over the neighbours j of i and i itself;
    ``out_i = sum_j softmax_j(e_ij) h_j + bias``.

    Forward: x (N, D_in), neighbours (N, K) long with -1 padding -> (N, D_out); with ``return_attention`` also
    the attention (N, K + 1) (column 0 = self).
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, negative_slope: float = 0.2):
        super().__init__()
        out_dim = out_dim or in_dim
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(out_dim))
        self.att_dst = nn.Parameter(torch.empty(out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.negative_slope = negative_slope
        bound = math.sqrt(6.0 / (1 + out_dim))  # glorot on a (1, out_dim) vector, as PyG
        nn.init.uniform_(self.att_src, -bound, bound)
        nn.init.uniform_(self.att_dst, -bound, bound)
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, return_attention: bool = False):
        N = x.shape[0]
        h = self.lin(x)
        s_src = h @ self.att_src  # (N,)
        s_dst = h @ self.att_dst
        self_idx = torch.arange(N, device=x.device)[:, None]
        idx = torch.cat([self_idx, neighbours.to(x.device).long()], dim=1)  # (N, K+1)
        valid = idx >= 0
        safe = idx.clamp(min=0)
        e = F.leaky_relu(s_src[safe] + s_dst[:, None], self.negative_slope)
        e = e.masked_fill(~valid, float("-inf"))
        alpha = torch.softmax(e, dim=1)  # (N, K+1); self loop keeps every row finite
        out = self.bias.expand(N, -1)
        for k in range(idx.shape[1]):  # K+1 gathers of (N, D): no (N, K+1, D) tensor
            out = out + alpha[:, k:k + 1] * h[safe[:, k]]
        return (out, alpha) if return_attention else out


class GranularAttention(nn.Module):
    """Image adaptor + graph layer + M visual prompt queries -> M L2-normalised visual tokens per bag.

    Parameters
    ----------
    feature_dim : dimension of the frozen tile features.
    embed_dim : shared visual-text dimension D.
    n_prompts : number M of visual prompt queries (default 64).
    ratio_graph : weight of the region level (default 0.2).
    use_graph : set False to drop the region level (patch level only).

    Forward: features (N, feature_dim), neighbours (N, K) -> tokens (M, D); with ``return_attention`` also the
    patch-level and region-level attention (M, N) each.
    """

    def __init__(self, feature_dim: int, embed_dim: int = 1024, n_prompts: int = 64, ratio_graph: float = 0.2,
                 adaptor_hidden: int | None = None, use_graph: bool = True):
        super().__init__()
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.ratio_graph = float(ratio_graph)
        self.adaptor = MLPAdaptor(feature_dim, embed_dim, adaptor_hidden)
        self.graph = GraphAttention(embed_dim) if use_graph else None
        self.prompts = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_prompts, embed_dim), std=0.02, a=-2, b=2))
        self.norm = nn.LayerNorm(embed_dim)

    def _attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = torch.softmax(self.prompts @ h.T / math.sqrt(self.embed_dim), dim=-1)  # (M, N)
        return att @ h, att

    def forward(self, features: torch.Tensor, neighbours: torch.Tensor, return_attention: bool = False):
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"mgpath/granular.py: tile features have shape {tuple(features.shape)}; the model "
                             f"expects (N, {self.feature_dim}); set feature_dim to the extractor's dimension")
        if features.shape[0] == 0:
            raise ValueError("mgpath/granular.py: empty bag (0 tiles); drop this slide or re-run tiling")
        h = self.adaptor(features)
        a_p, att_p = self._attend(h)
        if self.graph is not None and self.ratio_graph > 0:
            h_gr = self.graph(h, neighbours)
            a_gr, att_gr = self._attend(h_gr)
            z = (1 - self.ratio_graph) * a_p + self.ratio_graph * a_gr
        else:
            z, att_gr = a_p, att_p.new_zeros(att_p.shape)
        z = F.normalize(self.norm(z + self.prompts), dim=-1)
        return (z, att_p, att_gr) if return_attention else z
