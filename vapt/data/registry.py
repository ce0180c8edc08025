"""The VTAB-1k tasks and FGVC datasets by name: classes, group, folder names and table headers.

Plain data with no training dependencies, so that tables and reports can name tasks without importing the
DataModules (``vapt.data.vtab``, ``vapt.data.fgvc``), which re-export everything here.
"""
from __future__ import annotations

from dataclasses import dataclass

from vapt.data.samples import DataError

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
_VTAB_ALIASES = {t.folder: t.name for t in _TASKS} | {"cifar": "cifar100", "flowers102": "oxford_flowers102",
                                                 "pets": "oxford_iiit_pet", "camelyon": "patch_camelyon",
                                                 "retinopathy": "diabetic_retinopathy"}


def get_task(name: str) -> VTABTask:
    """Look a task up by config name, folder name or a common alias (``cifar`` -> ``cifar100``)."""
    key = name if name in VTAB_TASKS else _VTAB_ALIASES.get(name)
    if key is None:
        raise DataError(f"Unknown VTAB-1k task {name!r}; choose one of: {', '.join(VTAB_TASKS)}.")
    return VTAB_TASKS[key]


def tasks_in_group(group: str) -> list[str]:
    """Config names of the tasks of one group (``natural`` / ``specialized`` / ``structured``)."""
    if group not in GROUPS:
        raise DataError(f"Unknown VTAB-1k group {group!r}; choose one of {GROUPS}.")
    return [t.name for t in _TASKS if t.group == group]


@dataclass(frozen=True)
class FGVCDataset:
    """One FGVC dataset: config name, official ``DATA.NAME``, classes, image folder inside the root."""

    name: str
    official: str
    num_classes: int
    image_dir: str
    short: str


_DATASETS = [
    FGVCDataset("cub", "CUB", 200, "images", "CUB"),
    FGVCDataset("nabirds", "nabirds", 555, "images", "NABirds"),
    FGVCDataset("flowers", "OxfordFlowers", 102, "", "Flowers"),
    FGVCDataset("dogs", "StanfordDogs", 120, "Images", "Dogs"),
    FGVCDataset("cars", "StanfordCars", 196, "", "Cars"),
]
#: config name -> dataset, in the paper's column order
FGVC_DATASETS: dict[str, FGVCDataset] = {d.name: d for d in _DATASETS}
_FGVC_ALIASES = {d.official.lower(): d.name for d in _DATASETS} | {"cub_200_2011": "cub", "cub200": "cub"}


def get_fgvc(name: str) -> FGVCDataset:
    """Look a dataset up by config name or official name (case-insensitive)."""
    key = name.lower()
    key = key if key in FGVC_DATASETS else _FGVC_ALIASES.get(key)
    if key is None:
        raise DataError(f"Unknown FGVC dataset {name!r}; choose one of: {', '.join(FGVC_DATASETS)}.")
    return FGVC_DATASETS[key]
