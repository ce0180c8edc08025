"""VTAB-1k: the registry of the 19 tasks and a DataModule for the common folder layout.

On-disk layout (written by ``scripts/export_vtab_tfds.py``, NOAH's ``get_vtab1k.py`` and the archives
that circulate as "vtab-1k")::

    <root>/<folder>/train800.txt          one "relative/path label" per line
    <root>/<folder>/val200.txt
    <root>/<folder>/train800val200.txt
    <root>/<folder>/test.txt
    <root>/<folder>/images/...            the paths in the lists are relative to <root>/<folder>

Protocol (official VPT / VAPT): tune lr x wd on ``train800 -> val200`` (last epoch), then train on
``train800val200`` and report ``test`` top-1, mean over 5 seeds.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from vapt.data.base import ClassificationDataModule, DataError, Sample, read_list_file, registry_num_classes
from vapt.data.images import read_class_names
from vapt.data.registry import GROUPS, SPLITS, VTAB_TASKS, VTABTask, get_task, tasks_in_group  # noqa: F401 - re-exported
from vapt.data.transforms import vtab_transform


def resolve_task_dir(root: str | Path, task: VTABTask) -> Path:
    """``<root>/<folder>`` (or ``root`` itself when it already is a task folder); clear error if missing."""
    root = Path(root).expanduser()
    for candidate in (root / task.folder, root / task.name, root):
        if (candidate / "train800.txt").is_file() or (candidate / "test.txt").is_file():
            return candidate
    if not root.exists():
        raise DataError(
            f"VTAB-1k root {root} does not exist; pass --data.init_args.root pointing at the folder that holds "
            f"'{task.folder}/' (write it with scripts/export_vtab_tfds.py, see data/vtab/README.md)."
        )
    raise DataError(
        f"No VTAB-1k task folder for {task.name!r} under {root}: expected {root / task.folder}/train800.txt "
        f"(layout <root>/{task.folder}/{{train800,val200,train800val200,test}}.txt + images/). "
        "See data/vtab/README.md."
    )


class VTABDataModule(ClassificationDataModule):
    """VTAB-1k task in the common folder layout, with the official preprocessing (no augmentation).

    Parameters
    ----------
    root : str
        Folder holding the task folders (``<root>/cifar/train800.txt`` ...), or one task folder.
    task : str
        Config name, folder name or alias of the task (see ``VTAB_TASKS``).
    train_split, val_split, test_split : str or None
        Which list files feed training, validation and test. Tuning uses ``train800`` / ``val200``; the
        final runs ``train800val200`` / ``test``. ``None`` disables that loop.
    num_classes : int, optional
        Must agree with the registry when given (it exists to catch a wrong config early).
    **kwargs
        Loader and checking options of `ClassificationDataModule` (``batch_size``, ``num_workers``, ``img_size``,
        ``normalize``, ``seed``, ``pin_memory``, ``allow_outside_root``, ``on_bad_image``, ``check_images``).
    """

    def __init__(
        self,
        root: str = "data/vtab-1k",
        task: str = "cifar100",
        train_split: Literal["train800", "train800val200", "val200", "test"] = "train800val200",
        val_split: Literal["train800", "val200", "train800val200", "test"] | None = None,
        test_split: Literal["train800", "val200", "train800val200", "test"] | None = "test",
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = root
        self.task = get_task(task)
        self.num_classes = registry_num_classes("VTAB-1k task", self.task.name, self.task.num_classes, num_classes)
        self._use_splits(train_split, val_split, test_split)

    def class_names(self) -> list[str] | None:
        """From an optional ``<task folder>/classes.txt`` (one name per line, in label order); ``None``
        without one (also when the task folder is absent, e.g. predicting on one's own images)."""
        try:
            task_dir = resolve_task_dir(self.root, self.task)
        except DataError:
            return None
        return read_class_names(task_dir / "classes.txt", self.num_classes)

    def _split_samples(self, split: str) -> list[Sample]:
        task_dir = resolve_task_dir(self.root, self.task)
        return read_list_file(task_dir / f"{split}.txt", task_dir, self.allow_outside_root)

    def _transform(self, which: str) -> Callable:
        return vtab_transform(self.img_size, self.normalize)
