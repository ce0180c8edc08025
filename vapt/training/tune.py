"""`vapt tune`: the official VPT / VAPT protocol, resumable.

1. grid: for every (lr, wd), train on the tuning split (VTAB-1k ``train800``, FGVC ``train``) and score the
   **last-epoch** validation top-1 (``val200`` / ``val``);
2. pick the best pair (ties go to the first pair in grid order, lr and wd from high to low, as VAPT does);
3. final: train on the final split (``train800val200`` / ``train``) with each seed and report test top-1;
4. write ``<out>/<task>/<method>/summary.json`` (mean and std over seeds), read by ``vapt report``.

``--fast`` (VAPT): sweep wd at lr = 5.0 first, then lr at the best wd (13 runs instead of 40).
``--e2vpt_prune`` (E2VPT): between 2 and 3, the official pruning search, rewind runs and choice on the
validation split (`vapt.training.e2vpt_prune`); the final runs use the chosen pruning.

Every run writes ``result.json`` atomically when it finishes and is skipped when that file exists; a run
that was killed resumes from its newest checkpoint that loads, bit for bit as if never stopped (the RNG state
is in the checkpoint; a truncated newer checkpoint is named and skipped). Options that ``vapt tune`` does not know are passed to
the LightningCLI of every run, e.g. ``--data.root DIR --trainer.max_epochs 100``.

    vapt tune --config configs/vtab/vapt/cifar100.yaml --out runs/repro --data.root DIR --fast
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vapt.cli.errors import run_reporting_errors
from vapt.cli.flags import DialectParser, add_config_options, print_configs
from vapt.fileio.atomic import write_text_atomic as atomic_write_text
from vapt.fileio.resources import resolve_config, resolve_config_args
from vapt.quiet import quiet_command
from vapt.training.sweep_errors import SweepError

if TYPE_CHECKING:  # the runners import Lightning: loaded when a sweep runs, so that --help answers at once
    from vapt.training.runs import RunSpec

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


def grid_spec(base: Path, protocol: dict, lr: float, wd: float) -> RunSpec:
    """The grid run of ``(lr, wd)``: tuning split, scored on the validation split."""
    from vapt.training.runs import RunSpec

    overrides = {"model.init_args.lr": lr, "model.init_args.weight_decay": wd,
                 **{f"data.init_args.{k}": v for k, v in protocol["tune"].items()}}
    return RunSpec(base / "grid" / f"lr{_fmt(lr)}_wd{_fmt(wd)}", overrides, "validate")


def final_spec(base: Path, protocol: dict, lr: float, wd: float, seed: int, extra: dict | None = None) -> RunSpec:
    """The final run of one seed: final split, scored on the test split (``extra``: further overrides)."""
    from vapt.training.runs import RunSpec

    overrides = {"model.init_args.lr": lr, "model.init_args.weight_decay": wd,
                 "seed_everything": seed, "data.init_args.seed": seed,
                 **{f"data.init_args.{k}": v for k, v in protocol["final"].items()}, **(extra or {})}
    return RunSpec(base / "final" / f"seed{seed}", overrides, "test")


def fast_anchor(lrs: Sequence[float]) -> float:
    """The grid lr closest (in log) to the VAPT ``--fast`` anchor 5.0."""
    return min(lrs, key=lambda v: abs(math.log(v / FAST_ANCHOR_LR)) if v > 0 else math.inf)


Runner = Callable[[list["RunSpec"]], list[dict]]


def tune(
    cli_args: Sequence[str],
    out: str | os.PathLike,
    grid: str | None = None,
    seeds: Sequence[int] = OFFICIAL_SEEDS,
    fast: bool = False,
    name: str | None = None,
    log=_log.info,
    stack: int = 0,
    trunk_cache: bool = True,
    runner: Runner | None = None,
    e2vpt_prune: str | None = None,
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
    stack : int
        0: every run is its own Lightning run. K >= 1: up to K configurations per pass
        (`vapt.training.stacked`), same results.
    trunk_cache : bool
        With ``stack``, read the frozen trunk of head-only methods from ``<out>/trunk_cache``.
    runner : callable, optional
        ``runner(specs) -> results`` that executes a stage's runs elsewhere (`vapt.training.sweep_engine`);
        by default they run here.
    e2vpt_prune : str, optional
        E2VPT only: between grid and seeds, the official pruning search and rewind runs
        (`vapt.training.e2vpt_prune`) with these percentages (``official``: 10, 20, ..., 90); the final seeds
        run with the best pruning. None: no pruning.
    overwrite : bool
        Redo finished separate runs made with other arguments or files (otherwise ``stale: ...``).
    """
    from vapt.training.decoded import forget_decoded
    from vapt.training.lightning_cli import experiment_name
    from vapt.training.runs import run_specs

    config = parse_config(cli_args)
    family = data_family(config)
    name = name or experiment_name(config)
    task, _, method = name.partition("/")
    base = Path(out) / name
    lrs, wds = parse_grid(grid)
    if not seeds:
        raise TuneError("vapt tune: --seeds is empty; give at least one seed, e.g. --seeds 42.")
    if stack < 0:
        raise TuneError(f"vapt tune: --stack {stack}: give 0 (separate runs) or K >= 1 configurations per pass.")
    protocol = PROTOCOLS[family]
    if e2vpt_prune is not None and str(config.model.init_args.method) != "e2vpt":
        raise TuneError(f"vapt tune --e2vpt_prune: the config's method is {config.model.init_args.method!r}; "
                        "pruning applies to e2vpt only.")
    if e2vpt_prune is not None:
        from vapt.training.e2vpt_prune import parse_percents, prune_stage

        percents = parse_percents(e2vpt_prune)
    cache_dir = Path(out) / "trunk_cache" if stack and trunk_cache else None
    run = runner or (lambda specs: run_specs(cli_args, specs, stack, cache_dir, log, overwrite))

    scores: dict[tuple[float, float], float] = {}

    def grid_stage(pairs: list[tuple[float, float]]) -> None:
        results = run([grid_spec(base, protocol, lr, wd) for lr, wd in pairs])
        for (lr, wd), res in zip(pairs, results):
            scores[(lr, wd)] = res["metrics"].get("val/acc", float("nan"))
            log(f"    lr={_fmt(lr)} wd={_fmt(wd)}: val/acc={scores[(lr, wd)]:.4f}")

    if fast:
        anchor = fast_anchor(lrs)
        grid_stage([(anchor, wd) for wd in wds])
        best_wd = _best(scores, lrs, wds)[1]
        grid_stage([(lr, best_wd) for lr in lrs if (lr, best_wd) not in scores])
    else:
        grid_stage([(lr, wd) for lr in lrs for wd in wds])
    best_lr, best_wd = _best(scores, lrs, wds)
    log(f"  best: lr={_fmt(best_lr)} wd={_fmt(best_wd)} (val/acc {scores[(best_lr, best_wd)]:.4f})")

    pruning, extra = None, None
    if e2vpt_prune is not None:
        pruning = prune_stage(cli_args, base, grid_spec(base, protocol, best_lr, best_wd).overrides,
                              config.model.init_args.method_kwargs, percents, run, log, overwrite)
        extra = pruning["method_kwargs"]
    results = run([final_spec(base, protocol, best_lr, best_wd, seed, extra) for seed in seeds])
    forget_decoded()  # kept for this task's sweep only
    tests = [res["metrics"]["test/acc"] for res in results]
    for seed, acc in zip(seeds, tests):
        log(f"    seed {seed}: test/acc={acc:.4f}")
    mean = sum(tests) / len(tests)
    std = (sum((t - mean) ** 2 for t in tests) / len(tests)) ** 0.5
    summary = {
        "task": task, "method": method, "family": family,
        "best_lr": best_lr, "best_wd": best_wd, "fast": fast,
        "grid": [{"lr": lr, "wd": wd, "val_acc": s} for (lr, wd), s in scores.items()],
        "seeds": list(seeds), "test_acc": tests,
        "test_acc_mean": mean, "test_acc_std": std,
    }
    if pruning is not None:
        summary["pruning"] = {"candidates": pruning["candidates"], "best": pruning["best"]}
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


