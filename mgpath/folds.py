"""k-fold runner: fit and test one config on every fold; per-fold and mean/std metrics (markdown + CSV).

``mgpath folds --config configs/wsi/tcga_nsclc_16shot.yaml --folds 0 1 2 3 4 --out runs/nsclc [overrides]``

Each fold runs ``fit`` with ``--data.fold k`` in ``OUT/fold_k``, then ``test`` on the best checkpoint (best
validation macro-F1 when the config has such a ModelCheckpoint, else the last weights). Results go to
``OUT/results.csv`` and ``OUT/results.md`` (rows: folds, then ``mean`` and ``std``; std is the sample std,
ddof=1, which the official code labels ``var``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from vapt.atomic import write_text_atomic

__all__ = ["main", "run_folds", "summarise"]

METRICS = ("auc", "f1", "acc")


def summarise(per_fold: list[dict], out_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``results.csv`` and ``results.md`` with the per-fold rows plus mean and std; returns the table."""
    df = pd.DataFrame(per_fold).set_index("fold")
    cols = [c for c in METRICS if c in df.columns]
    table = pd.concat([df[cols], df[cols].mean().to_frame("mean").T,
                       df[cols].std(ddof=1).fillna(0.0).to_frame("std").T])
    table.index = table.index.astype(str)
    table.index.name = "fold"
    out = Path(out_dir)
    for name, text in (("results.csv", table.to_csv(float_format="%.4f")), ("results.md", _markdown(table))):
        write_text_atomic(out / name, text)
    return table


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| fold | " + " | ".join(f"test {c}" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in table.iterrows():
        lines.append(f"| {idx} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    m, s = table.loc["mean"], table.loc["std"]
    lines += ["", "mean ± std: " + ", ".join(f"{c} {m[c]:.4f} ± {s[c]:.4f}" for c in cols), ""]
    return "\n".join(lines)


def run_folds(config: str, folds: list[int], out_dir: str, overrides: list[str] | None = None) -> pd.DataFrame:
    """Fit + test every fold; returns the summary table."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mgpath.lightning_cli import make_cli

    per_fold = []
    for k in folds:
        fold_dir = Path(out_dir) / f"fold_{k}"
        args = ["--config", config, "--data.fold", str(k), "--trainer.default_root_dir", str(fold_dir),
                *(overrides or [])]
        cli = make_cli(args, run=False)
        trainer, model, dm = cli.trainer, cli.model, cli.datamodule
        trainer.fit(model, datamodule=dm)
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
        ckpt_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        res = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)[0]
        row = {"fold": k, **{m: float(res[f"test/{m}"]) for m in METRICS}, "checkpoint": ckpt_path or "last"}
        per_fold.append(row)
        pd.DataFrame(per_fold).to_csv(Path(out_dir) / "per_fold_partial.csv", index=False)
    return summarise(per_fold, out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mgpath folds", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", required=True)
    a, overrides = ap.parse_known_args(argv)
    table = run_folds(a.config, a.folds, a.out, overrides)
    print((Path(a.out) / "results.md").read_text())
    return 0 if table is not None else 1
