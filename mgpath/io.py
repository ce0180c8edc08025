"""Every on-disk format of mgpath in one place: coordinates h5 and features h5 (ours, CLAM's, TRIDENT's), CLAM .pt.

Coordinates h5 (``mgpath tile``; CLAM ``patches/<id>.h5``; TRIDENT ``<id>_patches.h5``)::

    coords   (N, 2) int64 level-0 top-left, attributes on the dataset (CLAM/TRIDENT) and mirrored on the root
    tissue_fraction (N,) float32 (ours only)

Features h5 (``mgpath extract``; CLAM ``h5_files/``; TRIDENT ``features_<encoder>/``)::

    features   (N, D) float32 (a leading batch axis of 1 is dropped on reading)
    coords     (N, 2) int64, level-0 top-left, same order as the coordinates file
    adjacency  (N, 4) int64 4-neighbour index (or an edge list (2, E)); optional
    attributes encoder, checkpoint, embed_dim, patch_size, patch_size_level0, step_level0, target_mpp, ...

A CLAM ``pt_files/<id>.pt`` is an (N, D) tensor; its coordinates come from the sibling ``h5_files/<id>.h5``.
Every file is written through :func:`vapt.fileio.atomic.atomic_path`: readers never see a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mgpath.slides.reader import magnification_to_mpp
from vapt.fileio.atomic import atomic_path, confined

__all__ = [
    "COORDS_FORMAT",
    "find_feature_file",
    "read_coords",
    "read_coords_header",
    "read_features",
    "read_features_header",
    "write_coords",
    "write_features",
    "write_h5_atomic",
]

COORDS_FORMAT = "mgpath-coords-1"


# -- h5 helpers ----------------------------------------------------------------------------------------
def write_h5_atomic(path: str | os.PathLike, fill: Callable) -> None:
    """Create the h5 file ``path`` through a temporary file in the same folder: ``fill(h5py.File)``, rename."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        fill(f)


def _encode_attr(v):
    if v is None:
        return "none"
    if isinstance(v, dict):
        return json.dumps(v)
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8: its bytes, read back by decode_attr
            return np.bytes_(v.encode("utf-8", "surrogateescape"))
    return v


