"""Data loading (this project / CLAM / TRIDENT files), splits, learning, CLI configs and the fold runner."""
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mgpath.data import WSIFeatureDataModule, load_bag, read_split_csv
from mgpath.graph import tile_adjacency
from mgpath.io import find_feature_file, read_features
from mgpath.splits import check_no_leakage, make_kshot_splits, write_split_csv

ROOT = Path(__file__).resolve().parents[2]
D = 16


def _grid(side):
    return np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 512


def make_cohort(root: Path, classes=("class_a", "class_b"), n_per_class=14, seed=0, slides_per_patient=1, dim=D):
    """Generated features with a planted signal: class c shifts a quarter of its tiles along direction c."""
    rng = np.random.default_rng(seed)
    aug_rng = np.random.default_rng(seed + 1000)  # augmented copies (features/augmented/<mag>/)
    dirs = rng.normal(size=(len(classes), dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rows = []
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            sid = f"{name}_{i:02d}"
            rows.append({"slide_id": sid, "case_id": f"{name}_p{i // slides_per_patient}", "label": name})
            for mag, side in (("5x", 3), ("10x", 6)):
                n = side * side
                f = rng.normal(size=(n, dim)).astype(np.float32)
                f[rng.permutation(n)[: max(1, n // 3)]] += 3.5 * dirs[c]
                for sub, feats in ((mag, f), (f"augmented/{mag}", f + 0.05 * aug_rng.normal(size=f.shape))):
                    (root / "features" / sub).mkdir(parents=True, exist_ok=True)
                    with h5py.File(root / "features" / sub / f"{sid}.h5", "w") as h:
                        h["features"] = feats.astype(np.float32)
                        h["coords"] = _grid(side)
    labels = pd.DataFrame(rows)
    labels.to_csv(root / "labels.csv", index=False)
    return labels


def test_reads_project_clam_and_trident_files(tmp_path):
    rng = np.random.default_rng(0)
    coords = _grid(3)[[0, 1, 2, 3, 4, 6]]  # a hole at grid position 5
    feats = rng.normal(size=(6, D)).astype(np.float32)
    expected = torch.from_numpy(tile_adjacency(coords, 512))
    # this project: features + coords + adjacency (neighbour index)
    with h5py.File(tmp_path / "ours.h5", "w") as h:
        h["features"], h["coords"], h["adjacency"] = feats, coords, expected.numpy()
        h.attrs["patch_size_level0"] = 512
    # CLAM: h5_files/<id>.h5 (features + coords, no attrs) and pt_files/<id>.pt
    (tmp_path / "clam" / "h5_files").mkdir(parents=True)
    (tmp_path / "clam" / "pt_files").mkdir()
    with h5py.File(tmp_path / "clam" / "h5_files" / "s1.h5", "w") as h:
        h["features"], h["coords"] = feats, coords
    torch.save(torch.from_numpy(feats), tmp_path / "clam" / "pt_files" / "s1.pt")
    # TRIDENT: features (N, D), coords with attributes on the dataset
    with h5py.File(tmp_path / "trident.h5", "w") as h:
        h["features"] = feats[None]  # a leading batch axis is tolerated
        h["coords"] = coords
        h["coords"].attrs["patch_size_level0"] = 512
    # edge-list adjacency
    edges = np.array([[j, i] for i in range(6) for j in expected[i].tolist() if j >= 0]).T
    with h5py.File(tmp_path / "edges.h5", "w") as h:
        h["features"], h["coords"], h["adjacency"] = feats, coords, edges
    for p in [tmp_path / "ours.h5", tmp_path / "clam" / "h5_files" / "s1.h5", tmp_path / "clam" / "pt_files" / "s1.pt",
              tmp_path / "trident.h5", tmp_path / "edges.h5"]:
        bag, _c = load_bag(p)
        np.testing.assert_array_equal(bag.features.numpy(), feats)
        nb = bag.neighbours
        for i in range(6):  # same neighbour sets, whatever the column order
            assert sorted(x for x in nb[i].tolist() if x >= 0) == sorted(x for x in expected[i].tolist() if x >= 0)
    assert expected[0].tolist() == [-1, 1, -1, 3] and expected[4].tolist()[1] == -1  # hole has no neighbour
    assert find_feature_file(tmp_path / "clam", "s1").name == "s1.h5"


def test_bad_feature_files(tmp_path):
    with h5py.File(tmp_path / "empty.h5", "w") as h:
        h["features"] = np.zeros((0, D), np.float32)
        h["coords"] = np.zeros((0, 2), np.int64)
    with pytest.raises(ValueError, match="empty bag"):
        load_bag(tmp_path / "empty.h5", "s", "5x")
    f = np.ones((4, D), np.float32)
    f[2, 3] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as h:
        h["features"], h["coords"] = f, _grid(2)
    with pytest.raises(ValueError, match="NaN/inf features in 1 tiles"):
        load_bag(tmp_path / "nan.h5", "s", "5x")
    with h5py.File(tmp_path / "coords_only.h5", "w") as h:
        h["coords"] = _grid(2)
    with pytest.raises(KeyError, match="no 'features'"):
        read_features(tmp_path / "coords_only.h5")
    with pytest.raises(FileNotFoundError, match="no features for slide 'x'"):
        find_feature_file(tmp_path, "x")


def test_kshot_splits_grouped_stratified_and_official_format(tmp_path):
    labels = make_cohort(tmp_path, classes=("A", "B", "C"), n_per_class=12, slides_per_patient=3)
    folds = make_kshot_splits(labels, k=4, n_folds=3, val_frac=0.5, seed=1)
    lab = dict(zip(labels.slide_id, labels.label))
    case = dict(zip(labels.slide_id, labels.case_id))
    trains = []
    for split in folds:
        check_no_leakage(split, labels)
        assert sorted(pd.Series([lab[s] for s in split["train"]]).value_counts().tolist()) == [4, 4, 4]
        parts = {p: {case[s] for s in ids} for p, ids in split.items()}
        assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
        assert not (parts["val"] & parts["test"])
        assert {lab[s] for s in split["test"]} == {"A", "B", "C"}
        trains.append(frozenset(split["train"]))
    assert len(set(trains)) == 3  # folds differ
    write_split_csv(folds[0], tmp_path / "s.csv")
    # official column order (NSCLC files are test,val,train)
    df = pd.read_csv(tmp_path / "s.csv")[["test", "val", "train"]]
    df.to_csv(tmp_path / "official.csv")
    assert read_split_csv(tmp_path / "official.csv") == folds[0]
    leaky = {"train": folds[0]["train"], "val": [], "test": [s for s in labels.slide_id if case[s] in
                                                             {case[t] for t in folds[0]["train"]}]}
    with pytest.raises(ValueError, match="is in both train and test"):
        check_no_leakage(leaky, labels)
    with pytest.raises(ValueError, match="lower --k"):
        make_kshot_splits(labels, k=12)
    from mgpath.splits import main
    assert main(["--labels", str(tmp_path / "labels.csv"), "--shots", "2", "--num_folds", "2", "--out",
                 str(tmp_path / "sp")]) == 0
    assert (tmp_path / "sp" / "splits_1.csv").is_file() and (tmp_path / "sp" / "summary.csv").is_file()


def _datamodule(tmp_path, classes=("class_a", "class_b"), **kw):
    labels = make_cohort(tmp_path, classes, **kw)
    for f, split in enumerate(make_kshot_splits(labels, k=6, n_folds=2, val_frac=0.25, seed=3, classes=list(classes))):
        write_split_csv(split, tmp_path / "splits" / f"splits_{f}.csv")
    return WSIFeatureDataModule(str(tmp_path / "labels.csv"), list(classes), str(tmp_path / "splits" / "splits_{fold}.csv"),
                                features_root=str(tmp_path / "features"), cache=True)


def test_learns_planted_signal(tmp_path):
    """Few-shot training on generated bags with a planted signal reaches test AUC > 0.95."""
    from mgpath.module import MGPATHModule
    torch.manual_seed(0)
    dm = _datamodule(tmp_path, n_per_class=20)
    dm.setup()
    assert dm.feature_dim == D and len(dm.datasets["train"]) == 12
    m = MGPATHModule(str(ROOT / "data/prompts/demo.json"), D, list(dm.classes), embed_dim=32,
                     text_model="mgpath-tiny", n_ctx=4, n_sets=2, n_prompts=8, lr=5e-3)
    opt = m.configure_optimizers()
    train = [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]
    m.train()
    for epoch in range(6):
        for i in torch.randperm(len(train)).tolist():
            loss = torch.nn.functional.cross_entropy(m([train[i]["bags"]]), torch.tensor([train[i]["label"]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    test = dm.datasets["test"]
    with torch.no_grad():
        probs = torch.cat([m([test[i]["bags"]]).softmax(-1) for i in range(len(test))])
    y = torch.tensor(test.labels)
    auc = m.metrics["test"]["auc"]
    auc.update(probs, y)
    pos, neg = probs[y == 1, 1], probs[y == 0, 1]  # independent check: Mann-Whitney AUC
    mw = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean().item()
    assert abs(auc.compute().item() - mw) < 1e-6
    assert auc.compute().item() > 0.95


def test_multiclass_auroc_ignores_absent_classes():
    from mgpath.module import SlideAUROC
    m = SlideAUROC(3)
    m.update(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]]), torch.tensor([0, 1, 0, 1]))
    assert m.compute().item() == pytest.approx(1.0)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs" / "wsi").glob("*.yaml")))
def test_every_shipped_config_runs(tmp_path, config):
    """torchgeo-style: each shipped config runs fit + test (fast_dev_run) on generated data, tiny text tower."""
    from mgpath.lightning_cli import main
    cfg = yaml.safe_load((ROOT / "configs" / "wsi" / config).read_text())
    classes = cfg["data"]["classes"]
    _datamodule(tmp_path, classes=tuple(classes), n_per_class=8)
    args = ["--config", str(ROOT / "configs" / "wsi" / config), "--data.labels_csv", str(tmp_path / "labels.csv"),
            "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"),
            "--data.features_root", str(tmp_path / "features"), "--data.num_workers", "0",
            "--model.descriptions", str(ROOT / cfg["model"]["descriptions"]), "--model.feature_dim", str(D),
            "--model.embed_dim", "32", "--model.text_model", "mgpath-tiny", "--model.text_checkpoint", "null",
            "--model.quick_gelu", "false", "--model.n_prompts", "8", "--trainer.fast_dev_run", "1",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(["fit", *args]) == 0
    assert main(["test", *args]) == 0
    if config == "demo_tiny.yaml":  # predict writes one row per test slide
        assert main(["predict", *args]) == 0
        pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
        assert len(pred) > 0 and np.allclose(pred[[f"p_{c}" for c in classes]].sum(1), 1, atol=1e-5)
        logs = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
        assert main(["predict", *args]) == 0  # a second prediction goes beside the first, and logs nothing
        assert pd.read_csv(tmp_path / "run" / "predictions_2.csv").equals(pred)
        assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == sorted(
            [*logs, (tmp_path / "run" / "predictions_2.csv").relative_to(tmp_path)])


def test_feature_dim_disagreeing_with_config(tmp_path):
    from mgpath.lightning_cli import make_cli
    _datamodule(tmp_path, n_per_class=8)
    cli = make_cli(["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv", str(tmp_path / "labels.csv"),
                    "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"), "--data.features_root",
                    str(tmp_path / "features"), "--model.feature_dim", "7", "--trainer.fast_dev_run", "1",
                    "--model.descriptions", str(ROOT / "data/prompts/demo.json")], run=False)
    with pytest.raises(ValueError, match="dimension 16 but model.feature_dim is 7"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_missing_magnification_and_unknown_label(tmp_path):
    dm = _datamodule(tmp_path, n_per_class=8)
    for p in (tmp_path / "features" / "10x").glob("class_a_0*.h5"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no features for slide 'class_a_0"):
        dm.setup()
    dm2 = WSIFeatureDataModule(dm.labels_csv, ["class_a", "other"], dm.split_csv, features_root=str(tmp_path / "features"))
    with pytest.raises(KeyError, match="label\\(s\\) \\['class_b'\\]"):
        dm2.setup()
    with pytest.raises(KeyError, match="no feature folder for magnification"):
        WSIFeatureDataModule(dm.labels_csv, ["class_a"], dm.split_csv, feature_dirs={"5x": "a"})


def test_fold_runner_writes_per_fold_and_mean_std(tmp_path):
    from mgpath.folds import main
    _datamodule(tmp_path, n_per_class=8)
    out = tmp_path / "runs"
    rc = main(["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--folds", "0", "1", "--out", str(out),
               "--data.labels_csv", str(tmp_path / "labels.csv"), "--data.split_csv",
               str(tmp_path / "splits" / "splits_{fold}.csv"), "--data.features_root", str(tmp_path / "features"),
               "--model.feature_dim", str(D), "--model.descriptions", str(ROOT / "data/prompts/demo.json"),
               "--trainer.max_epochs", "2"])
    assert rc == 0
    table = pd.read_csv(out / "results.csv", index_col=0)
    assert list(table.index.astype(str)) == ["0", "1", "mean", "std", "std_ddof0"]
    for c in ("auc", "f1", "acc"):
        vals = table.loc[["0", "1"], c].astype(float)
        assert table.loc["mean", c] == pytest.approx(vals.mean(), abs=1e-4)
        assert table.loc["std", c] == pytest.approx(vals.std(ddof=1), abs=1e-4)
        assert table.loc["std_ddof0", c] == pytest.approx(vals.std(ddof=0), abs=1e-4)  # official np.std
        assert 0 <= vals.min() and vals.max() <= 1
    md = (out / "results.md").read_text()
    assert "mean ± std" in md and "| fold | test auc |" in md
    assert any((out / "fold_0").rglob("*.ckpt"))
