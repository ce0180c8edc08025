"""The MGPATH model: prompt-learned text features, multi-granular visual tokens, OT-similarity logits.

``logit_c = exp(t) * sum_g (1 - <T*_gc, 1 - cos(Z_g, text_gc)>)`` summed over the magnifications ``g``, with
``Z_g`` the visual tokens of the slide at that magnification and ``text_gc`` the ``n_sets`` prompt-set features
of class c at that magnification.

Differences from the released code (all on purpose, see the README): context tokens are inserted, not written
over the description (``placement="official"`` restores the released behaviour); any number of classes,
prompt sets and magnifications; the OT solver is configurable and raises on NaN/non-convergence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mgpath.granular import GranularAttention
from mgpath.ot import OTConfig, ot_similarity
from mgpath.text import PromptLearner, TextEncoder, build_text_tower, load_descriptions

__all__ = ["MGPATH", "Bag", "build_mgpath"]


@dataclass
class Bag:
    """One slide at one magnification: ``features`` (N, D) and 4-neighbour ``neighbours`` (N, K), -1 padded."""

    features: torch.Tensor
    neighbours: torch.Tensor

    def to(self, device) -> Bag:
        return Bag(self.features.to(device), self.neighbours.to(device))


class MGPATH(nn.Module):
    """MGPATH few-shot slide classifier.

    Parameters
    ----------
    text : the :class:`~mgpath.text.TextEncoder` (frozen tower + prompts + adaptor).
    visual : the :class:`~mgpath.granular.GranularAttention` shared over magnifications.
    ot : OT head settings.
    logit_scale : initial log temperature ``t`` (official init ``log(1/0.02)``; trainable).

    Forward: a list of B slides, each ``{mag: Bag}`` -> logits (B, C).
    """

    def __init__(self, text: TextEncoder, visual: GranularAttention, ot: OTConfig | None = None,
                 logit_scale: float = math.log(1 / 0.02)):
        super().__init__()
        self.text = text
        self.visual = visual
        self.ot = ot or OTConfig()
        self.logit_scale = nn.Parameter(torch.tensor([float(logit_scale)]))
        self.magnifications = list(text.prompts.magnifications)
        self.classes = list(text.prompts.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def visual_tokens(self, slides: list[dict[str, Bag]], return_attention: bool = False):
        """Visual tokens per magnification: ``{mag: (B, M, D)}`` (and per-slide attentions if asked)."""
        out, atts = {}, []
        for m in self.magnifications:
            toks = []
            for i, s in enumerate(slides):
                if m not in s:
                    raise KeyError(f"mgpath/model.py: slide {i} has no bag at magnification {m!r} (it has "
                                   f"{sorted(s)}); extract features at {m} or change `magnifications`")
                bag = s[m]
                if not torch.isfinite(bag.features).all():
                    raise ValueError(f"mgpath/model.py: slide {i} has NaN/inf tile features at {m}; re-extract "
                                     "the features or drop the slide")
                r = self.visual(bag.features, bag.neighbours, return_attention=return_attention)
                if return_attention:
                    toks.append(r[0])
                    atts.append((m, i, r[1], r[2]))
                else:
                    toks.append(r)
            out[m] = torch.stack(toks)
        return (out, atts) if return_attention else out

    def forward(self, slides: list[dict[str, Bag]], return_details: bool = False):
        text = self.text()
        vis = self.visual_tokens(slides, return_attention=return_details)
        if return_details:
            vis, atts = vis
        sim, details = 0.0, {}
        for m in self.magnifications:
            s_m, plan, cost = ot_similarity(vis[m], text[m], config=self.ot, return_plan=True)
            sim = sim + s_m
            if return_details:
                details[m] = {"plan": plan.detach(), "cost": cost.detach()}
        logits = self.logit_scale.exp() * sim
        if return_details:
            for m, i, att_p, att_gr in atts:
                details[m].setdefault("attention", []).append(att_p.detach())
                details[m].setdefault("attention_region", []).append(att_gr.detach())
            return logits, details
        return logits


def build_mgpath(descriptions: str | dict, classes: list[str], feature_dim: int, embed_dim: int = 1024,
                 magnifications: tuple[str, ...] | list[str] = ("5x", "10x"), text_model: str = "ViT-B-32",
                 text_checkpoint: str | None = None, text_model_cfg: dict | None = None, quick_gelu: bool = False,
                 n_ctx: int = 16, n_sets: int = 4, placement: str = "insert", n_prompts: int = 64,
                 ratio_graph: float = 0.2, use_graph: bool = True, image_adaptor_hidden: int | None = None,
                 text_adaptor_hidden: int | None = None, ot: OTConfig | None = None,
                 logit_scale: float = math.log(1 / 0.02)) -> MGPATH:
    """Build an :class:`MGPATH` from a description file (or table), the class names and the feature dimension.

    ``descriptions`` is a path (see :func:`mgpath.text.load_descriptions`) or ``{mag: {class: [text]}}``.
    """
    mags = list(magnifications)
    if not mags:
        raise ValueError("mgpath/model.py: at least one magnification is needed")
    if len(classes) < 2:
        raise ValueError(f"mgpath/model.py: need at least 2 classes, got {classes}")
    if isinstance(descriptions, dict):
        table = {m: {c: ([d] if isinstance(d, str) else list(d)) for c, d in per.items()}
                 for m, per in descriptions.items()}
        missing = [(m, c) for m in mags for c in classes if c not in table.get(m, {})]
        if missing:
            raise KeyError(f"mgpath/model.py: no description for (magnification, class) {missing}")
        table = {m: {c: table[m][c] for c in classes} for m in mags}
    else:
        table = load_descriptions(descriptions, classes, mags)
    tower = build_text_tower(text_model, text_checkpoint, text_model_cfg, quick_gelu)
    prompts = PromptLearner(tower, table, n_ctx=n_ctx, n_sets=n_sets, placement=placement)
    text = TextEncoder(tower, prompts, embed_dim, text_adaptor_hidden)
    visual = GranularAttention(feature_dim, embed_dim, n_prompts, ratio_graph, image_adaptor_hidden, use_graph)
    return MGPATH(text, visual, ot, logit_scale)
