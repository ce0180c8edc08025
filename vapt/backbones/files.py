"""The publishers' file layouts on the user's disk: files, Hugging Face folders, hub-cache folders, wrappers.

:func:`resolve` turns what the user passed (a weights file, a model folder with ``config.json``, or a hub cache
folder ``models--org--name``) into the weights file plus the folder's configuration; :func:`read_state_dict`
reads it safely (:mod:`vapt.fileio.weights`) and unwraps training checkpoints; :func:`load_checked` loads a state
dict strictly and, when it does not fit, says which other preset it belongs to.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vapt.backbones.errors import BackboneError
from vapt.fileio.state_dict import diff_state_dict
from vapt.fileio.weights import WeightsFileError, load_weights_file

#: weights file names, in the order a folder is searched
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin", "pytorch_model_vision.bin")
#: training-checkpoint wrappers, unwrapped in this order
WRAPPERS = ("teacher", "model", "state_dict", "model_state_dict", "module")


@dataclass
class Weights:
    """A resolved checkpoint: the weights ``file``, its ``folder`` and the folder's JSON configs by name."""

    file: Path
    folder: Path | None
    configs: dict

    def config(self, name: str = "config.json") -> dict | None:
        return self.configs.get(name)


def _snapshot(folder: Path) -> Path:
    """``models--org--name`` (hub cache) -> the snapshot that ``refs/main`` names (or the newest one)."""
    snaps = folder / "snapshots"
    ref = folder / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not found:
        raise BackboneError(f"Hub cache folder {folder} has no snapshot; download the model files into it.")
    return found[-1]


def resolve(path: str | os.PathLike, names: tuple[str, ...] = WEIGHT_NAMES) -> Weights:
    """A weights file or a model folder -> :class:`Weights`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BackboneError(f"Checkpoint {path} does not exist; check the path.")
    if path.is_file():
        folder = path.parent
        file = path
    else:
        folder = _snapshot(path) if (path / "snapshots").is_dir() else path
        file = next((folder / n for n in names if (folder / n).is_file()), None)
        if file is None:
            raise BackboneError(f"Model folder {folder} holds none of {', '.join(names)}; pass the weights file "
                                "itself or the folder the publisher distributes.")
    configs = {}
    for name in ("config.json", "open_clip_config.json"):
        if (folder / name).is_file():
            try:
                configs[name] = json.loads((folder / name).read_text())
            except json.JSONDecodeError as err:
                raise BackboneError(f"{folder / name} is not valid JSON ({err}); re-download it.") from err
    return Weights(file, folder if path.is_dir() or configs else None, configs)


def unwrap(obj, path) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside training wrappers and strip ``module.`` / ``backbone.`` prefixes."""
    seen = []
    while isinstance(obj, dict):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        seen.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise BackboneError(f"Checkpoint {path} holds no state dict (top-level keys {keys}; looked inside "
                            f"{list(WRAPPERS)}); save the model's state_dict() instead.")
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    for prefix in ("module.", "backbone.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if seen and seen[0] == "teacher" and any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}  # DINO heads dropped
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Safely read a weights file and unwrap it to ``{name: tensor}``."""
    try:
        return unwrap(load_weights_file(path), path)
    except WeightsFileError as err:
        raise BackboneError(str(err)) from None


def load_checked(model: nn.Module, sd: dict, path, preset: str, *, ignore_unexpected: tuple[str, ...] = (),
                 identify: Callable[[dict], str | None] | None = None,
                 resample: Callable[[dict], dict] | None = None) -> None:
    """Load ``sd`` into ``model`` strictly (keys and shapes), else raise one line naming the file and the fix.

    ``ignore_unexpected``: file key prefixes the preset knowingly drops (e.g. a classifier). ``identify(sd)``
    names the preset(s) the file belongs to, so a wrong-preset file says which it is. ``resample(sd)`` adapts
    the position embedding to the model's grid; it runs only after every other key and shape has been checked
    against the preset, so a file of another preset is named as such instead of failing inside the resampling.
    """
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_unexpected)} if ignore_unexpected else sd
    own = model.state_dict()
    diff = diff_state_dict(own, sd)
    if resample is not None and "pos_embed" in own and "pos_embed" in sd and \
            sd["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
        diff.wrong_shape = [w for w in diff.wrong_shape if not w.startswith("pos_embed:")]  # resampled below
    if not diff and resample is not None:
        sd = resample(sd)
        diff = diff_state_dict(own, sd)
    if diff:
        other = identify(sd) if identify else None
        names = other.split(" or ") if other else []
        which = (f"it is a {other} checkpoint, not {preset}; build it with --encoder {names[0]}"
                 if other and preset not in names else f"is it the {preset} file?")
        raise BackboneError(f"Checkpoint {path} does not fit preset {preset}: {diff.describe(6)}; {which}.")
    model.load_state_dict(sd, strict=True)
