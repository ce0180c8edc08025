"""Slide bags from feature files, labels and split CSVs, and the LightningDataModule for MGPATH.

Directory layout (one features folder per magnification)::

    FEATURES_ROOT/5x/<slide_id>.h5        this project (``mgpath extract``), TRIDENT (features_<enc>/ folder)
    FEATURES_ROOT/10x/<slide_id>.h5
    FEATURES_ROOT/10x/h5_files/<slide_id>.h5 or pt_files/<slide_id>.pt      CLAM output folders also found

or an explicit ``feature_dirs: {5x: /path/a, 10x: /path/b}`` mapping. A features h5 has ``features`` (N, D)
(a leading batch axis of 1 is dropped), ``coords`` (N, 2) level-0 top-left, and optionally ``adjacency``
(a 4-neighbour index (N, 4) with -1 for none, or an edge list (2, E)); without it the adjacency is computed
from the coordinates. A CLAM ``.pt`` file is a (N, D) tensor; its coordinates are looked up in a sibling
``h5_files/<slide_id>.h5`` if present, otherwise the slide has no graph edges (self loops only).

Labels CSV: columns ``slide_id, case_id, label``. Split CSV (official MGPATH/CLAM format, also written by
``mgpath splits``): columns ``train, val, test`` in any order, one slide id per cell, ragged columns padded
with empty cells.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover
    import pytorch_lightning as pl

from mgpath.graph import bag_neighbours
from mgpath.io import find_feature_file, read_features
from mgpath.model import Bag

__all__ = [
    "SlideBagDataset",
    "WSIFeatureDataModule",
    "collate_slides",
    "load_bag",
    "read_labels",
    "read_split_csv",
]


def load_bag(path: str | os.PathLike, slide_id: str = "", magnification: str = "") -> tuple[Bag, np.ndarray | None]:
    """One slide at one magnification as a :class:`~mgpath.model.Bag` (features float32 + neighbours) and its
    coords. Raises on empty bags and NaN features."""
    rec = read_features(path)
    where = f"slide {slide_id!r} at {magnification} ({path})" if slide_id else str(path)
    if len(rec["features"]) == 0:
        raise ValueError(f"mgpath/data.py: empty bag: {where} has 0 tiles; check its tissue segmentation or "
                         "remove it from the labels/splits")
    if not np.isfinite(rec["features"]).all():
        bad = int((~np.isfinite(rec["features"])).any(1).sum())
        raise ValueError(f"mgpath/data.py: {where} has NaN/inf features in {bad} tiles; re-extract the features")
    return Bag(torch.from_numpy(rec["features"]), bag_neighbours(rec, path)), rec["coords"]


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Labels CSV with columns ``slide_id, case_id, label`` (extra columns kept; ids as strings)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"mgpath/data.py: labels CSV {path} does not exist; set data.labels_csv (columns "
                                "slide_id, case_id, label)")
    df = pd.read_csv(path, dtype=str)
    missing = {"slide_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"mgpath/data.py: labels CSV {path} lacks column(s) {sorted(missing)}; expected "
                         "slide_id, case_id, label")
    if "case_id" not in df.columns:
        warnings.warn(f"{path} has no case_id column; each slide is treated as its own patient")
        df["case_id"] = df["slide_id"]
    df["slide_id"] = df["slide_id"].str.strip()
    df["slide_id"] = df["slide_id"].str.replace(r"\.(svs|tif|tiff|ndpi|mrxs|h5|pt)$", "", regex=True)
    if df["slide_id"].duplicated().any():
        raise ValueError(f"mgpath/data.py: duplicate slide ids in {path}: "
                         f"{df['slide_id'][df['slide_id'].duplicated()].tolist()[:5]}")
    return df.reset_index(drop=True)


def read_split_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Official/CLAM split CSV -> ``{"train": [...], "val": [...], "test": [...]}`` (any column order)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"mgpath/data.py: split CSV {path} does not exist; make one with `mgpath splits` "
                                "or set data.split_csv / data.fold")
    df = pd.read_csv(path, dtype=str)
    df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
    out = {}
    for part in ("train", "val", "test"):
        if part not in df.columns:
            raise ValueError(f"mgpath/data.py: split CSV {path} lacks a {part!r} column (has {list(df.columns)})")
        out[part] = [s.strip() for s in df[part].dropna().tolist() if s.strip()]
    return out


class SlideBagDataset(Dataset):
    """Slides as ``{"slide_id", "label", "bags": {mag: Bag}}``; files are read lazily (or cached)."""

    def __init__(self, slide_ids: list[str], labels: list[int], files: list[dict[str, Path]], cache: bool = False):
        self.slide_ids, self.labels, self.files = list(slide_ids), list(labels), list(files)
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.slide_ids)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        bags = {m: load_bag(p, self.slide_ids[i], m)[0] for m, p in self.files[i].items()}
        item = {"slide_id": self.slide_ids[i], "label": self.labels[i], "bags": bags}
        if self.cache is not None:
            self.cache[i] = item
        return item


def collate_slides(items: list[dict]) -> dict:
    """A batch of slides: ``slide_ids`` list, ``labels`` (B,), ``slides`` list of ``{mag: Bag}``."""
    return {"slide_ids": [it["slide_id"] for it in items],
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "slides": [it["bags"] for it in items]}


class WSIFeatureDataModule(pl.LightningDataModule):
    """Few-shot slide bags for MGPATH.

    Parameters
    ----------
    labels_csv : CSV with ``slide_id, case_id, label``.
    classes : class names in logit order; every label must be one of them.
    split_csv : split CSV path; ``{fold}`` in it is replaced by ``fold``.
    features_root : folder with one subfolder per magnification (``5x/``, ``10x/``).
    feature_dirs : explicit ``{mag: folder}`` (overrides ``features_root``).
    magnifications : magnifications to load (default 5x and 10x).
    augmented_dirs : optional ``{mag: folder}`` of features of augmented tiles; training slides found there are
        added as extra bags (the paper's doubled training set).
    on_missing : a split slide without label row: ``"raise"`` (default) or ``"drop"`` (with a warning).
    batch_size : slides per step (official 1). cache : keep loaded bags in memory.
    """

    def __init__(self, labels_csv: str, classes: list[str], split_csv: str, fold: int = 0,
                 features_root: str | None = None, feature_dirs: dict[str, str] | None = None,
                 magnifications: list[str] | None = None, augmented_dirs: dict[str, str] | None = None,
                 on_missing: str = "raise", batch_size: int = 1, num_workers: int = 0, cache: bool = False):
        super().__init__()
        self.labels_csv, self.classes, self.split_csv, self.fold = labels_csv, list(classes), split_csv, fold
        self.magnifications = list(magnifications or ["5x", "10x"])
        if feature_dirs is None:
            if features_root is None:
                raise ValueError("mgpath/data.py: give features_root (with 5x/, 10x/ subfolders) or feature_dirs")
            feature_dirs = {m: os.path.join(features_root, m) for m in self.magnifications}
        missing = [m for m in self.magnifications if m not in feature_dirs]
        if missing:
            raise KeyError(f"mgpath/data.py: no feature folder for magnification(s) {missing}; add them to "
                           "feature_dirs")
        self.feature_dirs = {m: feature_dirs[m] for m in self.magnifications}
        self.augmented_dirs = augmented_dirs
        self.on_missing, self.batch_size, self.num_workers, self.cache = on_missing, batch_size, num_workers, cache
        self.datasets: dict[str, SlideBagDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _part(self, ids: list[str], table: pd.DataFrame, part: str, dirs: dict[str, str]) -> tuple:
        lab = dict(zip(table["slide_id"], table["label"]))
        unknown = [s for s in ids if s not in lab]
        if unknown:
            msg = (f"mgpath/data.py: {len(unknown)} {part} slide(s) of {self.split_csv} are not in {self.labels_csv} "
                   f"(e.g. {unknown[:3]})")
            if self.on_missing == "raise":
                raise KeyError(msg + "; fix the files or set on_missing: drop")
            warnings.warn(msg + "; dropped")
            ids = [s for s in ids if s in lab]
        bad = sorted({lab[s] for s in ids} - set(self.classes))
        if bad:
            raise KeyError(f"mgpath/data.py: label(s) {bad} in {self.labels_csv} are not among classes "
                           f"{self.classes}; add them to `classes` (and to the description file)")
        files = [{m: find_feature_file(d, s) for m, d in dirs.items()} for s in ids]
        return ids, [self.classes.index(lab[s]) for s in ids], files

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = read_labels(self.labels_csv)
        split = read_split_csv(str(self.split_csv).format(fold=self.fold))
        for part in ("train", "val", "test"):
            ids, labels, files = self._part(split[part], table, part, self.feature_dirs)
            if part == "train" and self.augmented_dirs:
                aug_ids, aug_labels, aug_files = [], [], []
                for s, y in zip(ids, labels):
                    try:
                        f = {m: find_feature_file(self.augmented_dirs[m], s) for m in self.magnifications}
                    except (FileNotFoundError, KeyError):
                        continue
                    aug_ids.append(s + "#aug")
                    aug_labels.append(y)
                    aug_files.append(f)
                ids, labels, files = ids + aug_ids, labels + aug_labels, files + aug_files
            self.datasets[part] = SlideBagDataset(ids, labels, files, cache=self.cache)
        if not self.datasets["train"]:
            raise ValueError(f"mgpath/data.py: the train part of {self.split_csv} is empty")

    @property
    def feature_dim(self) -> int:
        """Feature dimension of the first training slide."""
        self.setup()
        ds = self.datasets["train"]
        return int(read_features(ds.files[0][self.magnifications[0]])["features"].shape[1])

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(self.datasets[part], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=collate_slides)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)
