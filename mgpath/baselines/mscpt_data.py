"""The inputs of MSCPT (:mod:`mgpath.baselines.mscpt`): its description and tile-selection prompt files, the
zero-shot choice of the low-magnification tiles (the official ``select_5X_pic.py``) and the cache of their
images.

- Descriptions: the official layout (``train_data/description/GPT_4/<dataset>.json``:
  ``{class: {"small_mag": [...], "big_mag": [...]}}``; ``small_mag`` describes the low magnification) or this
  project's (``{"descriptions": {"5x": {class: [...]}, "20x": {class: [...]}}}``, the data's two magnifications).
- Selection prompts: the official layout (``train_data/patch_selection/<DS>_select_pic.json``: ``{"0":
  {"classnames": {class: name}, "templates": ["... CLASSNAME ..."]}, "1": ...}``) or one set ``{"classnames":
  {class: name | [names]}, "templates": [...]}`` (``data/prompts/zeroshot_*.json``). Per set, each class's
  prompt embeddings (64 tokens, ``get_text_features``) are L2-normalised, averaged and normalised; the sets are
  averaged and normalised again.
- Selection: the low-magnification tile features (pre-projection, projected here; or already projected) are
  L2-normalised; per class the ``n_tiles`` most similar tiles are kept, class after class in descending
  similarity (a tile chosen by two classes appears twice, as in the official code).
- Cache: ``TILES_DIR/<slide_id>/`` holds the chosen tiles read from the slide named in the features file
  (level-0 footprint resized to the CLIP input size) as PNGs and ``selection.json`` (what decided them:
  features identity, CLIP weights checksum, prompt file checksum, ``n_tiles``, size). A folder whose
  ``selection.json`` differs is rewritten; a folder without one (not written here) is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "cache_tile_images", "load_tile_images", "read_mscpt_descriptions",
           "read_selection_prompts", "select_tiles", "selection_classifier"]

#: the official tile normalisation (``data/my_data.py``: ImageNet mean / std)
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_MARK = "mgpath mscpt tile selection"


def _read_json(path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"mgpath/baselines: cannot read the MSCPT {what} file {path}: {e}") from None


def read_mscpt_descriptions(path, classes: list[str], magnifications: list[str]
                            ) -> tuple[list[list[str]], list[list[str]]]:
    """(low-magnification descriptions per class, high-magnification ones) in ``classes`` order."""
    raw = _read_json(path, "description")
    if isinstance(raw, dict) and "descriptions" in raw:
        from mgpath.text import load_descriptions

        table = load_descriptions(path, classes, magnifications)
        return [table[magnifications[0]][c] for c in classes], [table[magnifications[1]][c] for c in classes]
    bad = [c for c in classes if not (isinstance(raw, dict) and isinstance(raw.get(c), dict)
                                      and raw[c].get("small_mag") and raw[c].get("big_mag"))]
    if bad:
        raise ValueError(f"mgpath/baselines: {path} has no MSCPT descriptions for class(es) {bad}; expected "
                         "{class: {\"small_mag\": [...], \"big_mag\": [...]}} (the official layout) or "
                         "{\"descriptions\": {\"5x\": {class: [...]}, \"20x\": {class: [...]}}}")
    return [list(raw[c]["small_mag"]) for c in classes], [list(raw[c]["big_mag"]) for c in classes]


def read_selection_prompts(path, classes: list[str]) -> list[tuple[list[list[str]], list[str]]]:
    """Prompt sets ``[(names per class, templates), ...]`` for the zero-shot tile selection."""
    raw = _read_json(path, "tile-selection prompt")
    sets = [raw] if isinstance(raw, dict) and "classnames" in raw else list((raw or {}).values())
    out = []
    for s in sets:
        names, templates = (s or {}).get("classnames"), (s or {}).get("templates")
        missing = [c for c in classes if not isinstance(names, dict) or c not in names]
        if missing or not templates or any("CLASSNAME" not in t for t in templates):
            raise ValueError(f"mgpath/baselines: {path}: each prompt set needs classnames for {classes} (missing "
                             f"{missing}) and templates containing CLASSNAME (the official "
                             "patch_selection/<DS>_select_pic.json layout)")
        out.append(([[names[c]] if isinstance(names[c], str) else list(names[c]) for c in classes],
                     [str(t) for t in templates]))
    if not out:
        raise ValueError(f"mgpath/baselines: {path} holds no prompt set")
    return out


def _text_features(clip, tokenizer, texts: list[str]) -> torch.Tensor:
    from mgpath.baselines.mscpt import CONTEXT_LENGTH

    tok = tokenizer(texts, max_length=CONTEXT_LENGTH, truncation=True, padding="max_length", return_tensors="pt")
    pooled = clip.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    return clip.text_projection(pooled)


@torch.no_grad()
def selection_classifier(clip, tokenizer, sets: list[tuple[list[list[str]], list[str]]]) -> torch.Tensor:
    """(C, D) L2-normalised class embeddings of the prompt sets (``select_5X_pic.py``)."""
    per_set = []
    for names, templates in sets:
        rows = [F.normalize(_text_features(clip, tokenizer, [t.replace("CLASSNAME", n) for n in ns
                                                              for t in templates]), dim=-1).mean(0)
                for ns in names]
        per_set.append(F.normalize(torch.stack(rows), dim=-1))
    return F.normalize(torch.stack(per_set).mean(0), dim=-1)


@torch.no_grad()
def select_tiles(features: torch.Tensor, clip, classifier: torch.Tensor, n_tiles: int = 30) -> torch.Tensor:
    """Indices (C * min(n_tiles, N),) of the chosen tiles: per class, descending similarity.

    ``features`` (N, W) before ``visual_projection`` (projected here) or (N, D) after it."""
    width, dim = clip.visual_projection.weight.shape[1], clip.visual_projection.weight.shape[0]
    if features.shape[1] == width:
        features = clip.visual_projection(features)
    elif features.shape[1] != dim:
        raise ValueError(f"mgpath/baselines: MSCPT tile selection needs {width}-d (pre-projection) or {dim}-d "
                         f"(projected) CLIP image features, got {features.shape[1]}-d")
    sim = classifier @ F.normalize(features.float(), dim=-1).T  # (C, N)
    return sim.topk(min(int(n_tiles), sim.shape[1]), dim=1).indices.flatten()


def _slide_tiles(features_path, indices: list[int], size: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    from mgpath.io import read_features_header
    from mgpath.slides.reader import Slide

    attrs, _, coords = read_features_header(features_path)
    slide, footprint = attrs.get("slide_path"), attrs.get("patch_size_level0")
    if not slide or footprint is None or coords is None or not Path(slide).is_file():
        raise FileNotFoundError(f"mgpath/baselines: MSCPT reads its low-magnification tile images from the slide "
                                f"named in {features_path} (attribute slide_path {slide!r}, with coords and "
                                "patch_size_level0); make the features with `mgpath extract` and keep the slides "
                                "where they were")
    with Slide(slide) as s:
        return [(s.read_footprint(tuple(coords[i]), float(footprint), size), tuple(int(v) for v in coords[i]))
                for i in indices]


def cache_tile_images(folder, features_path, indices: list[int], size: int, identity: dict) -> Path:
    """Write the chosen tiles of one slide as ``folder/<k>_<x>_<y>.png`` + ``selection.json`` (atomically:
    a sibling temporary folder renamed into place); reused when its ``selection.json`` matches."""
    from PIL import Image

    folder = Path(folder)
    identity = {"written_by": _MARK, **identity, "indices": [int(i) for i in indices], "size": int(size)}
    record = folder / "selection.json"
    if folder.exists():
        old = json.loads(record.read_text()) if record.is_file() else None
        if not old or old.get("written_by") != _MARK:
            raise FileExistsError(f"mgpath/baselines: {folder} exists but was not written by the MSCPT tile "
                                  "selection (no selection.json); give another tiles_dir or remove it")
        if {k: v for k, v in old.items() if k != "files"} == identity:
            return folder
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for k, (rgb, (x, y)) in enumerate(_slide_tiles(features_path, list(indices), size)):
        files.append(f"{k}_{x}_{y}.png")
        Image.fromarray(rgb).save(tmp / files[-1])
    (tmp / "selection.json").write_text(json.dumps({**identity, "files": files}, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_tile_images(folder) -> torch.Tensor:
    """The cached tiles of one slide, in selection order, as the official transform makes them:
    (N, 3, S, S) float, ``ToTensor`` then ImageNet mean / std."""
    from PIL import Image

    record = Path(folder) / "selection.json"
    if not record.is_file():
        raise FileNotFoundError(f"mgpath/baselines: no MSCPT tile images in {folder} (selection.json missing); "
                                "they are written when fit / test starts")
    files = json.loads(record.read_text())["files"]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(Path(folder) / f).convert("RGB"), dtype=np.float32))
                     for f in files]).permute(0, 3, 1, 2) / 255.0
    mean, std = torch.tensor(IMAGE_MEAN)[:, None, None], torch.tensor(IMAGE_STD)[:, None, None]
    return (x - mean) / std
