"""LoRA on the fused q/k/v projection of every block, as the VTAB-1k LoRA row ran it (NOAH).

Official source: ZhangYuanhan-AI/NOAH @ e9c55f3, ``model/module/qkv_super_prompt.py`` with
``experiments/LoRA/ViT-B_prompt_lora_8.yaml`` (rank 8 in all 12 blocks; AdamW lr 1e-3, wd 1e-4, batch 64,
100 epochs). Its mean over the 19 VTAB-1k tasks, 72.25, is the LoRA row of the VAPT / E2VPT / VFPT tables.
For a block with q/k/v weight ``W`` (3D, D)::

    W' = W + s (A B)^T          A: (D, r) kaiming_uniform(a=sqrt 5) over its (D, r) shape
    qkv(x) = x W'^T + b                (bound 1 / sqrt(r)), B: (r, 3D) zeros, s = 1 in NOAH

computed as NOAH computes it: the merged weight ``W'`` is formed first and used in one ``F.linear`` (so fp32
logits equal the official model's bit for bit, not only up to rounding). q, k and v are all adapted
(``targets="qkv"``); ``targets="qv"`` adapts only q and v (the LoRA paper's choice, V-PETL Bench), still with one
(D, r) / (r, D) pair per target. No dropout (NOAH has none). NOAH's supernet stores qkv rows interleaved
(``sample_weight``), which permutes the columns of B only; the function class, the init distribution and the
gradients are those of the layout here.

The merged weight stands in for the frozen one for the duration of each block call
(`ViTEncoder.run_block` with ``tensors``), so the backbone's keys and values stay unchanged. Works on timm ViTs
(``attn.qkv.weight``) and open_clip towers (``nn.MultiheadAttention.in_proj_weight``, the same q/k/v row order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.peft.base import MethodConfig, PeftMethod, register

TARGETS = {"qkv": (0, 1, 2), "qv": (0, 2), "q": (0,), "v": (2,)}


def qkv_weight_name(encoder, method: str) -> str:
    """Name, inside a block, of the fused (3D, D) q/k/v projection weight.

    ``attn.qkv.weight`` for timm ViTs, ``attn.in_proj_weight`` for open_clip towers (``nn.MultiheadAttention``);
    any other block layout is refused with one line naming the encoder.
    """
    attn = getattr(encoder.blocks[0], "attn", None)
    d = encoder.embed_dim
    if encoder.library == "timm" and isinstance(getattr(attn, "qkv", None), nn.Linear):
        name = "attn.qkv.weight"
    elif encoder.library == "open_clip" and isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim:
        name = "attn.in_proj_weight"
    else:
        raise ValueError(f"{method} needs a fused q/k/v projection (timm attn.qkv or open_clip in_proj_weight); "
                         f"{encoder.name} has {type(attn).__name__} attention (use vpt, vapt or linear).")
    for block in encoder.blocks:
        if block.get_parameter(name).shape != (3 * d, d):
            raise ValueError(f"{method}: {encoder.name} has a {name} of shape "
                             f"{tuple(block.get_parameter(name).shape)}, not (3D, D) = ({3 * d}, {d}).")
    return name


class QKVUpdate(PeftMethod):
    """Base of methods that add a (D, 3D) update ``delta(i)`` to block ``i``'s frozen q/k/v weight.

    Block ``i < num_blocks`` runs with ``W' = W + delta(i)^T`` in place of ``W``; later blocks run frozen.
    Subclasses set ``num_blocks`` and ``weight_name`` (from :func:`qkv_weight_name`) and define :meth:`delta`.
    """

    num_blocks: int = 0
    weight_name: str = ""

    def delta(self, i: int) -> torch.Tensor:
        """Block ``i``'s update as a (D, 3D) matrix acting as ``x @ delta``."""
        raise NotImplementedError

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        for i, block in enumerate(encoder.blocks):
            if i < self.num_blocks:
                w = block.get_parameter(self.weight_name)
                merged = w + self.delta(i).T.to(w.dtype)
                h = encoder.run_block(block, h, tensors={self.weight_name: merged})
            else:
                h = encoder.run_block(block, h)
        return h, encoder.num_prefix_tokens


def scatter_targets(parts: list[torch.Tensor], targets: tuple[int, ...], d: int) -> torch.Tensor:
    """(D, D) updates of the projections in ``targets`` -> one (D, 3D) matrix, zeros elsewhere."""
    cols = [parts[targets.index(t)] if t in targets else parts[0].new_zeros(d, d) for t in range(3)]
    return torch.cat(cols, dim=1)


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
    blocks : int or None
        Adapt only the first ``blocks`` blocks (NOAH's "LoRA depth"); None = all.
    """

    method: str = "lora"
    rank: int = 8
    targets: str = "qkv"
    scaling: float = 1.0
    blocks: int | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora: rank must be >= 1; got {self.rank}.")
        if self.targets not in TARGETS:
            raise ValueError(f"lora: targets must be one of {', '.join(TARGETS)}; got {self.targets!r}.")
        if self.blocks is not None and self.blocks < 1:
            raise ValueError(f"lora: blocks must be >= 1 (or null for all); got {self.blocks}.")


@register
class LoRA(QKVUpdate):
    """Low-rank updates of the frozen q/k/v projections. Parameters ``a.{i}`` and ``b.{i}`` per adapted block:
    (D, r) and (r, 3D) for ``targets="qkv"`` (as in NOAH), else (T, D, r) and (T, r, D), T = number of targets."""

    names: ClassVar[tuple[str, ...]] = ("lora",)
    config_class: ClassVar[type] = LoraConfig

    def __init__(self, cfg: LoraConfig, encoder):
        super().__init__(cfg, encoder)
        self.weight_name = qkv_weight_name(encoder, "lora")
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
        parts = [self.cfg.scaling * (a[j] @ b[j]) for j in range(len(self.targets))]
        return scatter_targets(parts, self.targets, self.embed_dim)
