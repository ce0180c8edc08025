"""GateVPT: gated prompt tuning for self-supervised ViTs (ryongithub/GatedPromptTuning @ dd7d1ea,
``src/models/vit_prompt/vit_mae.py`` / ``vit_moco.py``; the ``run.sh`` recipe: shallow prompts, prompt
dropout 0.1, ``GATE_PRIOR=True``, ``TEMP_LEARN=True``, weight decay 0).

VPT-shallow prompts ``P`` (N tokens, VPT init) are inserted once. For block ``i < G`` (``GATE_NUM``, default
L - 1) a scalar gate ``g_i = sigmoid(a_i)``, ``a_i = -gate_init`` at start, mixes the block's input and output
prompt states; every block's attention logits are divided by a learnable temperature ``t_i`` (init 1, clamped
in place to [temp_min, temp_max] before each forward as the official ``reinit_temp``)::

    y    = Block_i(x; t_i)                                   softmax(s q k^T / t_i)
    y[P] = g_i * y[P] + (1 - g_i) * x[P]                      prompt slots only

Pooling follows the backbone (MAE: mean of everything after CLS, prompts included, then ``fc_norm``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.peft.attention import require_timm_blocks, run_block
from vapt.peft.base import MethodConfig, PeftMethod, register
from vapt.peft.vpt import xavier_prompt_bound


@dataclass
class GateVPTConfig(MethodConfig):
    """GateVPT options (official names in brackets).

    Parameters
    ----------
    num_tokens : int
        N (``NUM_TOKENS``; the README example uses 100).
    dropout : float
        Prompt dropout (``DROPOUT``, 0.1 in run.sh).
    gate_init : float
        Gate logits start at ``-gate_init`` (``GATE_INIT``; run.sh argument, README example 5).
    num_gates : int or None
        G (``GATE_NUM``; default L - 1).
    learn_temperature : bool
        Per-block temperatures (``TEMP_LEARN``).
    temp_min, temp_max : float
        Clamp range (``TEMP_MIN``, ``TEMP_MAX``).
    """

    method: str = "gatevpt"
    num_tokens: int = 100
    dropout: float = 0.1
    gate_init: float = 5.0
    num_gates: int | None = None
    learn_temperature: bool = True
    temp_min: float = 0.01
    temp_max: float = 10.0

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"gatevpt: num_tokens must be >= 1; got {self.num_tokens}.")
        if not 0 < self.temp_min <= 1.0 <= self.temp_max:
            raise ValueError(f"gatevpt: need 0 < temp_min <= 1 <= temp_max; got {self.temp_min}, {self.temp_max}.")


@register
class GateVPT(PeftMethod):
    """Parameters: ``prompt_embeddings`` (1, N, D), ``gate_logit`` (G,), ``temperature`` (L,)."""

    names: ClassVar[tuple[str, ...]] = ("gatevpt",)
    config_class: ClassVar[type] = GateVPTConfig

    def __init__(self, cfg: GateVPTConfig, encoder):
        super().__init__(cfg, encoder)
        require_timm_blocks(encoder, "gatevpt")
        d, depth = encoder.embed_dim, len(encoder.blocks)
        bound = xavier_prompt_bound(encoder.patch_size, d)
        self.prompt_embeddings = nn.Parameter(torch.empty(1, cfg.num_tokens, d).uniform_(-bound, bound))
        gates = depth - 1 if cfg.num_gates is None else cfg.num_gates
        self.gate_logit = nn.Parameter(-torch.ones(gates) * cfg.gate_init)
        self.temperature = nn.Parameter(torch.ones(depth)) if cfg.learn_temperature else None
        self.prompt_dropout = nn.Dropout(cfg.dropout)

    def gates(self) -> torch.Tensor:
        """(G,) current gate values ``sigmoid(a)``."""
        return self.gate_logit.sigmoid()

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        n = self.cfg.num_tokens
        prompts = self.prompt_dropout(self.prompt_embeddings.expand(h.shape[0], -1, -1)).to(h.dtype)
        h = torch.cat([h[:, :1], prompts, h[:, 1:]], dim=1)
        if self.temperature is not None:
            with torch.no_grad():  # the official reinit_temp: an in-place clamp of the parameter
                self.temperature.clamp_(self.cfg.temp_min, self.cfg.temp_max)
        for i, block in enumerate(encoder.blocks):
            temp = self.temperature[i] if self.temperature is not None else 1.0
            out = run_block(block, h, temperature=temp)
            if i < self.gate_logit.shape[0]:
                g = self.gate_logit[i].sigmoid().to(h.dtype)
                mixed = g * out[:, 1:1 + n] + (1 - g) * h[:, 1:1 + n]
                out = torch.cat([out[:, :1], mixed, out[:, 1 + n:]], dim=1)
            h = out
        return h, 1
