"""`vapt report` on a VAPT-only runs folder: every published column, blanks for missing numbers, and a plot
with seeds' std as error bars and markers (not zero bars) where a number does not exist."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import matplotlib
import pytest

from vapt.reporting import report

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[2]
ACCS = {"patch_camelyon": [0.83, 0.85, 0.80], "dtd": [0.70, 0.72, 0.69]}


def _published() -> dict[tuple[str, str], float]:
    with open(REPO / "data" / "vtab" / "published.csv") as fh:
        return {(r["method"], r["task"]): float(r["top1"]) for r in csv.DictReader(fh)}


@pytest.fixture
def runs(tmp_path) -> Path:
    for task, accs in ACCS.items():
        d = tmp_path / "runs" / task / "vapt"
        d.mkdir(parents=True)
        d.joinpath("summary.json").write_text(json.dumps({
            "task": task, "method": "vapt", "family": "vtab", "best_lr": 5.0, "best_wd": 0.001,
            "seeds": [42, 44, 82], "test_acc": accs, "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.pstdev(accs)}))
    return tmp_path / "runs"


def test_vapt_only_run_shows_every_published_column(runs):
    paths = report.report(runs)
    pub = _published()
    with open(paths["csv"]) as fh:
        rows = {(r["method"], r["name"]): r for r in csv.DictReader(fh)}
    # published-only methods are present for the tasks that ran, with no ours / delta
    for method in ("full", "linear", "bitfit", "lora", "vpt_shallow", "vpt_deep"):
        for task in ACCS:
            r = rows[(method, task)]
            assert float(r["published"]) == pub[(method, task)] and r["ours"] == "" and r["delta"] == ""
    assert float(rows[("vpt_deep", "patch_camelyon")]["published"]) == 81.8
    # a same-task published group mean for the published-only methods (dtd is the one natural task)
    assert float(rows[("vpt_deep", "natural")]["published"]) == pub[("vpt_deep", "dtd")]
    # VAPT: ours with std; no per-task published number -> blank, not 0
    cam = rows[("vapt", "patch_camelyon")]
    assert float(cam["ours"]) == pytest.approx(100 * statistics.fmean(ACCS["patch_camelyon"]))
    assert float(cam["std"]) == pytest.approx(100 * statistics.pstdev(ACCS["patch_camelyon"]))
    assert cam["published"] == "" and cam["delta"] == ""
    md = Path(paths["md"]).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task"))
    assert header == ("| task | Full paper | Linear paper | BitFit paper | LoRA paper | VPT-shallow paper | VPT-deep paper "
                      "| VAPT ours | VAPT paper | VAPT Δ |")
    cam_line = next(line for line in md.splitlines() if line.startswith("| patch_camelyon"))
    a = ACCS["patch_camelyon"]
    assert [c.strip() for c in cam_line.strip("|").split("|")] == [
        "patch_camelyon", *(f"{pub[(m, 'patch_camelyon')]:.2f}" for m in ("full", "linear", "bitfit", "lora", "vpt_shallow",
                                                                         "vpt_deep")),
        f"{100 * statistics.fmean(a):.2f} ± {100 * statistics.pstdev(a):.2f}", "", ""]


def test_plot_draws_error_bars_and_markers_not_zero_bars(runs):
    rows, _ = report.build_rows(report.load_summaries(runs), "vtab", _published())
    fig, ax = plt.subplots()
    report.draw_panel(ax, rows, "vtab")
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    values = list(rows)
    n_ours = sum(r["ours"] is not None for r in values)
    n_paper = sum(r["published"] is not None for r in values)
    heights = [p.get_height() for c in bars for p in c.patches]
    assert len(heights) == n_ours + n_paper and min(heights) > 0  # no zero-height bar anywhere
    ours = next(c for c in bars if c.get_label() == "VAPT (ours ± std)")
    segs = ours.errorbar.lines[2][0].get_segments()  # vertical error segments, one per task with seeds
    expected = sorted((100 * statistics.fmean(a) - 100 * statistics.pstdev(a),
                       100 * statistics.fmean(a) + 100 * statistics.pstdev(a)) for a in ACCS.values())
    got = sorted((s[0][1], s[1][1]) for s in segs if len(s))
    assert len(got) == len(expected)
    assert [v for pair in got for v in pair] == pytest.approx([v for pair in expected for v in pair])
    markers = [ln for ln in ax.lines if ln.get_marker() == "x"]
    n_missing = sum(r["published"] is None for r in values if r["method"] == "vapt")
    assert len(markers) == n_missing > 0  # VAPT has no per-task published numbers
    plt.close(fig)


def test_two_methods_show_every_published_row_with_sources(tmp_path):
    """VAPT and LoRA on all 19 tasks: every method with published numbers gets its rows, deltas for the two
    we ran, LoRA's per-task numbers (NOAH) give its group means, and the sources are listed."""
    from vapt.data.vtab import VTAB_TASKS

    for method, acc in (("vapt", 0.7), ("lora", 0.6)):
        for task in VTAB_TASKS:
            d = tmp_path / "runs" / task / method
            d.mkdir(parents=True)
            d.joinpath("summary.json").write_text(json.dumps({
                "task": task, "method": method, "family": "vtab", "best_lr": 1.0, "best_wd": 0.0, "seeds": [42],
                "test_acc": [acc], "test_acc_mean": acc, "test_acc_std": 0.0}))
    paths = report.report(tmp_path / "runs")
    with open(paths["csv"]) as fh:
        rows = {(r["method"], r["name"]): r for r in csv.DictReader(fh)}
    pub = _published()
    shown = {m for m, _ in rows}
    assert {"full", "linear", "bitfit", "adapter", "lora", "vpt_shallow", "vpt_deep", "e2vpt", "vfpt",
            "vapt"} <= shown
    assert float(rows[("lora", "cifar100")]["delta"]) == pytest.approx(60.0 - 67.1)
    assert float(rows[("lora", "mean")]["published"]) == pytest.approx(72.25, abs=0.01)
    assert float(rows[("vapt", "mean")]["delta"]) == pytest.approx(70.0 - 72.91)
    assert float(rows[("vfpt", "structured")]["published"]) == pub[("vfpt", "group:structured")] == 60.19
    assert float(rows[("adapter", "mean")]["published"]) == 62.41 and rows[("adapter", "mean")]["ours"] == ""
    md = paths["md"].read_text()
    assert "| task | Full paper | Linear paper | BitFit paper | Adapter paper | LoRA ours | LoRA paper | LoRA Δ |" in md
    assert "- VFPT: VFPT paper via the VAPT poster" in md and "- LoRA: NOAH (Zhang et al. 2022)" in md
