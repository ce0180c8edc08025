"""Zero-initialised gated prompts (LLaMA-Adapter's zero-init attention on a ViT), with linear or non-linear
prompts, as formulated in "On Zero-Initialized Attention: Optimal Prompt and Gating Factor Estimation"
(Diep et al., ICML 2025). No official ViT code is public; the equations below are what this module computes
and what its test re-states.

In each of the last ``num_layers`` blocks ``l``, K prompt tokens ``P_l`` (K, D) act as extra keys and values
through the block's own frozen projections, with their own softmax and a per-head gate ``g_l`` that starts at
0, so the pretrained model is reproduced exactly at initialisation::

    K_p, V_p = P_l W_k^T + b_k, P_l W_v^T + b_v                (heads split as the tokens')
    head_h(x) = softmax(s q k^T) v + tanh(g_{l,h}) softmax(s q K_p^T) V_p

Linear prompts: ``P_l`` is a free parameter (uniform init, VPT bound). Non-linear prompts: ``P_l = f(E_l)``
with ``f(z) = W2 act(W1 z + b1) + b2`` (D -> h -> D) shared by all layers, ``E_l`` free. The prompts are not
tokens of the sequence: the output keeps the input length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vapt.peft.attention import require_timm_blocks, run_block
from vapt.peft.base import MethodConfig, PeftMethod, register
from vapt.peft.replora import ACTIVATIONS, Reparam
from vapt.peft.vpt import xavier_prompt_bound


@dataclass
class GatedPromptConfig(MethodConfig):
    """Options: ``num_tokens`` K, ``num_layers`` (last blocks that get prompts; None = all), ``prompt_type``
    ("linear" / "nonlinear"), ``hidden_dim`` and ``activation`` of the non-linear map."""

    method: str = "gated_prompt"
    num_tokens: int = 10
    num_layers: int | None = None
    prompt_type: str = "linear"
    hidden_dim: int = 64
    activation: str = "relu"

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"gated_prompt: num_tokens must be >= 1; got {self.num_tokens}.")
        if self.prompt_type not in ("linear", "nonlinear"):
            raise ValueError(f"gated_prompt: prompt_type must be 'linear' or 'nonlinear'; got {self.prompt_type!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"gated_prompt: activation must be one of {', '.join(ACTIVATIONS)}; "
                             f"got {self.activation!r}.")


@register
class GatedPrompt(PeftMethod):
    """Parameters: ``prompts`` (L_p, K, D), ``gates`` (L_p, H) zeros, and ``reparam`` (non-linear only)."""

    names: ClassVar[tuple[str, ...]] = ("gated_prompt",)
    config_class: ClassVar[type] = GatedPromptConfig

    def __init__(self, cfg: GatedPromptConfig, encoder):
        super().__init__(cfg, encoder)
        require_timm_blocks(encoder, "gated_prompt")
        d, depth = encoder.embed_dim, len(encoder.blocks)
        layers = depth if cfg.num_layers is None else max(0, min(cfg.num_layers, depth))
        self.first_block = depth - layers
        bound = xavier_prompt_bound(encoder.patch_size, d)
        self.prompts = nn.Parameter(torch.empty(layers, cfg.num_tokens, d).uniform_(-bound, bound))
        self.gates = nn.Parameter(torch.zeros(layers, encoder.blocks[0].attn.num_heads))
        self.reparam = (Reparam(d, cfg.hidden_dim, cfg.activation, False) if cfg.prompt_type == "nonlinear"
                        else None)

    @property
    def frozen_prefix_blocks(self) -> int:
        return self.first_block

    def layer_prompts(self, j: int) -> torch.Tensor:
        """(K, D) prompts of the j-th prompted block."""
        p = self.prompts[j]
        return self.reparam(p) if self.reparam is not None else p

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        for i, block in enumerate(encoder.blocks):
            if i < self.first_block:
                h = encoder.run_block(block, h)
                continue
            j = i - self.first_block
            attn = block.attn
            d = h.shape[-1]
            w, b = attn.qkv.weight, attn.qkv.bias
            p = self.layer_prompts(j).to(h.dtype)
            kv = p @ w[d:].T.to(h.dtype) + (b[d:].to(h.dtype) if b is not None else 0)  # (K, 2D): keys, values
            k_p, v_p = (t.reshape(1, -1, attn.num_heads, attn.head_dim).transpose(1, 2) for t in kv.split(d, -1))
            h = run_block(block, h, prefix_k=attn.k_norm(k_p), prefix_v=v_p, prefix_gate=self.gates[j])
        return h, encoder.num_prefix_tokens
