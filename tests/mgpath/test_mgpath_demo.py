"""Heatmap scores and the end-to-end demo (generated slides -> tiles -> features -> fit -> test -> heatmap)."""
import json

import numpy as np
import torch
import yaml

from mgpath.benchmark import METHODS, TOWER_ZEROSHOT
from mgpath.demo import DEMO_BASELINES
from mgpath.graph import tile_adjacency
from mgpath.heatmap import draw_heatmaps, heatmap_scores
from mgpath.model import Bag, build_mgpath
from mgpath.ot import ot_similarity

DESC = {"5x": {"A": "dark nuclei", "B": "pale glands"}, "10x": {"A": "dark cells", "B": "pale cells"}}



def test_heatmap_scores_add_up_to_the_ot_similarity(tmp_path):
    torch.manual_seed(0)
    model = build_mgpath(DESC, ["A", "B"], 12, embed_dim=16, text_model="mgpath-tiny", n_ctx=4, n_sets=2, n_prompts=8)
    xy = {"5x": np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1).reshape(-1, 2) * 512,
          "10x": np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) * 256}
    bags = {m: Bag(torch.randn(len(c), 12), torch.from_numpy(tile_adjacency(c, 512 if m == "5x" else 256)))
            for m, c in xy.items()}
    scores = heatmap_scores(model, bags)
    with torch.no_grad():
        text = model.text()
        for m in ("5x", "10x"):
            s = scores[m]
            assert s["attention"].shape == (len(xy[m]),) and s["transport"].shape == (2, len(xy[m]))
            np.testing.assert_allclose(s["attention"].sum(), 1.0, rtol=1e-5)  # mean of M softmax rows
            sim = ot_similarity(model.visual(bags[m].features, bags[m].neighbours)[None], text[m])[0]
            np.testing.assert_allclose(s["transport"].sum(1), sim.numpy(), rtol=1e-4, atol=1e-5)
    thumb = np.full((96, 128, 3), 255, np.uint8)
    png = draw_heatmaps(thumb, (3072, 2304), scores, xy, {"5x": 512, "10x": 256}, ["A", "B"], tmp_path / "h.png")
    from PIL import Image
    im = Image.open(png)
    assert im.size[0] > 300 and im.size[1] > 200


def test_tile_augment_encoder_rotates_and_flips():
    from mgpath.pipelines.augment import TileAugmentEncoder
    enc = TileAugmentEncoder(torch.nn.Flatten(), seed=0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).repeat(16, 1, 1, 1)
    y = enc.augment(x)
    # every output is one of the 8 dihedral transforms of its input, and several different ones occur
    seen = set()
    for xi, yi in zip(x, y):
        cands = [torch.rot90(xi, k, (1, 2)) for k in range(4)]
        cands += [c.flip(1) for c in cands]
        idx = [i for i, c in enumerate(cands) if torch.equal(c, yi)]
        assert idx
        seen.add(idx[0])
    assert len(seen) >= 4
    assert enc(x).shape == (32, 48)


