"""One run-folder layout and logger set for ``vapt`` and ``mgpath`` training commands.

Unless ``--trainer.logger`` is given, a run writes into ``<default_root_dir>/<task>/<method>/version_<n>/``
(``default_root_dir`` defaults to ``runs``): ``metrics.csv`` (CSVLogger), TensorBoard events, ``config.yaml``
and ``checkpoints/``. ``version_<n>`` is the next free number, claimed with an atomic ``mkdir`` (runs started
together never share one); processes started by a distributed launcher
inherit it through an environment variable, so every rank writes into the same folder.

A command started from a run's saved ``config.yaml`` (which names that run's version) logs into a new version
(:func:`unpin_used_versions`); predictions go to a free file name (:func:`fresh_path`), never over an
earlier one.
"""
from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace

__all__ = ["VERSION_ENV", "claim_version", "default_loggers", "fresh_path", "method_folder", "next_version",
           "unpin_used_versions"]

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


def unpin_used_versions(loggers) -> None:
    """Loggers from a run's saved ``config.yaml`` name that run's ``version``; writing there would replace its
    ``metrics.csv``. Each logger whose version folder already holds files gets the next free version."""
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init is None or not isinstance(init.get("version"), int) or not init.get("save_dir"):
            continue
        folder = Path(init.save_dir) / str(init.get("name") or "")
        if any((folder / f"version_{init.version}").glob("*")):
            init.version = next_version(folder)


def fresh_path(path: str | os.PathLike) -> Path:
    """``path`` if no file is there, else the first free ``<stem>_<n><suffix>`` (n = 2, 3, ...)."""
    path, n = Path(path), 2
    candidate = path
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}_{n}{path.suffix}"), n + 1
    return candidate
