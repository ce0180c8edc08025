"""MSCPT (Han et al., "Multi-scale and context-focused prompt tuning" for few-shot WSI classification), as the
official model (Hanminghao/MSCPT ``model/mscpt.py`` ``CustomCLIP``, 3f23ac7) on an HF ``CLIPModel`` (PLIP
``vinid/plip`` or CLIP ViT-B/16), frozen; only the prompts, the prompt projector and the two GCNs learn.

Per slide: ``images`` (N_l, 3, S, S), the selected low-magnification (5x) tile images, and ``features``
(N_h, W_v), the high-magnification (20x) tile features of the CLIP image tower *before* its
``visual_projection`` (projected inside the model). Descriptions per class: ``low_texts`` (the official
``small_mag``, n_l per class, tissue level) and ``high_texts`` (``big_mag``, n_h per class, cell level).

- Frozen text side: every low description through the text encoder (causal + padding mask, 64 tokens):
  its projected, L2-normalised embedding ``z`` (C, n_l, D) and its L2-normalised end-of-text state after
  each layer (C, L_t, n_l, W_t).
- Prompted text side (the high descriptions): the input is ``[start, p_input (n_tpro + n_l), description]``
  (the ``X`` placeholder embeddings replaced, position embeddings left only on the frozen tokens); before each
  layer k >= 1 the prompt slots are set to ``p_uni[k-1]`` (n_tpro, shared) and ``e + P(e)`` for the class's
  n_l low-description states ``e`` after layer k-1 (``P`` a learnable Linear). End-of-text state -> final norm
  -> ``text_projection`` -> L2 norm: ``t`` (C * n_h, D).
- Prompted image tower on the 5x images: ``n_vpro`` prompt tokens appended after the patch tokens (no
  position embedding), replaced before each layer k >= 1 by ``p_visual[k-1]``; post-norm CLS ->
  ``visual_projection`` -> L2 norm. **Official defect, reproduced by default**: the replacement indexes the
  batch axis (``hidden_states[-n_vpro:] = ...``), so the *last n_vpro tiles* are overwritten with the prompt
  vectors and the appended prompts act as shallow (input-only) prompts; ``corrected=True`` sets the prompt
  tokens of every tile instead.
- Two GCNs (:class:`TileGCN`, PyG ``GCNConv`` twice, ReLU, dropout 0.5 between) over the 5x image features and
  over the projected, L2-normalised 20x features; the official graph links every pair i < j as a directed edge
  i -> j (plus self loops), so tile j aggregates the tiles before it. **Official defect, reproduced by
  default**: the 20x graph's node count is taken from a (n_h, n_h) description-similarity matrix, so only the
  first n_h tiles (n_h = high descriptions per class) are linked and every other 20x tile keeps its self loop
  alone; ``corrected=True`` links all 20x tiles as the 5x ones.
- Pooling (``s = exp(logit_scale)``): ``logits_low = s * top5(x_l z^T) + s * top5(x_l mean_h(t)^T)`` and
  ``logits_high = s * top100(x_h t^T) + s * top100(x_h mean_l(z)^T)``, top-k means per class over the rows;
  ``logits = (logits_low + logits_high) / 2``. **Official defect, reproduced by default**: the (N, C * n)
  tile-description scores are reshaped to (N * n, C) row-major, which mixes the classes' descriptions across
  the class columns; ``corrected=True`` pools each class over its own descriptions.
- Loss (official ``MInterface.training_step``): ``CE(logits) + CE(logits_low) + CE(logits_high)``.

The similarity matrices ``A_big`` / ``A_small`` of the official forward are computed but never used, so they
are left out (no effect on any output).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSCPT", "TileGCN", "gcn_propagate"]

#: the official tokenisation length (``max_length = 64``)
CONTEXT_LENGTH = 64


def gcn_propagate(x: torch.Tensor, linked: int | None = None) -> torch.Tensor:
    """PyG ``GCNConv`` propagation (symmetric normalisation, self loops) over the official edge set
    ``{i -> j : i < j < linked}`` (all nodes when ``linked`` is None): node j < linked has in-degree j + 1, so
    ``out_j = sum_{i <= j} x_i / sqrt((i + 1)(j + 1))``; a node j >= linked has its self loop only
    (``out_j = x_j``).

    (N, D) -> (N, D), computed as a cumulative sum (O(N D) memory instead of the N^2 / 2 edge list).
    """
    m = x.shape[0] if linked is None else min(int(linked), x.shape[0])
    s = torch.arange(1, m + 1, device=x.device, dtype=x.dtype).rsqrt()[:, None]
    return torch.cat([(x[:m] * s).cumsum(0) * s, x[m:]])


class GCNLayer(nn.Module):
    """``GCNConv(dim, dim)`` on the official edge set: ``gcn_propagate(x W^T, linked) + b`` (PyG's parameter
    names: ``lin.weight``, glorot-initialised, and ``bias``, zeros)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: torch.Tensor, linked: int | None = None) -> torch.Tensor:
        return gcn_propagate(self.lin(x), linked) + self.bias


