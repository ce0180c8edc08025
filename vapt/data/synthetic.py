"""Generated image datasets written in the real on-disk formats (no download needed).

- ``write_shapes_vtab``: the demo dataset, coloured shapes on textured backgrounds, class = shape,
  in the VTAB-1k folder layout (deterministic for a given seed).
- ``write_vtab_tree`` / ``write_fgvc_tree``: miniature VTAB-1k / FGVC trees for tests and benchmarks.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vapt.fileio.atomic import write_text_atomic as atomic_write_text

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
SPLIT_SIZES = {"train800": 800, "val200": 200, "test": 400}


def draw_shape(rng: np.random.Generator, shape: int, size: int = 32) -> Image.Image:
    """One RGB image ``(size, size)``: shape ``SHAPES[shape]`` with random colour, scale and position
    on a random smooth-noise background."""
    bg = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(bg).resize((size, size), Image.BILINEAR)
    noise = rng.normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    # make the shape stand out from the local background
    mean_bg = np.asarray(img).reshape(-1, 3).mean(0)
    if np.abs(np.array(colour) - mean_bg).sum() < 200:
        colour = tuple(int(255 - m) for m in mean_bg)
    box = (cx - r, cy - r, cx + r, cy + r)
    name = SHAPES[shape]
    w = max(2, int(r / 2.5))
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif name == "cross":
        draw.rectangle((cx - r, cy - w / 2, cx + r, cy + w / 2), fill=colour)
        draw.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=colour)
    elif name == "ring":
        draw.ellipse(box, outline=colour, width=w)
    else:  # bar
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    return img


CLASS_HUES = ((230, 40, 40), (40, 200, 40), (50, 80, 240), (230, 210, 40), (200, 60, 220), (40, 210, 220))
PATTERNS = ("horizontal", "vertical", "diagonal", "antidiagonal", "checker", "dots")


def draw_pattern(rng: np.random.Generator, pattern: int, size: int = 32) -> Image.Image:
    """One RGB image ``(size, size)``: a ``PATTERNS[pattern]`` texture with random period and phase in a
    jittered class colour over a random dark colour, plus pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, 2 * np.pi)
    k = 2 * np.pi / period
    name = PATTERNS[pattern]
    if name == "horizontal":
        wave = np.sin(k * yy + phase)
    elif name == "vertical":
        wave = np.sin(k * xx + phase)
    elif name == "diagonal":
        wave = np.sin(k * (xx + yy) / np.sqrt(2) + phase)
    elif name == "antidiagonal":
        wave = np.sin(k * (xx - yy) / np.sqrt(2) + phase)
    elif name == "checker":
        wave = np.sin(k * xx + phase) * np.sin(k * yy + phase)
    else:  # dots
        wave = np.maximum(np.sin(k * xx + phase) * np.sin(k * yy + phase), 0) * 2 - 1
    # each class also has its own hue (random-init backbones, as in the demo, pick up colour, not orientation)
    hue = np.array(CLASS_HUES[pattern % len(CLASS_HUES)], dtype=np.float64)
    c1 = np.clip(hue * rng.uniform(0.6, 1.0) + rng.normal(0, 25, size=3), 0, 255)
    c2 = rng.uniform(0, 110, size=3)
    alpha = (wave[..., None] + 1) / 2
    img = c1 * alpha + c2 * (1 - alpha) + rng.normal(0, 10, size=(size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_split(task_dir: Path, split: str, items: list[tuple[Image.Image, int]], ext: str = "png") -> None:
    img_dir = task_dir / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, label) in enumerate(items):
        rel = f"images/{split}/{i:06d}.{ext}"
        img.save(task_dir / rel)
        lines.append(f"{rel} {label}")
    atomic_write_text(task_dir / f"{split}.txt", "\n".join(lines) + "\n")


def write_shapes_vtab(
    task_dir: str | os.PathLike,
    num_classes: int = 4,
    sizes: dict[str, int] | None = None,
    img_size: int = 32,
    seed: int = 0,
    kind: str = "shapes",
) -> Path:
    """Write the shapes (or ``kind="patterns"``: oriented textures) dataset in the VTAB-1k layout (``train800``, ``val200``, ``train800val200``,
    ``test``); ``train800val200`` holds the ``train800`` + ``val200`` images again, as in the real layout.

    Skips the work when ``task_dir/test.txt`` exists already (written last). Returns ``task_dir``.
    """
    task_dir = Path(task_dir).expanduser()
    if (task_dir / "test.txt").is_file():
        return task_dir
    draw = {"shapes": draw_shape, "patterns": draw_pattern}.get(kind)
    if draw is None:
        raise ValueError(f"unknown generated dataset kind {kind!r}; use 'shapes' or 'patterns'")
    if not 1 < num_classes <= len(SHAPES):
        raise ValueError(f"generated datasets support 2..{len(SHAPES)} classes, got num_classes={num_classes}")
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    data = {}
    for k, split in enumerate(("train800", "val200", "test")):
        rng = np.random.default_rng([seed, k])
        labels = np.arange(sizes[split]) % num_classes
        rng.shuffle(labels)
        data[split] = [(draw(rng, int(y), img_size), int(y)) for y in labels]
    _write_split(task_dir, "train800", data["train800"])
    _write_split(task_dir, "val200", data["val200"])
    _write_split(task_dir, "train800val200", data["train800"] + data["val200"])
    _write_split(task_dir, "test", data["test"])
    return task_dir


def write_vtab_tree(
    root: str | os.PathLike,
    tasks: Iterable[str],
    sizes: dict[str, int] | None = None,
    img_size: int = 16,
    seed: int = 0,
) -> Path:
    """Miniature VTAB-1k tree: for each task ``<root>/<folder>/{split}.txt`` + ``images/``.

    Labels cycle through the task's classes; images are shapes (class mod 6), so there is some signal.
    """
    from vapt.data.vtab import get_task

    root = Path(root)
    sizes = {"train800": 8, "val200": 4, "test": 8, **(sizes or {})}
    for t, name in enumerate(tasks):
        task = get_task(name)
        data = {}
        for k, split in enumerate(("train800", "val200", "test")):
            rng = np.random.default_rng([seed, t, k])
            labels = [i % task.num_classes for i in range(sizes[split])]
            data[split] = [(draw_shape(rng, y % len(SHAPES), img_size), y) for y in labels]
        d = root / task.folder
        _write_split(d, "train800", data["train800"], "jpg")
        _write_split(d, "val200", data["val200"], "jpg")
        _write_split(d, "train800val200", data["train800"] + data["val200"], "jpg")
        _write_split(d, "test", data["test"], "jpg")
    return root


def write_fgvc_tree(
    root: str | os.PathLike,
    dataset: str,
    sizes: dict[str, int] | None = None,
    img_size: int = 16,
    seed: int = 0,
    first_class_id: int = 1,
) -> Path:
    """Miniature FGVC dataset in VPT's json layout under ``root`` (class ids start at ``first_class_id``,
    as CUB's do, to exercise the remapping)."""
    from vapt.data.fgvc import get_fgvc

    info = get_fgvc(dataset)
    root = Path(root)
    sizes = {"train": 8, "val": 4, "test": 8, **(sizes or {})}
    for k, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([seed, k])
        ann = {}
        for i in range(sizes[split]):
            y = i % info.num_classes
            rel = f"{y:03d}.class_{y}/{split}_{i:04d}.jpg"
            path = root / info.image_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_shape(rng, y % len(SHAPES), img_size).save(path)
            ann[rel] = y + first_class_id
        atomic_write_text(root / f"{split}.json", json.dumps(ann, indent=0))
    return root
