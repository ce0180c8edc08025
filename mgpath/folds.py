"""k-fold runner: fit and test one config on every fold; per-fold and mean/std metrics (markdown + CSV).

``mgpath folds --config configs/wsi/tcga_nsclc_16shot.yaml --folds 0 1 2 3 4 --out runs/nsclc [overrides]``

Each fold runs ``fit`` with ``--data.fold k`` in ``OUT/fold_k``, then ``test`` on the best checkpoint (best
validation macro-F1 when the config has such a checkpoint callback, else the last weights), and writes
``OUT/fold_k/result.json``. Results go to ``OUT/results.csv`` and ``OUT/results.md``: rows are the folds, then
``mean``, ``std`` (sample std, ddof 1) and ``std_ddof0`` (population std: what the official ``main.py``
writes with ``np.std``, in a row it labels ``var``).

Resuming: rerunning the same command skips every fold that has its ``result.json`` and restarts an unfinished
(killed) fold from scratch in a clean folder, so no stale checkpoint of the killed run is left beside the new
ones. A finished fold is reused only when it was made with the same arguments and the same files (config,
labels, splits: see :func:`vapt.training.resume.run_identity`); otherwise the run stops with ``stale: ... pass
--overwrite``. Each fold is locked (``OUT/.locks/fold_k.lock``) while it trains: a second run into the same
folder leaves it to the first and says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mgpath.pipelines.locks import SlideLock
from vapt.cli.flags import DialectParser, add_config_options, parse_folds, print_configs
from vapt.fileio.atomic import read_json_file, write_text_atomic
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
    return read_json_file(p, f"delete it (or {Path(fold_dir)}) to redo that fold") if p.is_file() else None


def fold_identity(config: str, k: int, overrides: list[str] | None, train: bool) -> dict:
    """The arguments and data files that make fold ``k``'s result (files named in the config are included)."""
    import yaml

    def strings(v):
        if isinstance(v, dict):
            return [s for x in v.values() for s in strings(x)]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return [v.format(fold=k) if "{fold}" in v else v] if isinstance(v, str) else []

    try:
        named = strings(yaml.safe_load(Path(config).read_text()))
    except (OSError, yaml.YAMLError):
        named = []
    over = [o.format(fold=k) if "{fold}" in o else o for o in (overrides or [])]
    from vapt.training.resume import run_identity  # torch + Lightning: not for --help

    ident = run_identity([config, *(overrides or []), f"fold={k}", f"train={train}"], [*named, *over])
    return ident


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
    res = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False, weights_only=True)[0]
    row = {"fold": k, **{m: float(res[f"test/{m}"]) for m in METRICS}, "checkpoint": ckpt_path or "last",
           "identity": fold_identity(config, k, overrides, train)}
    write_text_atomic(fold_dir / "result.json", json.dumps(row, indent=1))
    return row


def run_folds(config: str, folds: list[int], out_dir: str, overrides: list[str] | None = None,
              train: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Fit + test every fold (finished folds made the same way are read back, not rerun); returns the summary
    table. A finished fold made otherwise stops the run (``stale``) unless ``overwrite``; a fold another live
    run is training is left to it (`FileExistsError` after the other folds)."""
    from vapt.training.resume import compare_run_identity  # torch + Lightning: not for --help

    per_fold, busy = [], []
    for k in folds:
        fold_dir = Path(out_dir) / f"fold_{k}"
        lock = SlideLock(Path(out_dir) / ".locks" / f"fold_{k}.lock")
        if not lock.acquire():
            print(f"fold {k}: busy: another run ({lock.owner}) is training it in {fold_dir}; left to it")
            busy.append(k)
            continue
        try:
            row = read_result(fold_dir)
            if row is not None:
                why = compare_run_identity(row.get("identity"), fold_identity(config, k, overrides, train))
                if why and not overwrite:
                    raise FileExistsError(f"stale: {fold_dir / 'result.json'} was made otherwise ({why}); pass "
                                          "--overwrite to redo it, or use another --out")
                if why:
                    row = None
            if row is not None:
                log.info("fold %d: finished earlier (%s), skipped", k, fold_dir / "result.json")
                print(f"fold {k}: finished earlier, read from {fold_dir / 'result.json'}")
            else:
                row = run_fold(config, k, fold_dir, overrides, train)
        finally:
            lock.release()
        per_fold.append(row)
    if busy:
        raise FileExistsError(f"fold(s) {busy} under {out_dir} are being trained by another run; rerun this "
                              "command when it ends to collect every fold")
    return summarise(per_fold, out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath folds", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, help="an MGPATH config (model + data + trainer blocks)")
    ap.add_argument("--folds", nargs="+", default=["0..4"], help="folds to run: 0..4, or 0 1 2")
    ap.add_argument("--out", required=True, help="output folder: fold_k/ per fold, results.md and results.csv")
    ap.add_argument("--overwrite", action="store_true", help="redo finished folds made with other settings or data")
    a, overrides = ap.parse_known_args(argv)
    if a.print_config:
        return print_configs(a.config, lambda c: resolve_config(c, ("", "wsi/"), lister="mgpath configs"))
    run_folds(a.config, parse_folds(a.folds), a.out, overrides, overwrite=a.overwrite)
    print((Path(a.out) / "results.md").read_text())
    return 0