class TileGCN(nn.Module):
    """The official ``GcnPromptLearner``: GCN -> ReLU -> dropout -> GCN. (N, D), linked -> (N, D)."""

    def __init__(self, dim: int, dropout: float = 0.5):
        super().__init__()
        self.conv1, self.conv2 = GCNLayer(dim), GCNLayer(dim)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor, linked: int | None = None) -> torch.Tensor:
        x = F.dropout(F.relu(self.conv1(x, linked)), self.dropout, training=self.training)
        return self.conv2(x, linked)


def _takes_causal_mask(layer: nn.Module) -> bool:
    return "causal_attention_mask" in inspect.signature(type(layer).forward).parameters


def run_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One HF ``CLIPEncoderLayer`` with an additive (B, 1, L, L) mask, for transformers 4.x (separate causal
    mask argument, tuple output) and 5.x (one mask, tensor output)."""
    out = layer(x, mask, None) if _takes_causal_mask(layer) else layer(x, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out


def text_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal + padding additive mask (P, 1, L, L) from the tokenizer's (P, L) 0/1 mask, as HF CLIP's text model
    (``finfo.min`` where masked)."""
    n = attention_mask.shape[1]
    low = torch.finfo(dtype).min
    causal = torch.full((n, n), low, dtype=dtype).triu(1)[None, None]
    pad = (1.0 - attention_mask[:, None, None, :].to(dtype)) * low
    return causal + pad


