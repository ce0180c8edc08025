"""DataModules: VTAB-1k (folder layout), FGVC (json splits), ImageFolder, and the generated demo set.

The names are imported lazily, so that ``vapt.data.registry`` (task tables) loads without Lightning.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vapt.lazy_exports import lazy_getattr

if TYPE_CHECKING:  # the same names, visible to type checkers and to the API docs (griffe)
    from vapt.data.base import ClassificationDataModule, ListDataset  # noqa: F401
    from vapt.data.demo import DemoShapesDataModule  # noqa: F401
    from vapt.data.fgvc import FGVCDataModule  # noqa: F401
    from vapt.data.folder import ImageFolderDataModule  # noqa: F401
    from vapt.data.registry import FGVC_DATASETS, GROUPS, VTAB_TASKS, get_fgvc, get_task, tasks_in_group  # noqa: F401
    from vapt.data.samples import DataError  # noqa: F401
    from vapt.data.vtab import VTABDataModule  # noqa: F401

_EXPORTS = {
    "FGVC_DATASETS": "vapt.data.registry",
    "GROUPS": "vapt.data.registry",
    "VTAB_TASKS": "vapt.data.registry",
    "get_fgvc": "vapt.data.registry",
    "get_task": "vapt.data.registry",
    "tasks_in_group": "vapt.data.registry",
    "DataError": "vapt.data.samples",
    "ClassificationDataModule": "vapt.data.base",
    "ListDataset": "vapt.data.base",
    "DemoShapesDataModule": "vapt.data.demo",
    "FGVCDataModule": "vapt.data.fgvc",
    "ImageFolderDataModule": "vapt.data.folder",
    "VTABDataModule": "vapt.data.vtab",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr("vapt.data", _EXPORTS)
