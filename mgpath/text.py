"""Text side of MGPATH: a frozen open_clip text tower, learnable prompt contexts, a trainable text adaptor.

The class prompts are descriptions per (magnification, class) read from a file in ``data/prompts/`` (see
:func:`load_descriptions`). ``n_sets`` sets of ``n_ctx`` learnable context vectors are put in front of each
description (CoOp/PLOT style, shared over classes and magnifications) and the whole sequence gets the tower's
position embeddings; the output is pooled at the end-of-text token, passed through the trainable adaptor and
L2-normalised.

``placement`` chooses where the context goes:

- ``"insert"`` (default, correct): the description is tokenised after ``n_ctx`` placeholder tokens, which the
  context vectors replace; position embeddings are added to the whole sequence (context included).
- ``"official"``: the released MGPATH code: the context vectors *overwrite* description tokens ``1..n_ctx``
  and get no position embedding (prefix/suffix are token+position embeddings). Only for official checkpoints.
- ``"none"``: no context (zero-shot): the tokenised description as is.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mgpath import towers
from mgpath.towers import TextTower
from vapt.fileio.resources import resolve_data_path
from vapt.quiet import drop_log_records

__all__ = [
    "TINY_TEXT_CFG",
    "MLPAdaptor",
    "PromptLearner",
    "TextTower",
    "build_text_tower",
    "load_descriptions",
    "load_state_dict_file",
]

#: a small open_clip CLIP configuration (random init) for tests and the demo; same tokenizer as CLIP.
TINY_TEXT_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def load_descriptions(path: str | os.PathLike, classes: list[str] | None = None,
                      magnifications: list[str] | None = None) -> dict[str, dict[str, list[str]]]:
    """Read class descriptions per magnification.

    Two formats:

    - JSON (this project): ``{"classes": [...], "descriptions": {"5x": {"LUAD": "text" | ["text", ...], ...},
      "10x": {...}}}``.
    - the official MGPATH CSV/TXT: one description per line, ``2*C`` lines; lines ``0..C-1`` are the low
      magnification (first of ``magnifications``) for classes in order, lines ``C..2C-1`` the high one. Needs
      ``classes``.

    Returns
    -------
    ``{mag: {class: [description, ...]}}`` restricted to ``classes`` and ``magnifications`` when given.
    """
    path = resolve_data_path(path)  # data/prompts/<name>.json of the shipped configs works from any folder
    if not path.is_file():
        raise FileNotFoundError(f"mgpath/text.py: description file {path} does not exist; see data/prompts/ for "
                                "examples")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
        if "descriptions" not in raw:
            raise ValueError(f"mgpath/text.py: {path} has no 'descriptions' key; expected "
                             "{'classes': [...], 'descriptions': {'5x': {class: text}}}")
        table = {str(m): {str(c): ([d] if isinstance(d, str) else list(d)) for c, d in per.items()}
                 for m, per in raw["descriptions"].items()}
    else:
        lines = [ln.strip().strip('"') for ln in path.read_text().splitlines() if ln.strip()]
        if classes is None:
            raise ValueError(f"mgpath/text.py: {path} is an official line-per-prompt file; pass the class names")
        mags = list(magnifications or ["5x", "10x"])
        if len(lines) != len(mags) * len(classes):
            raise ValueError(f"mgpath/text.py: {path} has {len(lines)} lines; expected {len(mags)} magnifications "
                             f"x {len(classes)} classes = {len(mags) * len(classes)} (official layout: all classes "
                             "at the low magnification, then all at the high one)")
        table = {m: {c: [lines[i * len(classes) + j]] for j, c in enumerate(classes)} for i, m in enumerate(mags)}
    if magnifications is not None:
        missing = [m for m in magnifications if m not in table]
        if missing:
            raise KeyError(f"mgpath/text.py: magnification(s) {missing} missing from {path} (it has "
                           f"{sorted(table)}); add descriptions for them or change `magnifications`")
        table = {m: table[m] for m in magnifications}
    if classes is not None:
        for m, per in table.items():
            missing = [c for c in classes if c not in per]
            if missing:
                raise KeyError(f"mgpath/text.py: class label(s) {missing} have no description at {m} in {path} "
                               f"(it describes {sorted(per)}); add them or fix the labels")
            table[m] = {c: per[c] for c in classes}
    for m, per in table.items():
        for c, ds in per.items():
            if not ds or any(not d.strip() for d in ds):
                raise ValueError(f"mgpath/text.py: empty description for class {c} at {m} in {path}")
    return table


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat state dict (``state_dict``/``model`` keys and ``module.`` prefixes
    are unwrapped; ``.safetensors`` supported). Read with :func:`vapt.fileio.weights.load_weights_file`: a file that
    needs full unpickling is refused (see :mod:`vapt.fileio.weights`)."""
    from vapt.fileio.weights import load_weights_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mgpath/text.py: checkpoint {path} does not exist")
    sd = load_weights_file(path)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise TypeError(f"mgpath/text.py: {path} does not contain a state dict")
    return OrderedDict((k.removeprefix("module."), v) for k, v in sd.items())