def test_demo_end_to_end(tmp_path, capsys):
    from mgpath.demo import run_demo
    from mgpath.commands.heatmap import main as heatmap_main
    lines = []
    res = run_demo(tmp_path / "demo", slides_per_class=5, shots=2, epochs=3, size=(2048, 1536), augment=True,
                   baselines=("abmil", "zeroshot", "mscpt"), log=lines.append)
    # a progress line per step and per compared method; no Lightning model-summary tables in between
    assert [ln.split()[0] for ln in lines if ln.startswith("[")] == [f"[{i}/6]" for i in range(1, 7)]
    assert any(ln.strip().startswith("method 1/3 abmil: loss") for ln in lines)
    assert any(ln.strip().startswith("method 2/3 zeroshot: loss") for ln in lines)
    assert any(ln.strip().startswith("method 3/3 mscpt: loss") for ln in lines)
    assert "Trainable params" not in capsys.readouterr().out
    t = res["test"]
    assert set(t) >= {"auc", "f1", "acc"} and all(0 <= t[k] <= 1 for k in ("auc", "f1", "acc"))
    assert res["n_train"] == 4 and res["n_test"] > 0
    assert res["n_train_bags"] == 8  # each training slide twice: original + rotated/flipped tiles
    import h5py
    with h5py.File(tmp_path / "demo" / "features" / "10x" / "class_a_00.h5") as f0, \
            h5py.File(tmp_path / "demo" / "features_aug" / "10x" / "class_a_00.h5") as f1:
        assert f0["features"].shape == f1["features"].shape
        np.testing.assert_array_equal(f0["coords"][()], f1["coords"][()])
        assert not np.allclose(f0["features"][()], f1["features"][()])
    assert list(res["methods"]) == ["mgpath", "abmil", "zeroshot", "mscpt"] and res["methods"]["mgpath"] == t
    # `mgpath demo` itself compares every method but those needing a publisher's weights (named in its note)
    assert ("mgpath", *DEMO_BASELINES, *TOWER_ZEROSHOT) == tuple(METHODS)
    assert all(0 <= r[k] <= 1 for r in res["methods"].values() for k in ("auc", "f1", "acc"))
    from mgpath.demo import method_table
    assert all(f"| {m} |" in method_table(res["methods"]) for m in ("abmil", "zeroshot", "mscpt"))
    # MSCPT ran on the tiny CLIP's own features (before its projection: the vision width) and its chosen 5x tiles
    mscpt = yaml.safe_load((tmp_path / "demo" / "run_mscpt.yaml").read_text())["model"]["init_args"]
    assert mscpt["feature_dim"] == 32 and mscpt["n_tiles"] == 8
    record = next((tmp_path / "demo" / "run_mscpt" / "mscpt_tiles").glob("*/selection.json"))
    with h5py.File(tmp_path / "demo" / "features_clip" / "5x" / f"{record.parent.name}.h5") as f:
        assert f["features"].shape[1] == 32 and f.attrs["encoder"] == "plip_pooled"
        n = f["features"].shape[0]
    assert len(json.loads(record.read_text())["files"]) == 2 * min(8, n)  # per class the n_tiles most similar
    assert "zeroshot_conch" in method_table(res["methods"])
    saved = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert saved["test"] == t
    assert (tmp_path / "demo" / "heatmaps").is_dir() and res["heatmap"].endswith(".png")
    # the heatmap command on the trained checkpoint
    sid = "class_b_00"
    rc = heatmap_main(["--ckpt_path", res["checkpoint"], "--slide", str(tmp_path / "demo" / "slides" / f"{sid}.tiff"),
                       "--features-root", str(tmp_path / "demo" / "features"), "--out", str(tmp_path / "h.png"),
                       "--max-size", "256"])
    assert rc == 0 and (tmp_path / "h.png").stat().st_size > 1000


def test_readme_tile_settings_find_tissue_on_every_demo_slide(tmp_path):
    """`mgpath tile ... --magnification 10 5 --tile-size 256 --min-tissue 0.5` (the README's quick start) on the
    slides `mgpath demo` writes: every slide gets tiles at both magnifications."""
    from mgpath.demo import write_demo_slides
    from mgpath.pipelines.tile import tile_slides
    from mgpath.slides.grid import TileParams

    slides, _ = write_demo_slides(tmp_path / "slides", slides_per_class=2)
    rows = tile_slides(slides, tmp_path / "tiles", [TileParams(256, 10.0, min_tissue=0.5),
                                                    TileParams(256, 5.0, min_tissue=0.5)], workers=1,
                       progress=False)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert all(r["tiles_5x"] >= 3 and r["tiles_10x"] >= 12 for r in rows)


def test_demo_leaves_mscpt_out_with_one_line_without_transformers(monkeypatch):
    import importlib.util

    import mgpath.demo as demo
    real = importlib.util.find_spec
    lines = []
    assert demo.runnable_methods(("abmil", "mscpt"), lines.append) == ("abmil", "mscpt") and lines == []
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    assert demo.runnable_methods(("abmil", "mscpt", "top"), lines.append) == ("abmil", "top")
    assert lines == ['      MSCPT left out: it runs a Hugging Face CLIP model; pip install "vapt-mgpath[hf]" to '
                     'include it']
