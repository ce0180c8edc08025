"""WSIFeatureDataModule refuses bad inputs at setup, naming the file (not mid-training, not a template)."""
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from test_mgpath_train import ROOT, D, _datamodule, _grid

from mgpath.data import WSIFeatureDataModule


def _rewrite(path, features):
    with h5py.File(path, "w") as h:
        h["features"] = features
        h["coords"] = _grid(int(np.sqrt(len(features))))


def test_nan_inf_and_wrong_dimension_refused_at_setup_naming_the_file(tmp_path):
    dm = _datamodule(tmp_path, n_per_class=8)
    split = pd.read_csv(tmp_path / "splits" / "splits_0.csv")
    val_id, test_id = split["val"].dropna().iloc[0], split["test"].dropna().iloc[-1]
    bad = tmp_path / "features" / "10x" / f"{val_id}.h5"
    f = np.random.default_rng(0).normal(size=(36, D)).astype(np.float32)
    f[3, 1] = np.inf
    _rewrite(bad, f)
    with pytest.raises(ValueError, match=rf"1 unusable feature file\(s\): {bad}: NaN/inf in 1 of 36 tiles"):
        dm.setup()
    _rewrite(bad, np.ones((36, D), np.float32))
    wrong = tmp_path / "features" / "5x" / f"{test_id}.h5"
    _rewrite(wrong, np.ones((9, D + 3), np.float32))
    dm2 = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root=str(tmp_path / "features"))
    with pytest.raises(ValueError, match=rf"{wrong}: feature dimension {D + 3}, the other files have {D}"):
        dm2.setup()
    shape_only = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv,
                                      features_root=str(tmp_path / "features"), check_features="shape")
    with pytest.raises(ValueError, match="feature dimension"):
        shape_only.setup()
    _rewrite(wrong, np.ones((9, D), np.float32))
    dm3 = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root=str(tmp_path / "features"))
    dm3.setup()
    assert len(dm3.datasets["test"]) == len(split["test"].dropna())


def test_empty_val_is_refused_and_fold_template_is_filled(tmp_path):
    from mgpath.lightning_cli import make_cli

    _datamodule(tmp_path, n_per_class=8)
    sp = tmp_path / "splits" / "splits_1.csv"
    df = pd.read_csv(sp)
    df["val"] = np.nan
    df.to_csv(sp, index=False)
    args = ["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv", str(tmp_path / "labels.csv"),
            "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"), "--data.fold", "1",
            "--data.features_root", str(tmp_path / "features"), "--model.feature_dim", str(D),
            "--model.descriptions", str(ROOT / "data/prompts/demo.json"), "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    cli = make_cli(args, run=False)
    with pytest.raises(ValueError, match=rf"the val column of {sp} is empty"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not list((tmp_path / "run").rglob("best-*.ckpt"))  # no meaningless "best"
    df.loc[0, "train"] = "no_such_slide"
    df.to_csv(sp, index=False)
    dm = WSIFeatureDataModule(str(tmp_path / "labels.csv"), ["class_a", "class_b"],
                              str(tmp_path / "splits" / "splits_{fold}.csv"), fold=1,
                              features_root=str(tmp_path / "features"))
    with pytest.raises(KeyError) as e:
        dm.setup()
    assert str(sp) in str(e.value) and "{fold}" not in str(e.value) and "no_such_slide" in str(e.value)


def test_on_missing_drop_covers_slides_without_features(tmp_path):
    dm = _datamodule(tmp_path, n_per_class=8)
    split = pd.read_csv(tmp_path / "splits" / "splits_0.csv")
    gone = split["test"].dropna().tolist()[:2]
    for s in gone:  # e.g. slides `mgpath tile` skipped
        (tmp_path / "features" / "10x" / f"{s}.h5").unlink()
    with pytest.raises(FileNotFoundError, match=rf"no features for slide '{gone[0]}'.*2 test slide\(s\)"):
        dm.setup()
    drop = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root=str(tmp_path / "features"),
                                on_missing="drop")
    with pytest.warns(UserWarning, match=r"2 test slide\(s\) of .*splits_0.csv have no features") as rec:
        drop.setup()
    assert all(s in str(rec[0].message) for s in gone)
    assert set(drop.datasets["test"].slide_ids) == set(split["test"].dropna()) - set(gone)
    with pytest.raises(ValueError, match="on_missing must be"):
        WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root="x", on_missing="skip")


