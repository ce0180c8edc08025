"""MGPATH model: text prompts, graph attention, gradients, classes, bad inputs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mgpath.granular import GraphAttention, neighbours_from_edges
from mgpath.graph import tile_adjacency
from mgpath.model import Bag, build_mgpath
from mgpath.ot import OTConfig
from mgpath.text import load_descriptions

DESC = {"5x": {"A": "small dark round nuclei", "B": "large pale glands", "C": "spindle shaped stroma"},
        "10x": {"A": "dark cells in sheets", "B": "pale cells in glands", "C": "long thin fibroblasts"}}



def tiny(classes=("A", "B"), feature_dim=12, **kw):
    torch.manual_seed(0)
    kw.setdefault("n_ctx", 4)
    kw.setdefault("n_sets", 3)
    return build_mgpath(DESC, list(classes), feature_dim, embed_dim=16, text_model="mgpath-tiny", n_prompts=8, **kw)


def bag(n=20, d=12, seed=0, side=5):
    g = torch.Generator().manual_seed(seed)
    xy = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(math.ceil(n / side)), indexing="xy"), -1)
    xy = xy.reshape(-1, 2)[:n] * 256
    return Bag(torch.randn(n, d, generator=g), torch.from_numpy(tile_adjacency(xy, 256)))


def slide(seed=0, n=20, d=12):
    return {"5x": bag(n, d, seed), "10x": bag(2 * n, d, seed + 100)}


def test_forward_shapes_and_text_features():
    m = tiny()
    logits = m([slide(0), slide(1)])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    text = m.text()
    assert set(text) == {"5x", "10x"} and text["5x"].shape == (3, 2, 16)
    torch.testing.assert_close(text["5x"].norm(dim=-1), torch.ones(3, 2))
    # different descriptions at 5x and 10x give different features
    assert not torch.allclose(text["5x"], text["10x"])


def test_prompt_assembly_insert_and_official():
    m = tiny()
    pl = m.text.prompts
    tower = m.text.tower
    x, eot = pl()
    tok = tower.tokenize(["X X X X " + DESC["5x"]["B"]])[0]
    # insert: [SOS, ctx(4), description..., EOT] + positions on the whole sequence
    emb = tower.token_embedding(tok[None])[0]
    expected = torch.cat([emb[:1], pl.ctx[1], emb[5:]]) + tower.positional_embedding
    torch.testing.assert_close(x[1, 1], expected)
    assert eot[1, 1] == (tok == 49407).nonzero()[0, 0]
    # official: the context overwrites tokens 1..n_ctx of the description; no position on the context
    mo = tiny(placement="official")
    xo, _eo = mo.text.prompts()
    tower = mo.text.tower
    tok = tower.tokenize([DESC["10x"]["A"]])[0]
    emb = tower.token_embedding(tok[None])[0] + tower.positional_embedding
    expected = torch.cat([emb[:1], mo.text.prompts.ctx[2], emb[5:]])
    torch.testing.assert_close(xo[2, 2], expected)  # row 2 = (10x, class A)
    # zero-shot: no context, plain description embedding
    mz = tiny(placement="none")
    xz, _ = mz.text.prompts()
    tok = mz.text.tower.tokenize([DESC["5x"]["A"]])[0]
    torch.testing.assert_close(xz[0, 0], mz.text.tower.token_embedding(tok[None])[0] + mz.text.tower.positional_embedding)
    assert mz.text.prompts.ctx is None


def test_text_tower_equals_open_clip_encode_text():
    """With no context, the tower + pooling equals open_clip's own encode_text (before projection)."""
    import open_clip

    from mgpath.text import TINY_TEXT_CFG, TextTower
    torch.manual_seed(1)
    clip = open_clip.CLIP(**TINY_TEXT_CFG)
    clip.text_projection = None
    tok = open_clip.get_tokenizer("ViT-B-32")(["a tissue section", "pale glands in stroma"])
    ref = clip.encode_text(tok)
    tower = TextTower(clip, open_clip.get_tokenizer("ViT-B-32"))
    emb = tower.token_embedding(tok) + tower.positional_embedding
    torch.testing.assert_close(tower(emb, tok.argmax(-1)), ref)


def test_gradients_flow_to_trainable_parts_only():
    m = tiny()
    m.train()
    logits = m([slide(0)])
    F.cross_entropy(logits, torch.tensor([1])).backward()
    trainable = {"text.prompts.ctx", "text.adaptor.linear1.weight", "text.adaptor.linear2.weight",
                 "visual.adaptor.linear1.weight", "visual.prompts", "visual.graph.lin.weight",
                 "visual.graph.att_src", "visual.graph.att_dst", "visual.norm.weight", "logit_scale"}
    named = dict(m.named_parameters())
    for n in trainable:
        assert named[n].requires_grad and named[n].grad is not None and named[n].grad.abs().sum() > 0, n
    for n, p in named.items():
        if n.startswith("text.tower."):
            assert not p.requires_grad and p.grad is None, n
    assert all(n.startswith("text.tower.") for n, p in named.items() if not p.requires_grad)


