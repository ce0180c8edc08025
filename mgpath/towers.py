"""Named text towers of the pathology vision-language models, from local files: PLIP, CONCH v1, QuiltNet.

Each builder returns a frozen tower with the interface :class:`mgpath.text.PromptLearner` uses
(``token_embedding``, ``positional_embedding`` (L, W), ``context_length``, ``width``, ``tokenize``,
``eot_token_id``, ``forward(embeddings (P, L, W) with positions, eot_index (P,)) -> (P, W)``):

- ``plip``: an HF ``CLIPModel`` folder (``vinid/plip``), rebuilt as open_clip's CLIP text tower (keys remapped
  by :func:`vapt.backbones.hf_clip.hf_clip_to_open_clip`); CLIP BPE tokenizer, pooled at end-of-text;
- ``quiltnet``: an open_clip file or folder (``open_clip_config.json`` decides the architecture);
- ``biomedclip``: BiomedCLIP's HF BERT text tower (the open_clip hub folder: ``open_clip_config.json``,
  ``open_clip_pytorch_model.bin``, ``tokenizer.json``); pooled at ``[CLS]`` (position 0), so the learnable context
  goes right after it; the BERT configuration is the folder's ``config.json`` or read off the weights;
- ``conch_v1``: CONCH's CoCa text encoder (open_clip ``TextTransformer`` with an appended CLS embedding, pad
  id 0) from CONCH's ``pytorch_model.bin`` and CONCH's byte-level BPE tokenizer file; the CLS attends to the
  non-pad tokens exactly as CONCH's (legacy) mask does, and is the pooled output.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

#: CONCH v1 text encoder (CONCH's conch_ViT-B-16.json text_cfg): 128 positions incl. the appended CLS
CONCH_TEXT_CFG = {"context_length": 127, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12,
                  "output_dim": 512}
CONCH_TOKENIZER_NAMES = ("conch_byte_level_bpe_uncased.json", "tokenizer.json")


class TextTower(nn.Module):
    """The frozen text side of an open_clip ``CLIP`` model (no projection: the adaptor replaces it).

    Forward: prompt embeddings (P, L, W) with positions already added, end-of-text index (P,) -> (P, W).
    """

    def __init__(self, clip_model: nn.Module, tokenizer=None):
        super().__init__()
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if not all(hasattr(clip_model, n) for n in needed):
            raise TypeError("mgpath/towers.py: the text tower must be an open_clip CLIP model with token_embedding, "
                            f"positional_embedding, transformer and ln_final (got {type(clip_model).__name__}; "
                            "CustomTextCLIP/HF text towers are not supported)")
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.register_buffer("attn_mask", getattr(clip_model, "attn_mask", None), persistent=False)
        # the projection (W, D), for the publisher's zero-shot protocol (prompt learning replaces it by the adaptor)
        proj = getattr(clip_model, "text_projection", None)
        proj = proj.weight.T if isinstance(proj, nn.Linear) else proj
        self.register_buffer("text_projection", None if proj is None else proj.detach().clone(), persistent=False)
        self.context_length = int(self.positional_embedding.shape[0])
        self.width = int(self.positional_embedding.shape[1])
        self.tokenizer = tokenizer
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        """The tower stays in eval mode (frozen, no dropout)."""
        super().train(mode)
        for m in (self.token_embedding, self.transformer, self.ln_final):
            m.eval()
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(P,) strings -> (P, L) token ids, truncated with end-of-text last."""
        return self.tokenizer(texts, context_length=self.context_length)

    @property
    def eot_token_id(self) -> int:
        return int(getattr(self.tokenizer, "eot_token_id", 49407))

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else embeddings.dtype
        x = self.transformer(embeddings.to(cast), attn_mask=self.attn_mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot_index]


def _weights(checkpoint, name: str):
    from vapt.backbones import files
    from vapt.backbones.errors import BackboneError

    if checkpoint is None:
        raise BackboneError(f"Text tower {name} is built from the publisher's files; pass the checkpoint "
                            "(--model.text_checkpoint PATH).")
    w = files.resolve(checkpoint)
    return w, files.read_state_dict(w.file)


def plip_tower(checkpoint):
    """PLIP's text side from its HF folder (config.json + pytorch_model.bin)."""
    import open_clip

    from vapt.backbones.errors import BackboneError
    from vapt.backbones.files import load_checked
    from vapt.backbones.hf_clip import hf_clip_to_open_clip, open_clip_from_hf_config

    w, sd = _weights(checkpoint, "plip")
    if w.config() is None:
        raise BackboneError(f"{w.file}: the plip text tower needs the HF folder with config.json (vinid/plip).")
    model = open_clip_from_hf_config(w.config(), w.folder)
    model.visual = None
    load_checked(_TextKeys(model), hf_clip_to_open_clip(sd, "text"), w.file, "plip (text)")
    return TextTower(model, open_clip.get_tokenizer("ViT-B-32"))