def decode_attr(v):
    """An h5 attribute as a plain Python value (bytes -> str, 1-element arrays -> scalar, ``"none"`` -> None)."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "surrogateescape")
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and v == "none":
        return None
    return v


def plain_dataset(f, name: str, path: str | os.PathLike):
    """``f[name]`` when it is a plain dataset stored inside the file, else `ValueError` naming ``path``.

    Refused: a soft or external link, a dataset whose data lives in another file (external raw storage, such
    as ``/etc/passwd``) and a virtual dataset (it reads other files, or another slide's data). Returns None
    when there is no ``name``.
    """
    import h5py

    link = f.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise ValueError(  # noqa: TRY004 (a bad input file, not a programming error)
            f"{path}: '{name}' is a {type(link).__name__} to another place; the tool reads only data stored in "
            "the file itself (re-save it with the data copied in)")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: '{name}' is a group, not a dataset")  # noqa: TRY004 (a bad input file)
    if ds.is_virtual or ds.external:
        kind = "a virtual dataset (it maps other files)" if ds.is_virtual else "stored in external files"
        raise ValueError(f"{path}: '{name}' is {kind}; the tool reads only data stored in the file itself "
                         "(re-save it with the data copied in)")
    return ds


def check_coords(coords: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``coords`` as ``(N, 2)`` int64 level-0 top-left corners, or `ValueError` naming ``path`` when the array
    is transposed ``(2, N)``, not two columns, not whole numbers, or negative."""
    a = np.asarray(coords)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.size == 0:
        return np.zeros((0, 2), np.int64)
    if a.ndim == 2 and a.shape[0] == 2 and a.shape[1] != 2:
        raise ValueError(f"{path}: coords have shape {a.shape}, a transposed (N, 2) array; re-save them as "
                         "(N, 2) rows of x, y")
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{path}: coords have shape {a.shape}; expected (N, 2) rows of x, y")
    if a.dtype.kind not in "iu" and (a.dtype.kind != "f" or not np.all(np.isfinite(a))
                                     or not np.all(a == np.round(a))):
        raise ValueError(f"{path}: coords are not whole level-0 pixel numbers (dtype {a.dtype}); tile "
                         "corners must be integers (regenerate them with mgpath tile)")
    a = a.astype(np.int64)
    if (a < 0).any():
        i = int(np.flatnonzero((a < 0).any(axis=1))[0])
        raise ValueError(f"{path}: coords row {i} {tuple(int(v) for v in a[i])} is outside the slide (negative); "
                         "regenerate the coordinates (mgpath tile)")
    return a


def _attrs(obj) -> dict:
    return {k: decode_attr(v) for k, v in obj.attrs.items()}


# -- coordinates ---------------------------------------------------------------------------------------
def write_coords(
    path: str | os.PathLike, coords: np.ndarray, attrs: dict, tissue_fraction: np.ndarray | None = None
) -> None:
    """Write a coordinates h5 atomically: ``coords`` (N, 2) int64 with ``attrs`` on the dataset and the file.

    Attributes go on the ``coords`` dataset (where CLAM and TRIDENT put them) and are mirrored on the root.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)

    def fill(f):
        d = f.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            d.attrs[k] = _encode_attr(v)
            f.attrs[k] = _encode_attr(v)
        if tissue_fraction is not None:
            f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))

    write_h5_atomic(Path(path), fill)


def read_coords_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Root attributes (decoded) and tile count of a coordinates h5, without reading the coordinates.

    Raises ``OSError`` for an unreadable file and ``KeyError`` when it has no ``coords`` dataset.
    """
    import h5py

    with h5py.File(path, "r") as f:
        ds = plain_dataset(f, "coords", path)
        if ds is None:
            raise KeyError(f"{path} has no 'coords' dataset")
        return _attrs(f), int(ds.shape[0])


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a coordinates h5 written by mgpath, CLAM (``patches/<id>.h5``) or TRIDENT (``<id>_patches.h5``).

    Returns
    -------
    coords : ``(N, 2)`` int64 level-0 top-left corners.
    attrs : normalised dict with keys

        - ``slide_id``: from the ``name`` attribute or the file name (``_patches`` suffix removed)
        - ``patch_size``: tile pixels to produce (CLAM: pixels at ``patch_level``)
        - ``patch_size_level0``: tile footprint in level-0 pixels (float)
        - ``patch_level``: pyramid level (None if unknown)
        - ``target_mpp``, ``target_magnification``, ``mpp`` (level-0): None when the file does not say
        - ``step_level0``: grid step in level-0 pixels (None if unknown)
        - ``source``: ``"mgpath"``, ``"trident"`` or ``"clam"``
        - ``raw``: all attributes as stored
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            ds = plain_dataset(f, "coords", path)
            if ds is None:
                raise ValueError(
                    f"{path} has no 'coords' dataset; is it a CLAM/TRIDENT/mgpath coordinates file?"
                )
            coords = check_coords(ds[()], path)
            raw = _attrs(f)
            raw.update(_attrs(f["coords"]))
    except OSError as e:
        raise ValueError(f"{path} is not a readable h5 file ({e})") from None
    name = raw.get("name") or raw.get("slide_id")
    stem = path.stem.removesuffix("_patches")
    out = {
        "slide_id": str(name) if name else stem,
        "raw": raw,
        "patch_level": raw.get("patch_level"),
        "target_mpp": None,
        "target_magnification": None,
        "mpp": None,
        "step_level0": None,
    }
    if "patch_size" not in raw:
        raise ValueError(f"{path} has no 'patch_size' attribute; cannot tell the tile size")
    ps = int(raw["patch_size"])
    out["patch_size"] = ps
    if str(raw.get("format", "")).startswith("mgpath"):
        out.update(
            source="mgpath",
            patch_size_level0=float(raw.get("patch_size_level0_exact", raw["patch_size_level0"])),
            target_mpp=raw.get("target_mpp"),
            target_magnification=raw.get("target_magnification"),
            mpp=raw.get("mpp"),
            step_level0=raw.get("step_level0"),
        )
    elif "patch_size_level0" in raw or "target_magnification" in raw:
        ps0 = float(raw.get("patch_size_level0") or ps)
        tmag = raw.get("target_magnification")
        l0mag = raw.get("level0_magnification")
        ov = float(raw.get("overlap") or 0)
        out.update(
            source="trident",
            patch_size_level0=ps0,
            target_magnification=float(tmag) if tmag else None,
            target_mpp=magnification_to_mpp(float(tmag)) if tmag else None,
            mpp=magnification_to_mpp(float(l0mag)) if l0mag else None,
            step_level0=ps0 - ov * ps0 / ps,
        )
    else:
        ds = raw.get("downsample")
        ds = float(np.asarray(ds).reshape(-1)[0]) if ds is not None else 1.0
        out.update(source="clam", patch_size_level0=ps * ds, step_level0=None)
    return coords, out


# -- features ------------------------------------------------------------------------------------------
def write_features(
    path: str | os.PathLike, features: np.ndarray, coords: np.ndarray, adjacency: np.ndarray, attrs: dict
) -> None:
    """Write a features h5 atomically (``features`` (N, D) float32, ``coords`` (N, 2), ``adjacency`` (N, 4))."""

    def fill(f):
        f.create_dataset("features", data=np.asarray(features, np.float32))
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        f.create_dataset("adjacency", data=np.asarray(adjacency, np.int64).reshape(-1, 4))
        for k, v in attrs.items():
            f.attrs[k] = _encode_attr(v)

    write_h5_atomic(Path(path), fill)


def read_features_header(path: str | os.PathLike) -> tuple[dict, tuple, np.ndarray | None]:
    """Root attributes (decoded), the ``features`` shape and the ``coords`` of a features h5.

    Raises ``OSError`` for an unreadable file and ``KeyError`` when it has no ``features`` dataset.
    """
    import h5py

    with h5py.File(path, "r") as f:
        feats, coords = plain_dataset(f, "features", path), plain_dataset(f, "coords", path)
        if feats is None:
            raise KeyError(f"{path} has no 'features' dataset")
        return _attrs(f), tuple(feats.shape), None if coords is None else np.asarray(coords[()])


def _step_from_attrs(attrs) -> float | None:
    for key in ("step_level0", "patch_size_level0"):
        if key in attrs:
            return float(attrs[key])
    if "patch_size" in attrs and "downsample" in attrs:  # CLAM coords attributes
        ds = np.asarray(attrs["downsample"]).reshape(-1)
        return float(attrs["patch_size"]) * float(ds[0])
    return None


def read_features(path: str | os.PathLike) -> dict:
    """Read one features file (.h5 of this project / CLAM / TRIDENT, or a CLAM .pt).

    Returns
    -------
    dict with ``features`` (N, D) float32, ``coords`` (N, 2) int64 or None, ``adjacency`` (array or None),
    ``step`` (level-0 tile spacing or None) and ``attrs`` (the file's root attributes, decoded; {} for .pt).
    """
    import torch

    from vapt.fileio.weights import (
        load_weights_file,  # torch-heavy: imported only when a features file is read
    )

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        feats = load_weights_file(path)  # names the file when it is damaged or holds pickled code
        if isinstance(feats, dict):
            feats = feats.get("features", next(iter(feats.values())))
        feats = np.asarray(torch.as_tensor(feats).float())
        coords = adjacency = step = None
        attrs: dict = {}
        sibling = path.parent.parent / "h5_files" / (path.stem + ".h5")
        if sibling.is_file():
            other = read_features(sibling)
            coords, adjacency, step = other["coords"], other["adjacency"], other["step"]
    else:
        import h5py

        with h5py.File(path, "r") as f:
            ds = {k: plain_dataset(f, k, path) for k in ("features", "coords", "adjacency")}
            if ds["features"] is None:
                raise KeyError(f"{path} has no 'features' dataset (it has {list(f.keys())}); is it a "
                               "coordinates-only h5? run `mgpath extract` first")
            feats = np.asarray(ds["features"][()], dtype=np.float32)
            coords = check_coords(ds["coords"][()], path) if ds["coords"] is not None else None
            adjacency = np.asarray(ds["adjacency"][()]) if ds["adjacency"] is not None else None
            attrs = _attrs(f)
            step = _step_from_attrs(f.attrs)
            if step is None and ds["coords"] is not None:
                step = _step_from_attrs(ds["coords"].attrs)
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if coords is not None and coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if feats.ndim != 2:
        raise ValueError(f"features in {path} have shape {feats.shape}; expected (N, D)")
    if coords is not None and len(coords) != len(feats):
        raise ValueError(f"{path} has {len(feats)} features but {len(coords)} coords")
    return {"features": feats, "coords": coords, "adjacency": adjacency, "step": step, "attrs": attrs}


def find_feature_file(directory: str | os.PathLike, slide_id: str) -> Path:
    """The features file of a slide in a folder (``<id>.h5``, ``h5_files/<id>.h5``, ``<id>.pt``,
    ``pt_files/<id>.pt``); raises FileNotFoundError listing what was tried."""
    d = Path(directory)
    confined(d, f"{slide_id}.h5", what=f"features of slide id {slide_id!r}:")  # a CSV cell never leads out of d
    tried = [d / f"{slide_id}.h5", d / "h5_files" / f"{slide_id}.h5", d / f"{slide_id}.pt",
             d / "pt_files" / f"{slide_id}.pt"]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(f"no features for slide {slide_id!r} in {d} (tried "
                            f"{', '.join(str(p.relative_to(d)) for p in tried)})")
