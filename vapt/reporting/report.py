"""`vapt report RUNS_DIR`: results tables (markdown + CSV) and a bar plot, next to the published numbers.

Reads every ``summary.json`` written by ``vapt tune`` under ``RUNS_DIR`` and writes ``report.md``,
``report.csv`` and ``report.png`` (into ``--out``, default ``RUNS_DIR``). Rows: each task, each VTAB-1k
group (Natural / Specialized / Structured) and the mean; columns per method: ours (mean +- std over
seeds), the paper's number and the delta. When only some tasks of a group ran, the group's published
value is the mean of the published per-task numbers of the same tasks (marked ``k/n``); a published
group mean with no per-task numbers (VAPT) is compared only when the group is complete.
Every method with a published number for the tasks that ran gets a column, also when we did not run it
(Full / Linear / VPT-shallow / VPT-deep / VAPT); a number that does not exist stays blank in the tables and
is an ``x`` on the axis (no bar) in the plot; the seeds' std is drawn as error bars.
Published numbers: ``data/vtab/published.csv`` and ``data/fgvc/published.csv`` (sources in the files), shipped
in the package (``vapt.fileio.resources``).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections import defaultdict
from pathlib import Path

from vapt.cli.errors import report_error
from vapt.cli.flags import DialectParser
from vapt.data.registry import FGVC_DATASETS, GROUPS, VTAB_TASKS
from vapt.fileio.atomic import atomic_path, read_json_file
from vapt.fileio.atomic import write_text_atomic as atomic_write_text
from vapt.fileio.resources import data_file
from vapt.reporting.tables import markdown_table

METHOD_ORDER = ("full", "linear", "partial", "mlp", "sidetune", "bitfit", "adapter", "lora", "replora",
                "vpt_shallow", "vpt_deep", "e2vpt", "vfpt", "gatevpt", "gated_prompt", "vapt")
LABELS = {"full": "Full", "linear": "Linear", "bitfit": "BitFit", "partial": "Partial-1", "mlp": "MLP-3",
          "sidetune": "Sidetune", "adapter": "Adapter", "lora": "LoRA", "replora": "RepLoRA",
          "vpt_shallow": "VPT-shallow", "vpt_deep": "VPT-deep", "e2vpt": "E2VPT", "vfpt": "VFPT", "gatevpt": "GateVPT",
          "gated_prompt": "Gated prompts", "vapt": "VAPT"}


def load_summaries(runs_dir: str | os.PathLike) -> list[dict]:
    """Every ``summary.json`` under ``runs_dir`` (clear error if there is none)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"vapt report: {runs_dir} is not a folder; pass the --out folder of vapt tune.")
    out = [read_json_file(p, "delete it and rerun vapt tune for that run (finished seeds are kept)")
           for p in sorted(runs_dir.rglob("summary.json"))]
    if not out:
        raise FileNotFoundError(f"vapt report: no summary.json under {runs_dir}; run vapt tune (or "
                                "scripts/reproduce_vtab.py) first, or wait for the seeds of a run to finish.")
    return out


def load_published(path: str | os.PathLike | None) -> dict[tuple[str, str], float]:
    """``{(method, task): top1}`` from a published-numbers CSV (``method,task,top1,source``); {} if absent."""
    if path is None or not Path(path).is_file():
        return {}
    with open(path) as fh:
        return {(r["method"], r["task"]): float(r["top1"]) for r in csv.DictReader(fh)}


def load_sources(path: str | os.PathLike | None) -> dict[str, list[str]]:
    """``{method: [source, ...]}`` (distinct, in file order) from a published-numbers CSV; {} if absent."""
    if path is None or not Path(path).is_file():
        return {}
    out: dict[str, list[str]] = {}
    with open(path) as fh:
        for r in csv.DictReader(fh):
            sources = out.setdefault(r["method"], [])
            if r.get("source") and r["source"] not in sources:
                sources.append(r["source"])
    return out


