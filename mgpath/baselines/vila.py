"""ViLa-MIL (Shi et al., CVPR 2024, "ViLa-MIL: Dual-scale vision-language multiple instance learning for
whole slide image classification"), as the official model (Jiangbo-Shi/ViLa-MIL ``models/model_ViLa_MIL.py``,
68a11cf) with the text tower from :func:`mgpath.text.build_text_tower` (the paper: CLIP RN50, 1024-d).

Per slide, low (N_s, D) and high (N_l, D) magnification tile features, D = the text embedding size:

- text: one description per (magnification, class), ``_`` read as a space; 16 learnable context vectors
  shared by all classes go after the start token and shift the description right (its last 16 token
  positions are dropped); position embeddings are added to the whole prompt; the text transformer,
  ``ln_final`` and ``text_projection`` are trained with the prompts (as the official code, which freezes
  nothing; ``train_text: false`` freezes them). The feature is read at the end-of-text position of the
  *unshifted* description, as the official code (``tokenized_prompts.argmax(-1)``): 16 tokens before the
  real end of text.
- image: ``n_prototypes`` learnable queries (trunc-normal std 0.02) attend to the tiles (one-head
  ``MultiheadAttention``, shared by the scales), residual + LayerNorm; gated attention pooling (D -> hidden
  -> 1) of the prototypes gives the slide feature of each scale.
- the class texts attend (a second one-head attention) to the prototypes and tiles of their scale, residual;
- logits = low image feature @ low texts^T + high image feature @ high texts^T (no temperature), CE loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ViLaMIL"]


class ViLaMIL(nn.Module):
    """ViLa-MIL. Forward: ``(low (N_s, D), high (N_l, D)) -> logits (C,)``.

    Parameters
    ----------
    tower : a text tower of :func:`mgpath.text.build_text_tower` (``token_embedding``, ``positional_embedding``,
        ``transformer``, ``ln_final``, ``tokenize``).
    text_projection : (W, D) projection of the pooled text state (CLIP's ``text_projection``).
    texts : 2 * C descriptions: the C classes at the low magnification, then at the high one.
    n_ctx, n_prototypes, hidden : 16, 16 (official README) and 192 (official ``hidden_size``).
    train_text : train the text transformer, ``ln_final``, positions and projection (official: yes).
    feature_dim : tile feature size; when it is not the text embedding size D, a trainable
        ``Linear(feature_dim, D)`` maps the tiles first (not in the official model, which needs D-d features).
    """

    def __init__(self, tower: nn.Module, text_projection: torch.Tensor, texts: list[str], n_ctx: int = 16,
                 n_prototypes: int = 16, hidden: int = 192, train_text: bool = True,
                 feature_dim: int | None = None):
        super().__init__()
        if len(texts) % 2:
            raise ValueError(f"mgpath/baselines: ViLa-MIL needs one description per class at two magnifications, "
                             f"got {len(texts)}")
        self.num_classes = len(texts) // 2
        dim = int(text_projection.shape[1])
        width = int(tower.positional_embedding.shape[1])
        self.transformer, self.ln_final = tower.transformer, tower.ln_final
        self.positional_embedding = tower.positional_embedding
        self.register_buffer("attn_mask", getattr(tower, "attn_mask", None), persistent=False)
        self.text_projection = nn.Parameter(text_projection.detach().clone())
        tokens = tower.tokenize([t.replace("_", " ") for t in texts])
        with torch.no_grad():
            emb = tower.token_embedding(tokens).float()
        self.register_buffer("token_prefix", emb[:, :1].clone())
        self.register_buffer("token_suffix", emb[:, 1:-n_ctx].clone())
        self.register_buffer("eot_index", tokens.argmax(-1))
        self.ctx = nn.Parameter(torch.empty(n_ctx, width).normal_(std=0.02))
        for p in (*self.transformer.parameters(), *self.ln_final.parameters(), self.positional_embedding):
            p.requires_grad_(train_text)
        self.text_projection.requires_grad_(train_text)
        self.attention_V = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.attention_U = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid())
        self.attention_weights = nn.Linear(hidden, 1)
        self.norm = nn.LayerNorm(dim)
        self.cross_attention_1 = nn.MultiheadAttention(dim, 1)
        self.cross_attention_2 = nn.MultiheadAttention(dim, 1)
        self.learnable_image_center = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(n_prototypes, 1, dim), std=0.02, a=-2.0, b=2.0))
        self.feature_dim = feature_dim or dim
        self.adaptor = nn.Linear(self.feature_dim, dim) if self.feature_dim != dim else nn.Identity()

    def text_features(self) -> torch.Tensor:
        """(2C, D): the prompted descriptions through the text transformer."""
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        return x[torch.arange(x.shape[0], device=x.device), self.eot_index] @ self.text_projection

    def _scale(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one magnification: tiles (N, D), class texts (C, D)."""
        q = self.learnable_image_center
        comp = self.norm(self.cross_attention_1(q, x[:, None], x[:, None], need_weights=False)[0] + q)[:, 0]
        a = self.attention_weights(self.attention_V(comp) * self.attention_U(comp)).T.softmax(dim=1)  # (1, P)
        image = a @ comp  # (1, D)
        context = torch.cat([comp, x])[:, None]
        text = self.cross_attention_2(text[:, None], context, context, need_weights=False)[0][:, 0] + text
        return (image @ text.T)[0]

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        for x, name in ((low, "low"), (high, "high")):
            if x.dim() != 2 or x.shape[1] != self.feature_dim or x.shape[0] == 0:
                raise ValueError(f"mgpath/baselines: ViLa-MIL expects {name}-magnification tile features "
                                 f"(N>0, {self.feature_dim}), got {tuple(x.shape)}")
        text = self.text_features()
        c = self.num_classes
        return self._scale(self.adaptor(low), text[:c]) + self._scale(self.adaptor(high), text[c:])

    def loss(self, low: torch.Tensor, high: torch.Tensor, label: int) -> torch.Tensor:
        """Cross-entropy of one slide (the official ``loss_ce``)."""
        logits = self(low, high)
        return F.cross_entropy(logits[None], torch.tensor([label], device=logits.device))


def text_projection(text_model: str, checkpoint: str | None, model_cfg: dict | None, width: int) -> torch.Tensor:
    """CLIP's ``text_projection`` (W, D) for a tower of :func:`mgpath.text.build_text_tower`: read from the
    checkpoint (open_clip ``text_projection`` or HF ``text_projection.weight``), else random as CLIP initialises
    it (normal, std W^-0.5) with D the config's ``embed_dim``."""
    from mgpath.text import TINY_TEXT_CFG, load_state_dict_file

    if checkpoint:
        sd = load_state_dict_file(checkpoint)
        for key, transpose in (("text_projection", False), ("text_projection.weight", True),
                               ("text_model.text_projection.weight", True)):
            if key in sd:
                return sd[key].T.float() if transpose else sd[key].float()
        raise KeyError(f"mgpath/baselines: {checkpoint} has no text_projection; ViLa-MIL uses CLIP's projection "
                       "of the pooled text state")
    cfg = model_cfg or (TINY_TEXT_CFG if text_model == "mgpath-tiny" else None)
    if cfg is None:
        import open_clip

        cfg = open_clip.get_model_config(text_model)
        if cfg is None:
            raise ValueError(f"mgpath/baselines: no open_clip config for text model {text_model!r}; give "
                             "text_model_cfg or text_checkpoint")
    return torch.empty(width, int(cfg["embed_dim"])).normal_(std=width ** -0.5)
