"""Zero-shot slide classification with a pathology vision-language model's own towers (CONCH, QuiltNet, PLIP).

The publishers' protocol (CONCH ``conch/downstream/zeroshot_path.py``, mahmoodlab/CONCH 141cc09, the MI-Zero
recipe): the class classifier is the ensemble of prompt embeddings, each prompt a template with ``CLASSNAME``
filled by one of the class's names; every prompt's projected text embedding is L2-normalised, the mean is taken
over all names and templates of the class and normalised again (``zero_shot_classifier``). Each tile's
projected image feature is L2-normalised; its cosine with each class is pooled over the slide by the mean of
the top ``topj`` tiles per class (``topj_pooling``); class probabilities are ``softmax(exp(logit_scale) *
pooled)`` (``run_mizero``).

The tile features are the image tower's projected embeddings, as ``mgpath extract`` writes them with the
matching preset: ``conch_v1`` (default output = ``encode_image(proj_contrast=True, normalize=False)``),
``quiltnet`` (open_clip ``encode_image``) and ``plip`` (``get_image_features``), all 512-d. The text side is
the same model's text tower and projection (:func:`mgpath.text.build_text_tower`).

Prompt files (``data/prompts/zeroshot_*.json``): ``{"source": ..., "classnames": {class: [name, ...]},
"templates": ["... CLASSNAME ..."]}``; CONCH's own layout (``{"0": {"classnames": ..., "templates": ...}}``)
is read as is.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TowerZeroShot", "encode_prompts", "project_text", "read_zeroshot_prompts", "topj_pool",
           "tower_logit_scale", "zeroshot_classifier"]


def read_zeroshot_prompts(path: str | os.PathLike, classes: list[str]) -> tuple[list[list[str]], list[str]]:
    """(class names per class in ``classes`` order, templates) of a zero-shot prompt file; refuses a file
    without a class of ``classes``, with no templates or with a template lacking ``CLASSNAME``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"mgpath/baselines: cannot read the zero-shot prompt file {path}: {e}") from None
    if isinstance(raw, dict) and "classnames" not in raw and "0" in raw:
        raw = raw["0"]  # CONCH's prompts/*_prompts_all_per_class.json
    if not isinstance(raw, dict) or not isinstance(raw.get("classnames"), dict) or not raw.get("templates"):
        raise ValueError(f"mgpath/baselines: {path}: a zero-shot prompt file is {{\"classnames\": {{class: [name, "
                         "...]}, \"templates\": [\"... CLASSNAME ...\"]}")
    names, templates = raw["classnames"], [str(t) for t in raw["templates"]]
    missing = [c for c in classes if c not in names]
    bad = [t for t in templates if "CLASSNAME" not in t]
    if missing or bad:
        raise ValueError(f"mgpath/baselines: {path}: " + (f"no class names for class(es) {missing} (it has "
                         f"{list(names)})" if missing else f"template {bad[0]!r} has no CLASSNAME"))
    per_class = [[names[c]] if isinstance(names[c], str) else [str(n) for n in names[c]] for c in classes]
    return per_class, templates


def project_text(tower: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The tower's text projection of its pooled output: (P, W) -> (P, D)."""
    proj = getattr(tower, "proj", None)
    if isinstance(proj, nn.Module):
        return proj(pooled)  # BiomedCLIP's MLP
    proj = getattr(tower, "text_projection", None)
    if proj is None:
        raise ValueError(f"mgpath/baselines: the text tower {type(tower).__name__} has no text projection")
    return proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj


def encode_prompts(tower: nn.Module, texts: list[str]) -> torch.Tensor:
    """Projected text embeddings (P, D) of P strings (the publisher's ``encode_text``, not normalised)."""
    tokens = tower.tokenize(texts).to(tower.token_embedding.weight.device)
    eot = (tokens == tower.eot_token_id).int().argmax(-1)
    x = tower.token_embedding(tokens) + tower.positional_embedding
    return project_text(tower, tower(x, eot))


@torch.no_grad()
def zeroshot_classifier(tower: nn.Module, classnames: list[list[str]], templates: list[str]) -> torch.Tensor:
    """Ensembled class embeddings (C, D), L2-normalised: mean over a class's names x templates of the
    normalised prompt embeddings, normalised again (CONCH's ``zero_shot_classifier``, transposed)."""
    rows = []
    for names in classnames:
        texts = [t.replace("CLASSNAME", n) for n in names for t in templates]
        rows.append(F.normalize(F.normalize(encode_prompts(tower, texts), dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def topj_pool(similarity: torch.Tensor, topj: int) -> torch.Tensor:
    """Mean of the ``topj`` largest tile similarities per class: (N, C) -> (C,) (all N when N < topj)."""
    return similarity.topk(min(int(topj), similarity.shape[0]), dim=0).values.mean(0)


def tower_logit_scale(checkpoint: str | None) -> float:
    """The model's log temperature (``logit_scale`` in CONCH / open_clip / HF CLIP files), else CLIP's initial
    log(1 / 0.07)."""
    if checkpoint:
        from vapt.backbones import files

        sd = files.read_state_dict(files.resolve(checkpoint).file)
        for key in ("logit_scale", "text_model.logit_scale"):
            if key in sd:
                return float(sd[key])
    return math.log(1 / 0.07)


class TowerZeroShot(nn.Module):
    """Zero-shot slide classifier of one vision-language model.

    Parameters
    ----------
    tower : the model's text tower (:func:`mgpath.text.build_text_tower`), with its projection.
    classnames, templates : from :func:`read_zeroshot_prompts`.
    logit_scale : log temperature (:func:`tower_logit_scale`).
    topj : tiles pooled per class.

    Forward: projected tile features (N, D) -> logits (C,) = ``exp(logit_scale) * topj_pool(cos)``.
    """

    def __init__(self, tower: nn.Module, classnames: list[list[str]], templates: list[str],
                 logit_scale: float, topj: int = 50):
        super().__init__()
        if int(topj) < 1:
            raise ValueError(f"mgpath/baselines: topj must be >= 1, got {topj}")
        self.register_buffer("classifier", zeroshot_classifier(tower, classnames, templates))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.topj = int(topj)

    @property
    def embed_dim(self) -> int:
        return int(self.classifier.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != self.embed_dim:
            raise ValueError(f"mgpath/baselines: zero-shot needs projected tile features (N>0, {self.embed_dim}), "
                             f"got {tuple(features.shape)}")
        sim = F.normalize(features.float(), dim=-1) @ self.classifier.T
        return self.logit_scale.exp() * topj_pool(sim, self.topj)
