"""Reading weights files without running code hidden in them.

Every loader of user files in vapt and mgpath (backbones, tile-encoder presets, text towers, official MGPATH
imports) goes through :func:`load_weights_file`:

* ``.safetensors`` through safetensors (tensors only, by construction);
* ``.npz`` through numpy with ``allow_pickle=False``;
* anything else through ``torch.load(weights_only=True)``, which only rebuilds tensors, containers and
  plain Python values.

A pickle that needs more than that (custom classes, or a payload that calls a function while being
unpickled) is refused with one line naming the file and the fix (re-save its tensors as safetensors where
you trust the file). There is no opt-in: nothing here ever unpickles code, and nothing is retried.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

__all__ = ["TRUST_HINT", "WeightsFileError", "load_weights_file", "safe_torch_load"]

TRUST_HINT = ("if you trust where it came from, re-save its tensors there as .safetensors "
              "(safetensors.torch.save_file) and pass that file")


class WeightsFileError(ValueError):
    """A weights file that is missing, unreadable, or needs code execution to load; the message says the fix."""


def _safe_globals() -> list:
    """Data-only classes that training checkpoints often hold beside the tensors (run options, numpy scalars):
    rebuilding them sets attributes / bytes and calls nothing else."""
    import argparse

    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [argparse.Namespace, scalar, np.dtype, *dtypes]


def safe_torch_load(source, map_location="cpu"):
    """``torch.load(source, weights_only=True)``: the one place vapt and mgpath call ``torch.load``.

    ``weights_only=True`` is passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment
    (which only changes torch's default) cannot turn full unpickling on. ``source`` is a path or a binary
    file object; errors are torch's (callers name the file).
    """
    return torch.load(source, map_location=map_location, weights_only=True)


def load_weights_file(path: str | os.PathLike):
    """Load a weights file safely.

    Parameters
    ----------
    path : file
        ``.safetensors``, ``.npz`` or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.tar``).

    Returns
    -------
    dict or object
        What the file holds: a ``{name: tensor}`` dict for safetensors, ``{name: ndarray}`` for npz, the
        saved object (usually a dict, possibly nested) for torch files. Tensors are on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise WeightsFileError(f"Weights file {path} {what}; check the path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        try:
            with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol notes on foreign files
                return safe_torch_load(path)
        except Exception as err:  # distinguish "needs unpickling" (a global) from "corrupt" (bad opcodes)
            if "Weights only load failed" not in str(err) or "global" not in str(err).lower():
                raise
            raise WeightsFileError(
                f"Weights file {path} holds pickled Python objects that only a full unpickle can rebuild, "
                f"and unpickling can run code hidden in the file; it was not loaded; {TRUST_HINT}."
            ) from None
    except WeightsFileError:
        raise
    except Exception as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "not a valid pickle" if "Weights only load failed" in str(err) else (lines or ["?"])[0][:200]
        raise WeightsFileError(
            f"Could not read checkpoint {path} ({type(err).__name__}: {detail}); the file is corrupt, truncated or "
            "not a model checkpoint. Re-download or re-save it.") from err
