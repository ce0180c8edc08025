"""Named text towers (PLIP, CONCH v1, QuiltNet) from random local files in each publisher's layout, against an
independent forward (transformers CLIPTextModel; CONCH's CoCa text encoder as its code writes it), and MGPATH
training steps with the PLIP and CONCH text sides."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mgpath.text import build_text_tower

ROOT = Path(__file__).resolve().parents[2]




def _conch_tokenizer_file(path: Path) -> Path:
    """A small byte-level BPE in CONCH's tokenizer layout (specials 0-2, NFD + strip accents + lowercase)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<start_of_text>", "<end_of_text>"])
    corpus = ["lung adenocarcinoma with glandular growth", "squamous cell carcinoma keratin pearls",
              "tumour stroma lymphocytes necrosis", "Élevated nuclear atypia", "x x"] * 5
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def conch_files(tmp_path_factory, randomise):
    """CONCH layout: pytorch_model.bin (full CoCa keys, narrow random text encoder) + the tokenizer JSON."""
    from open_clip.transformer import TextTransformer

    folder = tmp_path_factory.mktemp("conch")
    cfg = {"vocab_size": 320, "width": 64, "heads": 2, "layers": 2, "output_dim": 32}
    torch.manual_seed(0)
    text = randomise(TextTransformer(context_length=127, embed_cls=True, pad_id=0,
                                      act_layer=nn.GELU, norm_layer=nn.LayerNorm, **cfg))
    sd = {f"text.{k}": v for k, v in text.state_dict().items()}
    sd.update({"visual.trunk.cls_token": torch.zeros(1, 1, 8), "text_decoder.w": torch.zeros(2),
               "logit_scale": torch.tensor(1.0)})
    torch.save(sd, folder / "pytorch_model.bin")
    _conch_tokenizer_file(folder / "conch_byte_level_bpe_uncased.json")
    return folder, text, cfg


TEXTS = ["lung adenocarcinoma with glandular growth", "squamous cell carcinoma", "Élevated atypia"]


def _tower_output(tower, texts):
    tokens = tower.tokenize(texts)
    eot = (tokens == tower.eot_token_id).int().argmax(-1)
    with torch.no_grad():
        return tower(tower.token_embedding(tokens) + tower.positional_embedding, eot), tokens


def test_plip_tower_equals_transformers_clip_text(plip_folder):
    folder, hf = plip_folder
    tower = build_text_tower("plip", str(folder))
    assert tower.context_length == 77 and tower.width == 64
    out, tokens = _tower_output(tower, TEXTS)
    with torch.no_grad():
        ref = hf.text_model(input_ids=tokens).pooler_output  # final LN at the end-of-text token
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _conch_reference(text: nn.Module, tokens128: torch.Tensor) -> torch.Tensor:
    """CONCH ``encode_text(normalize=False)`` before ``text_projection``, written as CONCH's code does it."""
    t = tokens128[:, :-1]  # CoCa._encode_text: make space for the CLS token
    L = t.shape[1] + 1
    x = torch.cat([text.token_embedding(t), text.cls_emb.reshape(1, 1, -1).repeat(t.shape[0], 1, 1)], 1)
    causal = torch.full((L, L), float("-inf")).triu(1)
    cls_mask = (t != 0).unsqueeze(1)
    cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=1.0)  # CONCH's build_cls_mask
    add = torch.zeros(cls_mask.shape).masked_fill_(~cls_mask, float("-inf"))
    mask = causal[None] + add.repeat_interleave(text.heads, 0)
    x = x + text.positional_embedding[:L]
    for block in text.transformer.resblocks:
        x = block(x, attn_mask=mask)
    return text.ln_final(x[:, -1])


