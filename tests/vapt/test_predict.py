"""`vapt predict --predict_images`: a plain folder or a list file of images, class names beside the ids; the
predictions are the model's own argmax over the same images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vapt.data import DataError, ImageFolderDataModule
from vapt.data.images import unlabelled_samples
from vapt.data.transforms import vtab_transform
from vapt.training.lightning_cli import build_cli, main

CLASSES = ("cat", "dog", "owl")
TINY = json.dumps({"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 1})


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    for i, c in enumerate(CLASSES):
        _png(tmp_path / "pets" / "train" / c / "a.png", i)
    for k in range(3):
        _png(tmp_path / "unlabelled" / ("sub" if k == 2 else "") / f"img{k}.png", 10 + k)
    (tmp_path / "unlabelled" / "notes.txt").write_text("not an image")
    return tmp_path


def _args(tree: Path, out: Path, *extra: str) -> list[str]:
    return ["--seed_everything=0", "--model=vapt.training.module.PromptTuningModule", "--model.backbone=vit_tiny_patch16_224",
            f"--model.backbone_kwargs={TINY}", "--model.method=vapt", "--model.num_tokens=2",
            "--model.kernel_size=2", "--model.hidden_dim=4",
            "--data=vapt.data.ImageFolderDataModule", f"--data.root={tree / 'pets'}", "--data.val_split=null",
            "--data.test_split=null", "--data.img_size=16", "--data.batch_size=2", "--data.num_workers=0",
            "--data.augment=false", f"--predictions_csv={out}", "--trainer.logger=false",
            f"--trainer.default_root_dir={tree / 'runs'}",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.devices=1", *extra]


def _reference(tree: Path, paths: list[str]) -> list[int]:
    """argmax of the same (seeded) model on the same images, built and run here."""
    cli = build_cli(_args(tree, tree / "unused.csv"), run=False)
    model = cli.model.model.eval()
    tf = vtab_transform(16, True)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        return model(x).argmax(-1).tolist()


def test_predict_on_a_plain_folder_writes_class_names(tree):
    out = tree / "pred.csv"
    assert main(["predict", *_args(tree, out, f"--predict_images={tree / 'unlabelled'}")]) == 0
    rows = list(csv.DictReader(out.open()))
    expected_paths = sorted(str(p) for p in (tree / "unlabelled").rglob("*.png"))
    assert [r["path"] for r in rows] == expected_paths  # recursive, images only, sorted
    assert [int(r["pred"]) for r in rows] == _reference(tree, expected_paths)
    for r in rows:
        assert r["label"] == "" and r["label_name"] == "" and r["pred_name"] == CLASSES[int(r["pred"])]
        assert 1 / 3 <= float(r["prob"]) <= 1


def test_predict_on_a_list_file_keeps_given_labels(tree):
    lst = tree / "lists" / "few.txt"
    lst.parent.mkdir()
    lst.write_text(f"# my images\n../unlabelled/img0.png\n{tree / 'unlabelled' / 'img1.png'} 2\n\n")
    out = tree / "pred.csv"
    assert main(["predict", *_args(tree, out, f"--predict_images={lst}")]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).resolve() for r in rows] == [tree / "unlabelled" / "img0.png", tree / "unlabelled" / "img1.png"]
    assert (rows[0]["label"], rows[1]["label"], rows[1]["label_name"]) == ("", "2", "owl")


def test_bad_predict_sources_name_the_file(tree, capsys):
    lst = tree / "bad.txt"
    lst.write_text("missing.png\n")
    with pytest.raises(DataError, match=r"bad.txt:1: .*missing.png"):
        unlabelled_samples(lst)
    with pytest.raises(DataError, match="holds no image"):
        unlabelled_samples((tree / "empty").mkdir() or tree / "empty")
    assert main(["predict", *_args(tree, tree / "p.csv", f"--predict_images={tree / 'nope'}")]) == 2
    assert "--predict_images" in capsys.readouterr().err and not (tree / "p.csv").exists()


def test_image_folder_runs_are_named_after_the_dataset(tree):
    dm = ImageFolderDataModule(str(tree / "pets"), val_split=None, test_split=None)
    assert dm.class_names() == list(CLASSES)
    logged = ["--trainer.logger=true"]
    cli = build_cli(_args(tree, tree / "unused.csv", *logged), run=False)
    assert Path(cli.trainer.logger.log_dir).parent.parent.name == "pets"  # runs/pets/vapt/version_0
    named = build_cli(_args(tree, tree / "unused.csv", *logged, "--data.name=my_pets"), run=False)
    assert Path(named.trainer.logger.log_dir).parent.parent.name == "my_pets"


def test_class_names_from_classes_txt(tmp_path):
    from vapt.data import FGVCDataModule, VTABDataModule

    assert VTABDataModule(root=str(tmp_path / "absent"), task="dtd").class_names() is None  # own images only
    task = tmp_path / "vtab" / "dtd"
    task.mkdir(parents=True)
    (task / "test.txt").write_text("")
    dm = VTABDataModule(root=str(tmp_path / "vtab"), task="dtd")
    assert dm.class_names() is None
    (task / "classes.txt").write_text("".join(f"texture_{i}\n" for i in range(47)))
    assert dm.class_names() == [f"texture_{i}" for i in range(47)]
    (task / "classes.txt").write_text("banded\nblotchy\n")
    with pytest.raises(DataError, match=r"classes.txt names 2 classes but the dataset has 47"):
        dm.class_names()
    cub = tmp_path / "CUB"
    cub.mkdir()
    (cub / "classes.txt").write_text("".join(f"{i + 1} {i + 1:03d}.Bird_{i}\n" for i in range(200)))  # CUB's own
    assert FGVCDataModule(root=str(cub), dataset="cub").class_names()[:2] == ["001.Bird_0", "002.Bird_1"]


def test_predicting_a_run_leaves_its_logs_and_earlier_predictions_alone(tree, capsys):
    """A run fitted with default loggers, then predicted from its own config.yaml (which pins logger version 0)
    and from a config with other hyper-parameters (the checkpoint's own are used)."""
    runs = tree / "runs"
    fit = [a for a in _args(tree, tree / "unused.csv") if not a.startswith(("--trainer.logger", "--predictions_csv"))]
    assert main(["fit", *fit, "--trainer.max_epochs=1"]) == 0
    run = next(runs.rglob("version_0"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "metrics.csv" in before and "config.yaml" in before
    ckpt = str(next(run.rglob("last.ckpt")))
    own = ["--config", str(run / "config.yaml"), f"--ckpt_path={ckpt}", f"--predict_images={tree / 'unlabelled'}"]
    assert main(["predict", *own]) == 0
    assert main(["predict", "--config", str(run), *own[2:]]) == 0  # the run folder works as --config too
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before and sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    first, second = runs / "predictions.csv", runs / "predictions_2.csv"
    assert first.read_text() == second.read_text()  # the second run went beside the first, not over it
    out = capsys.readouterr().out
    assert f"wrote {first}" in out and f"wrote {second}" in out
    # an explicit file that exists is refused before any work, in one line (exit 2)
    assert main(["predict", *own, f"--predictions_csv={first}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; predictions never replace an earlier file" in err[0]
    # other hyper-parameters on the command line: the checkpoint's are used, same predictions
    other = _args(tree, tree / "other.csv", f"--ckpt_path={ckpt}", f"--predict_images={tree / 'unlabelled'}")
    other = [a.replace("--model.num_tokens=2", "--model.num_tokens=5") for a in other]
    assert main(["predict", *other]) == 0
    assert (tree / "other.csv").read_text() == first.read_text()
    # testing from the run's config.yaml logs into a new version, never over version_0's metrics.csv
    assert main(["test", "--config", str(run / "config.yaml"), f"--ckpt_path={ckpt}",
                 "--data.test_split=train"]) == 0
    assert (run / "metrics.csv").read_bytes() == before["metrics.csv"]
    assert (run.parent / "version_1" / "metrics.csv").is_file()
