"""DataModules: VTAB-1k (folder layout), FGVC (json splits), ImageFolder, and the generated demo set."""
from __future__ import annotations

from vapt.data.base import ClassificationDataModule, DataError, ListDataset
from vapt.data.demo import DemoShapesDataModule
from vapt.data.fgvc import FGVC_DATASETS, FGVCDataModule, get_fgvc
from vapt.data.folder import ImageFolderDataModule
from vapt.data.vtab import GROUPS, VTAB_TASKS, VTABDataModule, get_task, tasks_in_group

__all__ = [
    "FGVC_DATASETS",
    "GROUPS",
    "VTAB_TASKS",
    "ClassificationDataModule",
    "DataError",
    "DemoShapesDataModule",
    "FGVCDataModule",
    "ImageFolderDataModule",
    "ListDataset",
    "VTABDataModule",
    "get_fgvc",
    "get_task",
    "tasks_in_group",
]
