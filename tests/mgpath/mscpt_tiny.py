"""A tiny HF CLIPModel folder in PLIP's publisher layout (config.json, model.safetensors, CLIP BPE tokenizer
files) and an MSCPT description file, for the MSCPT tests (and for the comparison with the official code)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mgpath.demo_clip import write_clip_tokenizer

CLASSES = ["LUAD", "LUSC"]
DESCRIPTIONS = {
    "LUAD": {"small_mag": ["Glandular structures are present.", "The tumor shows lepidic growth.",
                           "Mucin pools may be seen in the stroma."],
             "big_mag": ["Cells have large irregular nuclei.", "Nucleoli are prominent.",
                         "Cytoplasm is vacuolated.", "Cells line alveolar walls."]},
    "LUSC": {"small_mag": ["Sheets of polygonal cells are seen.", "Keratin pearls are present.",
                           "Necrosis is common in the center."],
             "big_mag": ["Intercellular bridges are visible.", "Cells have abundant eosinophilic cytoplasm.",
                         "Individual cells are keratinised.", "Nuclei are hyperchromatic."]},
}


def tiny_clip(seed: int = 0):
    """A 2-layer, width-32 CLIPModel (images 32 px, patch 8, projection 512 as PLIP's) with seeded weights."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 2},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=512)
    model = CLIPModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            if p.is_floating_point():
                norm = p.ndim == 1 and "norm" in name and name.endswith("weight")
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if norm else 0.0))
        model.logit_scale.fill_(2.0)
    return model.eval()


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """The tiny CLIP (weights from ``seed``) saved as an HF folder with its tokenizer; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clip(seed).save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder


def write_descriptions(path: Path) -> Path:
    """The official description layout: ``{class: {"small_mag": [...], "big_mag": [...]}}``."""
    path.write_text(json.dumps(DESCRIPTIONS, indent=1))
    return path


def trainable_values(named: list[tuple[str, torch.Tensor]], seed: int = 1) -> dict[str, torch.Tensor]:
    """Seeded values for the trainable tensors, by their order in ``named`` (official names)."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) * 0.05 for n, p in named}


def inputs(seed: int = 2, n_images: int = 6, n_features: int = 120, width: int = 32, size: int = 32):
    """Tile images (N_l, 3, S, S) and pre-projection features (N_h, W) of one slide."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_images, 3, size, size, generator=g), torch.randn(n_features, width, generator=g)


#: official parameter name -> ours (``mgpath.baselines.mscpt.MSCPT``)
OFFICIAL_NAMES = {"prompt_learner.p_ins_projector.": "p_ins_projector.", "prompt_learner.p_uni.": "p_uni.",
                  "prompt_learner.p_input": "p_input", "vision_prompt_learner.p_visual.": "p_visual.",
                  "vision_prompt_learner.p_input": "p_visual_input", "gcn_prompt_learner_big.": "gcn_low.",
                  "gcn_prompt_learner_small.": "gcn_high."}


def our_name(official: str) -> str:
    for a, b in OFFICIAL_NAMES.items():
        if official.startswith(a):
            return b + official[len(a):]
    raise KeyError(official)
