"""LoRA on the fused qkv projection of every block, as the VTAB-1k LoRA row ran it (NOAH).

Official source: ZhangYuanhan-AI/NOAH @ e9c55f3, ``model/module/qkv_super_prompt.py`` with
``experiments/LoRA/ViT-B_prompt_lora_8.yaml`` (rank 8 in all 12 blocks; AdamW lr 1e-3, wd 1e-4, batch 64,
100 epochs). Its mean over the 19 VTAB-1k tasks, 72.25, is the LoRA row of the VAPT / E2VPT / VFPT tables.
For a block with qkv weight ``W`` (3D, D)::

    qkv(x) = x W^T + b + s * x A B          A: (D, r) kaiming_uniform(a=sqrt 5) over its (D, r) shape
                                             (bound 1 / sqrt(r)), B: (r, 3D) zeros, s = 1 in NOAH

i.e. ``W' = W + s (A B)^T``; q, k and v are all adapted (``targets="qkv"``). ``targets="qv"`` adapts only q and v
(the LoRA paper's choice, V-PETL Bench), still with one (D, r) / (r, D) pair per target. No dropout by default.
NOAH's supernet stores qkv rows interleaved (``sample_weight``), which permutes the columns of B only; the
function class, the init distribution and the gradients are those of the layout here.
The update is added by a forward hook on the frozen ``attn.qkv`` (the backbone's keys stay unchanged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.peft.base import MethodConfig, OutputHook, PeftMethod, register, timm_only

TARGETS = {"qkv": (0, 1, 2), "qv": (0, 2), "q": (0,), "v": (2,)}


@dataclass
class LoraConfig(MethodConfig):
    """LoRA options.

    Parameters
    ----------
    rank : int
        r (NOAH: 8).
    targets : {"qkv", "qv", "q", "v"}
        Which of the fused projections get an update.
    scaling : float
        s (NOAH: 1.0; ``alpha / r`` in the LoRA paper).
    dropout : float
        Dropout on the LoRA input (NOAH: none).
    blocks : int or None
        Adapt only the first ``blocks`` blocks (NOAH's "LoRA depth"); None = all.
    """

    method: str = "lora"
    rank: int = 8
    targets: str = "qkv"
    scaling: float = 1.0
    dropout: float = 0.0
    blocks: int | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora: rank must be >= 1; got {self.rank}.")
        if self.targets not in TARGETS:
            raise ValueError(f"lora: targets must be one of {', '.join(TARGETS)}; got {self.targets!r}.")


def attach_qkv_hooks(method: PeftMethod, encoder, num_blocks: int) -> None:
    """Make ``attn.qkv`` of the first ``num_blocks`` blocks return ``method.add_update(i, x, out)``."""
    for i, block in enumerate(list(encoder.blocks)[:num_blocks]):
        block.attn.qkv.register_forward_hook(OutputHook(method, "add_update", i))


@register
class LoRA(PeftMethod):
    """Low-rank updates of the frozen qkv projections. Parameters ``a.{i}`` (D, r * T) and ``b.{i}`` (T, r, D)
    per adapted block, T = number of targets (for ``qkv`` stored as one (r, 3D) matrix as in NOAH)."""

    names: ClassVar[tuple[str, ...]] = ("lora",)
    config_class: ClassVar[type] = LoraConfig

    def __init__(self, cfg: LoraConfig, encoder):
        super().__init__(cfg, encoder)
        timm_only(encoder, "lora")
        d, depth = encoder.embed_dim, len(encoder.blocks)
        self.num_blocks = depth if cfg.blocks is None else min(cfg.blocks, depth)
        self.targets = TARGETS[cfg.targets]
        self.embed_dim = d
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for _ in range(self.num_blocks):
            a, b = self._init_pair(d, cfg.rank, len(self.targets))
            self.a.append(a)
            self.b.append(b)
        self.dropout = nn.Dropout(cfg.dropout)
        attach_qkv_hooks(self, encoder, self.num_blocks)

    @staticmethod
    def _init_pair(d: int, r: int, t: int) -> tuple[nn.Parameter, nn.Parameter]:
        if t == 3:  # NOAH: one (D, r) A and one (r, 3D) B for the fused projection
            a = torch.empty(d, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            return nn.Parameter(a), nn.Parameter(torch.zeros(r, 3 * d))
        a = torch.empty(t, d, r)
        for j in range(t):
            nn.init.kaiming_uniform_(a[j], a=math.sqrt(5))
        return nn.Parameter(a), nn.Parameter(torch.zeros(t, r, d))

    def delta(self, i: int) -> torch.Tensor:
        """The weight update of block ``i`` as a (D, 3D) matrix ``s * A B`` (zeros for untouched targets)."""
        a, b = self.a[i], self.b[i]
        if a.ndim == 2:
            return self.cfg.scaling * (a @ b)
        d = self.embed_dim
        out = a.new_zeros(d, 3 * d)
        for j, t in enumerate(self.targets):
            out[:, t * d:(t + 1) * d] = self.cfg.scaling * (a[j] @ b[j])
        return out

    def qkv_update(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) input of qkv -> (B, L, 3D) update."""
        a, b = self.a[i], self.b[i]
        x = self.dropout(x)
        if a.ndim == 2:
            return self.cfg.scaling * ((x @ a.to(x.dtype)) @ b.to(x.dtype))
        d = self.embed_dim
        parts = [x.new_zeros(*x.shape[:-1], d) for _ in range(3)]
        for j, t in enumerate(self.targets):
            parts[t] = self.cfg.scaling * ((x @ a[j].to(x.dtype)) @ b[j].to(x.dtype))
        return torch.cat(parts, dim=-1)

    def add_update(self, i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Forward hook body: frozen qkv output (B, L, 3D) plus the update of block ``i``."""
        return out + self.qkv_update(i, x).to(out.dtype)
