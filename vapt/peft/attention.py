"""A timm ViT block run with a changed self-attention: extra key/value prompts, a temperature, or a gated
prefix. The block's own (frozen) layers are used; only the attention arithmetic is written out here.

For one head with queries ``q`` (L, d_h), keys ``k`` and values ``v`` (L, d_h) and scale ``s = d_h^-1/2``:

* key-value prompts (E2VPT): ``softmax(s q [K_p; k]^T / t) [V_p; v]``, prompts first;
* temperature (GateVPT): the same with ``t`` per block;
* gated prefix (zero-initialised attention, LLaMA-Adapter): ``tanh(g) softmax(s q K_p^T) V_p + softmax(s q k^T) v``
  (two separate softmaxes; the gate ``g`` is per head).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vapt.peft.base import timm_only


def require_timm_blocks(encoder, method: str) -> None:
    """Refuse an encoder whose blocks are not standard timm pre-norm blocks (norm1/attn/ls1, norm2/mlp/ls2)."""
    timm_only(encoder, method)
    needed = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    for block in encoder.blocks:
        if not all(hasattr(block, n) for n in needed) or getattr(block.attn, "gate", None) is not None:
            raise ValueError(f"{method} needs standard timm ViT blocks (norm1 -> attn -> ls1, norm2 -> mlp -> ls2); "
                             f"got {type(block).__name__}.")


def _heads(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, D) -> q, k, v each (B, H, L, d_h), with the block's q/k norms."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention(attn, x: torch.Tensor, *, prefix_k: torch.Tensor | None = None,
              prefix_v: torch.Tensor | None = None, temperature: torch.Tensor | float = 1.0,
              prefix_gate: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention of a timm ``Attention`` with prompts / temperature / gated prefix. (B, L, D) -> (B, L, D).

    Parameters
    ----------
    prefix_k, prefix_v : (B or 1, H, M, d_h), optional
        Key and value prompts.
    temperature : scalar
        Divides the attention logits.
    prefix_gate : (H,), optional
        If given, the prefix gets its own softmax, scaled by ``tanh(prefix_gate)`` per head (zero-init attention);
        otherwise prefix and tokens share one softmax (E2VPT).
    """
    b, n, _ = x.shape
    q, k, v = _heads(attn, x)
    scale = attn.scale / temperature
    drop = attn.attn_drop.p if attn.training else 0.0
    if prefix_k is not None and prefix_gate is None:
        k = torch.cat([prefix_k.expand(b, -1, -1, -1).to(k.dtype), k], dim=2)
        v = torch.cat([prefix_v.expand(b, -1, -1, -1).to(v.dtype), v], dim=2)
    if attn.fused_attn and not torch.is_tensor(scale):
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=scale)
    else:
        weights = attn.attn_drop(((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = weights @ v
    if prefix_gate is not None:
        pk, pv = prefix_k.expand(b, -1, -1, -1).to(q.dtype), prefix_v.expand(b, -1, -1, -1).to(q.dtype)
        pw = ((q * attn.scale) @ pk.transpose(-2, -1)).softmax(dim=-1)
        out = out + torch.tanh(prefix_gate).to(q.dtype).view(1, -1, 1, 1) * (pw @ pv)
    out = out.transpose(1, 2).reshape(b, n, attn.attn_dim if hasattr(attn, "attn_dim") else -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj_drop(attn.proj(out))


def run_block(block, x: torch.Tensor, **attention_kwargs) -> torch.Tensor:
    """One timm pre-norm block with :func:`attention` in place of its attention. (B, L, D) -> (B, L, D)."""
    x = x + block.drop_path1(block.ls1(attention(block.attn, block.norm1(x), **attention_kwargs)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
