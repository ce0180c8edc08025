"""Reproduce the VTAB-1k (or FGVC) table in one command: `vapt tune` for every task x method, then `vapt report`.

    python scripts/reproduce_vtab.py --root /data/vtab-1k --out runs/repro \\
        --methods vapt,vpt_deep --tasks all --fast [--trainer.devices 1 ...]

- Protocol (official): lr x wd grid on train800 -> val200 (last epoch), then 5 seeds on train800val200 -> test.
- ``--fast``: wd sweep at lr 5, then lr sweep at the best wd (13 runs instead of 40 per task and method).
- Resumable: re-running the same command skips every finished run (its ``result.json`` exists) and resumes
  a killed run from its newest checkpoint.
- Options the script does not know go to every run's LightningCLI, e.g. ``--model.checkpoint PATH``.
- ``--family fgvc`` does the same for the 5 FGVC datasets (``--root`` then holds one folder per dataset,
  named as in ``configs/fgvc/*/*.yaml``'s ``data.root``, e.g. ``CUB``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vapt.data.fgvc import FGVC_DATASETS
from vapt.data.vtab import GROUPS, VTAB_TASKS, get_task, tasks_in_group
from vapt.quiet import quiet_command
from vapt.reporting.report import report
from vapt.training.sweep_engine import parse_cluster_parameters, submitit_runner
from vapt.training.tune import OFFICIAL_SEEDS, tune

METHODS = ("vapt", "vpt_deep", "vpt_shallow", "linear", "adapter", "lora", "vfpt", "e2vpt", "gatevpt", "replora",
           "gated_prompt")  # the config folders written by scripts/make_vapt_configs.py


def select_tasks(spec: str, family: str) -> list[str]:
    """``all`` | group names | comma-separated task names -> config names."""
    if family == "fgvc":
        names = list(FGVC_DATASETS) if spec == "all" else [s.strip().lower() for s in spec.split(",") if s.strip()]
        unknown = [n for n in names if n not in FGVC_DATASETS]
        if unknown:
            raise SystemExit(f"unknown FGVC dataset(s) {unknown}; choose from {list(FGVC_DATASETS)}")
        return names
    if spec == "all":
        return list(VTAB_TASKS)
    out = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        out += tasks_in_group(part) if part in GROUPS else [get_task(part).name]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="VTAB-1k root (<root>/<task>/train800.txt ...) or FGVC root")
    ap.add_argument("--out", default="runs/repro", help="runs folder (default runs/repro)")
    ap.add_argument("--family", choices=("vtab", "fgvc"), default="vtab")
    ap.add_argument("--tasks", default="all", help="all | natural,specialized,structured | task names")
    ap.add_argument("--methods", default="vapt", help=f"comma-separated from {','.join(METHODS)}")
    ap.add_argument("--fast", action="store_true", help="wd sweep at lr 5, then lr sweep (VAPT --fast)")
    ap.add_argument("--grid", default=None, help="'official' (default) or 'lr=...;wd=...'")
    ap.add_argument("--seeds", default=",".join(map(str, OFFICIAL_SEEDS)))
    ap.add_argument("--configs", default=str(ROOT / "configs"), help="configs folder (default: the repo's)")
    ap.add_argument("--stack", type=int, default=0, metavar="K",
                    help="K configurations per pass, same results (see docs/sweep.md); 0: separate runs")
    ap.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                    help="run each stage's runs as submitit jobs (see docs/sweep.md)")
    ap.add_argument("--workers", type=int, default=2, help="jobs at once with --cluster")
    ap.add_argument("--cluster_args", default=None, help="JSON object of submitit parameters")
    args, passthrough = ap.parse_known_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tasks = select_tasks(args.tasks, args.family)
    for method in methods:
        for task in tasks:
            cfg = Path(args.configs) / args.family / method / f"{task}.yaml"
            if not cfg.is_file():
                ap.error(f"missing config {cfg}; regenerate with python scripts/make_vapt_configs.py")
            root = args.root if args.family == "vtab" else str(Path(args.root) / FGVC_DATASETS[task].official)
            print(f"== {task} / {method}", flush=True)
            cli = ["--config", str(cfg), "--data.root", root, *passthrough]
            runner = None
            if args.cluster:
                cache = Path(args.out) / "trunk_cache" if args.stack else None
                runner = submitit_runner(cli, args.out, args.cluster, args.workers, args.stack, cache,
                                         parse_cluster_parameters(args.cluster_args), log=print)
            with quiet_command():
                tune(cli, args.out, grid=args.grid, seeds=seeds, fast=args.fast, name=f"{task}/{method}", log=print,
                     stack=args.stack, runner=runner)
    paths = report(args.out)
    print(Path(paths["md"]).read_text())
    print("wrote", *paths.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
