"""K-shot few-shot folds: stratified by class, grouped by patient (no patient in two parts).

``mgpath splits --labels labels.csv --shots 16 --num_folds 5 --out splits/mycohort/16shots`` writes
``splits_{fold}.csv`` in the official MGPATH/CLAM format (columns ``train, val, test``), readable by
`read_split_csv`, plus ``summary.csv`` with the class counts per part.
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from vapt.cli.flags import DialectParser
from vapt.fileio.atomic import atomic_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_no_leakage", "main", "make_kshot_splits", "read_labels", "read_split_csv", "write_split_csv"]


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Labels CSV with columns ``slide_id, case_id, label`` (extra columns kept; ids as strings)."""
    import pandas as pd
    if not Path(path).is_file():
        raise FileNotFoundError(f"labels CSV {path} does not exist; set data.labels_csv (columns "
                                "slide_id, case_id, label)")
    df = pd.read_csv(path, dtype=str)
    missing = {"slide_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"labels CSV {path} lacks column(s) {sorted(missing)}; expected "
                         "slide_id, case_id, label")
    if "case_id" not in df.columns:
        warnings.warn(f"{path} has no case_id column; each slide is treated as its own patient")
        df["case_id"] = df["slide_id"]
    df["slide_id"] = df["slide_id"].str.strip()
    df["slide_id"] = df["slide_id"].str.replace(r"\.(svs|tif|tiff|ndpi|mrxs|h5|pt)$", "", regex=True)
    if df["slide_id"].duplicated().any():
        raise ValueError(f"duplicate slide ids in {path}: "
                         f"{df['slide_id'][df['slide_id'].duplicated()].tolist()[:5]}")
    return df.reset_index(drop=True)