class _TextKeys(nn.Module):
    """The text-side parameters of an open_clip CLIP under their CLIP names (for a strict key check)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name in ("token_embedding", "transformer", "ln_final"):
            self.add_module(name, getattr(clip, name))
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection


class _TokenizersTower(nn.Module):
    """Shared by the towers whose tokenizer is a ``tokenizers.Tokenizer`` (truncating / padding to L): frozen,
    always in eval mode, end-of-text token named by ``EOT``."""

    EOT = ""

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.token_to_id(self.EOT))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(P,) strings -> (P, L) ids (start, text, end-of-text, padding), truncated and padded to L."""
        return torch.tensor([e.ids for e in self.tokenizer.encode_batch(list(texts))], dtype=torch.long)


class CoCaTextTower(_TokenizersTower):
    """CONCH's CoCa text encoder for prompt learning. Forward: (P, L, W) embeddings with positions, (P,) end-of-text
    index -> (P, W) = ``ln_final`` of the appended CLS after the transformer (before ``text_projection``)."""

    def __init__(self, text: nn.Module, tokenizer):
        super().__init__()
        self.token_embedding = text.token_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.cls_emb = text.cls_emb
        self.all_positions = text.positional_embedding  # (L + 1, W): the last row is the CLS position
        self.text_projection = text.text_projection
        self.heads = text.heads
        self.context_length = int(text.context_length)
        self.width = int(text.width)
        self.tokenizer = tokenizer
        self.freeze()

    EOT = "<end_of_text>"

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self.all_positions[: self.context_length]

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        P, L, W = embeddings.shape
        cls = (self.cls_emb + self.all_positions[L]).to(embeddings.dtype).expand(P, 1, W)
        x = torch.cat([embeddings, cls], dim=1)
        mask = torch.full((L + 1, L + 1), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        mask = mask.expand(P, -1, -1).clone()
        # CONCH's CLS row: key 0 always, key j >= 1 iff token j - 1 is not padding (ids end at eot_index)
        keys = torch.arange(L + 1, device=x.device)
        mask[:, L] = torch.where(keys[None] <= eot_index[:, None] + 1, 0.0, float("-inf"))
        x = self.transformer(x, attn_mask=mask.repeat_interleave(self.heads, 0))
        return self.ln_final(x[:, -1])


def conch_tokenizer(path: str | os.PathLike, context_length: int = 127):
    """CONCH's byte-level BPE tokenizer file -> a ``tokenizers.Tokenizer`` truncating / padding to 127 ids."""
    from vapt.backbones.errors import BackboneError

    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackboneError("The conch_v1 text tower needs the tokenizers package: pip install "
                            "'vapt-mgpath[hf]'.") from None
    tok = Tokenizer.from_file(str(path))
    pad = tok.token_to_id("<pad>")
    if pad is None or tok.token_to_id("<end_of_text>") is None:
        raise BackboneError(f"{path} is not CONCH's tokenizer (no <pad> / <end_of_text> tokens).")
    tok.enable_truncation(context_length)
    tok.enable_padding(length=context_length, pad_id=pad, pad_token="<pad>")
    return tok


def _find_conch_tokenizer(tokenizer, folder: Path | None) -> Path:
    from vapt.backbones.errors import BackboneError

    if tokenizer is not None:
        return Path(tokenizer)
    for d in [folder] if folder is not None else []:
        for n in CONCH_TOKENIZER_NAMES:
            if (d / n).is_file():
                return d / n
    try:  # the conch package bundles the file
        import conch.open_clip_custom as cc

        return Path(cc.__file__).parent / "tokenizers" / CONCH_TOKENIZER_NAMES[0]
    except ImportError:
        raise BackboneError("The conch_v1 text tower needs CONCH's tokenizer file (conch_byte_level_bpe_uncased"
                            ".json from github.com/mahmoodlab/CONCH, conch/open_clip_custom/tokenizers/): put it "
                            "beside the checkpoint or pass --model.text_tokenizer PATH.") from None


def conch_tower(checkpoint, tokenizer=None, model_cfg: dict | None = None) -> CoCaTextTower:
    """CONCH v1's text side from ``pytorch_model.bin`` (full CoCa; ``text.*`` keys) and its tokenizer file."""
    from open_clip.transformer import TextTransformer

    from vapt.backbones.errors import BackboneError
    from vapt.backbones.files import load_checked

    w, sd = _weights(checkpoint, "conch_v1")
    cfg = {**CONCH_TEXT_CFG, **(model_cfg or {})}
    text = TextTransformer(**cfg, embed_cls=True, pad_id=0, act_layer=nn.GELU, norm_layer=nn.LayerNorm)
    text_sd = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    if not text_sd:
        raise BackboneError(f"Checkpoint {w.file} has no 'text.*' keys: not CONCH's pytorch_model.bin.")
    load_checked(text, text_sd, w.file, "conch_v1 (text)")
    return CoCaTextTower(text.eval(), conch_tokenizer(_find_conch_tokenizer(tokenizer, w.folder or w.file.parent),
                                                      cfg["context_length"]))


def quiltnet_tower(checkpoint):
    """QuiltNet (open_clip ViT-B-32 or the folder's ``open_clip_config.json``) -> (model_name, model_cfg, file)."""
    from vapt.backbones import files

    if checkpoint is None:
        return "ViT-B-32", None, None
    w = files.resolve(checkpoint)
    oc = w.configs.get("open_clip_config.json")
    return "ViT-B-32", (oc["model_cfg"] if oc else None), str(w.file)


class BertTextTower(_TokenizersTower):
    """BiomedCLIP's text encoder (HF ``BertModel``) for prompt learning.

    ``positional_embedding`` is zero: BERT adds its own position and token-type embeddings (and its embedding
    LayerNorm) to the ``inputs_embeds`` it is given. Forward: (P, L, W) token embeddings, (P,) ``[SEP]`` index
    -> (P, W) = last hidden state at ``[CLS]``, keys after ``[SEP]`` masked (open_clip's
    ``cls_last_hidden_state_pooler``, before the projection ``proj``).
    """

    def __init__(self, bert: nn.Module, proj: nn.Module, tokenizer, context_length: int):
        super().__init__()
        self.bert = bert
        self.proj = proj
        self.token_embedding = bert.embeddings.word_embeddings
        self.context_length = int(context_length)
        self.width = int(bert.config.hidden_size)
        self.register_buffer("positional_embedding", torch.zeros(self.context_length, self.width), persistent=False)
        self.tokenizer = tokenizer
        self.freeze()

    EOT = "[SEP]"

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(embeddings.shape[1], device=embeddings.device)[None] <= eot_index[:, None]
        return self.bert(inputs_embeds=embeddings, attention_mask=keep.long()).last_hidden_state[:, 0]


def _bert_config(sd: dict, folder: Path | None):
    """The BERT config: the folder's ``config.json`` if it is one, else read off the weights (BERT-base rules:
    64-wide heads, GELU, LayerNorm eps 1e-12)."""
    import json

    from transformers import BertConfig

    cfg_file = folder / "config.json" if folder is not None else None
    if cfg_file is not None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("model_type") == "bert":
            return BertConfig(**cfg)
    width = sd["embeddings.word_embeddings.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    return BertConfig(vocab_size=sd["embeddings.word_embeddings.weight"].shape[0], hidden_size=width,
                      num_hidden_layers=layers, num_attention_heads=width // 64,
                      intermediate_size=sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=sd["embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=sd["embeddings.token_type_embeddings.weight"].shape[0])


def biomedclip_tower(checkpoint) -> BertTextTower:
    """BiomedCLIP's text side from its open_clip hub folder (``open_clip_config.json`` + weights + ``tokenizer.json``)."""
    from vapt.backbones.errors import BackboneError
    from vapt.backbones.files import load_checked

    try:
        from tokenizers import Tokenizer
        from transformers import BertModel
    except ImportError:
        raise BackboneError("The biomedclip text tower needs transformers: pip install 'vapt-mgpath[hf]'.") from None
    w, sd = _weights(checkpoint, "biomedclip")
    oc = w.configs.get("open_clip_config.json")
    folder = w.folder or w.file.parent
    if oc is None or "hf_model_name" not in oc.get("model_cfg", {}).get("text_cfg", {}):
        raise BackboneError(f"{folder} has no open_clip_config.json with an HF text tower: pass BiomedCLIP's folder.")
    text_cfg, out_dim = oc["model_cfg"]["text_cfg"], oc["model_cfg"]["embed_dim"]
    if text_cfg.get("hf_pooler_type") != "cls_last_hidden_state_pooler" or text_cfg.get("hf_proj_type") != "mlp":
        raise BackboneError(f"{folder}/open_clip_config.json: only BiomedCLIP's CLS pooler + MLP projection is "
                            "rebuilt here.")
    bert_sd = {k[len("text.transformer."):]: v for k, v in sd.items() if k.startswith("text.transformer.")
               and not k.endswith("position_ids") and ".pooler." not in k}
    if not bert_sd:
        raise BackboneError(f"Checkpoint {w.file} has no 'text.transformer.*' keys: not BiomedCLIP's file.")
    bert = BertModel(_bert_config(bert_sd, folder), add_pooling_layer=False)
    load_checked(bert, bert_sd, w.file, "biomedclip (text)")
    hidden = (bert.config.hidden_size + out_dim) // 2
    proj = nn.Sequential(nn.Linear(bert.config.hidden_size, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, out_dim, bias=False))
    load_checked(proj, {k[len("text.proj."):]: v for k, v in sd.items() if k.startswith("text.proj.")}, w.file,
                 "biomedclip (text projection)")
    if not (folder / "tokenizer.json").is_file():
        raise BackboneError(f"{folder} has no tokenizer.json (BiomedCLIP's folder ships one).")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ctx = int(text_cfg.get("context_length", 256))
    tok.enable_truncation(ctx)
    tok.enable_padding(length=ctx, pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return BertTextTower(bert.eval(), proj.eval(), tok, ctx)
