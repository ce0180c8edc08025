"""FGVC: CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars from VPT's json splits.

On-disk layout (VPT's released splits next to the images)::

    <root>/train.json   {"relative/image/path.jpg": class_id, ...}
    <root>/val.json
    <root>/test.json
    <root>/<image_dir>/relative/image/path.jpg   image_dir: "images" (CUB, NABirds), "Images" (Dogs), "" otherwise

Class ids are remapped to ``0..C-1`` in sorted order of the ids found in all split files present
(the official code remaps each split on its own, which silently shifts labels if a split misses a class).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from vapt.data.base import (
    ClassificationDataModule,
    DataError,
    Sample,
    raise_missing,
    registry_num_classes,
    resolve_entry,
)
from vapt.data.images import read_class_names
from vapt.data.registry import FGVC_DATASETS, FGVCDataset, get_fgvc  # noqa: F401 - re-exported
from vapt.data.transforms import fgvc_eval_transform, fgvc_train_transform


def read_json_split(path: Path) -> dict[str, int]:
    """``{relative_path: class_id}`` from a split file (a UTF-8 byte-order mark is ignored); `DataError` for a
    missing or malformed file and for a path given twice (naming file:line)."""
    if not path.is_file():
        raise DataError(f"FGVC split file {path} does not exist; put VPT's train/val/test.json in the data root.")
    text = path.read_text(encoding="utf-8-sig")
    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        repeated.extend(k for k, _ in items if k in seen or seen.add(k))
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise DataError(f"FGVC split file {path} is not valid JSON ({e}).") from e
    if repeated:
        key = json.dumps(repeated[0])
        lines = [i for i, line in enumerate(text.splitlines(), 1) if key in line]
        at = f"{path}:{lines[-1]}" if len(lines) > 1 else str(path)
        raise DataError(f"{at}: {repeated[0]} is listed again ({len(repeated)} repeated path(s) in all); "
                        "remove the duplicate entries.")
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise DataError(f"FGVC split file {path} must map 'relative/image/path' to an integer class id.")
    return data


class FGVCDataModule(ClassificationDataModule):
    """FGVC dataset from ``{train,val,test}.json`` with the official train/eval transforms.

    Parameters
    ----------
    root : str
        Dataset folder holding the json split files.
    dataset : str
        ``cub`` | ``nabirds`` | ``flowers`` | ``dogs`` | ``cars``.
    train_split, val_split, test_split : str or None
        Split file stems (``train`` / ``val`` / ``test`` / ``trainval``); ``None`` disables the loop.
    num_classes : int, optional
        Must agree with the registry when given.
    **kwargs
        Loader and checking options of `ClassificationDataModule` (``batch_size``, ``num_workers``, ``img_size``,
        ``normalize``, ``seed``, ``pin_memory``, ``allow_outside_root``, ``on_bad_image``, ``check_images``).
    """

    def __init__(
        self,
        root: str = "data/fgvc/CUB_200_2011",
        dataset: Literal["cub", "nabirds", "flowers", "dogs", "cars"] = "cub",
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = root
        self.info = get_fgvc(dataset)
        self.num_classes = registry_num_classes("FGVC dataset", self.info.name, self.info.num_classes, num_classes)
        self._use_splits(train_split, val_split, test_split)
        self._id_map: dict[int, int] | None = None

    def _root(self) -> Path:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"FGVC root {root} does not exist; pass --data.init_args.root pointing at the folder with "
                "train.json/val.json/test.json (see data/fgvc/README.md)."
            )
        return root

    def _class_map(self) -> dict[int, int]:
        if self._id_map is None:
            root = self._root()
            ids: set[int] = set()
            for split in {s for s in self.splits.values() if s is not None}:
                ids |= set(read_json_split(root / f"{split}.json").values())
            if len(ids) > self.num_classes:
                raise DataError(
                    f"FGVC {self.info.name!r}: the split files in {root} hold {len(ids)} distinct class ids but "
                    f"the dataset has {self.num_classes} classes; check the root or the dataset name."
                )
            self._id_map = {c: i for i, c in enumerate(sorted(ids))}
        return self._id_map

    def class_names(self) -> list[str] | None:
        """From an optional ``<root>/classes.txt`` (line ``i`` names class ``i`` after remapping the split ids
        to ``0..C-1`` in sorted order; CUB's own ``<id> <name>`` lines are read as they are)."""
        root = Path(self.root).expanduser()
        return read_class_names(root / "classes.txt", self.num_classes) if root.is_dir() else None

    def _split_samples(self, split: str) -> list[Sample]:
        root = self._root()
        ann = read_json_split(root / f"{split}.json")
        id_map = self._class_map()
        image_root = root / self.info.image_dir
        listed_in = root / f"{split}.json"
        paths = {p: resolve_entry(image_root, p, str(listed_in), self.allow_outside_root) for p in ann}
        raise_missing([str(p) for p in paths.values() if not p.is_file()], listed_in,
                      f"Check the root and that the images were extracted under {image_root}.")
        return [(str(paths[p]), id_map[c]) for p, c in sorted(ann.items())]

    def _transform(self, which: str) -> Callable:
        if which == "train":
            return fgvc_train_transform(self.img_size, self.normalize)
        return fgvc_eval_transform(self.img_size, self.normalize)
