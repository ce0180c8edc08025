"""Zero-shot mode: descriptions only, context off, same OT head."""
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mgpath.commands.zeroshot import main
from mgpath.graph import tile_adjacency
from mgpath.model import Bag, build_mgpath
from mgpath.ot import ot_similarity
from mgpath.zeroshot import ZeroShotMGPATH

DESC = {"5x": {"A": ["small dark round nuclei", "dense purple cells"], "B": "large pale glands"},
        "10x": {"A": "dark cells in sheets", "B": "pale cells in glands"}}



def _identity_adaptor(model, dim):
    """Make the image adaptor ~identity (GELU is ~identity far on the positive side)."""
    with torch.no_grad():
        a = model.visual.adaptor
        a.linear1.weight.copy_(torch.eye(dim))
        a.linear1.bias.fill_(20.0)
        a.linear2.weight.copy_(torch.eye(dim))
        a.linear2.bias.fill_(-20.0)


def test_zero_shot_classifies_from_descriptions_alone():
    torch.manual_seed(0)
    D = 16
    model = build_mgpath(DESC, ["A", "B"], D, embed_dim=D, text_model="mgpath-tiny", n_ctx=4, n_sets=2, n_prompts=8)
    _identity_adaptor(model, D)
    zs = ZeroShotMGPATH(model, DESC).eval()
    assert zs.prompts.ctx is None and zs.prompts.n_sets == 2  # class A has two descriptions at 5x
    with torch.no_grad():
        text = zs.text_features()
    assert text["5x"].shape == (2, 2, D)
    # the 5x features of class A: its two descriptions form two prompt sets; class B repeats its one
    torch.testing.assert_close(text["5x"][0, 1], text["5x"][1, 1])
    assert not torch.allclose(text["5x"][0, 0], text["5x"][1, 0])
    g = torch.Generator().manual_seed(1)
    slides, labels = [], []
    for i in range(10):
        y = i % 2
        s = {}
        for m, n in (("5x", 9), ("10x", 16)):
            centre = text[m][:, y].mean(0)
            feats = 3 * centre + 0.5 * torch.randn(n, D, generator=g) / D ** 0.5
            side = int(n ** 0.5)
            xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
            s[m] = Bag(feats, torch.from_numpy(tile_adjacency(xy, 1)))
        slides.append(s)
        labels.append(y)
    with torch.no_grad():
        logits = zs(slides)
    assert (logits.argmax(1) == torch.tensor(labels)).all()
    # independent computation with ot_similarity on the normalised adapted tiles
    with torch.no_grad():
        v = {m: F.normalize(model.visual.adaptor(slides[3][m].features), dim=-1)[None] for m in ("5x", "10x")}
        ref = model.logit_scale.exp() * sum(ot_similarity(v[m], text[m]) for m in ("5x", "10x"))
    torch.testing.assert_close(logits[3:4], ref)
    # prompt tokens variant runs and has the same shape
    assert ZeroShotMGPATH(model, DESC, tokens="prompts")(slides[:2]).shape == (2, 2)
    with pytest.raises(ValueError, match="tokens must be"):
        ZeroShotMGPATH(model, DESC, tokens="x")


def test_zeroshot_command(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        sid = f"s{i}"
        rows.append({"slide_id": sid, "case_id": f"p{i}", "label": ["class_a", "class_b"][i % 2]})
        for m in ("5x", "10x"):
            (tmp_path / "f" / m).mkdir(parents=True, exist_ok=True)
            with h5py.File(tmp_path / "f" / m / f"{sid}.h5", "w") as h:
                h["features"] = rng.normal(size=(4, 32)).astype(np.float32)
                h["coords"] = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"train": ["s0", "s1"], "val": ["s2", "s3"], "test": ["s4", "s5"]}).to_csv(tmp_path / "split.csv", index=False)
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    rc = main(["--config", str(root / "configs/wsi/demo_tiny.yaml"), "--out", str(tmp_path / "p.csv"),
               "--data.labels_csv", str(tmp_path / "labels.csv"), "--data.split_csv", str(tmp_path / "split.csv"),
               "--data.features_root", str(tmp_path / "f"), "--model.descriptions", str(root / "data/prompts/demo.json")])
    assert rc == 0
    df = pd.read_csv(tmp_path / "p.csv")
    assert list(df.slide_id) == ["s4", "s5"] and np.allclose(df[["p_class_a", "p_class_b"]].sum(1), 1)
