"""DataModules: VTAB-1k (folder layout), FGVC (json splits), ImageFolder, and the generated demo set.

The names are imported lazily, so that ``vapt.data.registry`` (task tables) loads without Lightning.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FGVC_DATASETS": "vapt.data.registry",
    "GROUPS": "vapt.data.registry",
    "VTAB_TASKS": "vapt.data.registry",
    "get_fgvc": "vapt.data.registry",
    "get_task": "vapt.data.registry",
    "tasks_in_group": "vapt.data.registry",
    "DataError": "vapt.data.errors",
    "ClassificationDataModule": "vapt.data.base",
    "ListDataset": "vapt.data.base",
    "DemoShapesDataModule": "vapt.data.demo",
    "FGVCDataModule": "vapt.data.fgvc",
    "ImageFolderDataModule": "vapt.data.folder",
    "VTABDataModule": "vapt.data.vtab",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vapt.data' has no attribute {name!r}")
