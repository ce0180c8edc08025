"""One table (and a plot) of a ``mgpath benchmark`` (or several ``mgpath folds``) output folder.

``mgpath report RUNS [--published paper.csv] [--out DIR]`` reads ``RUNS/<method>/fold_k/result.json`` and
writes ``report.md``, ``report.csv`` (per method: folds, mean ± std of test AUC, macro-F1 and accuracy, std =
sample std, ddof 1; ``std_ddof0`` as the official code's 'var' row) and ``report.png`` (per-fold points over
mean bars, a dashed chance line, the legend beside the panels).

Honest counts: a fold whose metric is NaN (e.g. AUC on a test set with one class) is left out of that
metric's mean and std, and the cell says over how many folds it was taken (``n=4 of 5``); a fold folder
without ``result.json`` (failed or still running) is listed as unfinished; the std of a single fold is
undefined and shown as "–" (empty in the CSV).

Paper numbers go beside ours only from ``--published`` (CSV ``method, auc, f1, acc, source``; method names
and column names match case-insensitively; values on a 0–1 scale, or all on a 0–100 scale, which are divided
by 100 with a printed line; a file mixing the two is refused). Methods only in that file become "paper only"
rows. None ship with the package (no source for MGPATH's table was available to copy from), so nothing is
cited unless you give that file.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vapt.cli.flags import DialectParser
from vapt.fileio.atomic import atomic_path, read_json_file, write_text_atomic
from vapt.reporting.tables import markdown_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["chance_levels", "collect", "main", "n_classes", "plot_figure", "read_published", "summary_table",
           "write_report"]

METRICS = ("auc", "f1", "acc")
PUBLISHED_COLUMNS = ("method", *METRICS, "source")


def collect(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-fold rows ``method, fold, auc, f1, acc, status, settings`` under ``runs``.

    ``status`` is ``"ok"``, ``"nan"`` (a metric is NaN) or ``"unfinished"`` (a ``fold_k`` folder without
    ``result.json``; metrics NaN); ``settings`` is the method's recorded settings as JSON text."""
    import numpy as np
    import pandas as pd
    rows = []
    for d in sorted(p for p in Path(runs).glob("*/fold_*") if p.is_dir()):
        method, fold = d.parent.name, d.name.removeprefix("fold_")
        if not fold.isdigit():
            continue
        res = d / "result.json"
        if not res.is_file():
            rows.append({"method": method, "fold": int(fold), **{m: float("nan") for m in METRICS},
                         "status": "unfinished", "settings": ""})
            continue
        r = read_json_file(res, "delete it and rerun `mgpath benchmark` (that fold is redone, the others kept)")
        vals = {m: float(r[m]) if r.get(m) is not None else float("nan") for m in METRICS}
        rows.append({"method": method, "fold": int(r.get("fold", fold)), **vals,
                     "status": "nan" if any(np.isnan(v) for v in vals.values()) else "ok",
                     "settings": json.dumps(r["settings"], sort_keys=True) if "settings" in r else ""})
    if not any(r["status"] != "unfinished" for r in rows):
        raise FileNotFoundError(f"mgpath/report.py: no <method>/fold_k/result.json under {runs}; run "
                                "`mgpath benchmark` (or `mgpath folds --out RUNS/<method>`) first")
    df = pd.DataFrame(rows)
    index = Path(runs) / "benchmark.json"
    order = read_json_file(index, "delete it (it only orders the methods)")["methods"] if index.is_file() else []
    rank = {m: i for i, m in enumerate([*order, *sorted(set(df["method"]) - set(order))])}
    return df.sort_values(["method", "fold"], key=lambda c: c.map(rank) if c.name == "method" else c,
                          kind="stable").reset_index(drop=True)


