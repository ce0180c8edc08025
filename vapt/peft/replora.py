"""RepLoRA: LoRA whose low-rank matrices are produced by small MLPs (Truong et al., ICML 2025,
arXiv 2502.03044). No official code is public; this module implements the paper's reparameterisation as
stated below (our reading of its Section on RepLoRA), tested against this closed form.

For block ``i`` and each adapted projection ``t`` in ``targets`` (default q and v), shared base matrices
``A~_i`` (r, D) and ``B~_i`` (D, r) feed one two-layer MLP per (target, matrix)::

    A_t[j]    = g_{A,t}(A~_i[j])           rows of A,    j = 1..r
    B_t[:, j] = g_{B,t}(B~_i[:, j])        columns of B, j = 1..r
    g(z) = W2 act(W1 z + b1) + b2                      W1: (h, D), W2: (D, h)
    q/k/v_t(x) += s * x A_t^T B_t^T                    i.e.  W_t' = W_t + s B_t A_t

``A~`` starts kaiming-uniform (a = sqrt 5), ``B~`` and the last layer ``W2, b2`` of every ``g_B`` start at zero,
so the update is exactly zero at initialisation (as LoRA's). After training the MLPs can be folded away:
:meth:`RepLoRA.merged` returns the plain ``(A_t, B_t)`` pairs, so inference costs what LoRA costs. Like LoRA the
update is merged into the frozen weight before the projection (`vapt.peft.lora.QKVUpdate`), on timm ViTs and
open_clip towers alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vapt.peft.base import MethodConfig, register
from vapt.peft.lora import TARGETS, QKVUpdate, qkv_weight_name, scatter_targets

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


@dataclass
class RepLoraConfig(MethodConfig):
    """RepLoRA options: ``rank`` r, ``hidden_dim`` h of the MLPs, ``activation``, ``targets``, ``scaling`` s."""

    method: str = "replora"
    rank: int = 8
    hidden_dim: int = 64
    activation: str = "relu"
    targets: str = "qv"
    scaling: float = 1.0

    def __post_init__(self):
        if self.rank < 1 or self.hidden_dim < 1:
            raise ValueError(f"replora: rank and hidden_dim must be >= 1; got {self.rank}, {self.hidden_dim}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"replora: activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}.")
        if self.targets not in TARGETS:
            raise ValueError(f"replora: targets must be one of {', '.join(TARGETS)}; got {self.targets!r}.")


class Reparam(nn.Module):
    """``g(z) = W2 act(W1 z + b1) + b2`` on the last axis, (..., D) -> (..., D)."""

    def __init__(self, dim: int, hidden: int, activation: str, zero_out: bool):
        super().__init__()
        self.fc1, self.fc2, self.activation = nn.Linear(dim, hidden), nn.Linear(hidden, dim), activation
        if zero_out:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(z)))


@register
class RepLoRA(QKVUpdate):
    """Per block: ``base_a.{i}`` (r, D), ``base_b.{i}`` (D, r); per block and target: ``mlp_a.{i}.{t}``,
    ``mlp_b.{i}.{t}`` (`Reparam`)."""

    names: ClassVar[tuple[str, ...]] = ("replora",)
    config_class: ClassVar[type] = RepLoraConfig

    def __init__(self, cfg: RepLoraConfig, encoder):
        super().__init__(cfg, encoder)
        self.weight_name = qkv_weight_name(encoder, "replora")
        self.num_blocks = len(encoder.blocks)
        d, r = encoder.embed_dim, cfg.rank
        self.embed_dim, self.targets = d, TARGETS[cfg.targets]
        self.base_a, self.base_b = nn.ParameterList(), nn.ParameterList()
        self.mlp_a, self.mlp_b = nn.ModuleList(), nn.ModuleList()
        for block in encoder.blocks:
            a = torch.empty(r, d)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.base_a.append(nn.Parameter(a))
            self.base_b.append(nn.Parameter(torch.zeros(d, r)))
            self.mlp_a.append(nn.ModuleList(Reparam(d, cfg.hidden_dim, cfg.activation, False) for _ in self.targets))
            self.mlp_b.append(nn.ModuleList(Reparam(d, cfg.hidden_dim, cfg.activation, True) for _ in self.targets))

    def merged(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Block ``i``'s ``(A_t (r, D), B_t (D, r))`` per target, the MLPs applied."""
        a, b = self.base_a[i], self.base_b[i]
        return [(self.mlp_a[i][j](a), self.mlp_b[i][j](b.T).T) for j in range(len(self.targets))]

    def delta(self, i: int) -> torch.Tensor:
        """Block ``i``'s (D, 3D) update ``s (B_t A_t)^T`` in each target's columns."""
        parts = [self.cfg.scaling * (b @ a).T for a, b in self.merged(i)]
        return scatter_targets(parts, self.targets, self.embed_dim)
