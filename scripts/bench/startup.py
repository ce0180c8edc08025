"""Start-up time of the light commands: every ``--help``, ``mgpath splits/report/configs/encoders`` and
``vapt report/configs/summary`` on small generated inputs.

Each command runs as its own process (``python -m vapt.cli ...`` / ``python -m mgpath.cli ...``), the commands
interleaved round after round; the figure is the median wall time over the rounds, from process start to exit.
The CPU seconds (user + system) of each process are reported too: on a machine shared with other jobs they
vary less than the wall time. It also records which heavy libraries each command imported (``lightning``,
``torch``). Prints one JSON line:

    python scripts/bench/startup.py [--rounds 5] [--target 1.5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("lightning", "torch")
PROBE = ("import runpy, sys, json, atexit\n"
         f"atexit.register(lambda: print('\\nHEAVY=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), "
         "file=sys.stderr))\n"
         "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
         "runpy.run_module(sys.argv[0], run_name='__main__')\n")


def make_inputs(d: Path) -> dict[str, Path]:
    """A 10-slide labels CSV, an ``mgpath benchmark`` folder and a ``vapt tune`` runs folder."""
    labels = d / "labels.csv"
    labels.write_text("slide_id,case_id,label\n" + "".join(
        f"s{i},p{i},{'a' if i % 2 else 'b'}\n" for i in range(10)))
    bench = d / "bench"
    for method in ("mgpath", "abmil"):
        for k in range(2):
            f = bench / method / f"fold_{k}" / "result.json"
            f.parent.mkdir(parents=True)
            f.write_text(json.dumps({"fold": k, "auc": 0.9 - 0.1 * k, "f1": 0.8, "acc": 0.85}))
    runs = d / "runs"
    s = runs / "dtd" / "vapt" / "summary.json"
    s.parent.mkdir(parents=True)
    s.write_text(json.dumps({"task": "dtd", "method": "vapt", "family": "vtab", "best_lr": 5.0, "best_wd": 0.001,
                             "seeds": [42, 44],
                             "test_acc": [0.70, 0.72], "test_acc_mean": 0.71, "test_acc_std": 0.01}))
    return {"labels": labels, "bench": bench, "runs": runs}


def light_commands(d: Path) -> dict[str, list[str]]:
    """Label -> arguments (``vapt ...`` / ``mgpath ...``) of every light command."""
    sys.path.insert(0, str(REPO))
    from mgpath.cli import SUBCOMMANDS as MGPATH
    from vapt.cli.subcommands import SUBCOMMANDS as VAPT

    inputs = make_inputs(d)
    cmds = {"vapt --help": ["vapt", "--help"], "mgpath --help": ["mgpath", "--help"]}
    cmds |= {f"vapt {name} --help": ["vapt", name, "--help"] for name in VAPT}
    cmds |= {f"mgpath {name} --help": ["mgpath", name, "--help"] for name in MGPATH}
    cmds |= {
        "mgpath splits": ["mgpath", "splits", "--labels", str(inputs["labels"]), "--k", "2", "--folds", "2",
                          "--out", str(d / "splits")],
        "mgpath report": ["mgpath", "report", str(inputs["bench"]), "--out", str(d / "mg_report")],
        "mgpath configs --list": ["mgpath", "configs", "--list"],
        "mgpath encoders": ["mgpath", "encoders"],
        "vapt report": ["vapt", "report", str(inputs["runs"]), "--out", str(d / "vapt_report")],
        "vapt configs --list": ["vapt", "configs", "--list"],
        "vapt summary": ["vapt", "summary", "vit_tiny_patch16_224", "--method", "vapt"],
    }
    return cmds


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(args: list[str], env: dict) -> tuple[float, float, list[str], int]:
    """Wall seconds, CPU seconds, heavy libraries imported and exit status of one command in a fresh process."""
    t0, c0 = time.perf_counter(), _children_cpu()
    p = subprocess.run([sys.executable, "-c", PROBE, f"{args[0]}.cli", *args[1:]], env=env, cwd=REPO,
                       capture_output=True, text=True, check=False)
    dt, cpu = time.perf_counter() - t0, _children_cpu() - c0
    heavy = next((json.loads(line[6:]) for line in p.stderr.splitlines() if line.startswith("HEAVY=")), None)
    return dt, cpu, heavy, p.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target", type=float, default=1.5, help="seconds each command should stay under")
    a = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = light_commands(Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in ["python -c pass", *cmds]}
        cpus: dict[str, list[float]] = {k: [] for k in times}
        heavy, status = {}, {}
        for _ in range(a.rounds):
            t0, c0 = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            times["python -c pass"].append(time.perf_counter() - t0)
            cpus["python -c pass"].append(_children_cpu() - c0)
            for label, args in cmds.items():
                dt, cpu, heavy[label], status[label] = run_once(args, env)
                times[label].append(dt)
                cpus[label].append(cpu)
    median = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({
        "rounds": a.rounds, "target_s": a.target, "median_s": median,
        "median_cpu_s": {k: round(statistics.median(v), 3) for k, v in cpus.items()},
        "over_target": sorted(k for k, v in median.items() if v >= a.target),
        "imports_lightning": sorted(k for k, v in heavy.items() if v and "lightning" in v),
        "imports_torch": sorted(k for k, v in heavy.items() if v and "torch" in v),
        "failed": sorted(k for k, v in status.items() if v != 0),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
