"""Unlabelled images for ``vapt predict --predict_images``: a folder (searched recursively) or a list file.

A list file holds one image path per line, absolute or relative to the list file's folder; blank lines and
``#`` comments are skipped, and a trailing integer label (``path 3``, the VTAB list format) is kept.
Unlabelled images get the label ``-1``.
"""
from __future__ import annotations

import os
from pathlib import Path

from vapt.data.samples import DataError, Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
UNLABELLED = -1


def _from_list(list_file: Path) -> list[Sample]:
    samples, missing = [], []
    base = list_file.parent
    for lineno, raw in enumerate(list_file.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, label = Path(line), UNLABELLED
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not (base / path).is_file():
            path, label = Path(parts[0]), int(parts[1])
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            missing.append(f"{list_file}:{lineno}: {path}")
        samples.append((str(path), label))
    if missing:
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} image(s) listed in {list_file} do not exist:\n  "
                        + "\n  ".join(missing[:5]) + more + "\nFix the paths (relative to the list file's folder).")
    return samples


def unlabelled_samples(source: str | os.PathLike) -> list[Sample]:
    """``(path, label)`` pairs of a folder of images or a list file (label ``-1`` when not given).

    Raises
    ------
    DataError
        ``source`` does not exist, names missing images, or holds no image.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        samples = [(str(p), UNLABELLED) for p in sorted(src.rglob("*"))
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    elif src.is_file():
        if src.suffix.lower() in IMAGE_EXTENSIONS:
            samples = [(str(src), UNLABELLED)]
        else:
            samples = _from_list(src)
    else:
        raise DataError(f"--predict_images {src} does not exist; give a folder of images or a text file with one "
                        "image path per line.")
    if not samples:
        raise DataError(f"--predict_images {src} holds no image ({', '.join(IMAGE_EXTENSIONS)}).")
    return samples


def read_class_names(path: Path, num_classes: int) -> list[str] | None:
    """Class names from an optional ``classes.txt`` (line ``i`` names class ``i``; a leading ``<id> `` as in
    CUB's own ``classes.txt`` is dropped); ``None`` when the file is absent.

    Raises
    ------
    DataError
        The file does not hold exactly ``num_classes`` names.
    """
    if not path.is_file():
        return None
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            head, _, rest = line.partition(" ")
            names.append(rest.strip() if head.isdigit() and rest.strip() else line)
    if len(names) != num_classes:
        raise DataError(f"{path} names {len(names)} classes but the dataset has {num_classes}; write one name "
                        "per line, in class-id order.")
    return names
