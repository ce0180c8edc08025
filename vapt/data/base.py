"""Shared pieces of the image-classification DataModules: a list dataset, a resumable sampler, split-file
reading with its checks, and a base ``LightningDataModule`` that checks its splits before training starts."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from vapt.data.decode import DECODE_ERRORS, image_problem, load_rgb
from vapt.data.images import unlabelled_samples
from vapt.data.samples import DataError, Sample

BadImage = Literal["stop", "skip"]


class ListDataset(Dataset):
    """Images listed as ``(absolute_path, label)`` pairs.

    ``dataset[i]`` returns ``(image, label)`` with ``image`` the transformed 8-bit RGB image (16-bit files are
    scaled, see `vapt.data.decode`), typically a float tensor ``(3, H, W)``, and ``label`` an int.
    ``dataset[(i, epoch)]`` (what `EpochSeededRandomSampler` yields with ``tag_epoch``) runs the transform
    under a torch seed fixed by ``(seed, epoch, i)``, so random augmentation does not depend on the worker
    that loads the image, on the number of workers, or on whether the run was resumed.

    A file that cannot be decoded raises `DataError` naming it (``on_bad_image="stop"``) or is left out of
    its batch with a warning (``"skip"``; `collate_skipping` drops it, ``skipped`` lists it in this process).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, seed: int = 0,
                 on_bad_image: BadImage = "stop"):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            img = load_rgb(path)
        except DECODE_ERRORS as e:
            if self.on_bad_image == "stop":
                raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e}); replace or remove the "
                                "file, or set data.on_bad_image: skip.") from e
            warnings.warn(f"skipping {path}: cannot decode image ({type(e).__name__}: {e})", stacklevel=2)
            self.skipped.append(path)
            return None
        if self.transform is None:
            return img, label
        if epoch is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(img), label


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Torch seed of one training image's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


def collate_skipping(batch: list):
    """`default_collate` without the images `ListDataset` skipped (None entries)."""
    kept = [b for b in batch if b is not None]
    if not kept:
        raise DataError(f"every image of a batch of {len(batch)} was unreadable (skipped); see the warnings above.")
    return default_collate(kept)


class EpochSeededRandomSampler(Sampler[int]):
    """Random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same order as an uninterrupted one. ``tag_epoch=True`` yields ``(index, epoch)`` pairs, which
    `ListDataset` uses to seed each image's augmentation.
    """

    def __init__(self, num_samples: int, seed: int = 0, tag_epoch: bool = False):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.tag_epoch = tag_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        return iter([(i, self.epoch) for i in order] if self.tag_epoch else order)


def resolve_entry(image_root: Path, entry: str, where: str, allow_outside_root: bool) -> Path:
    """``image_root / entry``, refusing (`DataError` at ``where``) an entry that leaves the root.

    The test is on the path as written (``..`` parts, absolute paths), so symlinked images inside the root
    stay allowed.
    """
    path = Path(os.path.normpath(image_root / entry))
    root = Path(os.path.normpath(image_root))
    if not allow_outside_root and root not in path.parents:
        raise DataError(f"{where}: {entry!r} resolves outside the data root {root} ({path}); fix the split file, "
                        "or set data.allow_outside_root: true if the images really live elsewhere.")
    return path


def raise_missing(missing: Sequence[str], listed_in: Path, hint: str) -> None:
    """One `DataError` for the images of a split file that do not exist (first five named)."""
    if missing:
        head = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} image(s) named in {listed_in} do not exist:\n  {head}{more}\n{hint}")


def read_list_file(list_file: Path, image_root: Path, allow_outside_root: bool = False) -> list[Sample]:
    """Read ``relative/path label`` lines into ``(absolute_path, label)`` pairs.

    A UTF-8 byte-order mark is ignored. Raises ``DataError`` naming the file and line for a malformed or
    repeated line, a path leaving ``image_root`` (unless ``allow_outside_root``) or a missing image.
    """
    if not list_file.is_file():
        raise DataError(f"Split file {list_file} does not exist; check the data root or the split name.")
    samples: list[Sample] = []
    missing: list[str] = []
    first_line: dict[str, int] = {}
    with open(list_file, encoding="utf-8-sig") as fh:
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
            where = f"{list_file}:{lineno}"
            path = resolve_entry(image_root, parts[0], where, allow_outside_root)
            if str(path) in first_line:
                raise DataError(f"{where}: {parts[0]} is listed again (first at line {first_line[str(path)]}); "
                                "remove the duplicate line.")
            first_line[str(path)] = lineno
            if not path.is_file():
                missing.append(f"{where}: {path}")
            samples.append((str(path), int(parts[1])))
    raise_missing(missing, list_file, "Re-export or re-download the dataset, or fix the split file.")
    if not samples:
        raise DataError(f"Split file {list_file} lists no images.")
    return samples


