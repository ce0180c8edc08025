"""Exact resume of `mgpath fit` on CPU (RNG states in the checkpoint) and resumable `mgpath folds`."""
import json

import lightning.pytorch as pl
import pytest
import torch
from test_mgpath_train import ROOT, D, _datamodule

from mgpath.lightning_cli import make_cli


class Crash(pl.Callback):
    """Stands for kill -9: raises at (epoch, batch); nothing is written on the way out."""

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            raise KeyboardInterrupt("killed")


def _args(tmp_path, root, model):
    args = ["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv", str(tmp_path / "labels.csv"),
            "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"),
            "--data.features_root", str(tmp_path / "features"), "--data.cache", "false",
            "--model.descriptions", str(ROOT / "data/prompts/demo.json"), "--model.feature_dim", str(D),
            "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(root)]
    if model == "abmil":  # dropout 0.25 on: the RNG also drives the dropout masks
        args += ["--model.class_path", "mgpath.baselines.ABMILModule", "--model.init_args.hidden", "16",
                 "--model.init_args.attention_dim", "8", "--model.init_args.lr", "0.01"]
    return args


def _fit(tmp_path, root, model, crash=None, ckpt_path=None):
    cli = make_cli(_args(tmp_path, root, model), run=False)
    if crash:
        cli.trainer.callbacks.append(Crash(*crash))
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except (KeyboardInterrupt, SystemExit):
        assert crash
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


@pytest.mark.parametrize("model", ["mgpath", "abmil"])
def test_fit_resume_is_bit_exact_after_a_kill(tmp_path, model):
    _datamodule(tmp_path, n_per_class=8)
    full = _fit(tmp_path, tmp_path / "full", model)
    for name, crash in (("boundary", (2, 0)), ("mid_epoch", (2, 3))):
        root = tmp_path / name
        _fit(tmp_path, root, model, crash=crash)
        last = root / "checkpoints" / "last.ckpt"
        assert torch.load(last, weights_only=True)["epoch"] == 1  # the end of epoch 1 is on disk
        resumed = _fit(tmp_path, root, model, ckpt_path=str(last))
        assert resumed.keys() == full.keys()
        for k in full:
            assert torch.equal(resumed[k], full[k]), f"{model} {name}: {k} differs after resume"


def test_folds_resume_skips_finished_and_restarts_a_killed_fold_cleanly(tmp_path, monkeypatch, capsys):
    from mgpath import folds

    _datamodule(tmp_path, n_per_class=8)
    out = tmp_path / "runs"
    args = ["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--folds", "0", "1", "--out", str(out),
            "--data.labels_csv", str(tmp_path / "labels.csv"), "--data.split_csv",
            str(tmp_path / "splits" / "splits_{fold}.csv"), "--data.features_root", str(tmp_path / "features"),
            "--model.feature_dim", str(D), "--model.descriptions", str(ROOT / "data/prompts/demo.json"),
            "--trainer.max_epochs", "2"]
    real = folds.run_fold

    def killed_in_fold_1(config, k, fold_dir, overrides=None, train=True):
        if k == 1:  # fold 1 dies after its first epoch's checkpoint was written
            overrides = [*(overrides or []), "--trainer.max_epochs", "1"]
            real(config, k, fold_dir, overrides, train)
            (fold_dir / "result.json").unlink()
            raise KeyboardInterrupt("killed")
        return real(config, k, fold_dir, overrides, train)

    monkeypatch.setattr(folds, "run_fold", killed_in_fold_1)
    with pytest.raises(KeyboardInterrupt):
        folds.main(args)
    fold0 = json.loads((out / "fold_0" / "result.json").read_text())
    assert any((out / "fold_1" / "checkpoints").glob("*.ckpt")) and not (out / "fold_1" / "result.json").exists()
    monkeypatch.setattr(folds, "run_fold", real)
    capsys.readouterr()
    assert folds.main(args) == 0
    assert "fold 0: finished earlier" in capsys.readouterr().out
    assert json.loads((out / "fold_0" / "result.json").read_text()) == fold0  # not rerun
    ckpts = sorted(p.name for p in (out / "fold_1" / "checkpoints").glob("*.ckpt"))
    assert not [n for n in ckpts if "-v1" in n], ckpts  # the killed run's files were cleared first
    assert len([n for n in ckpts if n.startswith("best-")]) == 1 and "last.ckpt" in ckpts
    assert json.loads((out / "fold_1" / "result.json").read_text())["checkpoint"].endswith(".ckpt")
    (out / "fold_x").mkdir()
    (out / "fold_x" / "mine.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="was not made by `mgpath folds`"):
        folds._clean_fold_dir(out / "fold_x")