def grid_size(lrs: Sequence[float], wds: Sequence[float], fast: bool) -> int:
    """Runs of the grid stage: all pairs, or with ``--fast`` the wd sweep plus the other lrs at the best wd."""
    return len(wds) + len(lrs) - 1 if fast else len(lrs) * len(wds)


def estimate(cli_args: Sequence[str], out: str | os.PathLike, grid: str | None = None,
             seeds: Sequence[int] = OFFICIAL_SEEDS, fast: bool = False, stack: int = 0, trunk_cache: bool = True,
             steps: int = 3) -> dict:
    """Predicted device-hours of the sweep `tune` would run, from ``steps`` measured steps on the configured
    device (see `vapt.training.estimate`)."""
    from vapt.training.estimate import estimate_sweep

    config = parse_config(cli_args)
    protocol = PROTOCOLS[data_family(config)]
    lrs, wds = parse_grid(grid)
    first = grid_spec(Path(out), protocol, lrs[0], wds[0])
    return estimate_sweep(cli_args, out, grid_size(lrs, wds, fast), len(seeds), stack, trunk_cache, protocol,
                          first.overrides, steps=steps)


def main(argv: list[str] | None = None) -> int:
    """Exit 0, or 2 on bad input (one line on stderr; ``--debug`` or ``VAPT_DEBUG=1`` shows the traceback)."""
    ap = DialectParser(
        prog="vapt tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, repeat=True, help="LightningCLI YAML: a path or a shipped config name (repeatable)")
    ap.add_argument("--out", default="runs/tune", help="runs folder (default runs/tune)")
    ap.add_argument("--grid", default=None, help="'official' (default) or 'lr=50,25,...;wd=0.01,0'")
    ap.add_argument("--seeds", default=",".join(map(str, OFFICIAL_SEEDS)), help="comma-separated final seeds")
    ap.add_argument("--fast", action="store_true", help="wd sweep at lr 5, then lr sweep at the best wd")
    ap.add_argument("--e2vpt_prune", nargs="?", const="official", default=None, metavar="PERCENTS",
                    help="E2VPT: after the grid, the official pruning search (mask scores, one rewind run per "
                         "candidate pruning, best on val) before the seeds; optional comma-separated percentages "
                         "(default: official 10,20,...,90)")
    ap.add_argument("--name", default=None, help="<task>/<method> folder name (default: from the config)")
    ap.add_argument("--stack", type=int, default=0, metavar="K",
                    help="train up to K configurations of a stage in one pass (same results as separate runs; "
                         "VTAB-style deterministic transforms only); 0 (default): one Lightning run each")
    ap.add_argument("--no_trunk_cache", action="store_true",
                    help="with --stack: recompute the frozen trunk of head-only methods instead of caching it "
                         "under <out>/trunk_cache")
    ap.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                    help="run each stage's runs as submitit jobs: Slurm job arrays, local worker processes, or "
                         "in-process with pdb on a failure (debug); needs the [sweep] extra; default: here, one "
                         "after another")
    ap.add_argument("--workers", type=int, default=2, help="jobs running at once with --cluster (default 2)")
    ap.add_argument("--cluster_args", default=None,
                    help="JSON object of submitit parameters, e.g. '{\"slurm_partition\": \"gpu\", "
                         "\"gpus_per_node\": 1, \"timeout_min\": 240}'")
    ap.add_argument("--estimate", action="store_true",
                    help="measure a few steps on the configured device, print the predicted device-hours of the "
                         "whole sweep (grid, seeds, test evaluation) and exit")
    ap.add_argument("--estimate_steps", type=int, default=3, help="timed steps of --estimate (default 3)")
    ap.add_argument("--overwrite", action="store_true", help="redo finished runs made with other settings or data")
    args, passthrough = ap.parse_known_args(argv)
    if args.print_config:
        return print_configs(args.config, resolve_config)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 42,44,82,100,800")
    if args.stack < 0:
        ap.error(f"--stack {args.stack}: give 0 (separate runs) or K >= 1")
    cli_args = [a for c in args.config for a in ("--config", c)] + passthrough

    def run(cli: list[str]) -> int:
        cli = resolve_config_args(cli)
        trunk = not args.no_trunk_cache
        with quiet_command():
            if args.estimate:
                report = estimate(cli, args.out, grid=args.grid, seeds=seeds, fast=args.fast, stack=args.stack,
                                  trunk_cache=trunk, steps=args.estimate_steps)
            else:
                runner = None
                if args.cluster:
                    from vapt.training.sweep_engine import parse_cluster_parameters, submitit_runner

                    cache = Path(args.out) / "trunk_cache" if args.stack and trunk else None
                    runner = submitit_runner(cli, args.out, args.cluster, args.workers, args.stack, cache,
                                             parse_cluster_parameters(args.cluster_args), log=print,
                                             overwrite=args.overwrite)
                tune(cli, args.out, grid=args.grid, seeds=seeds, fast=args.fast, name=args.name, log=print,
                     stack=args.stack, trunk_cache=trunk, runner=runner, overwrite=args.overwrite,
                     e2vpt_prune=args.e2vpt_prune)
        if args.estimate:
            print_estimate(report)
        return 0

    from vapt.training.lightning_cli import USER_ERRORS

    return run_reporting_errors("vapt tune", run, cli_args, (*USER_ERRORS, TuneError, SweepError),
                                report_bugs=False)


def print_estimate(report: dict) -> None:
    """Human-readable lines, then the whole report as one JSON line."""
    how = f"{report['stack']} configurations per pass" if report["stack"] else "separate runs"
    print(f"device: {report['device']}; {how}{' + cached trunk' if report['cached_trunk'] else ''}")
    print(f"measured: train step {report['train_step_s'] * 1e3:.1f} ms, eval step {report['eval_step_s'] * 1e3:.1f} ms "
          f"(batch {report['batch_size']} x {report['configurations']} configuration(s))")
    print(f"sweep: {report['grid_runs']} grid runs + {report['seeds']} seeds x {report['epochs']} epochs; "
          f"splits {report['sizes']}")
    print(f"predicted device-hours: grid {report['grid_h']:.4g}, final {report['final_h']:.4g}, "
          f"test {report['test_h']:.4g}, trunk {report['trunk_h']:.4g}; total {report['total_h']:.4g}")
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