def check_image_files(samples: Sequence[Sample], where: str, on_bad_image: BadImage,
                      warn: Callable[[str], Any] = warnings.warn) -> tuple[list[Sample], list[str]]:
    """Drop (``skip``) or refuse (``stop``) images whose header or end marker is damaged (no decoding).

    Returns the samples kept and the descriptions of the files left out.
    """
    problems = [(s, p) for s in samples if (p := image_problem(s[0])) is not None]
    if not problems:
        return list(samples), []
    lines = [f"{s[0]}: {p}" for s, p in problems]
    if on_bad_image == "stop":
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise DataError(f"{where}: damaged image {lines[0]}{more}; replace or remove it, or set "
                        "data.on_bad_image: skip.")
    warn(f"{where}: skipping {len(lines)} damaged image(s): " + "; ".join(lines[:5]))
    bad = {id(s) for s, _ in problems}
    return [s for s in samples if id(s) not in bad], lines


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
        Seed of the training order and augmentation (see ``EpochSeededRandomSampler``).
    pin_memory : bool
    allow_outside_root : bool
        Accept split / label entries that resolve outside the data root (``../x``, absolute paths).
    on_bad_image : {"stop", "skip"}
        A damaged image (found by the header check at set-up, or when decoding fails mid-epoch): stop with an
        error naming it, or leave it out with a warning (``skipped`` lists those found in this process).
    check_images : bool
        At set-up, open every image's header and look for its end marker (cheap; catches truncated files).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 224,
        normalize: bool = True,
        seed: int = 0,
        pin_memory: bool = True,
        allow_outside_root: bool = False,
        on_bad_image: BadImage = "stop",
        check_images: bool = True,
    ):
        super().__init__()
        if on_bad_image not in ("stop", "skip"):
            raise DataError(f"data.on_bad_image must be 'stop' or 'skip'; got {on_bad_image!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.img_size = img_size
        self.normalize = normalize
        self.seed = seed
        self.pin_memory = pin_memory
        self.allow_outside_root = allow_outside_root
        self.on_bad_image = on_bad_image
        self.check_images = check_images
        self.datasets: dict[str, ListDataset] = {}
        self._skipped_at_setup: list[str] = []

    @property
    def skipped(self) -> list[str]:
        """Images left out so far (``on_bad_image="skip"``): at set-up, and when decoding in this process."""
        return self._skipped_at_setup + [p for ds in self.datasets.values() for p in ds.skipped]

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
            samples = unlabelled_samples(self.predict_source)
            if self.check_images:
                samples, bad = check_image_files(samples, f"--predict_images {self.predict_source}", self.on_bad_image)
                self._skipped_at_setup += bad
            self.datasets[which] = ListDataset(samples, self._transform("test"), self.seed, self.on_bad_image)
            return
        split = self._split_name(which)
        if split is None or which in self.datasets:
            return
        samples = self._split_samples(split)
        where = f"{type(self).__name__} split {split!r}"
        check_labels(samples, self.num_classes, where)
        if self.check_images:
            samples, bad = check_image_files(samples, where, self.on_bad_image)
            self._skipped_at_setup += bad
            if not samples:
                raise DataError(f"{where}: no readable image left after skipping {len(bad)} damaged one(s).")
        self.datasets[which] = ListDataset(samples, self._transform(which), self.seed, self.on_bad_image)

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
            sampler=EpochSeededRandomSampler(len(ds), self.seed, tag_epoch=True) if train else None,
            shuffle=False,
            collate_fn=collate_skipping,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds leave the global RNG alone
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        # Lightning creates the first iterator (and worker processes prefetch from it) before it calls
        # set_epoch; start the sampler at the epoch the fit loop will run, so a resumed run does not replay
        # epoch 0's order and augmentation.
        progress = getattr(getattr(self.trainer, "fit_loop", None), "epoch_progress", None)
        if progress is not None:
            loader.sampler.set_epoch(progress.current.processed)
        return loader

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