def test_vapt_checkpoint_given_to_mgpath_is_one_clear_line(tmp_path, capsys):
    from mgpath.cli import main

    _datamodule(tmp_path, n_per_class=8)
    vapt_ckpt = tmp_path / "vapt_epoch=1.ckpt"
    torch.save({"state_dict": {"backbone.blocks.0.attn.qkv.weight": torch.zeros(3, 3),
                               "prompt.tokens": torch.zeros(1, 10, 3), "head.weight": torch.zeros(2, 3)},
                "epoch": 1, "global_step": 8, "pytorch-lightning_version": "2.6.6",
                "hyper_parameters": {"model_name": "vit_base_patch16_224"}}, vapt_ckpt)
    args = ["test", "--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv",
            str(tmp_path / "labels.csv"), "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"),
            "--data.features_root", str(tmp_path / "features"), "--model.feature_dim", str(D),
            "--model.descriptions", str(ROOT / "data/prompts/demo.json"), "--ckpt_path", str(vapt_ckpt),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(vapt_ckpt) in err[0] and "vapt (ViT prompt-tuning) checkpoint" in err[0]
    assert "Traceback" not in err[0]


def test_augmented_bags_double_the_training_set_and_missing_ones_are_named(tmp_path):
    dm = _datamodule(tmp_path, n_per_class=8)
    aug = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root=str(tmp_path / "features"),
                               augmented=True)
    aug.setup()
    dm.setup()
    n = len(dm.datasets["train"])
    assert len(aug.datasets["train"]) == 2 * n  # 16 shots -> 32 items per epoch -> 64 with the copies
    assert aug.datasets["train"].slide_ids[n:] == [s + "#aug" for s in dm.datasets["train"].slide_ids]
    assert len(aug.datasets["val"]) == len(dm.datasets["val"])  # only training is augmented
    gone = dm.datasets["train"].slide_ids[0]
    (tmp_path / "features" / "augmented" / "5x" / f"{gone}.h5").unlink()
    again = WSIFeatureDataModule(dm.labels_csv, dm.classes, dm.split_csv, features_root=str(tmp_path / "features"),
                                 augmented=True)
    with pytest.raises(FileNotFoundError, match=rf"1 training slide\(s\) have no augmented bag.*{gone}.*--augment"):
        again.setup()


def test_official_clam_and_abmil_draw_slides_class_balanced_as_clams_weighted_sample(tmp_path):
    """CLAM's ``--weighted_sample``: ``WeightedRandomSampler(weights, len(weights))`` (with replacement), each
    slide weighted ``N / N_c`` (``make_weights_for_balanced_classes_split``, re-stated here)."""
    from types import SimpleNamespace

    from torch.utils.data import RandomSampler, WeightedRandomSampler

    from mgpath.baselines import ABMILModule, CLAMModule, TransMILModule
    from mgpath.data import class_balanced_weights

    w = class_balanced_weights([0, 1, 0, 0, 2, 1])
    assert w.dtype == torch.float64 and w.tolist() == [2.0, 3.0, 2.0, 2.0, 6.0, 3.0]
    dm = _datamodule(tmp_path, n_per_class=8)
    dm.setup()
    labels = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0][:len(dm.datasets["train"])]
    dm.datasets["train"].labels = labels  # an unbalanced train part: 3 of class 1
    n = len(labels)
    cases = [(CLAMModule(D, ["a", "b"], recipe="official"), True),
             (ABMILModule(D, ["a", "b"], recipe="official"), True),
             (CLAMModule(D, ["a", "b"]), False),
             (TransMILModule(D, ["a", "b"], recipe="official"), False)]
    for module, balanced in cases:
        dm.trainer = SimpleNamespace(lightning_module=module)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, WeightedRandomSampler if balanced else RandomSampler)
        if balanced:
            ref = torch.tensor([n / labels.count(y) for y in labels], dtype=torch.float64)
            assert torch.equal(sampler.weights, ref) and sampler.replacement and sampler.num_samples == n
            torch.manual_seed(7)
            drawn = list(sampler)
            torch.manual_seed(7)
            assert drawn == torch.multinomial(ref, n, True).tolist()  # the order CLAM's loader draws
    dm.weighted_sample = False  # data.weighted_sample overrides the recipe
    dm.trainer = SimpleNamespace(lightning_module=CLAMModule(D, ["a", "b"], recipe="official"))
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    dm.weighted_sample, dm.trainer = True, None
    assert isinstance(dm.train_dataloader().sampler, WeightedRandomSampler)
