"""Import of the official MGPATH / PLIP-G checkpoint layouts, checked against an independent re-statement of
the official forward pass (HF-CLIP text encoder math, GATConv, PLOT Sinkhorn) on random weights."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mgpath.commands.import_official import main
from mgpath.granular import neighbours_from_edges
from mgpath.graph import tile_adjacency
from mgpath.model import Bag
from mgpath.official import convert_official, load_converted

W, LAYERS, HEADS, L, NCTX, NSETS, C, DIN, D, M = 32, 2, 2, 77, 4, 3, 2, 12, 16, 8
DESC = {"5x": {"LUAD": "glandular tumour with lepidic growth", "LUSC": "squamous nests with keratin pearls"},
        "10x": {"LUAD": "columnar cells forming glands", "LUSC": "polygonal cells with intercellular bridges"}}
ROWS = [DESC["5x"]["LUAD"], DESC["5x"]["LUSC"], DESC["10x"]["LUAD"], DESC["10x"]["LUSC"]]



def _hf_layers(g, prefix):
    sd = {}
    for i in range(LAYERS):
        p = f"{prefix}layers.{i}."
        for name, shape in [("self_attn.q_proj", (W, W)), ("self_attn.k_proj", (W, W)), ("self_attn.v_proj", (W, W)),
                            ("self_attn.out_proj", (W, W)), ("mlp.fc1", (4 * W, W)), ("mlp.fc2", (W, 4 * W))]:
            sd[p + name + ".weight"] = torch.randn(shape, generator=g) / math.sqrt(shape[1])
            sd[p + name + ".bias"] = torch.randn(shape[0], generator=g) * 0.1
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + ln + ".weight"] = 1 + 0.1 * torch.randn(W, generator=g)
            sd[p + ln + ".bias"] = 0.1 * torch.randn(W, generator=g)
    return sd


def _mlp(g, prefix, din, dout):
    return {f"{prefix}.linear1.weight": torch.randn(dout, din, generator=g) / math.sqrt(din),
            f"{prefix}.linear1.bias": 0.1 * torch.randn(dout, generator=g),
            f"{prefix}.linear2.weight": torch.randn(dout, dout, generator=g) / math.sqrt(dout),
            f"{prefix}.linear2.bias": 0.1 * torch.randn(dout, generator=g)}


def official_checkpoints(pyg_old=False):
    """Random (fine-tuned MGPATH, PLIP-G alignment) state dicts in the official layouts."""
    g = torch.Generator().manual_seed(0)
    tok_emb = torch.randn(49408, W, generator=g) * 0.02
    pos_emb = torch.randn(L, W, generator=g) * 0.01
    align = {"text_model.text_model.embeddings.token_embedding.weight": tok_emb,
             "text_model.text_model.embeddings.position_embedding.weight": pos_emb,
             **_hf_layers(g, "text_model.text_model.encoder."),
             "text_model.text_model.final_layer_norm.weight": 1 + 0.1 * torch.randn(W, generator=g),
             "text_model.text_model.final_layer_norm.bias": 0.1 * torch.randn(W, generator=g),
             "text_model.visual_projection.weight": torch.randn(8, 8, generator=g),  # ignored
             **_mlp(g, "ImageMLP", DIN, D), **_mlp(g, "TextMLP", W, D), "temperature": torch.tensor([math.log(50.)])}
    tokens = open_clip.get_tokenizer("ViT-B-32")(ROWS)
    emb = tok_emb[tokens] + pos_emb  # (2C, L, W) token + position, as PLIP embeddings(input_ids)
    emb = emb.repeat(NSETS, 1, 1)  # official .repeat(N, 1): row n*2C + c
    ft = {"prompt_learner.ctx": torch.randn(NSETS, NCTX, W, generator=g) * 0.02,
          "prompt_learner.token_prefix": emb[:, :1].clone(), "prompt_learner.token_suffix": emb[:, 1 + NCTX:].clone(),
          **{k.replace("text_model.text_model.encoder.", "text_encoder.transformer."): v for k, v in align.items()
             if "encoder.layers" in k},
          "text_encoder.final_layer_norm.weight": align["text_model.text_model.final_layer_norm.weight"],
          "text_encoder.final_layer_norm.bias": align["text_model.text_model.final_layer_norm.bias"],
          **{k.replace("TextMLP", "text_encoder.proj"): v + 0.01 for k, v in align.items() if k.startswith("TextMLP")},
          **{k: v + 0.01 for k, v in align.items() if k.startswith("ImageMLP")},
          "logit_scale": torch.tensor([3.5]), "norm.weight": 1 + 0.1 * torch.randn(D, generator=g),
          "norm.bias": 0.1 * torch.randn(D, generator=g),
          "learnable_image_center": torch.randn(M, 1, D, generator=g) * 0.02,
          "graph.att_src": torch.randn(1, 1, D, generator=g) * 0.3, "graph.att_dst": torch.randn(1, 1, D, generator=g) * 0.3,
          "graph.bias": 0.1 * torch.randn(D, generator=g)}
    lin = torch.randn(D, D, generator=g) / math.sqrt(D)
    if pyg_old:
        ft["graph.lin_src.weight"], ft["graph.lin_dst.weight"] = lin, lin.clone()
    else:
        ft["graph.lin.weight"] = lin
    return ft, align, tokens


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def reference_forward(sd, tokens, slide):
    """Independent re-statement of the official MGPATH forward (HF CLIP text encoder, GATConv, PLOT OT)."""
    ctx, pre, suf = sd["prompt_learner.ctx"], sd["prompt_learner.token_prefix"], sd["prompt_learner.token_suffix"]
    x = torch.cat([pre, ctx.unsqueeze(1).expand(-1, 2 * C, -1, -1).reshape(NSETS * 2 * C, NCTX, W), suf], dim=1)
    causal = torch.full((L, L), float("-inf")).triu(1)
    hd = W // HEADS
    for i in range(LAYERS):
        p = f"text_encoder.transformer.layers.{i}."
        def lin(h, n, p=p):
            return h @ sd[p + n + ".weight"].T + sd[p + n + ".bias"]
        h = _ln(x, sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"])
        q, k, v = (lin(h, f"self_attn.{n}_proj").reshape(-1, L, HEADS, hd).transpose(1, 2) for n in "qkv")
        att = torch.softmax(q * hd ** -0.5 @ k.transpose(-1, -2) + causal, dim=-1) @ v
        x = x + lin(att.transpose(1, 2).reshape(-1, L, W), "self_attn.out_proj")
        h = _ln(x, sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"])
        h = lin(h, "mlp.fc1")
        x = x + lin(h * torch.sigmoid(1.702 * h), "mlp.fc2")
    x = _ln(x, sd["text_encoder.final_layer_norm.weight"], sd["text_encoder.final_layer_norm.bias"])
    eos = (tokens == 49407).int().argmax(-1).repeat(NSETS)
    pooled = x[torch.arange(len(x)), eos]
    mlp = lambda h, p: F.gelu(h @ sd[p + ".linear1.weight"].T + sd[p + ".linear1.bias"]) @ sd[p + ".linear2.weight"].T + sd[p + ".linear2.bias"]
    tf = F.normalize(mlp(pooled, "text_encoder.proj").view(NSETS, 2 * C, D), dim=2)
    text = {"5x": tf[:, :C], "10x": tf[:, C:]}
    lin_w = sd.get("graph.lin.weight", sd.get("graph.lin_src.weight"))
    P = sd["learnable_image_center"][:, 0]
    logits = 0
    for mag in ("5x", "10x"):
        feats, edges = slide[mag]
        H = mlp(feats, "ImageMLP")
        # GATConv (heads=1, add_self_loops): e_ij over edges j->i plus the self loop
        h = H @ lin_w.T
        n = len(h)
        src = torch.cat([edges[0], torch.arange(n)])
        dst = torch.cat([edges[1], torch.arange(n)])
        e = F.leaky_relu((h[src] * sd["graph.att_src"][0, 0]).sum(-1) + (h[dst] * sd["graph.att_dst"][0, 0]).sum(-1), 0.2)
        Hg = torch.zeros_like(h)
        for i in range(n):
            sel = dst == i
            a = torch.softmax(e[sel], 0)
            Hg[i] = (a[:, None] * h[src[sel]]).sum(0)
        Hg = Hg + sd["graph.bias"]
        A_p = torch.softmax(P @ H.T / math.sqrt(D), -1) @ H
        A_g = torch.softmax(P @ Hg.T / math.sqrt(D), -1) @ Hg
        Z = F.normalize(_ln(0.8 * A_p + 0.2 * A_g + P, sd["norm.weight"], sd["norm.bias"]), dim=-1)
        sim = torch.einsum("md,ncd->cmn", Z, text[mag])  # (C, M, N)
        Kk = torch.exp(-(1 - sim) / 0.1)
        r, cc = torch.ones(C, M), torch.ones(C, NSETS)
        for _ in range(100):
            r0 = r
            r = (1 / M) / torch.einsum("cmn,cn->cm", Kk, cc)
            cc = (1 / NSETS) / torch.einsum("cmn,cm->cn", Kk, r)
            if (r - r0).abs().mean() < 1e-2:
                break
        T = r[:, :, None] * Kk * cc[:, None, :]
        logits = logits + sd["logit_scale"].exp() * (T * sim).sum((1, 2))
    return logits


def _slide():
    g = torch.Generator().manual_seed(7)
    out, ours = {}, {}
    for mag, side in (("5x", 3), ("10x", 4)):
        xy = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1).reshape(-1, 2) * 512
        adj = tile_adjacency(xy.numpy(), 512)
        edges = torch.tensor([[j, i] for i in range(len(adj)) for j in adj[i] if j >= 0]).T
        feats = torch.randn(side * side, DIN, generator=g)
        out[mag] = (feats, edges)
        ours[mag] = Bag(feats, neighbours_from_edges(edges, len(feats)))
    return out, ours


@pytest.mark.parametrize("pyg_old", [False, True])
def test_finetuned_checkpoint_compat_gives_official_outputs(pyg_old):
    ft, _align, tokens = official_checkpoints(pyg_old)
    sd, settings = convert_official(ft, heads=HEADS)
    assert settings["n_ctx"] == NCTX and settings["n_sets"] == NSETS and settings["feature_dim"] == DIN
    assert settings["text_model_cfg"]["text_cfg"]["layers"] == LAYERS
    model = load_converted(sd, settings, DESC, ["LUAD", "LUSC"], compat=True)
    model.eval()
    torch.testing.assert_close(model.visual.graph.lin.weight, ft.get("graph.lin.weight", ft.get("graph.lin_src.weight")))
    torch.testing.assert_close(model.visual.prompts, ft["learnable_image_center"][:, 0])
    ref_slide, our_slide = _slide()
    with torch.no_grad():
        ours = model([our_slide])[0]
        ref = reference_forward(ft, tokens, ref_slide)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_alignment_checkpoint_and_no_compat():
    ft, align, _tokens = official_checkpoints()
    sd, settings = convert_official(ft, align, heads=HEADS)
    model = load_converted(sd, settings, DESC, ["LUAD", "LUSC"], compat=False)
    # corrected placement: position embeddings cover the context; the description is not overwritten
    x, _eot = model.text.prompts()
    tok = open_clip.get_tokenizer("ViT-B-32")(["X " * NCTX + DESC["5x"]["LUSC"]])[0]
    emb = align["text_model.text_model.embeddings.token_embedding.weight"][tok]
    expected = torch.cat([emb[:1], ft["prompt_learner.ctx"][0], emb[1 + NCTX:]]) + \
        align["text_model.text_model.embeddings.position_embedding.weight"]
    torch.testing.assert_close(x[0, 1], expected)
    # the PLIP-G alignment checkpoint alone gives adaptors, temperature and the text tower
    sd2, _s2 = convert_official(align, heads=HEADS)
    torch.testing.assert_close(sd2["logit_scale"], align["temperature"])
    torch.testing.assert_close(sd2["text.adaptor.linear1.weight"], align["TextMLP.linear1.weight"])
    q = align["text_model.text_model.encoder.layers.1.self_attn.k_proj.weight"]
    torch.testing.assert_close(sd2["text.tower.transformer.resblocks.1.attn.in_proj_weight"][W:2 * W], q)
    with pytest.raises(KeyError, match="not an official MGPATH checkpoint"):
        convert_official({"foo": torch.zeros(1)})
    with pytest.raises(KeyError, match="needs the token"):
        sd3, s3 = convert_official(ft, heads=HEADS)
        load_converted(sd3, s3, DESC, ["LUAD", "LUSC"], compat=False)


def test_import_official_command(tmp_path):
    ft, _align, tokens = official_checkpoints()
    torch.save(ft, tmp_path / "s_0_checkpoint.pt")
    (tmp_path / "prompts.csv").write_text("\n".join(ROWS) + "\n")  # official line-per-prompt file
    rc = main(["--checkpoint", str(tmp_path / "s_0_checkpoint.pt"), "--descriptions", str(tmp_path / "prompts.csv"),
               "--classes", "LUAD", "LUSC", "--heads", str(HEADS), "--out", str(tmp_path / "conv.pt")])
    assert rc == 0
    saved = torch.load(tmp_path / "conv.pt", weights_only=False)
    assert saved["config"]["placement"] == "official"
    assert saved["config"]["descriptions"] == str((tmp_path / "conv.descriptions.json").resolve())
    torch.testing.assert_close(saved["state_dict"]["text.prompts.ctx"], ft["prompt_learner.ctx"])
    # the written config + file build the Lightning module that gives the official outputs
    from mgpath.module import MGPATHModule
    module = MGPATHModule(**saved["config"], classes=["LUAD", "LUSC"], init_checkpoint=str(tmp_path / "conv.pt"))
    module.eval()
    ref_slide, our_slide = _slide()
    with torch.no_grad():
        torch.testing.assert_close(module([our_slide])[0], reference_forward(ft, tokens, ref_slide), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prompt rows"):  # 3 magnifications x 2 classes != 4 checkpoint rows
        three = {m: {"LUAD": "a", "LUSC": "b"} for m in ("5x", "10x", "20x")}
        load_converted(*convert_official(ft, heads=HEADS), three, ["LUAD", "LUSC"], ["5x", "10x", "20x"])


def test_descriptions_are_preprocessed_as_the_official_code(tmp_path):
    """Official main.py reads the prompt CSV with pandas and PromptLearner replaces '_' by ' ' before tokenising."""
    from mgpath.official import official_descriptions
    ft, align, _tokens = official_checkpoints()
    sd, settings = convert_official(ft, align, heads=HEADS)
    under = {m: {c: t.replace(" ", "_") for c, t in per.items()} for m, per in DESC.items()}
    tok = open_clip.get_tokenizer("ViT-B-32")
    assert not torch.equal(tok([under["5x"]["LUAD"]]), tok([DESC["5x"]["LUAD"]]))  # '_' changes the tokens
    plain = load_converted(sd, settings, DESC, ["LUAD", "LUSC"], compat=False)
    with_ = load_converted(sd, settings, under, ["LUAD", "LUSC"], compat=False)
    torch.testing.assert_close(with_.text.prompts()[0], plain.text.prompts()[0], rtol=0, atol=0)
    # the CSV as pandas.read_csv(header=None) reads it: quoted commas and doubled quotes
    rows = ['"glandular, lepidic_growth"', 'squamous "nests"', '"columnar ""tall"" cells"', "polygonal cells"]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    table = official_descriptions(str(tmp_path / "p.csv"), ["LUAD", "LUSC"])
    assert table["5x"]["LUAD"] == ["glandular, lepidic growth"] and table["10x"]["LUAD"] == ['columnar "tall" cells']
    assert table["5x"]["LUSC"] == ['squamous "nests"']
    (tmp_path / "bad.csv").write_text("a, b\nc\nd\ne\n")
    with pytest.raises(ValueError, match="unquoted comma"):
        official_descriptions(str(tmp_path / "bad.csv"), ["LUAD", "LUSC"])
