"""`vapt tune`: the official VPT / VAPT protocol, resumable.

1. grid: for every (lr, wd), train on the tuning split (VTAB-1k ``train800``, FGVC ``train``) and score the
   **last-epoch** validation top-1 (``val200`` / ``val``);
2. pick the best pair (ties go to the first pair in grid order, lr and wd from high to low, as VAPT does);
3. final: train on the final split (``train800val200`` / ``train``) with each seed and report test top-1;
4. write ``<out>/<task>/<method>/summary.json`` (mean and std over seeds), read by ``vapt report``.

``--fast`` (VAPT): sweep wd at lr = 5.0 first, then lr at the best wd (13 runs instead of 40).

Every run writes ``result.json`` atomically when it finishes and is skipped when that file exists; a run
that was killed resumes from its newest checkpoint that loads, bit for bit as if never stopped (the RNG state
is in the checkpoint; a truncated newer checkpoint is named and skipped). Options that ``vapt tune`` does not know are passed to
the LightningCLI of every run, e.g. ``--data.root DIR --trainer.max_epochs 100``.

    vapt tune --config configs/vtab/vapt/cifar100.yaml --out runs/repro --data.root DIR --fast
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vapt.cli.errors import run_reporting_errors
from vapt.cli.flags import DialectParser, add_config_options, print_configs
from vapt.fileio.atomic import read_json_file
from vapt.fileio.atomic import write_text_atomic as atomic_write_text
from vapt.fileio.locks import SlideLock
from vapt.fileio.resources import resolve_config, resolve_config_args
from vapt.quiet import quiet_command

_log = logging.getLogger(__name__)

OFFICIAL_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
OFFICIAL_WDS = (0.01, 0.001, 0.0001, 0.0)
OFFICIAL_SEEDS = (42, 44, 82, 100, 800)
FAST_ANCHOR_LR = 5.0

#: data family -> split overrides of the grid ("tune") and final stages
PROTOCOLS = {
    "vtab": {"tune": {"train_split": "train800", "val_split": "val200", "test_split": None},
             "final": {"train_split": "train800val200", "val_split": None, "test_split": "test"}},
    "fgvc": {"tune": {"train_split": "train", "val_split": "val", "test_split": None},
             "final": {"train_split": "train", "val_split": None, "test_split": "test"}},
}
_FAMILY_OF_CLASS = {"VTABDataModule": "vtab", "DemoShapesDataModule": "vtab", "FGVCDataModule": "fgvc",
                    "ImageFolderDataModule": "fgvc"}


class TuneError(ValueError):
    """A tune request that cannot run; the message says how to fix it."""


class _Parsed(Exception):
    def __init__(self, config):
        self.config = config


def parse_config(cli_args: Sequence[str]):
    """Parse (without instantiating anything) LightningCLI arguments -> jsonargparse Namespace."""
    from vapt.data.base import ClassificationDataModule
    from vapt.training.lightning_cli import VaptCLI
    from vapt.training.module import PromptTuningModule

    class _ParseOnly(VaptCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config)

    try:
        _ParseOnly(PromptTuningModule, ClassificationDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   args=resolve_config_args(list(cli_args)), run=False, auto_configure_optimizers=False)
    except _Parsed as p:
        return p.config
    raise RuntimeError("unreachable")  # pragma: no cover


def data_family(config) -> str:
    """``vtab`` or ``fgvc`` from the data class of a parsed config."""
    class_path = str(config.data.class_path)
    name = class_path.rsplit(".", 1)[-1]
    if name in _FAMILY_OF_CLASS:
        return _FAMILY_OF_CLASS[name]
    module, _, cls = class_path.rpartition(".")
    obj = getattr(importlib.import_module(module), cls)
    for base in obj.__mro__:
        if base.__name__ in _FAMILY_OF_CLASS:
            return _FAMILY_OF_CLASS[base.__name__]
    raise TuneError(f"vapt tune does not know the splits of {class_path}; use a VTAB/FGVC/ImageFolder DataModule.")


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_grid(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``None`` / ``official`` -> the VPT prompt grid; ``"lr=1,0.1;wd=0.01,0"`` -> custom lists."""
    if spec in (None, "", "official"):
        return OFFICIAL_LRS, OFFICIAL_WDS
    lrs, wds = OFFICIAL_LRS, OFFICIAL_WDS
    for part in spec.replace(" ", ";").split(";"):
        if not part:
            continue
        key, _, vals = part.partition("=")
        try:
            values = tuple(float(v) for v in vals.split(",") if v)
        except ValueError as e:
            raise TuneError(f"--grid {spec!r}: {e}; write e.g. 'lr=10,1,0.1;wd=0.01,0'.") from e
        if key == "lr":
            lrs = values
        elif key == "wd":
            wds = values
        else:
            raise TuneError(f"--grid {spec!r}: unknown key {key!r}; use lr=... and wd=....")
        if not values:
            raise TuneError(f"--grid {spec!r}: {key} has no values.")
    return lrs, wds


