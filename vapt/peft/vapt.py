"""VAPT's adaptive-prompt modules (Minhchuyentoancbn/Visual-Adaptive-Prompt-Tuning @ 94717a0).

Before block ``i >= vpt_depth`` the prompts are computed from the patch tokens that left block ``i - 1``::

    Z  = LN_i(patches)                                   (B, G, D), G = gh * gw
    Xc = Dropout2d(conv_KxK(Z as (B, D, gh, gw)))        one K x K kernel shared by all D channels
    G_ = Xc.flatten(2) @ A_i^T + b_i                     (B, D, N), A_i: (N, G'), zero-initialised
    P  = G_ + W2 Dropout(ReLU(W1 G_))                    shared bias-free residual projector (D -> r -> D)

`vapt.peft.vpt.PromptGenerator` owns these modules (one prompt module serves VPT-shallow, VPT-deep and VAPT);
this file holds the two pieces only VAPT uses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenMapDownsample(nn.Module):
    """VAPT channel-wise conv + Dropout2d + token-wise projector of one layer.

    Parameters keep the official meaning: ``kernel`` (1, 1, K, K) (or (D, 1, K, K) when not channel-wise) and
    ``linear`` (N, G') with G' the number of conv outputs. The output is exactly zero at initialisation.

    The conv and the projector are both linear in the token map, so they are applied as one (N, G) matrix
    ``M = A * conv^T`` (built for all layers at once by `PromptGenerator.adaptive_token_matrices`) times the
    patch tokens:
    ``prompts[b, n, c] = mask[b, c] * sum_p M[n, p] x[b, p, c] + bias[n]``. This equals conv -> Dropout2d ->
    linear exactly (Dropout2d's per-(sample, channel) mask commutes with a map over spatial positions), needs
    no transpose of the token map, and is several times cheaper than a depthwise convolution on a GPU.
    """

    def __init__(self, embed_dim: int, grid: tuple[int, int], num_tokens: int, kernel_size: int,
                 padding: int = 0, channelwise: bool = True, conv_dropout: float = 0.1):
        super().__init__()
        out_h = grid[0] + 2 * padding - kernel_size + 1
        out_w = grid[1] + 2 * padding - kernel_size + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"VAPT kernel {kernel_size} is larger than the {grid[0]}x{grid[1]} patch grid.")
        self.padding, self.out_grid, self.conv_dropout = padding, (out_h, out_w), conv_dropout
        shape = (1, 1, kernel_size, kernel_size) if channelwise else (embed_dim, 1, kernel_size, kernel_size)
        self.kernel = nn.Parameter(torch.randn(shape))  # official: torch.randn, unscaled
        self.linear = nn.Linear(out_h * out_w, num_tokens)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens (B, G, D) in raster order and this layer's matrix (N, G) or (N, D, G)
        -> prompts (B, N, D)."""
        bias = self.linear.bias[:, None]
        b = tokens.shape[0]
        drop = self.training and self.conv_dropout > 0
        keep = F.dropout(tokens.new_ones(b, 1, tokens.shape[2]), self.conv_dropout, True) if drop else None
        if matrix.ndim == 3:
            out = torch.einsum("ncp,bpc->bnc", matrix, tokens)
            return out * keep + bias if drop else out + bias
        # a stride-0 batch of M: one strided-batched GEMM, no copy of the tokens
        if drop:
            return torch.addcmul(bias, torch.bmm(matrix.expand(b, -1, -1), tokens), keep)
        return torch.baddbmm(bias, matrix.expand(b, -1, -1), tokens)


class FeatureProjector(nn.Module):
    """Bias-free residual MLP ``x + W2 Dropout(ReLU(W1 x))``, (B, N, D) -> (B, N, D)."""

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.dropout(self.act(self.fc1(x))))