def read_published(path: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Validated paper numbers: (table ``method, auc, f1, acc, source`` on a 0–1 scale, notes to print)."""
    import numpy as np
    import pandas as pd
    try:
        pub = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"mgpath report: cannot read --published {path}: {err}") from err
    pub.columns = [str(c).strip().lower() for c in pub.columns]
    for c in pub.columns:
        if c not in PUBLISHED_COLUMNS:
            close = difflib.get_close_matches(c, PUBLISHED_COLUMNS, n=1, cutoff=0.5)
            raise ValueError(f"mgpath report: {path}: unknown column {c!r}"
                             + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" (columns: {', '.join(PUBLISHED_COLUMNS)})")
    if "method" not in pub.columns:
        raise ValueError(f"mgpath report: {path} needs a 'method' column (and auc, f1, acc, source)")
    pub["method"] = pub["method"].str.strip()
    dup = pub["method"].str.lower().duplicated(keep=False)
    if dup.any():
        raise ValueError(f"mgpath report: {path}: method(s) {sorted(set(pub.loc[dup, 'method']))} appear more "
                         "than once (names match case-insensitively); keep one row per method")
    for m in METRICS:
        if m not in pub.columns:
            pub[m] = ""
        text = pub[m].str.strip().str.rstrip("%")
        vals = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = vals.isna() & (text != "")
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"mgpath report: {path}: {m} of {pub['method'][i]!r} is {pub[m][i]!r}, not a number")
        pub[m] = vals
    values = pub[list(METRICS)].to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    notes = []
    if ((values < 0) | (values > 100)).any():
        raise ValueError(f"mgpath report: {path}: values must be on a 0-1 (or 0-100) scale; found "
                         f"{values[(values < 0) | (values > 100)][0]}")
    if (values > 1).any():
        if (values <= 1).any():
            raise ValueError(f"mgpath report: {path} mixes 0-1 values ({values[values <= 1][0]}) and 0-100 values "
                             f"({values[values > 1][0]}); give every value on one scale")
        pub[list(METRICS)] = pub[list(METRICS)] / 100
        notes.append(f"mgpath report: {path} is on a 0-100 scale; its values were divided by 100")
    if "source" not in pub.columns:
        pub["source"] = ""
    return pub[list(PUBLISHED_COLUMNS)], notes


def summary_table(per_fold: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method: finished / unfinished folds, per metric the folds with a finite value (``_n``),
    mean, std (ddof 1; NaN for one fold), std_ddof0, the recorded settings, and paper values if given
    (matched case-insensitively; methods only in ``published`` become ``paper only`` rows)."""
    import pandas as pd
    order = list(dict.fromkeys(per_fold["method"]))
    done = per_fold[per_fold["status"] != "unfinished"]
    out = pd.DataFrame(index=order)
    out["folds"] = done.groupby("method").size().reindex(order).fillna(0).astype(int)
    out["unfinished"] = (per_fold["status"] == "unfinished").groupby(per_fold["method"]).sum().reindex(order)
    g = done.groupby("method")
    for m in METRICS:
        out[f"{m}_n"] = g[m].count().reindex(order).fillna(0).astype(int)
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
        out[f"{m}_std_ddof0"] = g[m].std(ddof=0)
    out["settings"] = done.groupby("method")["settings"].agg(lambda s: next((x for x in s if x), "")).reindex(order)
    out["settings"] = out["settings"].fillna("")
    for m in METRICS:
        out[f"paper_{m}"] = float("nan")
    out["paper_source"] = ""
    out["paper_only"] = False
    if published is not None:
        ours = {name.lower(): name for name in out.index}
        for _, row in published.iterrows():
            name = ours.get(row["method"].lower())
            if name is None:
                name = row["method"]
                out.loc[name] = {"folds": 0, "unfinished": 0, "settings": "", "paper_source": "", "paper_only": True,
                                 **{f"{m}_n": 0 for m in METRICS}}
            for m in METRICS:
                out.loc[name, f"paper_{m}"] = row[m]
            out.loc[name, "paper_source"] = str(row.get("source", "") or "")
    out.index.name = "method"
    return out


def _cell(r, m: str) -> str:
    import pandas as pd
    n, folds = int(r[f"{m}_n"]), int(r["folds"])
    if n == 0:
        return "–"
    std = "–" if pd.isna(r[f"{m}_std"]) else f"{r[f'{m}_std']:.4f}"
    return f"{r[f'{m}_mean']:.4f} ± {std}" + (f" (n={n} of {folds})" if n < folds else "")


def _notes(per_fold: pd.DataFrame) -> list[str]:
    import numpy as np
    lines = []
    for _, r in per_fold[per_fold["status"] == "nan"].iterrows():
        bad = [m for m in METRICS if np.isnan(r[m])]
        lines.append(f"- {r['method']} fold {r['fold']}: {', '.join(bad)} is NaN (e.g. a test set with one class); "
                     "left out of that mean and std")
    for _, r in per_fold[per_fold["status"] == "unfinished"].iterrows():
        lines.append(f"- {r['method']} fold {r['fold']}: unfinished (no result.json: failed or still running); "
                     "not counted")
    return lines


def _markdown(table: pd.DataFrame, per_fold: pd.DataFrame) -> str:
    import pandas as pd
    head = ["method", "folds", *[f"test {m} (mean ± std)" for m in METRICS], *[f"paper {m}" for m in METRICS],
            "source"]
    body = []
    for meth, r in table.iterrows():
        paper = ["" if pd.isna(r[f"paper_{m}"]) else f"{r[f'paper_{m}']:.4f}" for m in METRICS]
        name = f"{meth} (paper only)" if r["paper_only"] else meth
        folds = "–" if r["paper_only"] else str(int(r["folds"])) + (
            f" (+{int(r['unfinished'])} unfinished)" if r["unfinished"] else "")
        body.append([name, folds, *(_cell(r, m) for m in METRICS), *paper, r["paper_source"]])
    lines = markdown_table(head, body)
    notes = _notes(per_fold)
    lines += ["", *(["Folds left out:", *notes, ""] if notes else []),
              ("std: sample std over folds (ddof 1; '–' for a single fold); report.csv also has std_ddof0 (np.std, "
               "what the official MGPATH main.py writes in a row labelled 'var') and each method's recorded "
               "settings. Paper columns are blank where no source was given."), ""]
    return "\n".join(lines)


def n_classes(runs: str | os.PathLike) -> int | None:
    """The class count of a benchmark folder: ``data.classes`` of its ``<method>/config.yaml`` (None if unknown)."""
    import yaml

    for path in sorted(Path(runs).glob("*/config.yaml")):
        try:
            classes = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("classes")
        except yaml.YAMLError:
            continue
        if classes:
            return len(classes)
    return None


def chance_levels(classes: int | None) -> dict[str, float]:
    """What guessing scores: AUC 0.5; accuracy and macro-F1 1/C for uniform random guesses over C classes
    (macro-F1 exactly so when the classes are balanced). Without a class count only AUC is known."""
    out = {"auc": 0.5}
    if classes:
        out.update(acc=1 / classes, f1=1 / classes)
    return out


def plot_figure(per_fold: pd.DataFrame, table: pd.DataFrame, classes: int | None = None):
    """The report figure: per metric, mean bars with std error bars, the folds as points, a dashed chance line,
    paper stars when given; the legend sits to the right of the panels, clear of the bars."""
    import matplotlib
    import numpy as np
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in table.index if not table.loc[m, "paper_only"]]
    table = table.loc[methods]
    chance = chance_levels(classes)
    legend_w = 2.4  # inches kept free on the right for the legend
    width = 1.0 + 1.0 * max(len(methods), 2) * len(METRICS) + legend_w
    fig, axes = plt.subplots(1, len(METRICS), figsize=(width, 4.2), squeeze=False)
    x = np.arange(len(methods))
    for ax, m in zip(axes[0], METRICS):
        ax.bar(x, table[f"{m}_mean"].fillna(0.0), yerr=table[f"{m}_std"].fillna(0.0), color="#9ecae1", capsize=3,
               label="mean ± std")
        for i, meth in enumerate(methods):
            vals = per_fold.loc[per_fold["method"] == meth, m].to_numpy()
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=14, color="#08519c",
                       zorder=3, label="folds" if i == 0 else None)
            paper = table.loc[meth, f"paper_{m}"]
            if pd.notna(paper):
                ax.scatter([i], [paper], marker="*", s=80, color="#e6550d", zorder=4,
                           label="paper" if not ax.get_legend_handles_labels()[1].count("paper") else None)
        if m in chance:
            ax.axhline(chance[m], color="0.35", linestyle="--", linewidth=1.2, zorder=2,
                       label=f"chance ({classes} classes):\nAUC 0.5, accuracy and F1 1/{classes}" if classes else
                       "chance: AUC 0.5\n(give --classes for\naccuracy and F1)")
        ax.set_xticks(x, methods, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_title({"auc": "test AUC", "f1": "test macro-F1", "acc": "test accuracy"}[m])
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    right = 1 - legend_w / width
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(right + 0.005, 0.5),
               fontsize=8, frameon=False)
    return fig


