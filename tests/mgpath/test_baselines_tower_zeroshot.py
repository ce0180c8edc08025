"""Zero-shot rows with a vision-language model's own towers: the prompt files in the publisher's layout, the classifier and
top-j pooling against CONCH's ``zero_shot_classifier`` / ``topj_pooling`` re-stated on a random PLIP folder
(HF CLIPModel), and the benchmark's methods and refusals."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mgpath.baselines import TowerZeroShotModule
from mgpath.baselines.tower_zeroshot import read_zeroshot_prompts
from mgpath.benchmark import method_config

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["LUAD", "LUSC"]


def test_bad_prompt_files_are_refused(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"classnames": {"LUAD": ["a"]}, "templates": ["CLASSNAME."]}))
    with pytest.raises(ValueError, match=r"p.json: no class names for class\(es\) \['LUSC'\]"):
        read_zeroshot_prompts(bad, CLASSES)
    bad.write_text(json.dumps({"classnames": {"LUAD": "a", "LUSC": "b"}, "templates": ["an image"]}))
    with pytest.raises(ValueError, match="has no CLASSNAME"):
        read_zeroshot_prompts(bad, CLASSES)
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read the zero-shot prompt file"):
        read_zeroshot_prompts(bad, CLASSES)


def test_plip_zero_shot_equals_the_publisher_protocol(plip_folder, tmp_path):
    folder, hf = plip_folder
    prompts = {"classnames": {"LUAD": ["adenocarcinoma", "lung adenocarcinoma"], "LUSC": ["squamous carcinoma"]},
               "templates": ["CLASSNAME.", "an H&E image of CLASSNAME.", "CLASSNAME is shown."]}
    (tmp_path / "p.json").write_text(json.dumps({"0": prompts}))  # CONCH's own layout
    m = TowerZeroShotModule(str(tmp_path / "p.json"), 48, CLASSES, text_model="plip", text_checkpoint=str(folder),
                            magnifications=["5x", "20x"], topj=3).eval()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 48, generator=g) for n in (7, 2)]
    with torch.no_grad():
        ours = m([{"20x": types.SimpleNamespace(features=f)} for f in feats])
        # CONCH zero_shot_classifier: per class, normalised embeddings of names x templates, mean, normalise
        import open_clip

        tok = open_clip.get_tokenizer("ViT-B-32")
        clf = []
        for c in CLASSES:
            texts = [t.replace("CLASSNAME", n) for n in prompts["classnames"][c] for t in prompts["templates"]]
            # HF CLIP get_text_features: text_projection of the pooled (final-LN end-of-text) state
            e = F.normalize(hf.text_projection(hf.text_model(input_ids=tok(texts)).pooler_output), dim=-1)
            clf.append(e.mean(0) / e.mean(0).norm())
        clf = torch.stack(clf, 1)
        for f, row in zip(feats, ours):  # run_mizero: normalised tiles @ classifier, mean of the top j per class
            sim = F.normalize(f, dim=-1) @ clf
            ref = sim.topk(min(3, len(f)), 0).values.mean(0) * hf.logit_scale.exp()
            torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="extract the tiles with the same model's image tower"):
        TowerZeroShotModule(str(tmp_path / "p.json"), 64, CLASSES, text_model="plip", text_checkpoint=str(folder))


def test_benchmark_zero_shot_methods_and_refusals(tmp_path):
    base = {"model": {"feature_dim": 512, "descriptions": "d.json"}, "data": {}}
    with pytest.raises(ValueError, match="zeroshot_conch needs prompts and text_checkpoint"):
        method_config(base, "zeroshot_conch")
    base["methods"] = {"zeroshot_quiltnet": {"prompts": "p.json", "text_checkpoint": "q.bin", "topj": 10}}
    cfg, train = method_config(base, "zeroshot_quiltnet")
    assert not train and cfg["model"] == {"class_path": "mgpath.baselines.TowerZeroShotModule", "init_args": {
        "feature_dim": 512, "text_model": "quiltnet", "prompts": "p.json", "text_checkpoint": "q.bin", "topj": 10}}


def test_benchmark_and_report_show_a_zero_shot_row(tmp_path, randomise):
    """`mgpath benchmark --methods zeroshot_quiltnet` on a QuiltNet-layout open_clip folder: tested, not trained;
    its row in `mgpath report`."""
    import open_clip
    import pandas as pd
    import yaml
    from test_baselines_benchmark import _bench_config
    from test_mgpath_train import D

    from mgpath.cli import main

    model_cfg = {"embed_dim": D, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    q = tmp_path / "quilt"
    q.mkdir()
    (q / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    clip = randomise(open_clip.CLIP(**model_cfg)).eval()
    torch.save(clip.state_dict(), q / "open_clip_pytorch_model.bin")
    (tmp_path / "p.json").write_text(json.dumps({"classnames": {"class_a": ["gland"], "class_b": ["sheet"]},
                                                 "templates": ["CLASSNAME.", "an image of CLASSNAME."]}))
    m = TowerZeroShotModule(str(tmp_path / "p.json"), D, ["class_a", "class_b"], text_model="quiltnet",
                            text_checkpoint=str(q))
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():  # open_clip encode_text(normalize=True), mean over the templates, normalised
        ref = torch.stack([F.normalize(F.normalize(clip.encode_text(tok([f"{n}.", f"an image of {n}."])), dim=-1)
                                       .mean(0), dim=0) for n in ("gland", "sheet")])
    torch.testing.assert_close(m.model.classifier, ref, atol=1e-5, rtol=1e-5)
    assert float(m.model.logit_scale) == float(clip.logit_scale)
    cfg = _bench_config(tmp_path, {"zeroshot_quiltnet": {"prompts": str(tmp_path / "p.json"),
                                                         "text_checkpoint": str(q), "topj": 5}})
    out = tmp_path / "runs"
    assert main(["benchmark", "--config", str(cfg), "--methods", "zeroshot_quiltnet", "--folds", "0",
                 "--out", str(out)]) == 0
    r = json.loads((out / "zeroshot_quiltnet" / "fold_0" / "result.json").read_text())
    assert 0 <= r["auc"] <= 1 and r["class_path"] == "mgpath.baselines.TowerZeroShotModule"
    written = yaml.safe_load((out / "zeroshot_quiltnet" / "config.yaml").read_text())["model"]["init_args"]
    assert written["text_model"] == "quiltnet" and written["topj"] == 5
    assert main(["report", str(out)]) == 0
    table = pd.read_csv(out / "report.csv", index_col=0)
    assert "zeroshot_quiltnet" in table.index
