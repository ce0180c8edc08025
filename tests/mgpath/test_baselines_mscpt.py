"""MSCPT (mgpath.baselines.mscpt): equal to the official model on a tiny CLIP, its GCN and corrections against
independent re-computations, `mgpath benchmark --methods mscpt` end to end, and its bad inputs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from mscpt_tiny import (
    CLASSES,
    DESCRIPTIONS,
    inputs,
    our_name,
    trainable_values,
    write_descriptions,
    write_tiny_clip,
)

from mgpath.baselines.mscpt import MSCPT, gcn_propagate

#: the official trainable tensors in the order `CustomCLIP.named_parameters()` lists them (Hanminghao/MSCPT 3f23ac7)
OFFICIAL_ORDER = ["prompt_learner.p_input", "prompt_learner.p_uni.0", "prompt_learner.p_ins_projector.weight",
                  "prompt_learner.p_ins_projector.bias", "gcn_prompt_learner_big.conv1.bias",
                  "gcn_prompt_learner_big.conv1.lin.weight", "gcn_prompt_learner_big.conv2.bias",
                  "gcn_prompt_learner_big.conv2.lin.weight", "gcn_prompt_learner_small.conv1.bias",
                  "gcn_prompt_learner_small.conv1.lin.weight", "gcn_prompt_learner_small.conv2.bias",
                  "gcn_prompt_learner_small.conv2.lin.weight", "vision_prompt_learner.p_input",
                  "vision_prompt_learner.p_visual.0"]
#: figures of the official CustomCLIP (transformers 4.44.2, torch_geometric 2.8.1, eval mode) on the same tiny
#: CLIP, trainable values and inputs: /tmp scratch `official_run.py` (see docs/baselines.md, MSCPT)
OFFICIAL = {"logits": [-0.948192834854126, -0.9550237059593201],
            "logits_low": [-1.215401291847229, -1.0907509326934814],
            "logits_high": [-0.680984377861023, -0.8192964792251587], "loss": 2.0940239429473877,
            # sum of (after - before) per tensor after one Adam step (lr 1e-4, wd 1e-5), label 1
            "step_sums": {"prompt_learner.p_input": 0.001400019391439855,
                          "prompt_learner.p_ins_projector.weight": -0.0014010167215019464,
                          "gcn_prompt_learner_big.conv1.lin.weight": -0.03968346118927002,
                          "gcn_prompt_learner_big.conv2.lin.weight": -0.7935482263565063,
                          "gcn_prompt_learner_small.conv1.lin.weight": -0.0731201246380806,
                          "gcn_prompt_learner_small.conv2.lin.weight": -0.8735719919204712,
                          "vision_prompt_learner.p_visual.0": 0.0005837306380271912}}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _model(folder, corrected=False):
    from mgpath.baselines.mscpt_module import load_hf_clip

    clip, tok = load_hf_clip(str(folder))
    m = MSCPT(clip, tok, [DESCRIPTIONS[c]["small_mag"] for c in CLASSES],
              [DESCRIPTIONS[c]["big_mag"] for c in CLASSES], corrected=corrected)
    params = dict(m.named_parameters())
    vals = trainable_values([(n, params[our_name(n)]) for n in OFFICIAL_ORDER])
    with torch.no_grad():
        for n, v in vals.items():
            params[our_name(n)].copy_(v)
    assert sorted(n for n, p in params.items() if p.requires_grad) == sorted(our_name(n) for n in OFFICIAL_ORDER)
    return m.eval()


def test_logits_loss_and_one_step_equal_the_official_figures(clip_folder):
    m = _model(clip_folder)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    images, feats = inputs()
    logits, low, high = m(images, feats)
    loss, _ = m.loss(images, feats, 1)
    for got, key in ((logits, "logits"), (low, "logits_low"), (high, "logits_high")):
        torch.testing.assert_close(got, torch.tensor(OFFICIAL[key]), atol=2e-6, rtol=0)
    assert float(loss) == pytest.approx(OFFICIAL["loss"], abs=2e-6)
    loss.backward()
    opt.step()
    params = dict(m.named_parameters())
    for name, total in OFFICIAL["step_sums"].items():
        assert float((params[our_name(name)] - before[our_name(name)]).sum()) == pytest.approx(total, abs=5e-5)


def test_gcn_equals_dense_normalised_adjacency():
    """Independent re-computation: D^-1/2 (A + I) D^-1/2 x with A[j, i] = 1 for i < j < linked, D the in-degree."""
    torch.manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64)
    for linked in (None, 4, 1):
        m = 9 if linked is None else linked
        a = torch.eye(9, dtype=torch.float64)
        a[:m, :m] = torch.ones(m, m, dtype=torch.float64).tril()
        d = a.sum(1).rsqrt()
        torch.testing.assert_close(gcn_propagate(x, linked), d[:, None] * a * d[None] @ x)


def test_official_defects_and_corrected(clip_folder):
    """Official: the last n_vpro tiles are replaced by prompts (their images do not matter) and class columns are
    mixed before the top-k; corrected: every tile is seen and each class pools its own descriptions."""
    images, _feats = inputs()
    changed = images.clone()
    changed[-2:] = torch.randn_like(changed[-2:])
    for corrected in (False, True):
        m = _model(clip_folder, corrected)
        with torch.no_grad():
            a, b = m.image_features(images), m.image_features(changed)
        assert torch.equal(a[:-2], b[:-2])
        assert torch.equal(a[-2:], b[-2:]) is (not corrected)
    m = _model(clip_folder, corrected=True)
    scores = torch.randn(7, 2 * 3)
    own = torch.stack([scores[:, c * 3:(c + 1) * 3].flatten().topk(5).values.mean() for c in range(2)])
    torch.testing.assert_close(m._pool(scores, 5), own)
    mixed = torch.stack([scores.reshape(-1, 2)[:, c].topk(5).values.mean() for c in range(2)])
    torch.testing.assert_close(_model(clip_folder)._pool(scores, 5), mixed)


def _cohort(root: Path, clip_folder: Path) -> Path:
    """6 small slides (3 per class), 5x / 20x feature files naming them, labels, one split, and the config."""
    from mgpath.io import write_features
    from mgpath.slides.synthetic import make_synthetic_slide

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        sid, label = f"s{i}", CLASSES[i % 2]
        slide = root / "slides" / f"{sid}.tiff"
        slide.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic_slide(slide, size=(256, 256), mpp=1.0, levels=1, tissue_class=i % 2, seed=i)
        for mag, n in (("5x", 4), ("20x", 12)):
            (root / "features" / mag).mkdir(parents=True, exist_ok=True)
            coords = np.array([[64 * (k % 4), 64 * (k // 4)] for k in range(n)])
            write_features(root / "features" / mag / f"{sid}.h5", rng.normal(size=(n, 32)), coords,
                           -np.ones((n, 4)), {"slide_path": str(slide), "patch_size_level0": 64.0,
                                              "identity": json.dumps({"slide": sid, "mag": mag})})
        rows.append(f"{sid},p{i},{label}")
    (root / "labels.csv").write_text("slide_id,case_id,label\n" + "\n".join(rows) + "\n")
    (root / "split.csv").write_text("train,val,test\ns0,s2,s4\ns1,s3,s5\n")
    write_descriptions(root / "desc.json")
    (root / "select.json").write_text(json.dumps({"0": {"classnames": {"LUAD": "adenocarcinoma", "LUSC":
                                      "squamous cell carcinoma"}, "templates": ["an image of CLASSNAME."]}}))
    cfg = {"seed_everything": 0,
           "model": {"feature_dim": 32},
           "data": {"labels_csv": str(root / "labels.csv"), "classes": CLASSES, "split_csv": str(root / "split.csv"),
                    "features_root": str(root / "features"), "magnifications": ["5x", "20x"]},
           "trainer": {"max_epochs": 1, "accelerator": "cpu", "logger": False, "enable_progress_bar": False},
           "methods": {"mscpt": {"descriptions": str(root / "desc.json"), "clip_checkpoint": str(clip_folder),
                                 "select_prompts": str(root / "select.json"), "n_tiles": 2, "topk_high": 10}}}
    (root / "bench.yaml").write_text(yaml.safe_dump(cfg))
    return root / "bench.yaml"


def test_benchmark_trains_mscpt_end_to_end(tmp_path, clip_folder):
    from mgpath.cli import main

    config = _cohort(tmp_path, clip_folder)
    out = tmp_path / "runs"
    assert main(["benchmark", "--config", str(config), "--methods", "mscpt", "--folds", "0", "--out", str(out)]) == 0
    result = json.loads((out / "mscpt" / "fold_0" / "result.json").read_text())
    assert result["class_path"] == "mgpath.baselines.MSCPTModule" and result["settings"]["n_tiles"] == 2
    assert 0 <= result["auc"] <= 1
    sel = json.loads((out / "mscpt" / "tiles_5x" / "s0" / "selection.json").read_text())
    assert len(sel["files"]) == 4 and sel["n_tiles"] == 2 and sel["size"] == 32  # 2 classes x 2 tiles, 32 px
    # the same choice as an independent zero-shot ranking of the 5x features
    from mgpath.baselines.mscpt_module import load_hf_clip
    from mgpath.io import read_features

    clip, tok = load_hf_clip(str(clip_folder))
    with torch.no_grad():
        t = tok(["an image of adenocarcinoma.", "an image of squamous cell carcinoma."], max_length=64,
                padding="max_length", truncation=True, return_tensors="pt")
        text = F.normalize(clip.get_text_features(**t), dim=-1) if torch.is_tensor(clip.get_text_features(**t)) \
            else F.normalize(clip.get_text_features(**t).pooler_output, dim=-1)
        img = F.normalize(clip.visual_projection(torch.as_tensor(read_features(tmp_path / "features/5x/s0.h5")
                                                                  ["features"])), dim=-1)
    assert sel["indices"] == (text @ img.T).topk(2, dim=1).indices.flatten().tolist()
    # a changed prompt file makes the cached tiles stale: they are chosen again, not reused
    mtime = (out / "mscpt" / "tiles_5x" / "s0" / "selection.json").stat().st_mtime_ns
    from mgpath.baselines.mscpt_data import cache_tile_images

    folder = out / "mscpt" / "tiles_5x" / "s0"
    cache_tile_images(folder, tmp_path / "features/5x/s0.h5", sel["indices"], 32,
                      {k: v for k, v in sel.items() if k not in ("files", "indices", "size", "written_by")})
    assert (folder / "selection.json").stat().st_mtime_ns == mtime
    cache_tile_images(folder, tmp_path / "features/5x/s0.h5", sel["indices"], 32, {"prompts_sha256": "other"})
    assert json.loads((folder / "selection.json").read_text())["prompts_sha256"] == "other"


def test_bad_inputs_give_one_line(tmp_path, clip_folder):
    from mgpath.baselines import MSCPTModule
    from mgpath.baselines.mscpt_data import cache_tile_images
    from mgpath.benchmark import method_config

    config = _cohort(tmp_path, clip_folder)
    args = {"clip_checkpoint": str(clip_folder), "select_prompts": str(tmp_path / "select.json"), "classes": CLASSES}
    with pytest.raises(ValueError, match=r"cannot read the MSCPT description file .*nothere.json"):
        MSCPTModule(str(tmp_path / "nothere.json"), feature_dim=32, **args)
    (tmp_path / "partial.json").write_text(json.dumps({"LUAD": DESCRIPTIONS["LUAD"]}))
    with pytest.raises(ValueError, match=r"partial.json has no MSCPT descriptions for class\(es\) \['LUSC'\]"):
        MSCPTModule(str(tmp_path / "partial.json"), feature_dim=32, **args)
    with pytest.raises(ValueError, match="feature_dim 512 is not the vision width 32 .* --encoder plip_pooled"):
        MSCPTModule(str(tmp_path / "desc.json"), feature_dim=512, **args)
    m = MSCPTModule(str(tmp_path / "desc.json"), feature_dim=32, **args)
    with pytest.raises(ValueError, match=r"before CLIP's visual_projection, \(N>0, 32\); got \(5, 512\)"):
        m.model(torch.zeros(4, 3, 32, 32), torch.zeros(5, 512))
    with pytest.raises(FileNotFoundError, match="no MSCPT tile images in .*selection.json missing"):
        from mgpath.baselines.mscpt_data import load_tile_images
        load_tile_images(tmp_path / "none")
    (tmp_path / "slides" / "s0.tiff").unlink()
    with pytest.raises(FileNotFoundError, match=r"reads its low-magnification tile images from the slide named in"):
        cache_tile_images(tmp_path / "tiles" / "s0", tmp_path / "features/5x/s0.h5", [0], 32, {})
    (tmp_path / "foreign").mkdir()
    with pytest.raises(FileExistsError, match="foreign exists but was not written by the MSCPT tile selection"):
        cache_tile_images(tmp_path / "foreign", tmp_path / "features/5x/s1.h5", [0], 32, {})
    base = yaml.safe_load(config.read_text())
    base["methods"]["mscpt"].pop("clip_checkpoint")
    with pytest.raises(ValueError, match="mscpt needs clip_checkpoint in the config"):
        method_config(base, "mscpt")
    base["methods"]["mscpt"]["n_tile"] = 3
    with pytest.raises(ValueError, match="'n_tile' is not a setting of mscpt .*did you mean 'n_tiles'"):
        method_config(base, "mscpt")


def test_official_recipe_selects_on_its_score_and_checkpoints_leave_out_the_clip(tmp_path, clip_folder):
    """``recipe: official``: the best (macro-F1 + AUC) / 2 epoch, first of equals, early stopping; the checkpoint
    holds no frozen CLIP tensor and loads only with the CLIP it was trained on."""
    from mgpath.baselines import MSCPTModule
    from mgpath.baselines.mscpt_module import mscpt_selection_score
    from mgpath.cli import main
    from mgpath.selection import BestCheckpoint

    assert mscpt_selection_score({"f1": 0.5, "auc": 0.9, "acc": 0.75}) == pytest.approx(0.7)
    assert mscpt_selection_score({"f1": 0.5, "auc": 0.9, "acc": 0.75}, "f1_acc") == pytest.approx(0.625)
    config = _cohort(tmp_path, clip_folder)
    cfg = yaml.safe_load(config.read_text())
    cfg["methods"]["mscpt"].update(recipe="official", patience=3)
    cfg["trainer"]["max_epochs"] = 2
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    assert main(["benchmark", "--config", str(config), "--methods", "mscpt", "--folds", "0", "--out", str(out)]) == 0
    result = json.loads((out / "mscpt" / "fold_0" / "result.json").read_text())
    ckpt = torch.load(result["checkpoint"], weights_only=True, map_location="cpu")
    (ck_key,) = [k for k in ckpt["callbacks"] if k.startswith("BestCheckpoint")]
    assert "val/mscpt_score" in ck_key and "'mode': 'max'" in ck_key
    assert not [k for k in ckpt["state_dict"] if k.startswith("model.clip.")]
    assert "model.p_input" in ckpt["state_dict"] and "model.text_zs" in ckpt["state_dict"]
    module = MSCPTModule.load_from_checkpoint(result["checkpoint"], weights_only=True)
    assert torch.equal(module.model.p_input, ckpt["state_dict"]["model.p_input"])
    cbs = module.configure_callbacks()
    best = next(c for c in cbs if isinstance(c, BestCheckpoint))
    assert (best.monitor, best.mode, best.ties) == ("val/mscpt_score", "max", "first")
    other = write_tiny_clip(tmp_path / "other_clip", seed=1)
    with pytest.raises(ValueError, match="was trained on a CLIP whose weights have SHA-256"):
        MSCPTModule.load_from_checkpoint(result["checkpoint"], weights_only=True, clip_checkpoint=str(other))
    with pytest.raises(ValueError, match="selection_score one of"):
        MSCPTModule(cfg["methods"]["mscpt"]["descriptions"], str(clip_folder), cfg["methods"]["mscpt"]["select_prompts"],
                    32, CLASSES, selection_score="auc")
