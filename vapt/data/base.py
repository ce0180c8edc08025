"""Shared pieces of the image-classification DataModules: a list dataset, a resumable sampler,
and a base ``LightningDataModule`` that checks its splits before training starts."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

Sample = tuple[str, int]


class DataError(ValueError):
    """A dataset on disk does not match what the configuration expects."""


class ListDataset(Dataset):
    """Images listed as ``(absolute_path, label)`` pairs.

    ``dataset[i]`` returns ``(image, label)`` with ``image`` the transformed PIL image, typically
    a float tensor ``(3, H, W)``, and ``label`` an int.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, label


class EpochSeededRandomSampler(Sampler[int]):
    """Random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same order as an uninterrupted one (the global RNG is not part of a checkpoint).
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())


def read_list_file(list_file: Path, image_root: Path) -> list[Sample]:
    """Read ``relative/path label`` lines into ``(absolute_path, label)`` pairs.

    Raises ``DataError`` naming the file and line for a malformed line or a missing image.
    """
    if not list_file.is_file():
        raise DataError(f"Split file {list_file} does not exist; check the data root or the split name.")
    samples: list[Sample] = []
    missing: list[str] = []
    with open(list_file) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(
                    f"{list_file}:{lineno}: expected 'relative/path label', got {line!r}; "
                    "each line must be an image path and an integer class id."
                )
            path = image_root / parts[0]
            if not path.is_file():
                missing.append(f"{list_file}:{lineno}: {path}")
            samples.append((str(path), int(parts[1])))
    if missing:
        head = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} image(s) named in {list_file} do not exist:\n  {head}{more}\n"
            "Re-export or re-download the dataset, or fix the split file."
        )
    if not samples:
        raise DataError(f"Split file {list_file} lists no images.")
    return samples


def check_labels(samples: Sequence[Sample], num_classes: int, where: str) -> None:
    """Raise ``DataError`` if a label falls outside ``[0, num_classes)``."""
    bad = [(p, y) for p, y in samples if not 0 <= y < num_classes]
    if bad:
        top = max(y for _, y in samples)
        raise DataError(
            f"{where}: {len(bad)} label(s) outside [0, {num_classes}) (largest label {top}, e.g. {bad[0][0]}); "
            f"the configured num_classes={num_classes} disagrees with the data. Fix num_classes in the config "
            "or the labels in the split file."
        )


class ClassificationDataModule(pl.LightningDataModule):
    """Base DataModule: subclasses implement ``_split_samples(split) -> list[(path, label)]``.

    Parameters
    ----------
    batch_size : int
        Batch size per device.
    num_workers : int
        DataLoader worker processes.
    img_size : int
        Square input size fed to the model (linked to the model's ``img_size`` by the CLI).
    normalize : bool
        ImageNet mean/std normalisation (the official recipe) or plain [0, 1] inputs.
    seed : int
        Seed of the training order (see ``EpochSeededRandomSampler``).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 224,
        normalize: bool = True,
        seed: int = 0,
        pin_memory: bool = True,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.img_size = img_size
        self.normalize = normalize
        self.seed = seed
        self.pin_memory = pin_memory
        self.datasets: dict[str, ListDataset] = {}

    # -- to implement ---------------------------------------------------------------------------
    num_classes: int

    def _split_samples(self, split: str) -> list[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, stage: str) -> Callable:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- common ---------------------------------------------------------------------------------
    def _use_splits(self, train: str | None, val: str | None, test: str | None) -> None:
        """Which split (list file, json stem or sub-folder) feeds each loop; predict reads the test split."""
        self.splits = {"train": train, "val": val, "test": test, "predict": test}

    def _split_name(self, stage: str) -> str | None:
        return self.splits[stage]

    def _stages_for(self, stage: str | None) -> list[str]:
        return {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["train", "val", "test"],
        }[stage]

    def class_names(self) -> list[str] | None:
        """Names of classes ``0..num_classes-1`` when the dataset knows them (``None`` otherwise)."""
        return None

    def use_predict_images(self, source: str | os.PathLike | None) -> None:
        """Predict on a folder or list file of (unlabelled) images instead of the test split
        (see :func:`vapt.data.images.unlabelled_samples`); ``None`` goes back to the test split."""
        self.predict_source = source
        self.datasets.pop("predict", None)

    def _load(self, which: str) -> None:
        if which == "predict" and getattr(self, "predict_source", None) and which not in self.datasets:
            from vapt.data.images import unlabelled_samples

            self.datasets[which] = ListDataset(unlabelled_samples(self.predict_source), self._transform("test"))
            return
        split = self._split_name(which)
        if split is None or which in self.datasets:
            return
        samples = self._split_samples(split)
        check_labels(samples, self.num_classes, f"{type(self).__name__} split {split!r}")
        self.datasets[which] = ListDataset(samples, self._transform(which))

    def setup(self, stage: str | None = None) -> None:
        """Read and check every split the stage needs (missing files and bad labels fail here)."""
        for which in self._stages_for(stage):
            self._load(which)

    def _loader(self, which: str, train: bool = False) -> DataLoader:
        self._load(which)
        ds = self.datasets[which]
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochSeededRandomSampler(len(ds), self.seed) if train else None,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        if self._split_name("val") is None:
            return []
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if self._split_name("test") is None:
            raise DataError(f"{type(self).__name__}: no test split configured (test_split is null).")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


def registry_num_classes(kind: str, name: str, known: int, given: int | None) -> int:
    """The registry's class count, or a `DataError` when a configured ``num_classes`` disagrees with it."""
    if given is not None and given != known:
        raise DataError(f"{kind} {name!r} has {known} classes but the config says num_classes={given}; "
                        f"remove data.num_classes or set it to {known}.")
    return known
