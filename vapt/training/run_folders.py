"""One run-folder layout and logger set for ``vapt`` and ``mgpath`` training commands.

Unless ``--trainer.logger`` is given, a run writes into ``<default_root_dir>/<task>/<method>/version_<n>/``
(``default_root_dir`` defaults to ``runs``): ``metrics.csv`` (CSVLogger), TensorBoard events, ``config.yaml``
and ``checkpoints/``. ``version_<n>`` is the next free number, claimed with an atomic ``mkdir`` (runs started
together never share one); processes started by a distributed launcher
inherit it through an environment variable, so every rank writes into the same folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace

__all__ = ["VERSION_ENV", "claim_free_name", "claim_version", "default_loggers", "method_folder", "next_version"]

VERSION_ENV = "VAPT_LOG_VERSION"


def next_version(folder: Path) -> int:
    """One more than the highest ``version_<n>`` in ``folder`` (0 when there is none)."""
    versions = [int(p.name.split("_", 1)[1]) for p in folder.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(versions, default=-1) + 1


def claim_version(folder: str | os.PathLike) -> int:
    """The next free ``version_<n>`` under ``folder``, created here (``mkdir`` is atomic: two runs starting at
    once get different numbers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(p.name.split("_", 1)[1]) for p in folder.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
        n = max(taken, default=-1) + 1
        try:
            (folder / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            continue


def claim_free_name(path: str | os.PathLike) -> Path:
    """``path``, else ``<stem>_1<suffix>``, ``<stem>_2<suffix>``, ...: the first that does not exist, created
    empty here (``O_EXCL``) so that a run starting at the same moment takes the next one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        candidate = path if n == 0 else path.with_name(f"{path.stem}_{n}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return candidate
        except FileExistsError:
            n += 1


def default_loggers(save_dir: str, name: str, version_env: str = VERSION_ENV) -> list[Namespace]:
    """CSV and TensorBoard loggers writing into ``save_dir/name/version_<n>`` (LightningCLI config form)."""
    version = os.environ.get(version_env)
    if version is None:
        version = str(claim_version(Path(save_dir) / name))  # two runs never share a version folder
        os.environ[version_env] = version  # DDP children re-run the CLI and inherit it
    kw = Namespace(save_dir=save_dir, name=name, version=int(version))
    return [
        Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=kw.clone()),
        Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=kw.clone()),
    ]


def method_folder(class_path: str) -> str:
    """``mgpath.module.MGPATHModule`` -> ``mgpath``; ``mgpath.baselines.ABMILModule`` -> ``abmil``."""
    name = str(class_path).rsplit(".", 1)[-1]
    return (name[:-len("Module")] if name.endswith("Module") and name != "Module" else name).lower()