def build_text_tower(model_name: str = "ViT-B-32", checkpoint: str | None = None,
                     model_cfg: dict | None = None, quick_gelu: bool = False, *, tokenizer: str | None = None) -> nn.Module:
    """Build a frozen text tower by name from local files, without download.

    Parameters
    ----------
    model_name : ``"plip"`` (HF CLIPModel folder), ``"biomedclip"`` (open_clip hub folder), ``"conch_v1"``
        (CONCH's ``pytorch_model.bin`` + tokenizer file), ``"quiltnet"`` (open_clip file or folder), an open_clip
        model name (``open_clip.list_models()``),
        ``"mgpath-tiny"`` (the small random :data:`TINY_TEXT_CFG`), or ``local-dir:/path`` (open_clip's offline
        folder format). See :mod:`mgpath.towers`.
    checkpoint : local file or folder with the weights (``state_dict`` key / ``module.`` prefix allowed).
    model_cfg : an explicit open_clip CLIP config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); for
        ``conch_v1`` overrides of its text config (tests use a narrow one).
    quick_gelu : use QuickGELU (OpenAI weights).
    tokenizer : ``conch_v1`` only: CONCH's tokenizer JSON (default: beside the checkpoint, or the conch package's).
    """
    import open_clip

    if model_name == "plip":
        return towers.plip_tower(checkpoint)
    if model_name == "biomedclip":
        return towers.biomedclip_tower(checkpoint)
    if model_name == "conch_v1":
        return towers.conch_tower(checkpoint, tokenizer, model_cfg)
    if model_name == "quiltnet":
        model_name, folder_cfg, checkpoint = towers.quiltnet_tower(checkpoint)
        model_cfg = model_cfg or folder_cfg

    if model_cfg is None and model_name == "mgpath-tiny":
        model_cfg = TINY_TEXT_CFG
    if model_cfg is not None:
        cfg = dict(model_cfg)
        quick_gelu = cfg.pop("quick_gelu", quick_gelu)
        model = open_clip.CLIP(**cfg, quick_gelu=quick_gelu)
        tok = open_clip.get_tokenizer("ViT-B-32")
    else:
        with drop_log_records("No pretrained weights loaded", enabled=bool(checkpoint)):  # the file follows
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        tok = open_clip.get_tokenizer(model_name)
    if checkpoint:
        sd = load_state_dict_file(checkpoint)
        text_keys = [k for k in model.state_dict() if not k.startswith("visual.") and k not in
                     ("logit_scale", "logit_bias", "attn_mask")]
        missing = [k for k in text_keys if k not in sd]
        if missing:
            raise KeyError(f"mgpath/text.py: checkpoint {checkpoint} lacks text-tower keys such as {missing[:3]} for "
                           f"open_clip model {model_name!r}; is it an open_clip checkpoint of that architecture?")
        model.load_state_dict({k: sd[k] for k in text_keys}, strict=False)
    model.visual = None  # only the text side is kept
    return TextTower(model, tok)


