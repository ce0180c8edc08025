"""A user's own images in ImageFolder style: ``<root>/<split>/<class_name>/<image>``.

Classes are the sorted sub-folder names of the training split; the other splits must use a subset
of them. Transforms follow the FGVC recipe (``augment=True``) or the VTAB one (``augment=False``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vapt.data.base import ClassificationDataModule, DataError, Sample
from vapt.data.images import IMAGE_EXTENSIONS
from vapt.data.transforms import fgvc_eval_transform, fgvc_train_transform, vtab_transform


def scan_class_folders(split_dir: Path) -> dict[str, list[Path]]:
    """``{class_name: [image paths]}`` of one split folder (sorted, images only); an empty class folder is a
    `DataError` naming it (a class without images cannot be learned, and torchvision refuses it too)."""
    if not split_dir.is_dir():
        raise DataError(f"Image folder {split_dir} does not exist; expected <root>/<split>/<class>/<image>.")
    out = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        out[d.name] = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not out:
        raise DataError(f"Image folder {split_dir} has no class sub-folders; expected <root>/<split>/<class>/<image>.")
    empty = [name for name, paths in out.items() if not paths]
    if empty:
        raise DataError(f"Class folder {split_dir / empty[0]} has no images ({IMAGE_EXTENSIONS}); "
                        f"{len(empty)} empty class folder(s) in {split_dir}: add images or remove the folder.")
    return out


class ImageFolderDataModule(ClassificationDataModule):
    """ImageFolder-style dataset with ``train`` / ``val`` / ``test`` sub-folders.

    Parameters
    ----------
    root : str
        Folder holding one sub-folder per split.
    train_split, val_split, test_split : str or None
        Sub-folder names; ``None`` disables that loop.
    num_classes : int, optional
        When given, must equal the number of class folders in the training split.
    augment : bool
        FGVC-style random crop + flip for training (True) or VTAB-style plain resize (False).
    name : str, optional
        Run-folder name (``<default_root_dir>/<name>/<method>/``); default: the folder name of ``root``.
    **kwargs
        Loader and checking options of `ClassificationDataModule` (``batch_size``, ``num_workers``, ``img_size``,
        ``normalize``, ``seed``, ``pin_memory``, ``allow_outside_root``, ``on_bad_image``, ``check_images``).
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        num_classes: int | None = None,
        augment: bool = True,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = root
        self.augment = augment
        self.name = name or Path(root).expanduser().resolve().name
        self._use_splits(train_split, val_split, test_split)
        root_p = Path(root).expanduser()
        if not root_p.is_dir():
            raise DataError(f"ImageFolder root {root_p} does not exist; pass --data.init_args.root.")
        self.classes = list(scan_class_folders(root_p / train_split))
        if num_classes is not None and num_classes != len(self.classes):
            raise DataError(
                f"{root_p / train_split} has {len(self.classes)} class folders but the config says "
                f"num_classes={num_classes}; fix the config or the folders."
            )
        self.num_classes = len(self.classes)

    def class_names(self) -> list[str]:
        """The class folder names (class ``i`` is the ``i``-th in sorted order)."""
        return list(self.classes)

    def _split_samples(self, split: str) -> list[Sample]:
        folders = scan_class_folders(Path(self.root).expanduser() / split)
        unknown = sorted(set(folders) - set(self.classes))
        if unknown:
            raise DataError(
                f"Split {split!r} of {self.root} has class folders absent from the training split: {unknown}."
            )
        index = {c: i for i, c in enumerate(self.classes)}
        return [(str(p), index[c]) for c, paths in folders.items() for p in paths]

    def _transform(self, which: str) -> Callable:
        if not self.augment:
            return vtab_transform(self.img_size, self.normalize)
        if which == "train":
            return fgvc_train_transform(self.img_size, self.normalize)
        return fgvc_eval_transform(self.img_size, self.normalize)
