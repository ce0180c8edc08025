"""The demo dataset: generated shapes in the VTAB-1k layout, written on first use into a cache folder."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from vapt.data.base import ClassificationDataModule, Sample, read_list_file
from vapt.data.synthetic import PATTERNS, SHAPES, write_shapes_vtab
from vapt.data.transforms import vtab_transform


class DemoShapesDataModule(ClassificationDataModule):
    """Generated images, nothing to download: oriented textures (``kind="patterns"``, class = pattern) or
    coloured shapes on noisy backgrounds (``kind="shapes"``, class = shape).

    Parameters
    ----------
    root : str
        Cache folder; generated on first use (deterministic for ``data_seed``), reused afterwards.
    num_classes : int
        Number of shapes, 2..6.
    train_size, val_size, test_size : int
        Images per split (``train800val200`` = train + val, as in VTAB-1k).
    image_pixels : int
        Side of the generated images (they are resized to ``img_size`` like VTAB images).
    num_workers, img_size, pin_memory
        Defaults suited to the small generated images (no workers, 32 px, no pinning).
    **kwargs
        Loader and checking options of `ClassificationDataModule` (``batch_size``, ``normalize``, ``seed``, ``allow_outside_root``, ``on_bad_image``, ``check_images``).
    """

    def __init__(
        self,
        root: str = "~/.cache/vapt/demo_shapes",
        num_classes: int = 4,
        train_size: int = 800,
        val_size: int = 200,
        test_size: int = 400,
        image_pixels: int = 32,
        data_seed: int = 0,
        kind: Literal["shapes", "patterns"] = "patterns",
        train_split: Literal["train800", "train800val200"] = "train800",
        val_split: Literal["val200"] | None = "val200",
        test_split: Literal["test"] | None = "test",
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        **kwargs,
    ):
        super().__init__(num_workers=num_workers, img_size=img_size, pin_memory=pin_memory, **kwargs)
        self.num_classes = num_classes
        self.sizes = {"train800": train_size, "val200": val_size, "test": test_size}
        self.image_pixels = image_pixels
        self.data_seed = data_seed
        self.kind = kind
        self.root = root
        self._use_splits(train_split, val_split, test_split)

    @property
    def task_dir(self) -> Path:
        s = self.sizes
        name = f"{self.kind}_c{self.num_classes}_n{s['train800']}-{s['val200']}-{s['test']}_p{self.image_pixels}_s{self.data_seed}"
        return Path(self.root).expanduser() / name

    def prepare_data(self) -> None:
        write_shapes_vtab(self.task_dir, self.num_classes, self.sizes, self.image_pixels, self.data_seed,
                          self.kind)

    def class_names(self) -> list[str]:
        """The pattern or shape drawn for each class."""
        return list((PATTERNS if self.kind == "patterns" else SHAPES)[: self.num_classes])

    def _split_samples(self, split: str) -> list[Sample]:
        self.prepare_data()  # no-op when present; also covers use outside a Trainer
        return read_list_file(self.task_dir / f"{split}.txt", self.task_dir, self.allow_outside_root)

    def _transform(self, which: str) -> Callable:
        return vtab_transform(self.img_size, self.normalize)