class MSCPT(nn.Module):
    """MSCPT. Forward: ``images (N_l, 3, S, S), features (N_h, W_v) -> (logits, logits_low, logits_high)``, each (C,).

    Parameters
    ----------
    clip : an HF ``CLIPModel`` (frozen here).
    tokenizer : its HF tokenizer (CLIP BPE), called as the official code does (64 tokens, padded, truncated).
    low_texts, high_texts : per class, the low-magnification (``small_mag``, the same count n_l for every
        class: the number of high-level prompt tokens) and high-magnification (``big_mag``) descriptions.
    n_tpro, n_vpro : text / visual prompt lengths (official scripts: 2 and 2).
    topk_low, topk_high : rows pooled per class at 5x / 20x (official 5 / 100; fewer rows: all of them).
    gcn_dropout : dropout between the two GCN layers (official: ``F.dropout`` default 0.5).
    corrected : fix the three official defects described in the module docstring.
    """

    def __init__(self, clip: nn.Module, tokenizer, low_texts: list[list[str]], high_texts: list[list[str]],
                 n_tpro: int = 2, n_vpro: int = 2, topk_low: int = 5, topk_high: int = 100,
                 gcn_dropout: float = 0.5, corrected: bool = False):
        super().__init__()
        counts, high_counts = {len(t) for t in low_texts}, {len(t) for t in high_texts}
        if len(counts) != 1 or len(high_counts) != 1 or 0 in counts | high_counts:
            raise ValueError(f"mgpath/baselines: MSCPT needs the same number (>0) of descriptions for every class at "
                             f"each magnification (the low ones are the high-level prompt tokens); got "
                             f"{[len(t) for t in low_texts]} (low) and {[len(t) for t in high_texts]} (high)")
        self.clip = clip.requires_grad_(False).eval()
        self.num_classes, self.n_low, self.n_high = len(low_texts), counts.pop(), high_counts.pop()
        self.n_tpro, self.n_vpro = int(n_tpro), int(n_vpro)
        self.topk_low, self.topk_high, self.corrected = int(topk_low), int(topk_high), bool(corrected)
        text, vision = clip.text_model, clip.vision_model
        width_t, width_v = text.final_layer_norm.weight.shape[0], vision.post_layernorm.weight.shape[0]
        layers_t, layers_v = len(text.encoder.layers), len(vision.encoder.layers)
        dim = clip.visual_projection.weight.shape[0]
        self.p_uni = nn.ParameterList([nn.Parameter(torch.empty(self.n_tpro, width_t).normal_(std=0.02))
                                       for _ in range(layers_t - 1)])
        self.p_ins_projector = nn.Linear(width_t, width_t)
        self.p_input = nn.Parameter(torch.empty(self.n_tpro + self.n_low, width_t).normal_(std=0.02))
        self.p_visual = nn.ParameterList([nn.Parameter(torch.empty(self.n_vpro, width_v).normal_(std=0.02))
                                          for _ in range(layers_v - 1)])
        self.p_visual_input = nn.Parameter(torch.empty(self.n_vpro, width_v).normal_(std=0.02))
        self.gcn_low, self.gcn_high = TileGCN(dim, gcn_dropout), TileGCN(dim, gcn_dropout)
        self._frozen_text(tokenizer, low_texts, high_texts)

    def train(self, mode: bool = True):
        """The CLIP towers stay in eval mode (frozen)."""
        super().train(mode)
        self.clip.eval()
        return self

    @staticmethod
    def _tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = tokenizer(texts, max_length=CONTEXT_LENGTH, add_special_tokens=True, return_token_type_ids=False,
                        truncation=True, padding="max_length", return_attention_mask=True)
        return torch.tensor(tok["input_ids"]), torch.tensor(tok["attention_mask"])

    @torch.no_grad()
    def _frozen_text(self, tokenizer, low_texts, high_texts) -> None:
        text = self.clip.text_model
        zs, states = [], []
        for texts in low_texts:
            ids, att = self._tokenize(tokenizer, texts)
            x, eot, per_layer = text.embeddings(input_ids=ids), ids.argmax(-1), []
            mask = text_mask(att, x.dtype)
            for layer in text.encoder.layers:
                x = run_layer(layer, x, mask)
                per_layer.append(x[torch.arange(len(ids)), eot])
            pooled = text.final_layer_norm(x)[torch.arange(len(ids)), eot]
            zs.append(F.normalize(self.clip.text_projection(pooled), dim=-1))
            states.append(F.normalize(torch.stack(per_layer), dim=-1))
        self.register_buffer("text_zs", torch.stack(zs))  # (C, n_l, D)
        self.register_buffer("text_states", torch.stack(states))  # (C, L_t, n_l, W_t)
        prefix = " ".join(["X"] * (self.n_tpro + self.n_low))
        ids, att = self._tokenize(tokenizer, [f"{prefix} {d}" for texts in high_texts for d in texts])
        self.register_buffer("prompt_tokens", ids, persistent=False)
        self.register_buffer("prompt_mask", text_mask(att, torch.float32), persistent=False)
        self.register_buffer("prompt_embeddings", text.embeddings(input_ids=ids), persistent=False)

    def text_features(self) -> torch.Tensor:
        """Prompted high-magnification description features (C * n_h, D), L2-normalised."""
        text, n = self.clip.text_model, 1 + self.n_tpro + self.n_low
        emb, p = self.prompt_embeddings, len(self.prompt_tokens)
        x = torch.cat([emb[:, :1], self.p_input.expand(p, -1, -1), emb[:, n:]], dim=1)
        states = self.text_states.transpose(0, 1)  # (L_t, C, n_l, W_t)
        owner = torch.arange(self.num_classes, device=x.device).repeat_interleave(self.n_high)
        mask = self.prompt_mask.to(x.dtype)
        for k, layer in enumerate(text.encoder.layers):
            if k > 0:
                e = states[k - 1]
                ins = (e + self.p_ins_projector(e))[owner]  # (P, n_l, W_t)
                x = torch.cat([x[:, :1], self.p_uni[k - 1].expand(p, -1, -1), ins, x[:, n:]], dim=1)
            x = run_layer(layer, x, mask)
        x = text.final_layer_norm(x)[torch.arange(p, device=x.device), self.prompt_tokens.argmax(-1)]
        return F.normalize(self.clip.text_projection(x), dim=1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image tower on tile images (N, 3, S, S) -> (N, D), L2-normalised."""
        vision, n = self.clip.vision_model, self.n_vpro
        x = vision.embeddings(images.to(self.p_visual_input.dtype))
        x = vision.pre_layrnorm(torch.cat([x, self.p_visual_input.expand(len(x), -1, -1)], dim=1))
        if not self.corrected and len(x) < n:
            raise ValueError(f"mgpath/baselines: MSCPT (official visual prompts) needs at least n_vpro={n} tile "
                             f"images per slide, got {len(x)}")
        for k, layer in enumerate(vision.encoder.layers):
            if k > 0:
                p = self.p_visual[k - 1]
                if self.corrected:
                    x = torch.cat([x[:, :-n], p.expand(len(x), -1, -1)], dim=1)
                else:  # official: the last n tiles are overwritten (batch axis)
                    x = torch.cat([x[:-n], p[:, None].expand(-1, x.shape[1], -1)], dim=0)
            x = run_layer(layer, x, None)
        pooled = vision.post_layernorm(x[:, 0])
        return F.normalize(self.clip.visual_projection(pooled), dim=1)

    def _pool(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """(N, C * n) class-major scores -> (C,) top-k mean per class column (see ``corrected``)."""
        c = self.num_classes
        rows = (scores.reshape(len(scores), c, -1).transpose(1, 2).reshape(-1, c) if self.corrected
                else scores.reshape(-1, c))
        return rows.topk(min(k, len(rows)), dim=0).values.mean(0)

    def forward(self, images: torch.Tensor, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = self.clip.visual_projection.weight.shape[1]
        if features.dim() != 2 or features.shape[1] != width or len(features) == 0:
            raise ValueError(f"mgpath/baselines: MSCPT reads high-magnification tile features before CLIP's "
                             f"visual_projection, (N>0, {width}); got {tuple(features.shape)}")
        scale = self.clip.logit_scale.exp()
        high = F.normalize(self.clip.visual_projection(features), dim=1)
        text = self.text_features()
        zs = self.text_zs.reshape(-1, self.text_zs.shape[-1])
        x_low = self.gcn_low(self.image_features(images))
        x_high = self.gcn_high(high, None if self.corrected else self.n_high)
        text_mean = text.reshape(self.num_classes, self.n_high, -1).mean(1)
        logits_low = scale * (self._pool(x_low @ zs.T, self.topk_low)
                              + self._pool(x_low @ text_mean.T, self.topk_low))
        logits_high = scale * (self._pool(x_high @ text.T, self.topk_high)
                               + self._pool(x_high @ self.text_zs.mean(1).T, self.topk_high))
        return (logits_low + logits_high) / 2, logits_low, logits_high

    def loss(self, images: torch.Tensor, features: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``CE(logits) + CE(logits_low) + CE(logits_high)``, logits (C,)) of one slide."""
        out = self(images, features)
        y = torch.tensor([label], device=out[0].device)
        return sum(F.cross_entropy(o[None], y) for o in out), out[0]
