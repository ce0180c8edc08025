"""Old module paths of ``vapt`` keep importing for one release, with one notice line on stderr.

``vapt.module.PromptTuningModule`` in an older config or ``from vapt.encoders import build_encoder`` in older
code resolve to the module's new place (``vapt.training.module``, ``vapt.backbones``); the notice names it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module path -> new module path
MOVED = {
    "vapt.encoders": "vapt.backbones",
    "vapt.encoders.registry": "vapt.backbones.factory",
    **{f"vapt.encoders.{m}": f"vapt.backbones.{m}" for m in ("cnn", "files", "hf", "hf_clip", "preprocess",
                                                             "timm_vits")},
    **{f"vapt.{m}": f"vapt.fileio.{m}" for m in ("atomic", "resources", "state_dict", "weights")},
    **{f"vapt.{m}": f"vapt.training.{m}" for m in ("config_keys", "lightning_cli", "module", "resume", "tune")},
    **{f"vapt.{m}": f"vapt.reporting.{m}" for m in ("report", "summary")},
    "vapt.errors": "vapt.cli.errors",
    "vapt.prompts": "vapt.peft.vpt",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds an old ``vapt`` module path and hands out the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        print(f"vapt: the module {fullname} moved to {new}; update the import or class_path "
              "(the old path will be removed)", file=sys.stderr)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
