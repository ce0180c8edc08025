"""The frozen trunk computed once: per-image outputs of the part of the network that training leaves unchanged.

A method that trains only what comes after a frozen prefix (a linear probe: the whole trunk, final norm and
pooling included) sees the same prefix output for an image in every epoch and every grid point when the
transform is deterministic (VTAB-1k: no augmentation). Those outputs are computed once, stored under a key
made of everything that determined them, and training reads them instead of running the prefix again.

    cache = TrunkCache("runs/tune/trunk_cache")
    feats = cache.features(model, dataset, batch_size=128)          # (N, feature_dim), computed or loaded
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from vapt.data.base import DataError, ListDataset
from vapt.fileio.atomic import atomic_path
from vapt.training.decoded import transform_identity, transform_is_deterministic
from vapt.training.sweep_errors import SweepError

CACHE_FORMAT = "vapt-trunk-cache-v1"


@dataclass(frozen=True)
class FrozenPrefix:
    """The leading part of a network that training leaves unchanged.

    Parameters
    ----------
    blocks : int
        Leading transformer blocks (after the patch embedding) whose outputs training does not change.
    whole_trunk : bool
        Everything up to the pooled features is unchanged (final norm and pooling included): only a head trains.
    """

    blocks: int
    whole_trunk: bool = False


def frozen_prefix(method: Any, depth: int) -> FrozenPrefix:
    """How much of a ``depth``-block ViT a PEFT method leaves unchanged.

    ``method`` is a method object, a config with a ``method`` field, or a method name. An object may declare
    its own answer as ``frozen_prefix(depth) -> FrozenPrefix`` (or a `FrozenPrefix` attribute); otherwise the
    built-in methods answer: ``linear`` -> the whole trunk; ``vpt`` / ``vapt`` (prompts enter block 0) and
    ``full`` -> no block.
    """
    declared = getattr(method, "frozen_prefix", None)
    if isinstance(declared, FrozenPrefix):
        return declared
    if callable(declared):
        return declared(depth)
    name = method if isinstance(method, str) else getattr(method, "method", None)
    if name == "linear":
        return FrozenPrefix(blocks=depth, whole_trunk=True)
    if name in ("vpt", "vapt", "full"):
        return FrozenPrefix(blocks=0)
    raise SweepError(f"no frozen-prefix rule for method {name!r}; declare frozen_prefix on the method.")


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def files_fingerprint(paths: list[str]) -> str:
    """SHA-256 over the contents of ``paths`` in order (renamed or edited images change it)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def cache_key(model, dataset: ListDataset, prefix: FrozenPrefix, dtype: torch.dtype, device: torch.device,
              backbone_name: str) -> dict[str, Any]:
    """Everything that determines the prefix outputs: backbone (name, pooling, weights), images (file
    contents), transform, prefix, dtype, device type and torch version."""
    enc = model.backbone
    frozen = {k: v for k, v in enc.state_dict().items()}
    return {
        "format": CACHE_FORMAT,
        "backbone": backbone_name,
        "library": enc.library,
        "pooling": [getattr(enc, "global_pool", None), getattr(enc, "output", None), enc.num_prefix_tokens],
        "weights": tensors_fingerprint(frozen),
        "images": files_fingerprint([p for p, _ in dataset.samples]),
        "num_images": len(dataset.samples),
        "transform": transform_identity(dataset.transform),
        "prefix": [prefix.blocks, prefix.whole_trunk],
        "dtype": str(dtype),
        "device": torch.device(device).type,
        "torch": torch.__version__,
    }


def _collate_all(batch: list):
    if any(b is None for b in batch):
        raise DataError("an image of the split cannot be decoded; the cached trunk needs every image (replace or "
                        "remove it).")
    return torch.stack([b[0] for b in batch])


class TrunkCache:
    """Per-image outputs of a frozen prefix, stored as ``<folder>/<key hash>.safetensors``.

    Parameters
    ----------
    folder : path
        Where the files go (inside the sweep's output folder).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path_for(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.safetensors"

    @torch.no_grad()
    def features(self, model, dataset: ListDataset, backbone_name: str, batch_size: int = 128,
                 device: str | torch.device = "cpu", num_workers: int = 0) -> torch.Tensor:
        """Pooled features of every image of ``dataset``, in dataset order. -> (N, feature_dim) float32.

        ``model`` is a linear-probe `PromptedViT`; the features are ``model.forward_features`` in eval mode,
        computed in batches of ``batch_size`` the first time and read from the file afterwards.
        """
        prefix = frozen_prefix(model.prompt_config, len(model.backbone.blocks))
        if not prefix.whole_trunk:
            raise SweepError(f"method {model.prompt_config.method!r} changes the trunk from block {prefix.blocks} "
                             "on; only whole-trunk prefixes (linear probe) are cached.")
        if not transform_is_deterministic(dataset.transform):
            raise SweepError(f"the transform {dataset.transform!r} is random: the trunk output of an image changes "
                             "every epoch, so it cannot be cached; run without the trunk cache.")
        dtype = next(model.backbone.parameters()).dtype
        key = cache_key(model, dataset, prefix, dtype, device, backbone_name)
        path = self.path_for(key)
        if path.is_file() and _read_key(path) == key:
            return load_file(str(path))["features"]
        was_training = model.training
        model.eval()
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_collate_all)
        feats = torch.cat([model.forward_features(x.to(device)).cpu() for x in loader])
        model.train(was_training)
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"features": feats.contiguous()}, tmp, metadata={"key": json.dumps(key, sort_keys=True)})
        return feats


def _read_key(path: Path) -> dict[str, Any] | None:
    """The key stored in a cache file (None for a file without one or one that does not load)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return json.loads(meta["key"]) if "key" in meta else None
    except Exception:  # noqa: BLE001  (truncated or foreign file: recompute and replace it)
        return None
