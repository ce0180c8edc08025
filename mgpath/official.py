"""Import checkpoints of the official MGPATH code (HauschildLab/MGPATH) into :class:`mgpath.model.MGPATH`.

Two official layouts are understood:

- a fine-tuned MGPATH ``state_dict`` (``s_{fold}_checkpoint.pt``): ``prompt_learner.{ctx,token_prefix,
  token_suffix}``, ``text_encoder.transformer.layers.*`` (HF CLIP text encoder naming),
  ``text_encoder.final_layer_norm.*``, ``text_encoder.proj.linear{1,2}.*`` (TextMLP), ``ImageMLP.linear{1,2}.*``,
  ``logit_scale``, ``norm.*``, ``learnable_image_center`` (M, 1, D), ``graph.{lin|lin_src/lin_dst}.weight``
  (both PyG namings), ``graph.att_src``, ``graph.att_dst`` (1, 1, D), ``graph.bias``;
- the PLIP-G alignment checkpoint (``ProjectorPLIP``, under ``model_state_dict``): ``ImageMLP.*``,
  ``TextMLP.*``, ``temperature`` and the whole HF ``CLIPModel`` under ``text_model.*`` (token and position
  embeddings included).

``compat=True`` builds the model with ``placement="official"`` (context vectors overwrite description tokens
1..n_ctx, no position embedding on them; the checkpoint's ``token_prefix``/``token_suffix`` buffers are used as
they are) and the official OT stopping rule (``ot backend "plot"``), so an official checkpoint gives the
official outputs. ``compat=False`` re-tokenises the descriptions with the correct insertion (needs the token
embeddings, i.e. the alignment checkpoint or a fine-tuned checkpoint plus ``--alignment``).

Descriptions are preprocessed as the official code does (:func:`official_descriptions`): the prompt CSV is
read as ``pandas.read_csv(path, header=None)`` (quoted fields, doubled quotes) and every ``_`` becomes a space
(``PromptLearner``: ``name.replace("_", " ")``) before tokenisation.

``mgpath import-official --checkpoint s_0_checkpoint.pt --descriptions prompts.csv --classes LUAD LUSC
--out mgpath_fold0.pt`` writes ``{"state_dict", "config"}`` and the preprocessed descriptions
(``mgpath_fold0.descriptions.json``, named by ``config``): load it with :func:`load_converted`, or use
``config`` as the model block and the file as ``model.init_checkpoint``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
import yaml

from mgpath.model import MGPATH, build_mgpath
from mgpath.ot import OTConfig
from mgpath.text import load_descriptions, load_state_dict_file
from vapt.backbones.hf_clip import hf_layers_to_open_clip
from vapt.cli.errors import report_error
from vapt.fileio.atomic import atomic_path, write_text_atomic

__all__ = ["convert_official", "hf_text_to_open_clip", "load_converted", "official_descriptions", "run"]


def official_descriptions(descriptions, classes: list[str],
                          magnifications: list[str] = ("5x", "10x")) -> dict[str, dict[str, list[str]]]:
    """``{mag: {class: [text]}}`` as the official code sees its prompts.

    ``descriptions``: the official prompt CSV (``2*C`` rows, all classes at the low magnification then at the
    high one), read as ``np.array(pd.read_csv(path, header=None)).squeeze()`` in the official ``main.py``; or
    a JSON file / table of this project. Every ``_`` becomes a space, as the official ``PromptLearner``.
    """
    mags = list(magnifications)
    if isinstance(descriptions, dict):
        table = descriptions
    elif Path(descriptions).suffix == ".json":
        table = load_descriptions(descriptions, list(classes), mags)
    else:
        try:
            frame = pd.read_csv(descriptions, header=None, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"mgpath/official.py: cannot read the prompt file {descriptions}: {err}") from err
        if frame.shape[1] != 1:
            raise ValueError(f"mgpath/official.py: {descriptions} has {frame.shape[1]} columns (an unquoted comma?);"
                             " the official code needs one prompt per line: quote lines that contain commas")
        rows = list(frame[0])
        if len(rows) != len(mags) * len(classes):
            raise ValueError(f"mgpath/official.py: {descriptions} has {len(rows)} prompts; expected {len(mags)} "
                             f"magnifications x {len(classes)} classes = {len(mags) * len(classes)}")
        table = {m: {c: [rows[i * len(classes) + j]] for j, c in enumerate(classes)} for i, m in enumerate(mags)}
    return {m: {c: [t.replace("_", " ") for t in ([ds] if isinstance(ds, str) else ds)]
                for c, ds in table[m].items()} for m in mags}

def hf_text_to_open_clip(layers: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """HF CLIP text-encoder layers (``{prefix}layers.i.self_attn.q_proj.weight`` ...) -> open_clip
    ``transformer.resblocks.i.*`` (q/k/v concatenated into ``in_proj``); see
    :func:`vapt.backbones.hf_clip.hf_layers_to_open_clip`."""
    return hf_layers_to_open_clip(layers, prefix)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def convert_official(checkpoint: dict, alignment: dict | None = None, heads: int | None = None) -> tuple[dict, dict]:
    """Official state dict(s) -> (state dict of :class:`MGPATH` with ``placement="official"``, model settings).

    Parameters
    ----------
    checkpoint : a fine-tuned MGPATH state dict, or the PLIP-G alignment state dict.
    alignment : optionally the alignment state dict too (gives the token/position embeddings).
    heads : attention heads of the text tower (default width // 64, as CLIP).

    Returns
    -------
    ``(state_dict, settings)``; settings has ``feature_dim``, ``embed_dim``, ``n_ctx``, ``n_sets``,
    ``n_prompts``, ``text_model_cfg``, ``quick_gelu`` and (fine-tuned only) ``rows`` = prompt rows.
    """
    sd = dict(checkpoint)
    finetuned = "prompt_learner.ctx" in sd
    aligned = alignment if alignment is not None else (None if finetuned else sd)
    if not finetuned and "ImageMLP.linear1.weight" not in sd:
        raise KeyError("mgpath/official.py: not an official MGPATH checkpoint (no prompt_learner.ctx or "
                       f"ImageMLP.linear1.weight among keys such as {list(sd)[:5]})")
    out: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        for t in ("weight", "bias"):
            out[f"visual.adaptor.linear{i}.{t}"] = sd[f"ImageMLP.linear{i}.{t}"]
            text_key = f"text_encoder.proj.linear{i}.{t}" if finetuned else f"TextMLP.linear{i}.{t}"
            out[f"text.adaptor.linear{i}.{t}"] = sd[text_key]
    if finetuned:
        tower = hf_text_to_open_clip(sd, "text_encoder.transformer.")
        tower.update({f"ln_final.{t}": sd[f"text_encoder.final_layer_norm.{t}"] for t in ("weight", "bias")})
        out["logit_scale"] = sd["logit_scale"].reshape(1)
        out["visual.norm.weight"], out["visual.norm.bias"] = sd["norm.weight"], sd["norm.bias"]
        center = sd["learnable_image_center"]
        out["visual.prompts"] = center.reshape(center.shape[0], -1)
        lin = sd.get("graph.lin.weight", sd.get("graph.lin_src.weight"))
        if lin is None:
            raise KeyError("mgpath/official.py: no graph.lin.weight / graph.lin_src.weight in the checkpoint")
        if "graph.lin_dst.weight" in sd and not torch.equal(sd["graph.lin_dst.weight"], lin):
            raise ValueError("mgpath/official.py: graph.lin_src and graph.lin_dst differ; GATConv shares them")
        out["visual.graph.lin.weight"] = lin
        out["visual.graph.att_src"] = sd["graph.att_src"].reshape(-1)
        out["visual.graph.att_dst"] = sd["graph.att_dst"].reshape(-1)
        out["visual.graph.bias"] = sd["graph.bias"]
        ctx = sd["prompt_learner.ctx"]
        n_sets, n_ctx, width = ctx.shape
        prefix, suffix = sd["prompt_learner.token_prefix"], sd["prompt_learner.token_suffix"]
        rows = prefix.shape[0] // n_sets
        out["text.prompts.ctx"] = ctx
        out["text.prompts.token_prefix"] = prefix.reshape(n_sets, rows, 1, width)
        out["text.prompts.token_suffix"] = suffix.reshape(n_sets, rows, suffix.shape[1], width)
        context_length = 1 + n_ctx + suffix.shape[1]
    else:
        tower = {}
        out["logit_scale"] = sd["temperature"].reshape(1)
        n_sets = n_ctx = rows = None
    if aligned is not None:
        hf = _strip(aligned, "text_model.text_model.")
        emb = {"token_embedding.weight": hf["embeddings.token_embedding.weight"],
               "positional_embedding": hf["embeddings.position_embedding.weight"]}
        if not tower:
            tower = hf_text_to_open_clip(hf, "encoder.")
            tower.update({f"ln_final.{t}": hf[f"final_layer_norm.{t}"] for t in ("weight", "bias")})
        tower.update(emb)
        context_length = emb["positional_embedding"].shape[0]
        if "temperature" in aligned and not finetuned:
            out["logit_scale"] = aligned["temperature"].reshape(1)
    out.update({f"text.tower.{k}": v for k, v in tower.items()})
    width = tower["ln_final.weight"].shape[0]
    n_layers = 1 + max(int(k.split(".")[2]) for k in tower if k.startswith("transformer.resblocks."))
    vocab = tower["token_embedding.weight"].shape[0] if "token_embedding.weight" in tower else 49408
    settings = {
        "feature_dim": int(out["visual.adaptor.linear1.weight"].shape[1]),
        "embed_dim": int(out["visual.adaptor.linear2.weight"].shape[0]),
        "image_adaptor_hidden": int(out["visual.adaptor.linear1.weight"].shape[0]),
        "text_adaptor_hidden": int(out["text.adaptor.linear1.weight"].shape[0]),
        "quick_gelu": True,
        "text_model_cfg": {"embed_dim": width, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                              "head_width": 16, "patch_size": 16},
                           "text_cfg": {"context_length": int(context_length), "vocab_size": int(vocab),
                                        "width": int(width), "heads": int(heads or max(1, width // 64)),
                                        "layers": int(n_layers)}},
    }
    if finetuned:
        settings.update(n_ctx=int(n_ctx), n_sets=int(n_sets), n_prompts=int(out["visual.prompts"].shape[0]),
                        rows=int(rows))
    return out, settings


def load_converted(state_dict: dict, settings: dict, descriptions, classes: list[str],
                   magnifications: list[str] = ("5x", "10x"), compat: bool = True) -> MGPATH:
    """Build an :class:`MGPATH` from :func:`convert_official` output.

    With ``compat`` the model uses the official context placement and OT stopping rule and takes the prompt
    buffers from the checkpoint; the descriptions are only tokenised to find the end-of-text positions (they
    must be the prompts the checkpoint was trained with, in the official order).
    """
    kw = {k: settings[k] for k in ("feature_dim", "embed_dim", "image_adaptor_hidden", "text_adaptor_hidden",
                                   "quick_gelu", "text_model_cfg")}
    for k in ("n_ctx", "n_sets", "n_prompts"):
        if k in settings:
            kw[k] = settings[k]
    ot = OTConfig(backend="plot") if compat else OTConfig()
    descriptions = official_descriptions(descriptions, list(classes), list(magnifications))
    model = build_mgpath(descriptions, list(classes), magnifications=list(magnifications), ot=ot,
                         placement="official" if compat else "insert", **kw)
    sd = dict(state_dict)
    if not compat:
        for k in ("text.prompts.token_prefix", "text.prompts.token_suffix"):
            sd.pop(k, None)
        if "text.tower.token_embedding.weight" not in sd:
            raise KeyError("mgpath/official.py: compat=False re-embeds the descriptions and needs the token "
                           "embeddings; pass the PLIP-G alignment checkpoint as well (--alignment)")
    elif "text.prompts.token_prefix" in sd:
        rows = model.text.prompts.token_prefix.shape[1]
        if sd["text.prompts.token_prefix"].shape[1] != rows:
            raise ValueError(f"mgpath/official.py: the checkpoint has {sd['text.prompts.token_prefix'].shape[1]} "
                             f"prompt rows but {len(magnifications)} magnifications x {len(classes)} classes = "
                             f"{rows}; check --classes and --descriptions")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed = ("text.tower.token_embedding", "text.tower.positional_embedding", "text.prompts.token_",
               "text.prompts.eot_index", *fresh_prefixes(sd))
    bad = [k for k in missing if not k.startswith(allowed)]
    if bad or unexpected:
        raise KeyError(f"mgpath/official.py: converted weights do not fit the model: missing {bad[:5]}, "
                       f"unexpected {unexpected[:5]}")
    if not compat or "text.prompts.token_prefix" not in sd:  # embed the descriptions with the loaded tower
        model.text.prompts.refresh(model.text.tower)
    return model


#: what the PLIP-G alignment checkpoint does not hold: the few-shot stage starts these from their fresh
#: initialisation (context vectors, visual prompt queries, graph-attention layer, LayerNorm) and embeds the
#: descriptions with the loaded token embeddings (prompt buffers: they depend on n_ctx / n_sets)
ALIGNMENT_FRESH = ("text.prompts.ctx", "visual.prompts", "visual.graph.", "visual.norm.", "text.prompts.token_",
                   "text.prompts.eot_index")


def fresh_prefixes(state_dict: dict) -> tuple[str, ...]:
    """State-dict prefixes left at their fresh initialisation: :data:`ALIGNMENT_FRESH` for a converted PLIP-G
    alignment checkpoint (no context vectors in it), nothing for a fine-tuned one."""
    return () if "text.prompts.ctx" in state_dict else ALIGNMENT_FRESH


def run(a: argparse.Namespace) -> int:
    """``mgpath import-official`` after parsing (`mgpath.commands.import_official`)."""
    try:
        ckpt = load_state_dict_file(a.ckpt_path)
        align = load_state_dict_file(a.alignment) if a.alignment else None
    except (FileNotFoundError, ValueError) as err:
        return report_error("mgpath import-official", err)
    sd, settings = convert_official(ckpt, align, a.heads)
    model = load_converted(sd, settings, a.descriptions, a.classes, a.magnifications, compat=not a.no_compat)
    config = {k: v for k, v in settings.items() if k != "rows"}
    out = Path(a.out)
    desc_path = out.with_name(out.stem + ".descriptions.json")
    table = official_descriptions(a.descriptions, a.classes, a.magnifications)
    write_text_atomic(desc_path, json.dumps({"classes": list(a.classes), "descriptions": table}, indent=1))
    config.update(descriptions=str(desc_path.resolve()), placement="official" if not a.no_compat else "insert",
                  ot={"backend": "plot" if not a.no_compat else "torch"}, text_model="custom")
    fresh = list(fresh_prefixes(sd))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(fresh))}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "config": config, "fresh": fresh}, tmp)
    block = {"model": {**config, "init_checkpoint": str(out.resolve())}}
    yaml_path = out.with_suffix(".yaml")
    write_text_atomic(yaml_path, "# model block written by `mgpath import-official`; use it after the task config:\n"
                      f"#   mgpath fit --config <task>.yaml --config {yaml_path.name}\n" + yaml.safe_dump(block))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"wrote {out}: {len(state)} tensors, {n} trainable parameters"
          + (f"; kept at their fresh initialisation (not in a PLIP-G alignment file): {', '.join(fresh)}"
             if fresh else ""))
    print(f"wrote {desc_path}: the descriptions as the official code tokenises them ('_' -> ' ')")
    print(f"wrote {yaml_path}: the model block (mgpath fit --config <task>.yaml --config {yaml_path})")
    print("model settings:", json.dumps(config))
    return 0
