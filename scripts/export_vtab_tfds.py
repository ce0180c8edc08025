"""Write VTAB-1k in the common folder layout from TensorFlow Datasets, with the official VTAB slicing.

Needs the optional TensorFlow extra (not installed by default, not run in CI):

    pip install -e ".[tf]"
    python scripts/export_vtab_tfds.py --out data/vtab-1k --tfds-dir ~/tensorflow_datasets [--download] \\
        [--tasks all|natural|cifar100,dtd] [--format png|jpg]

Output, per task (``<folder>`` as in ``vapt.data.vtab.VTAB_TASKS``)::

    <out>/<folder>/{train800,val200,train800val200,test}.txt   "images/<split>/<i>.png <label>" per line
    <out>/<folder>/images/<split>/<i>.png                      train800val200 repeats the 1000 images

Slicing follows google-research/task_adaptation (as VPT's ``src/data/vtab_datasets`` does): ``train800`` is
the first 800 examples of the training part, ``val200`` the first 200 of the validation part, where the
validation part is a TFDS split or a fixed fraction of TFDS ``train`` (90/10, 80/20 or 60/20/20 as below),
and ``test`` is the whole test part. Images are stored losslessly (PNG) by default; the official pipeline
then resizes to 224 x 224 in memory (``vapt.data.transforms.vtab_transform`` does the same).
Pinned TFDS versions (VPT's VTAB_SETUP.md) are given as ``name:version`` below.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _label(key: str) -> Callable[[dict], int]:
    return lambda ex: int(ex[key])


def _clevr_count(ex) -> int:
    return len(ex["objects"]["size"]) - 3  # 3..10 objects -> 0..7


def _clevr_dist(ex) -> int:
    dist = float(np.min(ex["objects"]["pixel_coords"][:, 2]))
    thresholds = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    return int(np.max(np.where(thresholds - dist < 0)[0]))  # 6 classes


def _kitti_closest_vehicle(ex) -> int:
    types, z = ex["objects"]["type"], ex["objects"]["location"][:, 2]
    vehicles = z[types < 3]  # Car, Van, Truck
    dist = float(vehicles.min()) if vehicles.size else 1000.0
    thresholds = np.array([-100.0, 8.0, 20.0, 999.0])
    return int(np.max(np.where(thresholds - dist < 0)[0]))  # 4 classes (3: no vehicle)


def _binned(key: str, original: int, classes: int = 16) -> Callable[[dict], int]:
    return lambda ex: int(np.floor(float(ex[key]) / (original / classes)))


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = img.astype(np.uint8)
    return img[..., :3]


def _dsprites_image(ex) -> np.ndarray:
    return _rgb(ex["image"] * 255)  # binary {0, 1} masks


@dataclass
class Export:
    tfds: str
    train: str  # TFDS split holding the training part
    val: Callable[[int], str]  # num_examples(train split) -> slice of the first 200 validation examples
    test: Callable[[int], str]
    label: Callable[[dict], int] = field(default_factory=lambda: _label("label"))
    image: Callable[[dict], np.ndarray] = field(default_factory=lambda: (lambda ex: _rgb(ex["image"])))
    test_from_train: bool = False  # test() slices the train split's size


def _frac_val(frac: float) -> Callable[[int], str]:
    return lambda n: f"train[{int(n * frac)}:{int(n * frac) + 200}]"


_VALIDATION = lambda n: "validation[:200]"
_TEST = lambda n: "test"

EXPORTS: dict[str, Export] = {
    "cifar100": Export("cifar100:3.0.2", "train", _frac_val(0.9), _TEST),
    "caltech101": Export("caltech101:3.0.1", "train", _frac_val(0.9), _TEST),
    "dtd": Export("dtd:3.0.1", "train", _VALIDATION, _TEST),
    "oxford_flowers102": Export("oxford_flowers102:2.1.1", "train", _VALIDATION, _TEST),
    "oxford_iiit_pet": Export("oxford_iiit_pet:3.2.0", "train", _frac_val(0.8), _TEST),
    "svhn": Export("svhn_cropped:3.0.0", "train", _frac_val(0.9), _TEST),
    "sun397": Export("sun397/tfds:4.0.0", "train", _VALIDATION, _TEST),
    "patch_camelyon": Export("patch_camelyon:2.0.0", "train", _VALIDATION, _TEST),
    "eurosat": Export("eurosat/rgb:2.0.0", "train", _frac_val(0.6), lambda n: f"train[{int(n * 0.8)}:]",
                      test_from_train=True),
    "resisc45": Export("resisc45:3.0.0", "train", _frac_val(0.6), lambda n: f"train[{int(n * 0.8)}:]",
                       test_from_train=True),
    "diabetic_retinopathy": Export("diabetic_retinopathy_detection/btgraham-300:3.0.0", "train", _VALIDATION, _TEST),
    "clevr_count": Export("clevr:3.1.0", "train", _frac_val(0.9), lambda n: "validation", _clevr_count),
    "clevr_dist": Export("clevr:3.1.0", "train", _frac_val(0.9), lambda n: "validation", _clevr_dist),
    "dmlab": Export("dmlab:2.0.1", "train", _VALIDATION, _TEST),
    "kitti": Export("kitti:3.2.0", "train", _VALIDATION, _TEST, _kitti_closest_vehicle),
    "dsprites_loc": Export("dsprites:2.0.0", "train", _frac_val(0.8), lambda n: f"train[{int(n * 0.9)}:]",
                           _binned("label_x_position", 32), _dsprites_image, test_from_train=True),
    "dsprites_ori": Export("dsprites:2.0.0", "train", _frac_val(0.8), lambda n: f"train[{int(n * 0.9)}:]",
                           _binned("label_orientation", 40), _dsprites_image, test_from_train=True),
    "smallnorb_azi": Export("smallnorb:2.0.0", "train", lambda n: "test[:200]", lambda n: "test[50%:]",
                            _label("label_azimuth")),
    "smallnorb_ele": Export("smallnorb:2.0.0", "train", lambda n: "test[:200]", lambda n: "test[50%:]",
                            _label("label_elevation")),
}


def export_task(name: str, out: Path, data_dir: str | None, download: bool, fmt: str) -> None:
    import tensorflow_datasets as tfds
    from PIL import Image

    from vapt.data.vtab import get_task
    from vapt.fileio.atomic import write_text_atomic as atomic_write_text

    task, spec = get_task(name), EXPORTS[name]
    builder = tfds.builder(spec.tfds, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    n_train = builder.info.splits[spec.train].num_examples
    slices = {"train800": f"{spec.train}[:800]", "val200": spec.val(n_train), "test": spec.test(n_train)}
    task_dir = out / task.folder
    written: dict[str, list[tuple[str, int]]] = {}
    for split, tfds_split in slices.items():
        ds = tfds.as_numpy(builder.as_dataset(split=tfds_split, shuffle_files=False))
        (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, ex in enumerate(ds):
            label = spec.label(ex)
            if not 0 <= label < task.num_classes:
                raise ValueError(f"{name}: label {label} outside [0, {task.num_classes}) in {tfds_split}")
            rel = f"images/{split}/{i:06d}.{fmt}"
            Image.fromarray(spec.image(ex)).save(task_dir / rel)
            rows.append((rel, label))
        written[split] = rows
        print(f"{name}: {split} <- {spec.tfds} {tfds_split}: {len(rows)} images", flush=True)
    # train800val200 holds the same 1000 images again, under its own folder (the common layout)
    (task_dir / "images" / "train800val200").mkdir(parents=True, exist_ok=True)
    rows = []
    for split in ("train800", "val200"):
        for rel, label in written[split]:
            new = rel.replace(f"images/{split}/", "images/train800val200/", 1).replace(
                Path(rel).stem, f"{split[0]}{Path(rel).stem}", 1)
            (task_dir / new).write_bytes((task_dir / rel).read_bytes())
            rows.append((new, label))
    written["train800val200"] = rows
    for split, rows in written.items():
        atomic_write_text(task_dir / f"{split}.txt", "".join(f"{r} {y}\n" for r, y in rows))


def main(argv=None) -> int:
    from vapt.data.vtab import GROUPS, VTAB_TASKS, get_task, tasks_in_group

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="VTAB-1k root to write")
    ap.add_argument("--tfds-dir", default=None, help="TFDS data_dir (default: TFDS's own default)")
    ap.add_argument("--download", action="store_true", help="download_and_prepare missing TFDS datasets")
    ap.add_argument("--tasks", default="all", help="all | group names | comma-separated task names")
    ap.add_argument("--format", choices=("png", "jpg"), default="png")
    args = ap.parse_args(argv)
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        ap.error('TensorFlow Datasets is not installed; pip install -e ".[tf]" (optional extra)')
    if args.tasks == "all":
        tasks = list(VTAB_TASKS)
    else:
        tasks = []
        for part in (p.strip() for p in args.tasks.split(",") if p.strip()):
            tasks += tasks_in_group(part) if part in GROUPS else [get_task(part).name]
    for name in tasks:
        export_task(name, Path(args.out), args.tfds_dir, args.download, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
