"""DataModules: VTAB-1k registry and folder layout, FGVC json splits, ImageFolder, transforms, and the clear
errors for a missing folder, a split file naming a missing image, and a class count that disagrees."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vapt.data import (
    FGVC_DATASETS,
    VTAB_TASKS,
    DataError,
    DemoShapesDataModule,
    FGVCDataModule,
    ImageFolderDataModule,
    VTABDataModule,
    get_task,
    tasks_in_group,
)
from vapt.data.base import EpochSeededRandomSampler
from vapt.data.synthetic import write_fgvc_tree, write_vtab_tree
from vapt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    fgvc_eval_transform,
    fgvc_train_transform,
    vtab_transform,
)
from vapt.training.module import PromptTuningModule


@pytest.fixture()
def vtab_root(tmp_path):
    return write_vtab_tree(tmp_path / "vtab-1k", ["cifar100", "dtd", "svhn"], img_size=12)


def test_registry_matches_the_paper():
    assert len(VTAB_TASKS) == 19
    assert [len(tasks_in_group(g)) for g in ("natural", "specialized", "structured")] == [7, 4, 8]
    counts = {t.name: t.num_classes for t in VTAB_TASKS.values()}
    assert counts["cifar100"] == 100 and counts["sun397"] == 397 and counts["kitti"] == 4
    assert counts["clevr_count"] == 8 and counts["clevr_dist"] == 6 and counts["dsprites_ori"] == 16
    assert counts["smallnorb_azi"] == 18 and counts["smallnorb_ele"] == 9 and counts["diabetic_retinopathy"] == 5
    assert get_task("cifar").name == "cifar100" and get_task("cifar100").folder == "cifar"
    assert {d: FGVC_DATASETS[d].num_classes for d in FGVC_DATASETS} == {
        "cub": 200, "nabirds": 555, "flowers": 102, "dogs": 120, "cars": 196}
    with pytest.raises(DataError, match="Unknown VTAB-1k task 'cifar10'"):
        get_task("cifar10")


def test_vtab_layout_splits_and_labels(vtab_root):
    dm = VTABDataModule(root=str(vtab_root), task="cifar100", train_split="train800", val_split="val200",
                        num_workers=0, batch_size=4, img_size=16)
    dm.setup("fit")
    lines = (vtab_root / "cifar" / "train800.txt").read_text().split()
    assert len(dm.datasets["train"]) == 8 and dm.num_classes == 100
    assert dm.datasets["train"].samples[1] == (str(vtab_root / "cifar" / lines[2]), int(lines[3]))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    # a task folder given directly as the root works too
    dm2 = VTABDataModule(root=str(vtab_root / "dtd"), task="dtd", num_workers=0)
    dm2.setup("test")
    assert len(dm2.datasets["test"]) == 8


def test_vtab_transform_is_tf_style_bilinear_resize_and_imagenet_norm(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = vtab_transform(224)(img)
    ref = torch.from_numpy(arr).permute(2, 0, 1).float().div(255)[None]
    ref = F.interpolate(ref, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)[0]
    ref = (ref - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, ref, atol=1e-5)
    # no augmentation: deterministic
    assert torch.equal(vtab_transform(224)(img), out)
    big = Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    assert fgvc_train_transform(224)(big).shape == (3, 224, 224)
    assert fgvc_eval_transform(384)(big).shape == (3, 384, 384)
    assert torch.equal(fgvc_eval_transform(224)(big), fgvc_eval_transform(224)(big))


def test_fgvc_json_splits_remap_class_ids(tmp_path):
    root = write_fgvc_tree(tmp_path / "CUB", "cub", sizes={"train": 6, "val": 3, "test": 4}, first_class_id=1)
    dm = FGVCDataModule(root=str(root), dataset="cub", num_workers=0, img_size=16)
    dm.setup(None)
    ann = json.loads((root / "train.json").read_text())
    assert sorted(y for _, y in dm.datasets["train"].samples) == sorted(v - 1 for v in ann.values())
    assert all(Path(p).is_file() and "/images/" in p for p, _ in dm.datasets["train"].samples)
    assert dm.datasets["val"][0][0].shape == (3, 16, 16)


def test_image_folder(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), test_split=None, num_workers=0, img_size=16)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2
    assert sorted(y for _, y in dm.datasets["val"].samples) == [0, 0, 1, 1]
    (tmp_path / "val" / "bird").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(DataError, match="absent from the training split.*bird"):
        ImageFolderDataModule(root=str(tmp_path), test_split=None, num_workers=0).setup("fit")
    with pytest.raises(DataError, match="has 2 class folders but the config says num_classes=3"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=3)


def test_missing_folder_errors(tmp_path, vtab_root):
    with pytest.raises(DataError, match="does not exist; pass --data.init_args.root"):
        VTABDataModule(root=str(tmp_path / "nowhere"), task="dtd").setup("fit")
    with pytest.raises(DataError, match=r"No VTAB-1k task folder for 'eurosat'.*eurosat/train800.txt"):
        VTABDataModule(root=str(vtab_root), task="eurosat").setup("fit")
    with pytest.raises(DataError, match="FGVC root .* does not exist"):
        FGVCDataModule(root=str(tmp_path / "nope"), dataset="dogs").setup("fit")


def test_split_file_naming_a_missing_image(vtab_root, tmp_path):
    os.remove(vtab_root / "dtd" / "images" / "train800" / "000003.jpg")
    with pytest.raises(DataError, match=r"1 image\(s\) named in .*train800.txt do not exist:\n.*train800.txt:4"):
        VTABDataModule(root=str(vtab_root), task="dtd", train_split="train800").setup("fit")
    (vtab_root / "dtd" / "val200.txt").write_text("images/val200/000000.jpg\n")
    with pytest.raises(DataError, match="expected 'relative/path label'"):
        VTABDataModule(root=str(vtab_root), task="dtd", val_split="val200").setup("validate")
    root = write_fgvc_tree(tmp_path / "dogs", "dogs")
    os.remove(next((root / "Images").rglob("test_*.jpg")))
    with pytest.raises(DataError, match=r"1 image\(s\) named in .*test.json do not exist"):
        FGVCDataModule(root=str(root), dataset="dogs").setup("test")


def test_class_count_disagreement(vtab_root, tmp_path):
    with pytest.raises(DataError, match="'cifar100' has 100 classes but the config says num_classes=10"):
        VTABDataModule(root=str(vtab_root), task="cifar100", num_classes=10)
    shutil.copy(vtab_root / "svhn" / "images" / "test" / "000000.jpg", vtab_root / "svhn" / "images" / "test" / "x.jpg")
    with open(vtab_root / "svhn" / "test.txt", "a") as fh:  # (listing 000000.jpg again is now a duplicate-line error)
        fh.write("images/test/x.jpg 10\n")  # svhn has 10 classes: 10 is out of range
    with pytest.raises(DataError, match=r"outside \[0, 10\).*num_classes=10 disagrees with the data"):
        VTABDataModule(root=str(vtab_root), task="svhn").setup("test")
    with pytest.raises(DataError, match="'flowers' has 102 classes but the config says num_classes=100"):
        FGVCDataModule(root=str(tmp_path), dataset="flowers", num_classes=100)


def test_errors_come_before_training(vtab_root, tmp_path):
    os.remove(vtab_root / "dtd" / "images" / "train800val200" / "000000.jpg")
    model = PromptTuningModule(num_classes=47, backbone="vit_tiny_patch16_224", img_size=16,
                               backbone_kwargs={"patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 1})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path))
    with pytest.raises(DataError, match="do not exist"):
        trainer.fit(model, VTABDataModule(root=str(vtab_root), task="dtd", num_workers=0, img_size=16))
    assert trainer.global_step == 0


def test_epoch_seeded_sampler_is_resumable():
    s = EpochSeededRandomSampler(50, seed=3)
    s.set_epoch(2)
    a = list(s)
    s2 = EpochSeededRandomSampler(50, seed=3)
    s2.set_epoch(2)
    assert a == list(s2) and sorted(a) == list(range(50))
    s2.set_epoch(3)
    assert list(s2) != a


def test_demo_data_is_generated_once_and_deterministic(tmp_path):
    dm = DemoShapesDataModule(root=str(tmp_path), train_size=8, val_size=4, test_size=4, image_pixels=12)
    dm.prepare_data()
    first = (dm.task_dir / "train800.txt").read_text()
    mtime = (dm.task_dir / "test.txt").stat().st_mtime_ns
    dm.prepare_data()
    assert (dm.task_dir / "test.txt").stat().st_mtime_ns == mtime  # reused, not rewritten
    other = DemoShapesDataModule(root=str(tmp_path / "b"), train_size=8, val_size=4, test_size=4, image_pixels=12)
    other.prepare_data()
    assert (other.task_dir / "train800.txt").read_text() == first
    a = np.asarray(Image.open(dm.task_dir / "images/train800/000000.png"))
    b = np.asarray(Image.open(other.task_dir / "images/train800/000000.png"))
    assert np.array_equal(a, b)
    lines = (dm.task_dir / "train800val200.txt").read_text().splitlines()
    assert len(lines) == 12 and sorted({int(l.split()[1]) for l in lines}) == [0, 1, 2, 3]