def sources_markdown(methods: list[str], sources: dict[str, list[str]]) -> str:
    """One line per shown method with published numbers: ``- Label: source; source``."""
    lines = [f"- {LABELS.get(m, m)}: {'; '.join(sources[m])}" for m in methods if sources.get(m)]
    return "Published numbers from:\n\n" + "\n".join(lines) + "\n" if lines else ""


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def build_rows(summaries: list[dict], family: str, published: dict) -> tuple[list[dict], list[str]]:
    """Rows ``{level, name, method, ours, std, n_seeds, published, delta, note}`` for one family.

    Methods: those we ran plus every method with a published number for one of the tasks we ran (or for a
    group / mean), in :data:`METHOD_ORDER`; a published-only method has ``ours = None``. Tasks: those we ran.
    """
    names = list(VTAB_TASKS) if family == "vtab" else list(FGVC_DATASETS)
    ours = {(s["method"], s["task"]): s for s in summaries if s.get("family") == family}
    tasks = [t for t in names if any(k[1] == t for k in ours)]
    ran = {k[0] for k in ours}
    with_paper = {m for (m, t) in published if t in tasks or t == "mean" or t.startswith("group:")}
    methods = [m for m in METHOD_ORDER if m in ran | with_paper]
    methods += sorted((ran | with_paper) - set(methods))
    rows = []
    for method in methods:
        accs = {}
        for task in tasks:
            s = ours.get((method, task))
            acc = 100 * s["test_acc_mean"] if s else None
            pub = published.get((method, task))
            accs[task] = acc
            if s is None and pub is None and method not in ran:
                continue
            rows.append({"level": "task", "name": task, "method": method, "ours": acc,
                         "std": 100 * s["test_acc_std"] if s else None, "n_seeds": len(s["test_acc"]) if s else 0,
                         "best_lr": s["best_lr"] if s else None, "best_wd": s["best_wd"] if s else None,
                         "published": pub, "delta": acc - pub if acc is not None and pub is not None else None,
                         "note": ""})
        groups = [(g, [t for t in names if VTAB_TASKS[t].group == g]) for g in GROUPS] if family == "vtab" else []
        groups.append(("mean", names))
        for gname, members in groups:
            # ours: the tasks this method ran; a published-only method: the tasks any method ran
            done = [t for t in members if (accs.get(t) is not None if method in ran else t in tasks)]
            if not done:
                continue
            acc = _mean(accs[t] for t in done) if method in ran else None
            per_task = [published.get((method, t)) for t in done]
            key = "mean" if gname == "mean" else f"group:{gname}"
            if all(p is not None for p in per_task):
                pub = _mean(per_task)
            elif len(done) == len(members):
                pub = published.get((method, key))
            else:
                pub = None
            if acc is None and pub is None:
                continue
            rows.append({"level": "group" if gname != "mean" else "mean", "name": gname, "method": method,
                         "ours": acc, "std": None, "n_seeds": None, "best_lr": None, "best_wd": None,
                         "published": pub, "delta": acc - pub if acc is not None and pub is not None else None,
                         "note": f"{len(done)}/{len(members)}"})
    return rows, [m for m in methods if any(r["method"] == m for r in rows)]


def _cell(v, fmt="{:.2f}") -> str:
    return "" if v is None else fmt.format(v)


def _ran(rows: list[dict], method: str) -> bool:
    return any(r["method"] == method and r["ours"] is not None for r in rows)


def to_markdown(rows: list[dict], methods: list[str], family: str) -> str:
    """One table: per method we ran ``ours | paper | Δ``, per published-only method ``paper``; blanks = none."""
    title = {"vtab": "VTAB-1k", "fgvc": "FGVC"}[family]
    cols = {m: ("ours", "paper", "Δ") if _ran(rows, m) else ("paper",) for m in methods}
    header = ["task"] + [f"{LABELS.get(m, m)} {c}" for m in methods for c in cols[m]]
    body = []
    by = defaultdict(dict)
    order = []
    for r in rows:
        key = (r["level"], r["name"])
        if key not in by:
            order.append(key)
        by[key][r["method"]] = r
    order.sort(key=lambda k: {"task": 0, "group": 1, "mean": 2}[k[0]])
    for key in order:
        level, name = key
        label = name if level == "task" else f"**{name}** ({next(iter(by[key].values()))['note']})"
        cells = [label]
        for m in methods:
            r = by[key].get(m)
            if r is None:
                cells += [""] * len(cols[m])
                continue
            ours = _cell(r["ours"])
            if r["std"] is not None and r["ours"] is not None:
                ours += f" ± {r['std']:.2f}"
            values = {"ours": ours, "paper": _cell(r["published"]), "Δ": _cell(r["delta"], "{:+.2f}")}
            cells += [values[c] for c in cols[m]]
        body.append(cells)
    return "\n".join([f"### {title} top-1 (%)", "", *markdown_table(header, body)]) + "\n"


