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
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from mgpath.graph import bag_neighbours
from mgpath.io import find_feature_file, read_features
from mgpath.model import Bag
from mgpath.splits import read_labels, read_split_csv

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
    augmented : add the augmented bag of every training slide (the paper's doubled training set, written by
        ``mgpath extract --augment`` into ``<features_root>/augmented/<mag>/``); a training slide without one
        is an error naming it.
    augmented_dirs : explicit ``{mag: folder}`` of augmented bags instead; training slides found there are
        added as extra bags, those without one are listed in a warning.
    on_missing : a split slide without a label row or without a features file: ``"raise"`` (default) or
        ``"drop"`` (left out, with a warning listing them).
    check_features : at ``setup``, ``"full"`` (default) reads every feature file once and refuses NaN/inf
        values, empty bags and a feature dimension that differs from the other files, naming each file;
        ``"shape"`` checks only the dimensions (h5 headers, cheap); ``"none"`` checks at load time only.
    batch_size : slides per step (official 1). cache : keep loaded bags in memory.
    weighted_sample : draw training slides with replacement, each with weight ``N / N_c`` (``N`` training bags,
        ``N_c`` of its class), ``N`` draws per epoch, as CLAM's ``--weighted_sample``
        (``make_weights_for_balanced_classes_split`` + ``WeightedRandomSampler``). ``None`` (default): as the
        model's recipe asks (its ``class_balanced_sampling``: CLAM-SB and ABMIL with ``recipe: official``);
        otherwise a shuffle without replacement.
    allow_invalid_split : train even when the split is scientifically invalid - a slide or patient
        (``case_id``) both in train and in val/test, or a train part that lacks a class - with a warning;
        by default such a split is refused naming the file and the first offenders.

    A split whose ``val`` column is empty is refused when validation runs (the "best" checkpoint would be
    selected on nothing): give validation slides, or turn validation off (``trainer.limit_val_batches: 0``,
    no monitored checkpoint).
    """

    def __init__(self, labels_csv: str, classes: list[str], split_csv: str, fold: int = 0,
                 features_root: str | None = None, feature_dirs: dict[str, str] | None = None,
                 magnifications: list[str] | None = None, augmented: bool = False,
                 augmented_dirs: dict[str, str] | None = None,
                 on_missing: str = "raise", check_features: str = "full", batch_size: int = 1,
                 num_workers: int = 0, cache: bool = False, weighted_sample: bool | None = None,
                 allow_invalid_split: bool = False):
        super().__init__()
        self.weighted_sample = weighted_sample
        self.allow_invalid_split = bool(allow_invalid_split)
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
        if on_missing not in ("raise", "drop"):
            raise ValueError(f"mgpath/data.py: on_missing must be 'raise' or 'drop', got {on_missing!r}")
        if check_features not in ("full", "shape", "none"):
            raise ValueError(f"mgpath/data.py: check_features must be 'full', 'shape' or 'none', got "
                             f"{check_features!r}")
        self.feature_dirs = {m: feature_dirs[m] for m in self.magnifications}
        self.augmented = bool(augmented)
        if augmented and augmented_dirs is None:
            if features_root is None:
                raise ValueError("mgpath/data.py: augmented: true reads <features_root>/augmented/<mag>/; give "
                                 "features_root or augmented_dirs")
            augmented_dirs = {m: os.path.join(features_root, "augmented", m) for m in self.magnifications}
        self.augmented_dirs = augmented_dirs
        self.on_missing, self.check_features = on_missing, check_features
        self.batch_size, self.num_workers, self.cache = batch_size, num_workers, cache
        self.datasets: dict[str, SlideBagDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _check_labels_known(self, ids: list[str], lab: dict[str, str]) -> None:
        """Refuse slides whose label is not among ``classes`` (before any check that counts classes)."""
        bad = sorted({lab[s] for s in ids if s in lab} - set(self.classes))
        if bad:
            raise KeyError(f"mgpath/data.py: label(s) {bad} in {self.labels_csv} are not among classes "
                           f"{self.classes}; add them to `classes` (and to the description file)")

    def _check_split(self, split: dict[str, list[str]], table: pd.DataFrame) -> None:
        """Refuse (or, with ``allow_invalid_split``, warn about) train/val/test overlap by slide or patient and
        a train part that lacks a class."""
        case = dict(zip(table["slide_id"], table["case_id"]))
        lab = dict(zip(table["slide_id"], table["label"]))
        problems = []
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            both = sorted(set(split[a]) & set(split[b]))
            if both:
                problems.append(f"slide(s) {both[:5]} are in both {a} and {b}")
                continue
            pa = {case.get(s, s) for s in split[a]}
            shared = sorted(s for s in split[b] if case.get(s, s) in pa)
            if shared:
                problems.append(f"{b} slide(s) {shared[:5]} share a patient (case_id) with {a} slides")
        present = {lab[s] for s in split["train"] if s in lab}
        absent = [c for c in self.classes if c not in present]
        if absent and present:
            problems.append(f"the train part has no slide of class(es) {absent}")
        if not problems:
            return
        msg = f"mgpath/data.py: split {self.split_path} is invalid: " + "; ".join(problems)
        if not self.allow_invalid_split:
            raise ValueError(msg + " (results would be meaningless); fix the split (mgpath splits makes "
                             "patient-grouped, stratified ones) or set data.allow_invalid_split: true")
        warnings.warn(msg + " (data.allow_invalid_split: true)", stacklevel=3)

    @property
    def split_path(self) -> str:
        """The split CSV of this fold (``{fold}`` filled in)."""
        return str(self.split_csv).format(fold=self.fold)

    def _drop_or_raise(self, msg: str, exc: type[Exception]) -> None:
        if self.on_missing == "raise":
            raise exc(msg + "; fix the files or set data.on_missing: drop")
        warnings.warn(msg + "; left out (data.on_missing: drop)", stacklevel=3)

    def _part(self, ids: list[str], table: pd.DataFrame, part: str, dirs: dict[str, str]) -> tuple:
        lab = dict(zip(table["slide_id"], table["label"]))
        unknown = [s for s in ids if s not in lab]
        if unknown:
            self._drop_or_raise(f"mgpath/data.py: {len(unknown)} {part} slide(s) of {self.split_path} are not in "
                                f"{self.labels_csv}: {unknown[:10]}", KeyError)
            ids = [s for s in ids if s in lab]
        self._check_labels_known(ids, lab)
        files, kept, errors = [], [], []
        for s in ids:
            try:
                files.append({m: find_feature_file(d, s) for m, d in dirs.items()})
                kept.append(s)
            except FileNotFoundError as e:
                errors.append((s, str(e)))
        if errors:
            first = errors[0][1].removeprefix("mgpath/io.py: ")
            self._drop_or_raise(f"mgpath/data.py: {first}; {len(errors)} {part} slide(s) of {self.split_path} "
                                f"have no features: {[s for s, _ in errors][:10]}", FileNotFoundError)
        return kept, [self.classes.index(lab[s]) for s in kept], files

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = read_labels(self.labels_csv)
        split = read_split_csv(self.split_path)
        self._check_labels_known([s for part in ("train", "val", "test") for s in split[part]],
                                 dict(zip(table["slide_id"], table["label"])))
        self._check_split(split, table)
        datasets = {}
        for part in ("train", "val", "test"):
            ids, labels, files = self._part(split[part], table, part, self.feature_dirs)
            if part == "train" and self.augmented_dirs:
                aug_ids, aug_labels, aug_files, lacking = [], [], [], []
                for s, y in zip(ids, labels):
                    try:
                        f = {m: find_feature_file(self.augmented_dirs[m], s) for m in self.magnifications}
                    except (FileNotFoundError, KeyError):
                        lacking.append(s)
                        continue
                    aug_ids.append(s + "#aug")
                    aug_labels.append(y)
                    aug_files.append(f)
                if lacking and self.augmented:
                    raise FileNotFoundError(
                        f"mgpath/data.py: {len(lacking)} training slide(s) have no augmented bag in "
                        f"{self.augmented_dirs}: {lacking[:10]}; run `mgpath extract --augment` with the same "
                        "--coords and --out (finished slides are kept) or set data.augmented: false")
                if lacking:
                    warnings.warn(f"mgpath/data.py: {len(lacking)} training slide(s) have no augmented bag in "
                                  f"{self.augmented_dirs}: {lacking[:10]}; they are used once", stacklevel=2)
                ids, labels, files = ids + aug_ids, labels + aug_labels, files + aug_files
            datasets[part] = SlideBagDataset(ids, labels, files, cache=self.cache)
        if not datasets["train"]:
            raise ValueError(f"mgpath/data.py: the train part of {self.split_path} is empty")
        if self.check_features != "none":
            _check_feature_files([f for ds in datasets.values() for item in ds.files for f in item.values()],
                                 full=self.check_features == "full")
        self.datasets = datasets

    @property
    def feature_dim(self) -> int:
        """Feature dimension of the first training slide."""
        self.setup()
        ds = self.datasets["train"]
        return int(read_features(ds.files[0][self.magnifications[0]])["features"].shape[1])

    def _loader(self, part: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        self.setup()
        return DataLoader(self.datasets[part], batch_size=self.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=self.num_workers, collate_fn=collate_slides)

    def _uses_weighted_sampling(self) -> bool:
        if self.weighted_sample is not None:
            return bool(self.weighted_sample)
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return bool(getattr(module, "class_balanced_sampling", False))

    def train_dataloader(self):
        self.setup()
        if not self._uses_weighted_sampling():
            return self._loader("train", True)
        weights = class_balanced_weights(self.datasets["train"].labels)
        return self._loader("train", True, WeightedRandomSampler(weights, len(weights), replacement=True))

    def val_dataloader(self):
        self.setup()
        if not self.datasets["val"]:
            raise ValueError(f"mgpath/data.py: the val column of {self.split_path} is empty, so the best checkpoint "
                             "would be chosen on nothing; add validation slides (mgpath splits --val-frac) or turn "
                             "validation off (--trainer.limit_val_batches 0, no monitored checkpoint)")
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)


def class_balanced_weights(labels: list[int]) -> torch.Tensor:
    """Sampling weight ``N / N_c`` of each of ``N`` bags, ``N_c`` the count of its class; (N,) float64."""
    counts = Counter(int(y) for y in labels)
    return torch.tensor([len(labels) / counts[int(y)] for y in labels], dtype=torch.float64)


def _check_feature_files(paths: list[Path], full: bool = True) -> None:
    """Refuse unusable feature files before training, naming each: unreadable, empty, NaN/inf values (``full``)
    or a feature dimension other than the one most files have."""

    from mgpath.io import read_features_header

    problems, dims = [], {}
    for p in dict.fromkeys(paths):
        try:
            if full:
                f = read_features(p)["features"]
                shape = f.shape
                if shape[0] and not np.isfinite(f).all():
                    problems.append(f"{p}: NaN/inf in {int((~np.isfinite(f)).any(1).sum())} of {shape[0]} tiles")
            else:
                shape = read_features_header(p)[1] if Path(p).suffix == ".h5" else read_features(p)["features"].shape
                shape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
        except (OSError, KeyError, ValueError) as e:
            problems.append(f"{p}: unreadable ({str(e).splitlines()[0]})")
            continue
        if shape[0] == 0:
            problems.append(f"{p}: 0 tiles")
        dims[p] = int(shape[-1])
    if dims:
        common = Counter(dims.values()).most_common(1)[0][0]
        problems += [f"{p}: feature dimension {d}, the other files have {common}" for p, d in dims.items()
                     if d != common]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"mgpath/data.py: {len(problems)} unusable feature file(s): " + "; ".join(problems[:5])
                         + more + "; re-extract them (mgpath extract --overwrite) or remove the slides from the split")