def read_split_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Official/CLAM split CSV -> ``{"train": [...], "val": [...], "test": [...]}`` (any column order)."""
    import pandas as pd
    if not Path(path).is_file():
        raise FileNotFoundError(f"split CSV {path} does not exist; make one with `mgpath splits` "
                                "or set data.split_csv / data.fold")
    df = pd.read_csv(path, dtype=str)
    df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
    out = {}
    for part in ("train", "val", "test"):
        if part not in df.columns:
            raise ValueError(f"split CSV {path} lacks a {part!r} column (has {list(df.columns)})")
        out[part] = [s.strip() for s in df[part].dropna().tolist() if s.strip()]
    return out

def _patient_labels(df: pd.DataFrame) -> dict[str, str]:
    per = df.groupby("case_id")["label"].agg(lambda s: sorted(set(s)))
    mixed = {c: v for c, v in per.items() if len(v) > 1}
    if mixed:
        c, v = next(iter(mixed.items()))
        raise ValueError(f"mgpath/splits.py: patient {c!r} has slides with different labels {v} "
                         f"({len(mixed)} such patients); fix the labels CSV")
    return {c: v[0] for c, v in per.items()}


def make_kshot_splits(labels: pd.DataFrame, k: int, n_folds: int = 5, val_frac: float = 0.3,
                      seed: int = 2023, classes: list[str] | None = None) -> list[dict[str, list[str]]]:
    """K-shot folds.

    For each fold and class, patients are drawn at random until ``k`` training slides are collected (a
    patient's slides beyond the k-th are left out of every part, so no patient is in two parts). The remaining
    patients are split per class into validation (``val_frac``) and test.

    Parameters
    ----------
    labels : DataFrame with ``slide_id, case_id, label``.

    Returns
    -------
    one ``{"train", "val", "test"}`` dict of slide-id lists per fold.
    """
    import numpy as np
    if k < 1:
        raise ValueError(f"mgpath/splits.py: k must be >= 1, got {k}")
    if not 0 <= val_frac < 1:
        raise ValueError(f"mgpath/splits.py: val_frac must be in [0, 1), got {val_frac}")
    classes = classes or sorted(labels["label"].unique())
    plabel = _patient_labels(labels)
    slides_of = labels.groupby("case_id")["slide_id"].apply(list).to_dict()
    for c in classes:
        n = int((labels["label"] == c).sum())
        if n <= k:
            raise ValueError(f"mgpath/splits.py: class {c!r} has {n} slides; a {k}-shot split needs more than {k} "
                             "(some must remain for val/test); lower --k")
    folds = []
    for f in range(n_folds):
        rng = np.random.default_rng(seed + f)
        part = {"train": [], "val": [], "test": []}
        for c in classes:
            patients = sorted(p for p, l in plabel.items() if l == c)
            patients = [patients[i] for i in rng.permutation(len(patients))]
            taken, i = [], 0
            while len(taken) < k:
                slides = sorted(slides_of[patients[i]])
                taken += [slides[j] for j in rng.permutation(len(slides))][:k - len(taken)]
                i += 1
            rest = patients[i:]
            n_val = round(val_frac * len(rest))
            if val_frac > 0 and len(rest) > 1:  # at least one val and one test patient per class
                n_val = min(max(n_val, 1), len(rest) - 1)
            part["train"] += taken
            part["val"] += [s for p in rest[:n_val] for s in sorted(slides_of[p])]
            part["test"] += [s for p in rest[n_val:] for s in sorted(slides_of[p])]
        folds.append(part)
    return folds


def check_no_leakage(split: dict[str, list[str]], labels: pd.DataFrame) -> None:
    """Raise if a patient or a slide appears in two parts."""
    case = dict(zip(labels["slide_id"], labels["case_id"]))
    seen: dict[str, str] = {}
    for part, ids in split.items():
        for s in ids:
            p = case.get(s, s)
            if seen.setdefault(p, part) != part:
                raise ValueError(f"mgpath/splits.py: patient {p!r} is in both {seen[p]} and {part}")


def write_split_csv(split: dict[str, list[str]], path: str | os.PathLike) -> None:
    """Write the official format (columns train, val, test; ragged columns padded with empty cells),
    atomically."""
    import pandas as pd
    n = max(len(v) for v in split.values())
    df = pd.DataFrame({p: pd.Series(split[p] + [None] * (n - len(split[p])), dtype=object)
                       for p in ("train", "val", "test")})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath splits", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, help="CSV with slide_id, case_id, label")
    ap.add_argument("--shots", type=int, default=16, deprecated=("--k",),
                    help="training slides per class (default 16)")
    ap.add_argument("--num_folds", type=int, default=5, deprecated=("--folds",), help="how many folds (default 5)")
    ap.add_argument("--val_frac", type=float, default=0.3, help="fraction of the remaining patients for val")
    ap.add_argument("--seed", type=int, default=2023, help="random seed of the patient sampling (2023)")
    ap.add_argument("--classes", nargs="*", default=None, help="class names (default: all labels, sorted)")
    ap.add_argument("--out", required=True, help="output folder for splits_{fold}.csv")
    ap.add_argument("--check", default=None, help="only check an existing split CSV for patient leakage")
    a = ap.parse_args(argv)
    import pandas as pd  # after parsing: ``--help`` and usage errors do not load pandas

    labels = read_labels(a.labels)
    if a.check:
        check_no_leakage(read_split_csv(a.check), labels)
        print(f"{a.check}: no patient in two parts")
        return 0
    folds = make_kshot_splits(labels, a.shots, a.num_folds, a.val_frac, a.seed, a.classes)
    lab = dict(zip(labels["slide_id"], labels["label"]))
    rows = []
    for f, split in enumerate(folds):
        check_no_leakage(split, labels)
        write_split_csv(split, Path(a.out) / f"splits_{f}.csv")
        for part, ids in split.items():
            counts = pd.Series([lab[s] for s in ids]).value_counts().to_dict()
            rows.append({"fold": f, "part": part, "n": len(ids), **counts})
    pd.DataFrame(rows).fillna(0).to_csv(Path(a.out) / "summary.csv", index=False)
    print(pd.DataFrame(rows).fillna(0).to_string(index=False))
    return 0
