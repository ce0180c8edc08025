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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vapt.data.base import ClassificationDataModule, DataError, Sample, read_list_file, registry_num_classes
from vapt.data.images import read_class_names
from vapt.data.transforms import vtab_transform

SPLITS = ("train800", "val200", "train800val200", "test")
GROUPS = ("natural", "specialized", "structured")


@dataclass(frozen=True)
class VTABTask:
    """One VTAB-1k task: config name, folder name in the common layout, classes and group."""

    name: str
    folder: str
    num_classes: int
    group: str
    tfds: str  # the TFDS / VTAB dataset behind it, for reference and the export script
    short: str  # column header used in tables


_TASKS = [
    VTABTask("cifar100", "cifar", 100, "natural", "cifar100 (cifar(num_classes=100))", "C100"),
    VTABTask("caltech101", "caltech101", 102, "natural", "caltech101", "Cal"),
    VTABTask("dtd", "dtd", 47, "natural", "dtd", "DTD"),
    VTABTask("oxford_flowers102", "oxford_flowers102", 102, "natural", "oxford_flowers102", "Flw"),
    VTABTask("oxford_iiit_pet", "oxford_iiit_pet", 37, "natural", "oxford_iiit_pet", "Pet"),
    VTABTask("svhn", "svhn", 10, "natural", "svhn_cropped", "SVHN"),
    VTABTask("sun397", "sun397", 397, "natural", "sun397", "Sun"),
    VTABTask("patch_camelyon", "patch_camelyon", 2, "specialized", "patch_camelyon", "Cam"),
    VTABTask("eurosat", "eurosat", 10, "specialized", "eurosat/rgb", "Euro"),
    VTABTask("resisc45", "resisc45", 45, "specialized", "resisc45", "Res"),
    VTABTask("diabetic_retinopathy", "diabetic_retinopathy", 5, "specialized",
             "diabetic_retinopathy_detection/btgraham-300", "Ret"),
    VTABTask("clevr_count", "clevr_count", 8, "structured", "clevr(task='count_all')", "Cnt"),
    VTABTask("clevr_dist", "clevr_dist", 6, "structured", "clevr(task='closest_object_distance')", "Dist"),
    VTABTask("dmlab", "dmlab", 6, "structured", "dmlab", "DMLab"),
    VTABTask("kitti", "kitti", 4, "structured", "kitti(task='closest_vehicle_distance')", "KITTI"),
    VTABTask("dsprites_loc", "dsprites_loc", 16, "structured", "dsprites(label_x_position, num_classes=16)", "dLoc"),
    VTABTask("dsprites_ori", "dsprites_ori", 16, "structured", "dsprites(label_orientation, num_classes=16)", "dOri"),
    VTABTask("smallnorb_azi", "smallnorb_azi", 18, "structured", "smallnorb(label_azimuth)", "aAzi"),
    VTABTask("smallnorb_ele", "smallnorb_ele", 9, "structured", "smallnorb(label_elevation)", "aEle"),
]

#: config name -> task, in the paper's column order (7 natural, 4 specialized, 8 structured)
VTAB_TASKS: dict[str, VTABTask] = {t.name: t for t in _TASKS}
_ALIASES = {t.folder: t.name for t in _TASKS} | {"cifar": "cifar100", "flowers102": "oxford_flowers102",
                                                 "pets": "oxford_iiit_pet", "camelyon": "patch_camelyon",
                                                 "retinopathy": "diabetic_retinopathy"}


def get_task(name: str) -> VTABTask:
    """Look a task up by config name, folder name or a common alias (``cifar`` -> ``cifar100``)."""
    key = name if name in VTAB_TASKS else _ALIASES.get(name)
    if key is None:
        raise DataError(f"Unknown VTAB-1k task {name!r}; choose one of: {', '.join(VTAB_TASKS)}.")
    return VTAB_TASKS[key]


def tasks_in_group(group: str) -> list[str]:
    """Config names of the tasks of one group (``natural`` / ``specialized`` / ``structured``)."""
    if group not in GROUPS:
        raise DataError(f"Unknown VTAB-1k group {group!r}; choose one of {GROUPS}.")
    return [t.name for t in _TASKS if t.group == group]


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