def test_graph_attention_equals_dense_computation():
    torch.manual_seed(0)
    coords = torch.tensor([[0, 0], [256, 0], [512, 0], [0, 256], [256, 256], [1024, 1024]])  # last is isolated
    nb = torch.from_numpy(tile_adjacency(coords, 256))
    assert nb.tolist()[0] == [-1, 1, -1, 3]  # neighbour index 0 is kept elsewhere:
    assert 0 in nb[1].tolist() and 0 in nb[3].tolist()
    gat = GraphAttention(6, 5)
    with torch.no_grad():
        gat.bias.normal_()
    x = torch.randn(6, 6)
    out, _alpha = gat(x, nb, return_attention=True)
    # dense reference: adjacency with self loops, masked softmax over rows
    N = 6
    adj = torch.eye(N, dtype=torch.bool)
    for i in range(N):
        for j in nb[i].tolist():
            if j >= 0:
                adj[i, j] = True
    h = x @ gat.lin.weight.T
    e = F.leaky_relu((h @ gat.att_dst)[:, None] + (h @ gat.att_src)[None, :], 0.2)
    a = torch.softmax(e.masked_fill(~adj, float("-inf")), dim=1)
    torch.testing.assert_close(out, a @ h + gat.bias)
    torch.testing.assert_close(out[5], h[5] + gat.bias)  # isolated node: itself only
    # edge-list input gives the same neighbours
    edges = torch.tensor([[j, i] for i in range(N) for j in nb[i].tolist() if j >= 0]).T
    out2 = gat(x, neighbours_from_edges(edges, N))
    torch.testing.assert_close(out2, out)


def test_three_classes_and_any_magnifications():
    m = tiny(classes=("A", "B", "C"), magnifications=("5x",))
    logits = m([{"5x": bag(15)}, {"5x": bag(7, seed=3)}])
    assert logits.shape == (2, 3)
    m2 = tiny(classes=("C", "A", "B"), ot=OTConfig(reg_m=1.0))
    assert m2([slide(0)]).shape == (1, 3)


def test_logits_are_scaled_sum_of_ot_similarities():
    from mgpath.ot import ot_similarity
    m = tiny()
    m.eval()
    s = slide(2)
    with torch.no_grad():
        logits = m([s])
        text = m.text()
        sim = sum(ot_similarity(m.visual(s[g].features, s[g].neighbours)[None], text[g]) for g in ("5x", "10x"))
    torch.testing.assert_close(logits, m.logit_scale.exp() * sim)


def test_bad_inputs(tmp_path):
    m = tiny()
    with pytest.raises(ValueError, match="expects \\(N, 12\\)"):
        m([{"5x": bag(10, d=7), "10x": bag(10, d=7)}])
    with pytest.raises(ValueError, match="empty bag"):
        m([{"5x": Bag(torch.zeros(0, 12), torch.zeros(0, 4, dtype=torch.long)), "10x": bag(5)}])
    s = slide()
    s["5x"].features[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m([s])
    with pytest.raises(KeyError, match="no bag at magnification '10x'"):
        m([{"5x": bag(5)}])
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"classes": ["A"], "descriptions": {"5x": {"A": "x"}, "10x": {"A": "y"}}}))
    with pytest.raises(KeyError, match="class label\\(s\\) \\['B'\\] have no description"):
        build_mgpath(str(p), ["A", "B"], 12, embed_dim=16, text_model="mgpath-tiny")
    with pytest.raises(KeyError, match="magnification\\(s\\) \\['20x'\\] missing"):
        load_descriptions(p, ["A"], ["5x", "20x"])


def test_official_line_file_and_shipped_prompt_files():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2] / "data" / "prompts"
    for name, classes in [("tcga_nsclc.json", ["LUAD", "LUSC"]), ("tcga_rcc.json", ["CCRCC", "PRCC", "CRCC"]),
                          ("tcga_brca.json", ["IDC", "ILC"]), ("demo.json", ["class_a", "class_b"])]:
        t = load_descriptions(root / name, classes, ["5x", "10x"])
        assert list(t["10x"]) == classes
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "p.csv")
        with open(f, "w") as fh:
            fh.write("low a\nlow b\nhigh a\nhigh b\n")
        t = load_descriptions(f, ["A", "B"])
        assert t == {"5x": {"A": ["low a"], "B": ["low b"]}, "10x": {"A": ["high a"], "B": ["high b"]}}
