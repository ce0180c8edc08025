"""A tiny random HF ``CLIPModel`` folder in PLIP's publisher layout (``config.json``, weights, CLIP BPE tokenizer
files), for the methods of ``mgpath demo`` that run a CLIP model's own towers (MSCPT). Random weights: it
exercises the pipeline, its numbers say nothing about the method."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = ["write_clip_tokenizer", "write_demo_clip"]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-character table (the BPE's base alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: str | Path) -> None:
    """CLIP's BPE (the merges open_clip ships) as HF ``vocab.json``, ``merges.txt`` and ``tokenizer.json``."""
    import open_clip
    from transformers import CLIPTokenizerFast

    folder = Path(folder)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        merges = [tuple(m.split()) for m in f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = [*vocab, *(v + "</w>" for v in vocab), *("".join(m) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def write_demo_clip(folder: str | Path, seed: int = 0, width: int = 32, image_size: int = 224,
                    patch_size: int = 32, projection_dim: int = 64) -> Path:
    """Write (or keep, when ``config.json`` is there) a 2-layer random CLIPModel folder; returns ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    layers = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = CLIPConfig(text_config=layers, vision_config={**layers, "image_size": image_size, "patch_size": patch_size},
                     projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder
