"""`mgpath report` on hand-written fold results: NaN and unfinished folds counted honestly, '–' for the
undefined std of one fold, `--published` validated (scale, case-insensitive names, paper-only rows)."""
import json

import pandas as pd
import pytest

from mgpath.cli import main
from mgpath.report import read_published


def _runs(tmp_path, results):
    """results: {method: {fold: (auc, f1, acc) or None for an unfinished fold}}."""
    runs = tmp_path / "runs"
    for method, folds in results.items():
        for k, vals in folds.items():
            d = runs / method / f"fold_{k}"
            d.mkdir(parents=True)
            if vals is not None:
                row = {"fold": k, **dict(zip(("auc", "f1", "acc"), vals)), "checkpoint": "last"}
                (d / "result.json").write_text(json.dumps(row))  # NaN written as json.dumps does
    (runs / "benchmark.json").write_text(json.dumps({"methods": list(results)}))
    return runs


def test_nan_and_unfinished_folds_are_shown_and_counted(tmp_path):
    nan = float("nan")
    runs = _runs(tmp_path, {"abmil": {0: (0.8, 0.7, 0.75), 1: (nan, 0.5, 0.6), 2: (0.9, 0.9, 0.95), 3: None},
                            "clam": {0: (0.6, 0.6, 0.6)}})
    assert main(["report", str(runs)]) == 0
    t = pd.read_csv(runs / "report.csv", index_col=0)
    assert t.loc["abmil", "folds"] == 3 and t.loc["abmil", "unfinished"] == 1
    assert t.loc["abmil", "auc_n"] == 2 and t.loc["abmil", "f1_n"] == 3
    assert t.loc["abmil", "auc_mean"] == pytest.approx(0.85)  # the NaN fold is not averaged as if present
    assert t.loc["abmil", "f1_mean"] == pytest.approx(0.7)
    assert pd.isna(t.loc["clam", "auc_std"]) and t.loc["clam", "auc_std_ddof0"] == 0  # one fold: std undefined
    md = (runs / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| abmil"))
    assert "| 3 (+1 unfinished) |" in row and "0.8500 ± 0.0707 (n=2 of 3)" in row
    assert "| clam | 1 | 0.6000 ± – |" in md
    assert "abmil fold 1: auc is NaN" in md and "abmil fold 3: unfinished" in md


def test_published_scale_names_and_paper_only_rows(tmp_path, capsys):
    runs = _runs(tmp_path, {"abmil": {0: (0.8, 0.7, 0.75), 1: (0.82, 0.72, 0.7)}, "mgpath": {0: (0.9, 0.9, 0.9)}})
    (tmp_path / "pct.csv").write_text("Method,AUC,F1,acc,source\nABMIL,95.1,88,90,Table 2\nViLa-MIL,92.5,85.0,,Table 2\n")
    assert main(["report", str(runs), "--published", str(tmp_path / "pct.csv")]) == 0
    assert "0-100 scale; its values were divided by 100" in capsys.readouterr().out
    t = pd.read_csv(runs / "report.csv", index_col=0)
    assert t.loc["abmil", "paper_auc"] == pytest.approx(0.951) and t.loc["abmil", "paper_source"] == "Table 2"
    assert t.loc["ViLa-MIL", "paper_only"] and t.loc["ViLa-MIL", "folds"] == 0
    assert t.loc["ViLa-MIL", "paper_f1"] == pytest.approx(0.85) and pd.isna(t.loc["mgpath", "paper_auc"])
    md = (runs / "report.md").read_text()
    assert "| ViLa-MIL (paper only) | – | – | – | – | 0.9250 | 0.8500 | | Table 2 |" in md
    # a 0-1 file is taken as it is
    pub, notes = read_published(_write(tmp_path, "ok.csv", "method,auc\nabmil,0.951\n"))
    assert pub.loc[0, "auc"] == 0.951 and notes == []


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


@pytest.mark.parametrize("text, message", [
    ("method,auc,f1\nabmil,0.95,88\n", "mixes 0-1 values (0.95) and 0-100 values (88.0)"),
    ("method,auc\nabmil,195\n", "values must be on a 0-1 (or 0-100) scale"),
    ("method,auc\nabmil,high\n", "auc of 'abmil' is 'high', not a number"),
    ("method,aucc\nabmil,0.9\n", "unknown column 'aucc'; did you mean 'auc'?"),
    ("method,auc\nABMIL,0.9\nabmil,0.8\n", "appear more than once"),
    ("name,auc\nabmil,0.9\n", "unknown column 'name'"),
])
def test_bad_published_files_are_refused(tmp_path, capsys, text, message):
    runs = _runs(tmp_path, {"abmil": {0: (0.8, 0.7, 0.75)}})
    assert main(["report", str(runs), "--published", str(_write(tmp_path, "p.csv", text))]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs / "report.md").exists()
