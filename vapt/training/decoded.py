"""Decoded images kept in memory once per process, for every run of a sweep that reads the same split.

Only deterministic transforms qualify (the VTAB-1k protocol: resize + normalise, no augmentation): a decoded
image is then the same tensor in every epoch and every run, so decoding it once changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vapt.data.base import DataError, ListDataset
from vapt.training.sweep_errors import SweepError

#: transforms whose output depends on the input image only (torchvision v1 and v2 names)
DETERMINISTIC_TRANSFORMS = frozenset({
    "Compose", "ToTensor", "PILToTensor", "ToImage", "ToDtype", "ConvertImageDtype", "Resize", "CenterCrop",
    "Normalize", "Grayscale", "Lambda",
})

_MEMO: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def transform_is_deterministic(transform: Callable | None) -> bool:
    """Whether ``transform`` (a torchvision ``Compose`` or single transform, or None) draws no random numbers.

    Judged by class name against `DETERMINISTIC_TRANSFORMS`; ``Lambda`` counts as deterministic only without
    the word ``random`` in its repr. Unknown transforms count as random (no silent reuse).
    """
    if transform is None:
        return True
    name = type(transform).__name__
    if name not in DETERMINISTIC_TRANSFORMS:
        return False
    if name == "Lambda" and "random" in repr(transform).lower():
        return False
    inner = getattr(transform, "transforms", None)
    return all(transform_is_deterministic(t) for t in inner) if inner is not None else True


def transform_identity(transform: Callable | None) -> str:
    """A text that changes whenever the transform's output could (its repr: classes, sizes, mean, std, modes)."""
    return repr(transform)


def decoded_split(dataset: ListDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dataset`` decoded and transformed once per process.

    Returns
    -------
    images : (N, 3, H, W) float
        ``dataset[i][0]`` stacked in dataset order, exactly what the DataLoader would collate.
    labels : (N,) long

    Raises `SweepError` for a random transform and `DataError` for an image that cannot be decoded (a batch
    without it would no longer line up with the separate run's).
    """
    if not transform_is_deterministic(dataset.transform):
        raise SweepError(f"the transform {dataset.transform!r} draws random numbers, so images cannot be decoded "
                         "once for the whole sweep; run this sweep without --stack.")
    key = (tuple(p for p, _ in dataset.samples), transform_identity(dataset.transform))
    if key not in _MEMO:
        images = []
        for i, (path, _) in enumerate(dataset.samples):
            item = dataset[i]
            if item is None:
                raise DataError(f"{path}: cannot decode image; --stack needs every image of the split, replace or "
                                "remove it.")
            images.append(item[0])
        labels = torch.tensor([y for _, y in dataset.samples], dtype=torch.long)
        _MEMO[key] = (torch.stack(images), labels)
    return _MEMO[key]


def forget_decoded(paths: Sequence[str] | None = None) -> None:
    """Drop the kept images (all, or the splits that contain any of ``paths``)."""
    if paths is None:
        _MEMO.clear()
        return
    wanted = set(paths)
    for key in [k for k in _MEMO if wanted.intersection(k[0])]:
        del _MEMO[key]