def _cli_value(v: Any) -> str:
    return "null" if v is None else str(v)


def run_one(cli_args: Sequence[str], run_dir: Path, overrides: dict[str, Any], evaluate: str,
            log=_log.info, overwrite: bool = False) -> dict:
    """Train one configuration in ``run_dir`` and evaluate it (``validate`` or ``test``).

    Returns the result dict, also written to ``run_dir/result.json``. Skips when that file exists and was
    made with the same arguments and files (:func:`vapt.resume.run_identity`); one made otherwise is a
    `TuneError` (``stale: ... pass --overwrite``), or with ``overwrite`` is redone in an emptied ``run_dir``.
    Resumes from the newest checkpoint in ``run_dir`` that loads (damaged newer ones are named and skipped).
    A run folder another live ``vapt tune`` is training (its lock: ``<task>/<method>/.locks/grid_lr1_wd0.lock``)
    is a `TuneError`.
    """
    lock = SlideLock(run_dir.parent.parent / ".locks" / f"{run_dir.parent.name}_{run_dir.name}.lock")
    if not lock.acquire():
        raise TuneError(f"{run_dir} is being trained by another vapt tune ({lock.owner}); wait for it to finish "
                        "and rerun (its result is then reused), or use another --out")
    try:
        return _run_one_locked(cli_args, run_dir, overrides, evaluate, log, overwrite)
    finally:
        lock.release()


