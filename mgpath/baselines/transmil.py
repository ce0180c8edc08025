"""TransMIL (Shao et al., NeurIPS 2021, "TransMIL: Transformer based correlated multiple instance learning
for whole slide image classification"), with the official sizes: ``fc1`` D->512 + ReLU, a class token, two
Nyström-attention layers (8 heads x 64, 256 landmarks, 6 pseudo-inverse iterations, residual depth-wise
conv of kernel 33 on the values, dropout 0.1) with the PPEG position encoder (depth-wise convs 7, 5, 3 over
the tokens laid on a square) between them, LayerNorm, linear classifier. The tokens are padded to a square
by repeating the first ones, as the official code (szc19990412/TransMIL ``models/TransMIL.py``, 9d6aee5).

The Nyström attention equals lucidrains' ``nystrom-attention`` 0.0.10 and later (0.0.11 checked): the
sequence is padded at the front and the last ``n`` rows are kept. TransMIL's ``requirements.txt`` pins 0.0.9,
which keeps the first ``n`` rows (padding rows and all but the last real tokens; logits differ by ~0.1);
``pinned_nystrom=True`` reproduces 0.0.9. Training recipes: :class:`mgpath.baselines.TransMILModule`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NystromAttention", "TransMIL"]


def _pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of softmax matrices (B, H, m, m) (Razavi et al. 2014)."""
    absx = x.abs()
    z = x.transpose(-1, -2) / (absx.sum(-1).amax() * absx.sum(-2).amax())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Nyström self-attention (Xiong et al., AAAI 2021). Forward: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int = 512, heads: int = 8, dim_head: int = 64, landmarks: int = 256,
                 pinv_iterations: int = 6, residual_kernel: int = 33, dropout: float = 0.1,
                 pinned_nystrom: bool = False):
        super().__init__()
        self.pinned_nystrom = pinned_nystrom
        self.heads, self.dim_head, self.landmarks, self.iters = heads, dim_head, landmarks, pinv_iterations
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        m = self.landmarks
        pad = (m - n % m) % m
        x = F.pad(x, (0, 0, pad, 0))  # pad at the front, as the official code
        q, k, v = self.to_qkv(x).reshape(B, n + pad, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q = q * self.dim_head ** -0.5
        seg = (n + pad) // m
        ql = q.reshape(B, self.heads, m, seg, self.dim_head).mean(3)
        kl = k.reshape(B, self.heads, m, seg, self.dim_head).mean(3)
        a1 = torch.softmax(q @ kl.transpose(-1, -2), -1)
        a2 = torch.softmax(ql @ kl.transpose(-1, -2), -1)
        a3 = torch.softmax(ql @ k.transpose(-1, -2), -1)
        out = (a1 @ _pinv(a2, self.iters)) @ (a3 @ v) + self.res_conv(v)
        out = out.transpose(1, 2).reshape(B, n + pad, -1)
        out = self.to_out(out)
        return out[:, :n] if self.pinned_nystrom else out[:, -n:]


class _TransLayer(nn.Module):
    def __init__(self, dim: int, **kw):
        """Pre-norm residual Nyström attention with TransMIL's sizes (dim / 8 per head, dim / 2 landmarks)."""
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, dim_head=dim // 8, landmarks=dim // 2, **kw)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class _PPEG(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, H, W):
        cls, feat = x[:, :1], x[:, 1:]
        f = feat.transpose(1, 2).reshape(x.shape[0], -1, H, W)
        f = f + self.proj(f) + self.proj1(f) + self.proj2(f)
        return torch.cat([cls, f.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL. Forward: (N, feature_dim) -> logits (C,). ``pinned_nystrom``: nystrom-attention 0.0.9's slice."""

    def __init__(self, feature_dim: int, num_classes: int, dim: int = 512, dropout: float = 0.1,
                 pinned_nystrom: bool = False):
        super().__init__()
        self.feature_dim = feature_dim
        self.fc1 = nn.Sequential(nn.Linear(feature_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = _TransLayer(dim, dropout=dropout, pinned_nystrom=pinned_nystrom)
        self.pos_layer = _PPEG(dim)
        self.layer2 = _TransLayer(dim, dropout=dropout, pinned_nystrom=pinned_nystrom)
        self.norm = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.feature_dim or x.shape[0] == 0:
            raise ValueError(f"mgpath/baselines: TransMIL expects tile features (N>0, {self.feature_dim}), got "
                             f"{tuple(x.shape)}")
        h = self.fc1(x)[None]
        n = h.shape[1]
        side = math.ceil(math.sqrt(n))
        h = torch.cat([h, h[:, : side * side - n]], dim=1)  # square by repeating the first tokens
        h = torch.cat([self.cls_token.expand(1, -1, -1), h], dim=1)
        h = self.layer2(self.pos_layer(self.layer1(h), side, side))
        return self.fc2(self.norm(h)[:, 0])[0]
