"""TOP, "The rise of AI language pathologists: exploring two-level prompt learning for few-shot weakly-supervised
whole slide image classification" (Qu et al., NeurIPS 2023), as the official model (miccaiif/TOP
``models/learnable_prompt.py``, 8356b0d, ``pooling_strategy: learnablePrompt_multi``) with the text tower from
:func:`mgpath.text.build_text_tower` (the paper's: CLIP RN50) and its training objective
(``train_TCGAFeat_MIL_CLIP.py``).

- Prompts: each bag prompt (one per class) and each instance prompt (one per prototype, e.g. a tissue type and
  its description) ends in a run of ``*`` tokens; the class name (bag) or ``Prototype k`` (instance) and a full
  stop are appended. The ``*`` token embeddings are the learnable context (initialised from the ``*``
  embedding, one set per prompt); the other tokens stay fixed. Dropout (``p_bag_drop_out`` /
  ``p_drop_out``) acts on the assembled prompt embeddings. The text tower and CLIP's temperature are frozen.
- Forward on tiles (N, D): ``s = exp(logit_scale)``; instance scores ``s * x t_inst^T`` (N, K); each
  prototype pools the tiles with a softmax over N; prototype bag features (K, D) -> logits
  ``s * f t_bag^T`` (K, C) with L2-normalised texts (the tile features are used as they are).
- Loss: mean over the K prototypes of ``-log(p_y + 1e-5)`` with ``p = softmax(logits)`` (the official binary
  form ``-(y log(p_1 + 1e-5) + (1 - y) log(1 - p_1 + 1e-5))`` for two classes) plus ``weight_lossA`` times the
  mean of the strictly upper triangle of ``A^T A``, ``A`` the (N, K) tile softmax of each prototype.
- Slide probability: the mean over the prototypes of ``softmax(logits)``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TOP", "StarPrompts"]


class StarPrompts(nn.Module):
    """Prompts whose ``*`` tokens are learnable. Forward -> prompt embeddings (P, L, W) without positions.

    Parameters
    ----------
    tower : a :func:`mgpath.text.build_text_tower` tower (``tokenize``, ``token_embedding``).
    texts : P prompts, each with one contiguous run of ``*`` (``_`` is read as a space).
    names : P names appended as ``" name."`` (classes, or ``Prototype k``).
    p_drop : dropout on the assembled prompt embeddings.
    """

    def __init__(self, tower: nn.Module, texts: list[str], names: list[str], p_drop: float = 0.0):
        super().__init__()
        full = [t.replace("_", " ") + " " + n.replace("_", " ") + "." for t, n in zip(texts, names)]
        tokens = tower.tokenize(full)
        star = int(tower.tokenize(["*"])[0, 1])
        with torch.no_grad():
            emb = tower.token_embedding(tokens).float()
        self.ctx = nn.ParameterList()
        for i, t in enumerate(full):
            pos = torch.nonzero(tokens[i] == star)[:, 0]
            if len(pos) == 0 or int(pos[-1] - pos[0]) + 1 != len(pos):
                raise ValueError(f"mgpath/baselines: TOP prompt {t!r} needs one contiguous run of '*' tokens (the "
                                 "learnable context), e.g. 'an H&E image of lung tissue. * * * * * * * * * *'")
            self.register_buffer(f"prefix_{i}", emb[i, : pos[0]].clone())
            self.register_buffer(f"suffix_{i}", emb[i, pos[-1] + 1:].clone())
            self.ctx.append(nn.Parameter(emb[i, pos].clone()))
        self.register_buffer("eot_index", tokens.argmax(-1))
        self.drop = nn.Dropout(p_drop)

    def forward(self) -> torch.Tensor:
        rows = [torch.cat([getattr(self, f"prefix_{i}"), ctx, getattr(self, f"suffix_{i}")])
                for i, ctx in enumerate(self.ctx)]
        return self.drop(torch.stack(rows))


class TOP(nn.Module):
    """TOP. Forward: tiles (N, D) -> (prototype logits (K, C), instance scores (N, K)).

    Parameters
    ----------
    tower, text_projection : frozen text tower and CLIP's (W, D) projection.
    bag_prompts : one prompt per class (with a ``*`` run); ``classes`` their names.
    instance_prompts : one prompt per prototype (with a ``*`` run).
    logit_scale : CLIP's log temperature (OpenAI weights: log 100), frozen.
    p_bag_drop_out, p_drop_out : prompt dropout of the bag / instance prompts (official scripts: 0 or 0.2).
    feature_dim : tile feature size; when it is not the text embedding size D, a trainable
        ``Linear(feature_dim, D)`` maps the tiles first (not in the official model).
    """

    def __init__(self, tower: nn.Module, text_projection: torch.Tensor, bag_prompts: list[str],
                 classes: list[str], instance_prompts: list[str], logit_scale: float,
                 p_bag_drop_out: float = 0.0, p_drop_out: float = 0.0, feature_dim: int | None = None):
        super().__init__()
        self.bag = StarPrompts(tower, bag_prompts, classes, p_bag_drop_out)
        self.instance = StarPrompts(tower, instance_prompts, [f"Prototype {k}" for k in range(len(instance_prompts))],
                                    p_drop_out)
        self.tower = tower
        self.register_buffer("text_projection", text_projection.detach().float().clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        for p in tower.parameters():
            p.requires_grad_(False)
        dim = int(text_projection.shape[1])
        self.feature_dim = feature_dim or dim
        self.adaptor = nn.Linear(self.feature_dim, dim) if self.feature_dim != dim else nn.Identity()

    def _encode(self, prompts: StarPrompts) -> torch.Tensor:
        x = prompts() + self.tower.positional_embedding
        x = self.tower.ln_final(self.tower.transformer(x, attn_mask=self.tower.attn_mask))
        t = x[torch.arange(x.shape[0], device=x.device), prompts.eot_index] @ self.text_projection
        return t / t.norm(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.feature_dim or x.shape[0] == 0:
            raise ValueError(f"mgpath/baselines: TOP expects tile features (N>0, {self.feature_dim}), got "
                             f"{tuple(x.shape)}")
        x = self.adaptor(x)
        s = self.logit_scale.exp()
        bag = self._encode(self.bag)  # bag prompts first: the official order of the dropout draws
        scores = s * x @ self._encode(self.instance).T  # (N, K)
        feats = scores.softmax(0).T @ x  # (K, D)
        return s * feats @ bag.T, scores

    @staticmethod
    def objective(logits: torch.Tensor, scores: torch.Tensor, label: int, weight_lossA: float) -> torch.Tensor:
        """``loss_D + weight_lossA * loss_A`` of one slide (official ``train_one_epoch``)."""
        p = logits.softmax(1)[:, label]
        attn = scores.softmax(0)
        return -(p + 1e-5).log().mean() + weight_lossA * torch.triu(attn.T @ attn, diagonal=1).mean()


def read_top_prompts(path, classes: list[str]) -> tuple[list[str], list[str]]:
    """(bag prompts in class order, instance prompts) from a JSON file
    ``{"bag": {class: "... * * * * * * * * * *"}, "instance": ["... * * * * * * * * * *", ...]}``."""
    import json
    from pathlib import Path

    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("bag"), dict) or not isinstance(raw.get("instance"), list):
        raise TypeError(f"mgpath/baselines: {path} must be a JSON object with 'bag' ({{class: prompt}}) and "
                         "'instance' ([prompt, ...]); each prompt ends in a run of '*' (the learnable context)")
    missing = [c for c in classes if c not in raw["bag"]]
    if missing or not raw["instance"]:
        raise ValueError(f"mgpath/baselines: {path}: " + (f"no bag prompt for class(es) {missing}" if missing
                                                           else "'instance' is empty"))
    return [str(raw["bag"][c]) for c in classes], [str(t) for t in raw["instance"]]


def clip_logit_scale(checkpoint: str | None) -> float:
    """CLIP's log temperature: the checkpoint's ``logit_scale`` (OpenAI weights: log 100), else CLIP's
    initial value log(1 / 0.07)."""
    import math

    if checkpoint:
        from mgpath.text import load_state_dict_file

        sd = load_state_dict_file(checkpoint)
        for key in ("logit_scale", "text_model.logit_scale"):
            if key in sd:
                return float(sd[key])
    return math.log(1 / 0.07)