class MLPAdaptor(nn.Module):
    """``Linear -> GELU -> Linear`` (the official ``ImageMLP``/``TextMLP``); (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.linear1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.linear2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.act(self.linear1(x)))


class PromptLearner(nn.Module):
    """Learnable prompt contexts in front of per-(magnification, class) descriptions.

    Parameters
    ----------
    tower : the frozen :class:`TextTower`.
    descriptions : ``{mag: {class: [text, ...]}}`` (from :func:`load_descriptions`); prompt set ``s`` uses
        description ``s % len(texts)`` of a class.
    n_ctx, n_sets : context length and number of prompt sets (defaults 16 and 4).
    placement : ``"insert"``, ``"official"`` or ``"none"`` (see the module docstring).

    Forward: nothing -> prompt embeddings (S, P, L, W) and end-of-text indices (S, P), with ``P = G*C`` rows
    ordered magnification-major.
    """

    def __init__(self, tower: TextTower, descriptions: dict[str, dict[str, list[str]]], n_ctx: int = 16,
                 n_sets: int = 4, placement: str = "insert", ctx_init_std: float = 0.02):
        super().__init__()
        if placement not in ("insert", "official", "none"):
            raise ValueError(f"mgpath/text.py: placement must be 'insert', 'official' or 'none', got {placement!r}")
        self.placement = placement
        self.magnifications = list(descriptions)
        self.classes = list(next(iter(descriptions.values())))
        self.n_ctx = 0 if placement == "none" else int(n_ctx)
        self.n_sets = int(n_sets)
        W, L = tower.width, tower.context_length
        if self.n_ctx + 2 > L:
            raise ValueError(f"mgpath/text.py: n_ctx={n_ctx} does not fit the tower's context length {L}")
        texts = [[descriptions[m][c][s % len(descriptions[m][c])] for m in self.magnifications for c in self.classes]
                 for s in range(self.n_sets)]
        self.texts = [t for row in texts for t in row]
        self._embed(tower)
        if self.n_ctx:
            self.ctx = nn.Parameter(torch.randn(self.n_sets, self.n_ctx, W) * ctx_init_std)
        else:
            self.register_parameter("ctx", None)

    @torch.no_grad()
    def _embed(self, tower: TextTower) -> None:
        """(Re)build the prompt buffers from the descriptions with the tower's token embeddings."""
        W, L = tower.width, tower.context_length
        flat = self.texts
        if self.placement == "insert":
            flat = [" ".join(["X"] * self.n_ctx) + " " + t for t in flat]
        tokens = tower.tokenize(flat)  # (S*P, L)
        eot = tower.eot_token_id
        if self.placement == "insert" and self.n_ctx:
            probe = tower.tokenize([" ".join(["X"] * self.n_ctx)])[0]
            if int((probe == eot).int().argmax()) != self.n_ctx + 1:
                raise ValueError("mgpath/text.py: the tower's tokenizer does not encode the context placeholder 'X' "
                                 "as one token each; this tower cannot use placement='insert'")
        eot_index = (tokens == eot).int().argmax(-1)
        if not (tokens[torch.arange(len(tokens)), eot_index] == eot).all():
            raise ValueError("mgpath/text.py: tokenizer output has no end-of-text token")
        emb = tower.token_embedding(tokens)
        if self.placement == "official":  # token + position embeddings, the context overwrites tokens 1..n_ctx
            emb = emb + tower.positional_embedding
        P = len(self.magnifications) * len(self.classes)
        emb = emb.reshape(self.n_sets, P, L, W)
        for name, value in (("token_prefix", emb[:, :, :1].clone()), ("token_suffix", emb[:, :, 1 + self.n_ctx:].clone()),
                            ("eot_index", eot_index.reshape(self.n_sets, P).clone())):
            if hasattr(self, name) and name in self._buffers:
                self._buffers[name] = value.to(self._buffers[name].device)
            else:
                self.register_buffer(name, value)
        if "positional_embedding" in self._buffers:
            self._buffers["positional_embedding"] = tower.positional_embedding.detach().clone()
        else:
            self.register_buffer("positional_embedding", tower.positional_embedding.detach().clone(), persistent=False)

    def refresh(self, tower: TextTower) -> None:
        """Re-embed the descriptions after the tower's token/position embeddings were replaced."""
        self._embed(tower)

    @torch.no_grad()
    def sync_positions(self, tower: TextTower) -> None:
        """Copy the tower's position embeddings into the (non-persistent) buffer used by ``forward``."""
        self._buffers["positional_embedding"] = tower.positional_embedding.detach().clone().to(
            self.positional_embedding.device)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        S, P = self.token_prefix.shape[:2]
        parts = [self.token_prefix]
        if self.ctx is not None:
            parts.append(self.ctx[:, None].expand(S, P, -1, -1))
        parts.append(self.token_suffix)
        x = torch.cat(parts, dim=2)
        if self.placement != "official":
            x = x + self.positional_embedding
        return x, self.eot_index


def _sync_prompt_positions(encoder: TextEncoder, incompatible_keys) -> None:
    encoder.prompts.sync_positions(encoder.tower)


class TextEncoder(nn.Module):
    """Prompt learner + frozen tower + trainable adaptor -> class features per magnification.

    Forward: nothing -> dict ``{mag: (S, C, D)}`` L2-normalised text features.
    """

    def __init__(self, tower: TextTower, prompts: PromptLearner, embed_dim: int, adaptor_hidden: int | None = None):
        super().__init__()
        self.tower = tower
        self.prompts = prompts
        self.adaptor = MLPAdaptor(tower.width, embed_dim, adaptor_hidden)
        # the prompts' position-embedding buffer is not in the state dict: follow the tower's after a load
        self.register_load_state_dict_post_hook(_sync_prompt_positions)

    def forward(self) -> dict[str, torch.Tensor]:
        x, eot = self.prompts()
        S, P, L, W = x.shape
        h = self.tower(x.reshape(S * P, L, W), eot.reshape(-1))
        f = F.normalize(self.adaptor(h), dim=-1).reshape(S, P, -1)
        C = len(self.prompts.classes)
        return {m: f[:, i * C:(i + 1) * C] for i, m in enumerate(self.prompts.magnifications)}
