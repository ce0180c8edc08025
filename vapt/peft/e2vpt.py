"""E2VPT: visual prompts plus key-value prompts inside every attention (ChengHan111/E2VPT @ 7a66e75,
``src/models/vit_prompt/vit_prompt_VK.py`` and ``src/models/vit_backbones/vit_changeVK.py``, official defaults
``QUERY_PROMPT_MODE=0``, ``SHARE_PARAM_KV=True``, ``LAYER_BEHIND=True``, ``ORIGIN_INIT=2``).

* Visual prompts: VPT-deep prompts ``P_i`` (N_p tokens per block, the VPT init bound), each multiplied by two
  trainable masks that start at 1: a token mask ``m`` (N_p,) and a piece mask ``M`` (N_p, S) repeated over the
  D / S channels of each piece (S = 16)::

      P_i' = Drop(P_i) * tile(M, D / S) * m[:, None]

* Key-value prompts: per block one tensor ``E_i`` (H, M_kv, d_h), kaiming-uniform (fan_in = M_kv * d_h), used as
  both key and value prompt, placed before the tokens' keys and values::

      Attn_i(x) = softmax(s q [Drop(E_i); k]^T) [Drop(E_i); v]

The pruning search of E2VPT (mask importance scores, candidate prunings, rewind) is in
:mod:`vapt.peft.e2vpt_pruning`; :meth:`E2VPT.prune` applies a chosen pruning (masks set to 0 and frozen, as
the official ``mask_soft_tokens`` / ``mask_soft_tokens_pieces``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from vapt.peft.attention import require_timm_blocks, run_block
from vapt.peft.base import MethodConfig, PeftMethod, register
from vapt.peft.vpt import xavier_prompt_bound


@dataclass
class E2VPTConfig(MethodConfig):
    """E2VPT options (official names in brackets).

    Parameters
    ----------
    num_tokens : int
        Visual prompts per block N_p (``NUM_TOKENS_P``, default 5).
    num_kv_tokens : int
        Key-value prompts per block (``NUM_TOKENS``, default 5).
    deep : bool
        Visual prompts at every block (``DEEP_P``).
    dropout, kv_dropout : float
        Dropout on visual prompts (``DROPOUT_P``) and on the key-value prompts (``DROPOUT``).
    token_mask, piece_mask : bool
        The trainable masks (``CLS_TOKEN_MASK``, ``CLS_TOKEN_MASK_PIECES``).
    num_pieces : int
        S (``CLS_TOKEN_P_PIECES_NUM``).
    rewind_from : str, optional
        A ``.safetensors`` file of the method's initial tensors (written by the pruning search of
        ``vapt tune --e2vpt_prune``): they replace the fresh initialisation (the official rewind).
    prune_tokens : list of int
        Visual prompt tokens pruned (token mask 0 and frozen).
    prune_pieces : list of list of int
        Per token, its pruned pieces (piece mask 0 and frozen). With ``prune_tokens`` empty too, nothing is
        pruned and the masks train.
    """

    method: str = "e2vpt"
    num_tokens: int = 5
    num_kv_tokens: int = 5
    deep: bool = True
    dropout: float = 0.0
    kv_dropout: float = 0.0
    token_mask: bool = True
    piece_mask: bool = True
    num_pieces: int = 16
    rewind_from: str | None = None
    prune_tokens: Sequence[int] = ()
    prune_pieces: Sequence[Sequence[int]] = ()

    def __post_init__(self):
        if self.num_tokens < 1 or self.num_kv_tokens < 0:
            raise ValueError(f"e2vpt: num_tokens must be >= 1 and num_kv_tokens >= 0; got {self.num_tokens}, "
                             f"{self.num_kv_tokens}.")


@register
class E2VPT(PeftMethod):
    """Parameters: ``prompt_embeddings`` (1, N_p, D), ``deep_prompt_embeddings`` (L-1, N_p, D), ``token_mask``
    (N_p,), ``piece_mask`` (N_p, S), ``kv_prompts`` (L, H, M_kv, d_h)."""

    names: ClassVar[tuple[str, ...]] = ("e2vpt",)
    config_class: ClassVar[type] = E2VPTConfig

    def __init__(self, cfg: E2VPTConfig, encoder):
        super().__init__(cfg, encoder)
        require_timm_blocks(encoder, "e2vpt")
        d, depth = encoder.embed_dim, len(encoder.blocks)
        if cfg.piece_mask and d % cfg.num_pieces:
            raise ValueError(f"e2vpt: D={d} is not divisible by num_pieces={cfg.num_pieces}.")
        n = cfg.num_tokens
        bound = xavier_prompt_bound(encoder.patch_size, d)
        self.prompt_embeddings = nn.Parameter(torch.empty(1, n, d).uniform_(-bound, bound))
        self.deep_prompt_embeddings = (nn.Parameter(torch.empty(depth - 1, n, d).uniform_(-bound, bound))
                                       if cfg.deep and depth > 1 else None)
        self.token_mask = nn.Parameter(torch.ones(n)) if cfg.token_mask else None
        self.piece_mask = nn.Parameter(torch.ones(n, cfg.num_pieces)) if cfg.piece_mask else None
        attn = encoder.blocks[0].attn
        heads, head_dim = attn.num_heads, attn.head_dim
        kv = torch.empty(depth, heads, cfg.num_kv_tokens, head_dim)
        for i in range(depth):  # official: kaiming_uniform_(a=0, fan_in, leaky_relu) per layer's (H, M, d_h)
            nn.init.kaiming_uniform_(kv[i], a=0, mode="fan_in", nonlinearity="leaky_relu")
        self.kv_prompts = nn.Parameter(kv) if cfg.num_kv_tokens > 0 else None
        self.prompt_dropout = nn.Dropout(cfg.dropout)
        self.kv_dropout = nn.Dropout(cfg.kv_dropout)
        if cfg.rewind_from is not None:
            self.load_initial(cfg.rewind_from)
        if cfg.prune_tokens or cfg.prune_pieces:
            self.prune(tokens=cfg.prune_tokens, pieces=dict(enumerate(cfg.prune_pieces)))

    @torch.no_grad()
    def load_initial(self, path: str) -> None:
        """Copy the tensors of a ``.safetensors`` file (names and shapes of :meth:`named_parameters`) into the
        parameters; refuse a file that does not fit."""
        sd = load_file(path)
        params = dict(self.named_parameters())
        if set(sd) != set(params) or any(sd[k].shape != p.shape for k, p in params.items()):
            raise ValueError(f"e2vpt: {path} does not hold this method's initial tensors (names "
                             f"{sorted(params)}); rerun the pruning search with this config.")
        for k, p in params.items():
            p.copy_(sd[k])

    def _visual(self, prompt: torch.Tensor, batch: int) -> torch.Tensor:
        """(N_p, D) -> masked, dropped-out prompts (B, N_p, D)."""
        p = self.prompt_dropout(prompt.expand(batch, -1, -1))
        if self.piece_mask is not None:
            p = p * self.piece_mask.repeat(1, p.shape[-1] // self.cfg.num_pieces)
        if self.token_mask is not None:
            p = p * self.token_mask[:, None]
        return p

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        b, n = h.shape[0], self.cfg.num_tokens
        h = torch.cat([h[:, :1], self._visual(self.prompt_embeddings[0], b).to(h.dtype), h[:, 1:]], dim=1)
        for i, block in enumerate(encoder.blocks):
            if i >= 1 and self.deep_prompt_embeddings is not None:
                new = self._visual(self.deep_prompt_embeddings[i - 1], b).to(h.dtype)
                h = torch.cat([h[:, :1], new, h[:, 1 + n:]], dim=1)
            if self.kv_prompts is None:
                h = encoder.run_block(block, h)
            else:
                e = self.kv_dropout(self.kv_prompts[i].unsqueeze(0).expand(b, -1, -1, -1))
                h = run_block(block, h, prefix_k=e, prefix_v=e)
        return h, 1

    @torch.no_grad()
    def prune(self, tokens: Iterable[int] = (), pieces: dict[int, Iterable[int]] | None = None) -> None:
        """Zero and freeze the token mask at ``tokens`` and the piece mask at ``{token: [piece, ...]}``
        (the official rewind step); the prompts themselves keep training."""
        if self.token_mask is not None:
            for t in tokens:
                self.token_mask[t] = 0.0
            self.token_mask.requires_grad_(False)
        if self.piece_mask is not None and pieces is not None:
            for t, ps in pieces.items():
                for s in ps:
                    self.piece_mask[t, s] = 0.0
            self.piece_mask.requires_grad_(False)
