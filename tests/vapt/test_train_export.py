"""scripts/export_vtab_tfds.py against a stand-in for tensorflow_datasets (TF is an optional extra): the official
slices are requested, labels are derived as in task_adaptation, and the output reads back with VTABDataModule."""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np

from vapt.data import VTABDataModule

REPO = Path(__file__).resolve().parents[2]


class FakeBuilder:
    sizes: ClassVar[dict[str, int]] = {"train": 27000, "test": 5000, "validation": 3000}

    def __init__(self, name, data_dir=None):
        self.name, self.requested = name, []
        self.info = types.SimpleNamespace(
            splits={k: types.SimpleNamespace(num_examples=v) for k, v in self.sizes.items()})

    def download_and_prepare(self):
        pass

    def as_dataset(self, split, shuffle_files=False):
        FakeBuilder.log.append((self.name, split))
        m = re.fullmatch(r"(\w+)(?:\[(\d*)(%?):(\d*)(%?)\])?", split)
        base, a, _, b, _ = m.groups()
        n = self.sizes[base]
        lo, hi = int(a or 0), int(b or n)
        if "%" in split:
            lo, hi = n * int(a or 0) // 100, n * int(b or 100) // 100
        rng = np.random.default_rng(lo)
        for i in range(min(hi - lo, 3)):  # a few examples are enough
            yield {"image": rng.integers(0, 2, size=(8, 8, 1), dtype=np.uint8) if "dsprites" in self.name
                   else rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
                   "label": (lo + i) % 10, "label_x_position": 31, "label_orientation": 39}


FakeBuilder.log = []


def load_export(monkeypatch):
    fake = types.ModuleType("tensorflow_datasets")
    fake.builder = FakeBuilder
    fake.as_numpy = lambda ds: ds
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    spec = importlib.util.spec_from_file_location("export_vtab_tfds", REPO / "scripts" / "export_vtab_tfds.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "export_vtab_tfds", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_export_slices_layout_and_readback(monkeypatch, tmp_path):
    mod = load_export(monkeypatch)
    FakeBuilder.log.clear()
    assert mod.main(["--out", str(tmp_path), "--tasks", "eurosat,dsprites_loc,dtd"]) == 0
    log = FakeBuilder.log
    # eurosat: 60/20/20 of TFDS train (27000 here) -> val200 at 16200, test from 80 %
    assert ("eurosat/rgb:2.0.0", "train[:800]") in log
    assert ("eurosat/rgb:2.0.0", "train[16200:16400]") in log and ("eurosat/rgb:2.0.0", "train[21600:]") in log
    assert ("dsprites:2.0.0", "train[21600:21800]") in log and ("dsprites:2.0.0", "train[24300:]") in log
    assert ("dtd:3.0.1", "validation[:200]") in log and ("dtd:3.0.1", "test") in log
    for task, folder in (("eurosat", "eurosat"), ("dsprites_loc", "dsprites_loc"), ("dtd", "dtd")):
        lines = (tmp_path / folder / "train800val200.txt").read_text().splitlines()
        assert len(lines) == 6  # 3 + 3 (the fake yields 3 per slice), images duplicated under their own folder
        assert all(l.startswith("images/train800val200/") for l in lines)
        dm = VTABDataModule(root=str(tmp_path), task=task, train_split="train800val200", val_split="val200",
                            num_workers=0, img_size=16)
        dm.setup(None)
        assert dm.datasets["train"][0][0].shape == (3, 16, 16)
    # dsprites x position 31 of 32 -> bin 15 of 16
    assert {l.split()[1] for l in (tmp_path / "dsprites_loc" / "test.txt").read_text().splitlines()} == {"15"}


def test_label_functions_follow_task_adaptation(monkeypatch):
    mod = load_export(monkeypatch)
    clevr = {"objects": {"size": np.zeros(5), "pixel_coords": np.array([[0, 0, 9.2], [0, 0, 12.0]])}}
    assert mod._clevr_count(clevr) == 2 and mod._clevr_dist(clevr) == 3
    kitti = {"objects": {"type": np.array([0, 3]), "location": np.array([[0, 0, 15.0], [0, 0, 2.0]])}}
    assert mod._kitti_closest_vehicle(kitti) == 1  # the pedestrian at 2 m is not a vehicle
    assert mod._kitti_closest_vehicle({"objects": {"type": np.array([4]), "location": np.zeros((1, 3))}}) == 3
    assert mod._binned("label_orientation", 40)({"label_orientation": 39}) == 15
    assert mod._binned("label_orientation", 40)({"label_orientation": 2}) == 0
    assert set(mod.EXPORTS) == set(__import__("vapt.data.vtab", fromlist=["VTAB_TASKS"]).VTAB_TASKS)