def test_conch_tower_equals_coca_text_and_conch_tokenizer(conch_files):
    from transformers import PreTrainedTokenizerFast

    folder, text, cfg = conch_files
    tower = build_text_tower("conch_v1", str(folder / "pytorch_model.bin"), model_cfg=cfg)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "conch_byte_level_bpe_uncased.json"),
                                     bos_token="<start_of_text>", eos_token="<end_of_text>", pad_token="<pad>")
    ref_tokens = hf_tok(TEXTS, max_length=127, add_special_tokens=True, truncation=True,
                                          padding="max_length", return_tensors="pt")["input_ids"]
    ref_tokens = F.pad(ref_tokens, (0, 1), value=hf_tok.pad_token_id)  # CONCH's tokenize(): 128 ids
    out, tokens = _tower_output(tower, TEXTS)
    assert torch.equal(tokens, ref_tokens[:, :-1]) and tower.eot_token_id == 2
    with torch.no_grad():
        ref = _conch_reference(text, ref_tokens)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out @ tower.text_projection, text(ref_tokens[:, :-1]), atol=1e-5, rtol=1e-5)


def test_quiltnet_tower_from_open_clip_folder(tmp_path, randomise):
    import open_clip

    model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                 "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    clip = randomise(open_clip.CLIP(**model_cfg))
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    tower = build_text_tower("quiltnet", str(tmp_path))
    out, tokens = _tower_output(tower, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(out @ clip.text_projection, clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def _bags(n, dim, seed):
    from mgpath.model import Bag

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        slide = {}
        for mag, k in (("5x", 4), ("10x", 9)):
            nb = torch.full((k, 4), -1, dtype=torch.long)
            nb[:-1, 0] = torch.arange(1, k)
            slide[mag] = Bag(torch.randn(k, dim, generator=g), nb)
        out.append(slide)
    return out


@pytest.mark.parametrize("tower", ["plip", "conch_v1"])
def test_mgpath_trains_with_pathology_text_towers(tower, plip_folder, conch_files):
    from mgpath.model import build_mgpath

    torch.manual_seed(0)
    ckpt = str(plip_folder[0]) if tower == "plip" else str(conch_files[0] / "pytorch_model.bin")
    descriptions = json.loads((ROOT / "data/prompts/demo.json").read_text())
    classes = descriptions["classes"][:2]
    model = build_mgpath(str(ROOT / "data/prompts/demo.json"), classes, feature_dim=16, embed_dim=32,
                         text_model=tower, text_checkpoint=ckpt, n_ctx=4, n_sets=2, n_prompts=4,
                         text_model_cfg=conch_files[2] if tower == "conch_v1" else None)
    frozen = {k: v.clone() for k, v in model.text.tower.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    bags, y = _bags(4, 16, 0), torch.tensor([0, 1, 0, 1])
    model.train()
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(bags), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]
    after = model.text.tower.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # the tower stays frozen


def test_biomedclip_tower_equals_open_clip_hf_text_encoder(tmp_path, randomise):
    """BiomedCLIP's hub folder (open_clip_config.json + open_clip_pytorch_model.bin + tokenizer.json): the tower
    equals open_clip's own HFTextEncoder (BERT, CLS pooling, MLP projection) on the same ids."""
    from open_clip.hf_model import HFTextEncoder
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS * 3 + ["x x tumour"], trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=64)
    torch.manual_seed(0)
    enc = randomise(HFTextEncoder("biomedbert", output_dim=32, config=cfg, pooler_type="cls_last_hidden_state_pooler",
                                  proj_type="mlp"))
    torch.save({**{f"text.{k}": v for k, v in enc.state_dict().items()}, "logit_scale": torch.tensor(4.6),
                "visual.trunk.cls_token": torch.zeros(1, 1, 8)}, tmp_path / "open_clip_pytorch_model.bin")
    text_cfg = {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract", "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 64}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 32, "text_cfg": text_cfg}}))
    tower = build_text_tower("biomedclip", str(tmp_path))
    out, tokens = _tower_output(tower, TEXTS)
    assert tokens.shape == (3, 64) and (tokens[:, 0] == tok.token_to_id("[CLS]")).all()
    with torch.no_grad():
        torch.testing.assert_close(tower.proj(out), enc(tokens), atol=1e-5, rtol=1e-5)