def draw_panel(ax, rows: list[dict], family: str) -> None:
    """One family's grouped bars on ``ax``: per method ours (solid, seeds' std as error bars) and the paper
    (hatched); a value that does not exist gets no bar but an ``x`` on the axis, in the series' colour."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    series = [(m, kind) for m in methods for kind in (("ours", "published") if _ran(rows, m) else ("published",))]
    width = 0.8 / max(1, len(series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    missing = []
    for j, (m, kind) in enumerate(series):
        get = {r["name"]: r for r in rows if r["method"] == m}
        c = colours[methods.index(m) % len(colours)]
        xs, ys, err = [], [], []
        for i, n in enumerate(names):
            v = get[n][kind] if n in get else None
            if v is None:
                missing.append((i + j * width, c))
                continue
            xs.append(i + j * width)
            ys.append(v)
            err.append(get[n]["std"] if kind == "ours" and get[n]["std"] is not None else float("nan"))
        if not xs:
            continue
        if kind == "ours":
            ax.bar(xs, ys, width, color=c, yerr=err, capsize=2, ecolor="black",
                   label=f"{LABELS.get(m, m)} (ours ± std)")
        else:
            ax.bar(xs, ys, width, color="none", edgecolor=c, hatch="//", label=f"{LABELS.get(m, m)} (paper)")
    for k, (x, c) in enumerate(missing):
        ax.plot([x], [1.5], "x", color=c, markersize=6, linestyle="none", label=None if k else "no value")
    ax.set_xticks([i + (len(series) - 1) * width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title({"vtab": "VTAB-1k", "fgvc": "FGVC"}[family])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot(rows_by_family: dict[str, list[dict]], path: Path) -> None:
    """``path`` (PNG): one :func:`draw_panel` per family that has rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f, rows in rows_by_family.items() if rows]
    fig, axes = plt.subplots(len(fams), 1, figsize=(14, 4 * len(fams)), squeeze=False)
    for ax, fam in zip(axes[:, 0], fams):
        draw_panel(ax, rows_by_family[fam], fam)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def report(runs_dir: str | os.PathLike, out: str | os.PathLike | None = None,
           published: dict[str, str | None] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.png``; returns their paths."""
    summaries = load_summaries(runs_dir)
    out = Path(out or runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    published = published or {}
    pub_paths = {f: published.get(f) or data_file(f"{f}/published.csv") for f in ("vtab", "fgvc")}
    md = ["# Results", "", (f"Runs: `{runs_dir}`. Ours = mean ± std of test top-1 over seeds (last epoch); "
          "paper = published number (sources in data/*/published.csv); Δ = ours − paper."), ""]
    rows_by_family, csv_rows = {}, []
    for family in ("vtab", "fgvc"):
        if not any(s.get("family") == family for s in summaries):
            continue
        pub = load_published(pub_paths[family])
        if not pub:
            md.append(f"(no published numbers found at {pub_paths[family]})\n")
        rows, methods = build_rows(summaries, family, pub)
        rows_by_family[family] = rows
        md.append(to_markdown(rows, methods, family))
        md.append(sources_markdown(methods, load_sources(pub_paths[family])))
        csv_rows += [{"family": family, **r} for r in rows]
    buf = io.StringIO()
    fields = ["family", "level", "name", "method", "ours", "std", "n_seeds", "published", "delta", "note",
              "best_lr", "best_wd"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in csv_rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "report.png"}
    atomic_write_text(paths["md"], "\n".join(md))
    atomic_write_text(paths["csv"], buf.getvalue())
    plot(rows_by_family, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="vapt report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir", help="folder written by vapt tune / scripts/reproduce_vtab.py")
    ap.add_argument("--out", default=None, help="where to write report.{md,csv,png} (default: runs_dir)")
    ap.add_argument("--published_vtab", default=None, help="CSV method,task,top1 (default data/vtab/published.csv)")
    ap.add_argument("--published_fgvc", default=None, help="CSV method,task,top1 (default data/fgvc/published.csv)")
    args = ap.parse_args(argv)
    published = {k: v for k, v in (("vtab", args.published_vtab), ("fgvc", args.published_fgvc)) if v}
    try:
        paths = report(args.runs_dir, args.out, published)
    except FileNotFoundError as e:
        return report_error("vapt report", e)
    print(Path(paths["md"]).read_text())
    print("wrote", *paths.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
