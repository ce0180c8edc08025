"""One table (and a plot) of a ``mgpath benchmark`` (or several ``mgpath folds``) output folder.

``mgpath report RUNS [--published paper.csv] [--out DIR]`` reads ``RUNS/<method>/fold_k/result.json`` and
writes ``report.md``, ``report.csv`` (per method: folds, mean ± std of test AUC, macro-F1 and accuracy, std =
sample std, ddof 1; ``std_ddof0`` as the official code's 'var' row) and ``report.png`` (per-fold points over
mean bars). Paper numbers go beside ours only from ``--published`` (CSV ``method, auc, f1, acc, source``,
values in [0, 1]); none ship with the package (no source for MGPATH's table was available to copy from), so
the paper columns stay blank and nothing is cited unless you give that file.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from vapt.cli.flags import DialectParser
from vapt.fileio.atomic import atomic_path, read_json_file, write_text_atomic
from vapt.reporting.tables import markdown_table

__all__ = ["collect", "main", "summary_table", "write_report"]

METRICS = ("auc", "f1", "acc")


def collect(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-fold rows ``method, fold, auc, f1, acc`` of every ``<method>/fold_k/result.json`` under ``runs``."""
    rows = []
    for p in sorted(Path(runs).glob("*/fold_*/result.json")):
        r = read_json_file(p, "delete it and rerun `mgpath benchmark` (that fold is redone, the others kept)")
        rows.append({"method": p.parent.parent.name, "fold": int(r["fold"]), **{m: float(r[m]) for m in METRICS}})
    if not rows:
        raise FileNotFoundError(f"mgpath/report.py: no <method>/fold_k/result.json under {runs}; run "
                                "`mgpath benchmark` (or `mgpath folds --out RUNS/<method>`) first")
    df = pd.DataFrame(rows)
    index = Path(runs) / "benchmark.json"
    order = read_json_file(index, "delete it (it only orders the methods)")["methods"] if index.is_file() else []
    rank = {m: i for i, m in enumerate([*order, *sorted(set(df["method"]) - set(order))])}
    return df.sort_values(["method", "fold"], key=lambda c: c.map(rank) if c.name == "method" else c,
                          kind="stable").reset_index(drop=True)


def summary_table(per_fold: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method: n folds, mean / std (ddof 1) / std_ddof0 of each metric, paper values if given."""
    order = list(dict.fromkeys(per_fold["method"]))
    g = per_fold.groupby("method")
    out = pd.DataFrame(index=order)
    out["folds"] = g.size()
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1).fillna(0.0)
        out[f"{m}_std_ddof0"] = g[m].std(ddof=0)
    for m in METRICS:
        out[f"paper_{m}"] = float("nan")
    out["paper_source"] = ""
    if published is not None:
        pub = published.set_index("method")
        for meth in out.index.intersection(pub.index):
            for m in METRICS:
                if m in pub.columns and pd.notna(pub.loc[meth, m]):
                    out.loc[meth, f"paper_{m}"] = float(pub.loc[meth, m])
            out.loc[meth, "paper_source"] = str(pub.loc[meth].get("source", "") or "")
    out.index.name = "method"
    return out


def _cell(mean, std) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def _markdown(table: pd.DataFrame) -> str:
    head = ["method", "folds", *[f"test {m} (mean ± std)" for m in METRICS], *[f"paper {m}" for m in METRICS],
            "source"]
    body = [[meth, int(r["folds"]), *(_cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS),
             *("" if pd.isna(r[f"paper_{m}"]) else f"{r[f'paper_{m}']:.4f}" for m in METRICS), r["paper_source"]]
            for meth, r in table.iterrows()]
    lines = markdown_table(head, body)
    lines += ["", ("std: sample std over folds (ddof 1); report.csv also has std_ddof0 (np.std, what the official "
                   "MGPATH main.py writes in a row labelled 'var'). Paper columns are blank where no source was "
                   "given."), ""]
    return "\n".join(lines)


def _plot(per_fold: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(table.index)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 + 1.2 * len(methods) * len(METRICS) / 2, 3.6),
                             squeeze=False)
    x = np.arange(len(methods))
    for ax, m in zip(axes[0], METRICS):
        ax.bar(x, table[f"{m}_mean"], yerr=table[f"{m}_std"], color="#9ecae1", capsize=3, label="mean ± std")
        for i, meth in enumerate(methods):
            vals = per_fold.loc[per_fold["method"] == meth, m].to_numpy()
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=14, color="#08519c",
                       zorder=3, label="folds" if i == 0 else None)
            paper = table.loc[meth, f"paper_{m}"]
            if pd.notna(paper):
                ax.scatter([i], [paper], marker="*", s=80, color="#e6550d", zorder=4,
                           label="paper" if not ax.get_legend_handles_labels()[1].count("paper") else None)
        ax.set_xticks(x, methods, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"test {m}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(runs: str | os.PathLike, out: str | os.PathLike | None = None,
                 published: str | os.PathLike | None = None) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.png`` into ``out`` (default ``runs``); returns the table."""
    per_fold = collect(runs)
    pub = None
    if published:
        pub = pd.read_csv(published)
        if "method" not in pub.columns:
            raise ValueError(f"mgpath/report.py: {published} needs a 'method' column (and auc, f1, acc, source)")
    table = summary_table(per_fold, pub)
    out = Path(out or runs)
    write_text_atomic(out / "report.csv", table.to_csv(float_format="%.4f"))
    write_text_atomic(out / "report.md", _markdown(table))
    _plot(per_fold, table, out / "report.png")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="output folder of `mgpath benchmark`")
    ap.add_argument("--out", default=None, help="where to write report.{md,csv,png} (default RUNS)")
    ap.add_argument("--published", default=None, help="CSV of paper numbers: method, auc, f1, acc, source")
    a = ap.parse_args(argv)
    write_report(a.runs, a.out, a.published)
    print((Path(a.out or a.runs) / "report.md").read_text())
    return 0
