"""What determines a features file, so that a cached output is reused only when all of it matches.

A features h5 written by ``mgpath extract`` carries an ``identity`` attribute (JSON): the encoder (name,
weights checksum or random-init seed, input size, mean/std, precision, extra settings), the tiles (a
checksum of the coordinates and of the tile footprint) and the slide file (size, modification time, checksum
of its first MiB). A rerun compares it with what it would write now:
equal -> ``cached``; different -> ``stale: made with X, now Y`` (``--overwrite`` redoes it).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

__all__ = ["compare_identity", "encoder_identity", "file_sha256", "slide_identity", "tiles_identity"]

_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (hex), remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def slide_identity(path: str | os.PathLike, head_bytes: int = 1 << 20) -> dict:
    """The slide part: size, modification time and SHA-256 of the first ``head_bytes`` of the slide file (the
    header and the first stored tiles; cheap for any slide size). A slide replaced under the same name
    changes it."""
    st = os.stat(path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(head_bytes)).hexdigest()
    return {"slide_bytes": int(st.st_size), "slide_mtime_ns": int(st.st_mtime_ns), "slide_head_sha256": head}


def _plain(v):
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in np.asarray(v).tolist()] if isinstance(v, np.ndarray) else [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float):
        return round(v, 8)
    return v


def encoder_identity(
    name: str, weights: str, data_config: dict, precision: str, extra: dict | None = None
) -> dict:
    """The encoder part of an identity.

    Parameters
    ----------
    name : encoder / preset name.
    weights : ``"sha256:<hex>"`` of the weights file, ``"random-init(seed=S)"`` or ``"pretrained:<id>"``.
    data_config : ``input_size`` (C, H, W), ``mean`` (3,), ``std`` (3,) as the encoder normalises.
    precision : Lightning precision of the forward pass (``"32-true"``, ``"bf16-mixed"``, ...).
    extra : further settings that change the features (preset overrides, augmentation), JSON-serialisable.
    """
    ident = {
        "encoder": name,
        "weights": weights,
        "input_size": _plain(list(data_config["input_size"])[-2:]),
        "mean": _plain(list(data_config["mean"])),
        "std": _plain(list(data_config["std"])),
        "precision": str(precision),
    }
    if extra:
        ident["extra"] = json.loads(json.dumps(extra, sort_keys=True, default=str))
    return ident


def tiles_identity(coords: np.ndarray, attrs: dict) -> dict:
    """The tiles part: checksum of the (N, 2) int64 coordinates and the tile footprint they are read with."""
    c = np.ascontiguousarray(np.asarray(coords, np.int64).reshape(-1, 2))
    return {
        "coords_sha256": hashlib.sha256(c.tobytes()).hexdigest(),
        "n_tiles": len(c),
        "patch_size_level0": round(float(attrs["patch_size_level0"]), 6),
        "mpp": None if attrs.get("mpp") is None else round(float(attrs["mpp"]), 6),
    }


def compare_identity(stored: str | dict | None, wanted: dict) -> str:
    """``""`` when ``stored`` (the file's ``identity`` attribute) equals ``wanted``, else what differs.

    The answer reads ``made with k=old, ...; now k=new, ...`` (checksums shortened to 12 characters).
    """
    if stored is None:
        return "made without an identity record (an older version or another tool); now " + _show(wanted)
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            return "its identity record is unreadable"
    keys = sorted(set(stored) | set(wanted))
    diff = [k for k in keys if stored.get(k) != wanted.get(k)]
    if not diff:
        return ""
    return (f"made with {_show({k: stored.get(k) for k in diff})}; now {_show({k: wanted.get(k) for k in diff})}")


def _show(d: dict) -> str:
    def short(v):
        s = json.dumps(v, default=str) if not isinstance(v, str) else v
        if isinstance(v, str) and len(v) > 40 and ("sha256" in v or len(v) == 64):
            return v[:19] + "..."
        return s

    return ", ".join(f"{k}={short(v)}" for k, v in d.items())