def _run_one_locked(cli_args: Sequence[str], run_dir: Path, overrides: dict[str, Any], evaluate: str,
                    log, overwrite: bool) -> dict:
    from vapt.training.lightning_cli import _VERSION_ENV, build_cli
    from vapt.training.resume import compare_run_identity, find_resume_checkpoint, run_identity

    result_path = run_dir / "result.json"
    settings = list(cli_args) + [f"--{k}={_cli_value(v)}" for k, v in overrides.items()]
    identity = run_identity(settings)  # the run folder itself is not part of what made the result
    args = list(cli_args) + [f"--trainer.default_root_dir={run_dir}"]
    args += [f"--{k}={_cli_value(v)}" for k, v in overrides.items()]
    if result_path.is_file():
        done = read_json_file(result_path, f"delete it (or {run_dir}) to rerun that run")
        why = compare_run_identity(done.get("identity"), identity)
        if not why:
            log(f"  done already: {run_dir}")
            return done
        if not overwrite:
            raise TuneError(f"stale: {result_path} was made otherwise ({why}); pass --overwrite to redo it, or use "
                            "another --out")
        log(f"  stale, redone (--overwrite): {run_dir}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = find_resume_checkpoint(run_dir, log=lambda m: log(f"  {m}"))
    log(f"  {'resuming' if resume else 'running'}: {run_dir}" + (f" from {resume.name}" if resume else ""))
    t0 = time.time()
    try:
        cli = build_cli(args, run=False, log_name="")
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume else None,
                    weights_only=True)
        metrics = (trainer.validate if evaluate == "validate" else trainer.test)(
            model, datamodule=data, verbose=False)[0]
    finally:
        os.environ.pop(_VERSION_ENV, None)
    result = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "overrides": overrides,
        "epochs": trainer.current_epoch,
        "effective_lr": model.effective_lr,
        "resumed_from": str(resume) if resume else None,
        "seconds": round(time.time() - t0, 2),
        "identity": identity,
    }
    atomic_write_text(result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    del cli, trainer, model, data
    gc.collect()
    return result


def tune(
    cli_args: Sequence[str],
    out: str | os.PathLike,
    grid: str | None = None,
    seeds: Sequence[int] = OFFICIAL_SEEDS,
    fast: bool = False,
    name: str | None = None,
    log=_log.info,
    overwrite: bool = False,
) -> dict:
    """Grid search then seeds for one (task, method) config; returns and writes ``summary.json``.

    Parameters
    ----------
    cli_args : list of str
        LightningCLI arguments without a subcommand (``--config FILE`` and overrides).
    out : path
        Runs folder; this config's runs go to ``<out>/<task>/<method>/``.
    grid : str, optional
        ``official`` (default) or ``"lr=...;wd=..."``.
    seeds : list of int
    fast : bool
        wd sweep at lr 5.0 (or the grid lr closest to it), then lr sweep at the best wd.
    name : str, optional
        ``<task>/<method>`` folder; default from the config.
    """
    from vapt.training.lightning_cli import experiment_name
    from vapt.training.module import PromptTuningModule  # noqa: F401  (fail early on a broken install)

    config = parse_config(cli_args)
    family = data_family(config)
    name = name or experiment_name(config)
    task, _, method = name.partition("/")
    base = Path(out) / name
    lrs, wds = parse_grid(grid)
    if not seeds:
        raise TuneError("vapt tune: --seeds is empty; give at least one seed, e.g. --seeds 42.")
    protocol = PROTOCOLS[family]

    def grid_run(lr: float, wd: float) -> float:
        overrides = {"model.init_args.lr": lr, "model.init_args.weight_decay": wd,
                     **{f"data.init_args.{k}": v for k, v in protocol["tune"].items()}}
        res = run_one(cli_args, base / "grid" / f"lr{_fmt(lr)}_wd{_fmt(wd)}", overrides, "validate", log,
                      overwrite)
        acc = res["metrics"].get("val/acc", float("nan"))
        log(f"    lr={_fmt(lr)} wd={_fmt(wd)}: val/acc={acc:.4f}")
        return acc

    scores: dict[tuple[float, float], float] = {}
    if fast:
        anchor = min(lrs, key=lambda v: abs(math.log(v / FAST_ANCHOR_LR)) if v > 0 else math.inf)
        for wd in wds:
            scores[(anchor, wd)] = grid_run(anchor, wd)
        best_wd = _best(scores, lrs, wds)[1]
        for lr in lrs:
            if (lr, best_wd) not in scores:
                scores[(lr, best_wd)] = grid_run(lr, best_wd)
    else:
        for lr in lrs:
            for wd in wds:
                scores[(lr, wd)] = grid_run(lr, wd)
    best_lr, best_wd = _best(scores, lrs, wds)
    log(f"  best: lr={_fmt(best_lr)} wd={_fmt(best_wd)} (val/acc {scores[(best_lr, best_wd)]:.4f})")

    tests = []
    for seed in seeds:
        overrides = {"model.init_args.lr": best_lr, "model.init_args.weight_decay": best_wd,
                     "seed_everything": seed, "data.init_args.seed": seed,
                     **{f"data.init_args.{k}": v for k, v in protocol["final"].items()}}
        res = run_one(cli_args, base / "final" / f"seed{seed}", overrides, "test", log, overwrite)
        tests.append(res["metrics"]["test/acc"])
        log(f"    seed {seed}: test/acc={tests[-1]:.4f}")
    mean = sum(tests) / len(tests)
    std = (sum((t - mean) ** 2 for t in tests) / len(tests)) ** 0.5
    summary = {
        "task": task, "method": method, "family": family,
        "best_lr": best_lr, "best_wd": best_wd, "fast": fast,
        "grid": [{"lr": lr, "wd": wd, "val_acc": s} for (lr, wd), s in scores.items()],
        "seeds": list(seeds), "test_acc": tests,
        "test_acc_mean": mean, "test_acc_std": std,
    }
    atomic_write_text(base / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"  {name}: test/acc {100 * mean:.2f} +- {100 * std:.2f} over {len(tests)} seed(s) -> {base / 'summary.json'}")
    return summary


def _best(scores: dict[tuple[float, float], float], lrs, wds) -> tuple[float, float]:
    """Highest score; ties -> first in grid order (lr, then wd, as listed: high to low officially)."""
    order = {(lr, wd): i for i, (lr, wd) in enumerate((lr, wd) for lr in lrs for wd in wds)}
    finite = {k: v for k, v in scores.items() if not math.isnan(v)}
    if not finite:
        raise TuneError("vapt tune: every grid run gave NaN validation accuracy; is the validation split empty?")
    return max(finite, key=lambda k: (finite[k], -order.get(k, len(order))))


def main(argv: list[str] | None = None) -> int:
    """Exit 0, or 2 on bad input (one line on stderr; ``--debug`` or ``VAPT_DEBUG=1`` shows the traceback)."""
    ap = DialectParser(
        prog="vapt tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, repeat=True, help="LightningCLI YAML: a path or a shipped config name (repeatable)")
    ap.add_argument("--out", default="runs/tune", help="runs folder (default runs/tune)")
    ap.add_argument("--grid", default=None, help="'official' (default) or 'lr=50,25,...;wd=0.01,0'")
    ap.add_argument("--seeds", default=",".join(map(str, OFFICIAL_SEEDS)), help="comma-separated final seeds")
    ap.add_argument("--fast", action="store_true", help="wd sweep at lr 5, then lr sweep at the best wd")
    ap.add_argument("--name", default=None, help="<task>/<method> folder name (default: from the config)")
    ap.add_argument("--overwrite", action="store_true", help="redo finished runs made with other settings or data")
    args, passthrough = ap.parse_known_args(argv)
    if args.print_config:
        return print_configs(args.config, resolve_config)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 42,44,82,100,800")
    cli_args = [a for c in args.config for a in ("--config", c)] + passthrough

    def run(cli: list[str]) -> int:
        with quiet_command():
            tune(resolve_config_args(cli), args.out, grid=args.grid, seeds=seeds, fast=args.fast, name=args.name,
                 log=print, overwrite=args.overwrite)
        return 0

    from vapt.training.lightning_cli import USER_ERRORS

    return run_reporting_errors("vapt tune", run, cli_args, (*USER_ERRORS, TuneError))


if __name__ == "__main__":
    sys.exit(main())
