"""k-fold runner: fit and test one config on every fold; per-fold and mean/std metrics (markdown + CSV).

``mgpath folds --config configs/wsi/tcga_nsclc_16shot.yaml --folds 0 1 2 3 4 --out runs/nsclc [overrides]``

Each fold runs ``fit`` with ``--data.fold k`` in ``OUT/fold_k``, then ``test`` on the best checkpoint (best
validation macro-F1 when the config has such a checkpoint callback, else the last weights), and writes
``OUT/fold_k/result.json``. Results go to ``OUT/results.csv`` and ``OUT/results.md``: rows are the folds, then
``mean``, ``std`` (sample std, ddof 1) and ``std_ddof0`` (population std: what the official ``main.py``
writes with ``np.std``, in a row it labels ``var``).

Resuming: rerunning the same command skips every fold that has its ``result.json`` and restarts an unfinished
(killed) fold from scratch in a clean folder, so no stale checkpoint of the killed run is left beside the new
ones.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vapt.cli.flags import DialectParser, add_config_options, parse_folds, print_configs
from vapt.fileio.atomic import write_text_atomic
from vapt.fileio.resources import resolve_config
from vapt.reporting.tables import markdown_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["main", "run_fold", "run_folds", "summarise"]

METRICS = ("auc", "f1", "acc")
MARKER = ".mgpath-fold"
log = logging.getLogger(__name__)


def summarise(per_fold: list[dict], out_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``results.csv`` and ``results.md`` with the per-fold rows plus mean, std (ddof 1) and std_ddof0;
    returns the table."""
    import pandas as pd
    df = pd.DataFrame(per_fold).set_index("fold")
    cols = [c for c in METRICS if c in df.columns]
    table = pd.concat([df[cols], df[cols].mean().to_frame("mean").T,
                       df[cols].std(ddof=1).fillna(0.0).to_frame("std").T,
                       df[cols].std(ddof=0).to_frame("std_ddof0").T])
    table.index = table.index.astype(str)
    table.index.name = "fold"
    out = Path(out_dir)
    for name, text in (("results.csv", table.to_csv(float_format="%.4f")), ("results.md", _markdown(table))):
        write_text_atomic(out / name, text)
    return table


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = markdown_table(["fold", *(f"test {c}" for c in cols)],
                           ([idx, *(f"{row[c]:.4f}" for c in cols)] for idx, row in table.iterrows()))
    m, s, s0 = table.loc["mean"], table.loc["std"], table.loc["std_ddof0"]
    lines += ["", "mean ± std (sample std, ddof 1): " + ", ".join(f"{c} {m[c]:.4f} ± {s[c]:.4f}" for c in cols),
              "mean ± std_ddof0 (np.std, as the official main.py, which labels it 'var'): "
              + ", ".join(f"{c} {m[c]:.4f} ± {s0[c]:.4f}" for c in cols), ""]
    return "\n".join(lines)


def _clean_fold_dir(fold_dir: Path) -> None:
    """Start an unfinished fold afresh: remove what an earlier (killed) run of it left."""
    if fold_dir.exists():
        if not (fold_dir / MARKER).is_file() and any(fold_dir.iterdir()):
            raise FileExistsError(f"mgpath/folds.py: {fold_dir} exists and was not made by `mgpath folds`; "
                                  "choose another --out or remove it")
        shutil.rmtree(fold_dir)
    fold_dir.mkdir(parents=True)
    (fold_dir / MARKER).write_text("made by mgpath folds; removed and rebuilt when the fold is rerun\n")


def read_result(fold_dir: str | os.PathLike) -> dict | None:
    """The finished fold's ``result.json`` (or None)."""
    p = Path(fold_dir) / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def run_fold(config: str, k: int, fold_dir: str | os.PathLike, overrides: list[str] | None = None,
             train: bool = True) -> dict:
    """Fit (unless ``train`` is False) and test one fold in ``fold_dir``; writes and returns its result row."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mgpath.lightning_cli import make_cli

    fold_dir = Path(fold_dir)
    _clean_fold_dir(fold_dir)
    args = ["--config", config, "--data.fold", str(k), "--trainer.default_root_dir", str(fold_dir),
            *(overrides or [])]
    cli = make_cli(args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    ckpt_path = None
    if train:
        trainer.fit(model, datamodule=dm)
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
        ckpt_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    res = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)[0]
    row = {"fold": k, **{m: float(res[f"test/{m}"]) for m in METRICS}, "checkpoint": ckpt_path or "last"}
    write_text_atomic(fold_dir / "result.json", json.dumps(row, indent=1))
    return row


def run_folds(config: str, folds: list[int], out_dir: str, overrides: list[str] | None = None,
              train: bool = True) -> pd.DataFrame:
    """Fit + test every fold (finished folds are read back, not rerun); returns the summary table."""
    per_fold = []
    for k in folds:
        fold_dir = Path(out_dir) / f"fold_{k}"
        row = read_result(fold_dir)
        if row is not None:
            log.info("fold %d: finished earlier (%s), skipped", k, fold_dir / "result.json")
            print(f"fold {k}: finished earlier, read from {fold_dir / 'result.json'}")
        else:
            row = run_fold(config, k, fold_dir, overrides, train)
        per_fold.append(row)
    return summarise(per_fold, out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath folds", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, help="an MGPATH config (model + data + trainer blocks)")
    ap.add_argument("--folds", nargs="+", default=["0..4"], help="folds to run: 0..4, or 0 1 2")
    ap.add_argument("--out", required=True, help="output folder: fold_k/ per fold, results.md and results.csv")
    a, overrides = ap.parse_known_args(argv)
    if a.print_config:
        return print_configs(a.config, lambda c: resolve_config(c, ("", "wsi/"), lister="mgpath configs"))
    run_folds(a.config, parse_folds(a.folds), a.out, overrides)
    print((Path(a.out) / "results.md").read_text())
    return 0