def _plot(per_fold: pd.DataFrame, table: pd.DataFrame, path: Path, classes: int | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = plot_figure(per_fold, table, classes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(runs: str | os.PathLike, out: str | os.PathLike | None = None,
                 published: str | os.PathLike | None = None, classes: int | None = None,
                 log=print) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.png`` into ``out`` (default ``runs``); returns the table.

    ``classes``: the class count for the plot's chance line (default: from the runs' ``config.yaml``)."""
    per_fold = collect(runs)
    pub = None
    if published:
        pub, notes = read_published(published)
        for line in notes:
            log(line)
    table = summary_table(per_fold, pub)
    out = Path(out or runs)
    write_text_atomic(out / "report.csv", table.to_csv(float_format="%.4f"))
    write_text_atomic(out / "report.md", _markdown(table, per_fold))
    _plot(per_fold, table, out / "report.png", classes or n_classes(runs))
    return table


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="output folder of `mgpath benchmark`")
    ap.add_argument("--out", default=None, help="where to write report.{md,csv,png} (default RUNS)")
    ap.add_argument("--published", default=None, help="CSV of paper numbers: method, auc, f1, acc, source")
    ap.add_argument("--classes", type=int, default=None,
                    help="number of classes, for the plot's chance line (default: data.classes of the runs' "
                         "config.yaml; without it only the AUC chance line 0.5 is drawn)")
    a = ap.parse_args(argv)
    if a.classes is not None and a.classes < 2:
        ap.error(f"--classes must be at least 2; got {a.classes}")
    write_report(a.runs, a.out, a.published, a.classes)
    print((Path(a.out or a.runs) / "report.md").read_text())
    return 0
