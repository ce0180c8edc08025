"""Bad data inputs get correct handling or one clear error: 16-bit images scaled (not clipped to white), a BOM
in a split file, duplicate split lines, entries outside the data root, an empty class folder, and damaged
(truncated) JPEG / PNG files found at set-up or when decoding mid-epoch, stopped or skipped as configured."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vapt.data import DataError, FGVCDataModule, ImageFolderDataModule, VTABDataModule
from vapt.data.base import ListDataset, collate_skipping, read_list_file
from vapt.data.decode import image_problem, load_rgb
from vapt.data.synthetic import write_fgvc_tree, write_vtab_tree


@pytest.fixture()
def dtd(tmp_path) -> Path:
    return write_vtab_tree(tmp_path / "vtab-1k", ["dtd"], sizes={"train800": 4, "val200": 2, "test": 2}, img_size=12) / "dtd"


def vtab(dtd: Path, **kw) -> VTABDataModule:
    return VTABDataModule(root=str(dtd.parent), task="dtd", train_split="train800", val_split="val200",
                          num_workers=0, img_size=16, **kw)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # Pillow opens it as 16-bit grey
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    expected = np.round(ramp / 257.0).astype(np.uint8)  # 65535 -> 255, 32768 -> 128, 0 -> 0
    assert rgb.shape == (16, 64, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).mean() > 250  # what PIL alone gives
    floats = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tiff")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "f.tiff"))[..., 0], np.round(floats * 255).astype(np.uint8))


def test_bom_in_split_files_is_ignored(dtd, tmp_path):
    text = (dtd / "train800.txt").read_text()
    (dtd / "train800.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    dm = vtab(dtd)
    dm.setup("fit")
    assert [p for p, _ in dm.datasets["train"].samples] == [str(dtd / line.split()[0]) for line in text.splitlines()]
    root = write_fgvc_tree(tmp_path / "dogs", "dogs")
    (root / "train.json").write_bytes(b"\xef\xbb\xbf" + (root / "train.json").read_bytes())
    FGVCDataModule(root=str(root), dataset="dogs", num_workers=0).setup("fit")


def test_duplicate_split_lines_name_file_and_line(dtd, tmp_path):
    lines = (dtd / "train800.txt").read_text().splitlines()
    (dtd / "train800.txt").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match=rf"train800.txt:{len(lines) + 1}: .* is listed again \(first at line 2\)"):
        vtab(dtd).setup("fit")
    root = write_fgvc_tree(tmp_path / "dogs", "dogs")
    ann = (root / "train.json").read_text()
    first_key = next(iter(json.loads(ann)))
    (root / "train.json").write_text(ann.rstrip().rstrip("}") + f',\n"{first_key}": 0}}')
    with pytest.raises(DataError, match=rf"train.json:\d+: {first_key} is listed again"):
        FGVCDataModule(root=str(root), dataset="dogs", num_workers=0).setup("fit")


@pytest.mark.parametrize("entry", ["../../x.jpg", "/etc/passwd", "images/../../dtd2/a.jpg"])
def test_entries_outside_the_root_are_refused_unless_allowed(dtd, entry):
    with open(dtd / "train800.txt", "a") as fh:
        fh.write(f"{entry} 1\n")
    with pytest.raises(DataError, match=r"train800.txt:5: .* resolves outside the data root .*allow_outside_root"):
        vtab(dtd).setup("fit")


def test_allow_outside_root_accepts_an_outside_image(dtd, tmp_path):
    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "outside.png")
    with open(dtd / "train800.txt", "a") as fh:
        fh.write("../../outside.png 1\n")
    dm = vtab(dtd, allow_outside_root=True)
    dm.setup("fit")
    assert dm.datasets["train"].samples[-1] == (str(tmp_path / "outside.png"), 1)
    assert read_list_file(dtd / "val200.txt", dtd)  # inside the root: unaffected


def test_fgvc_entry_outside_the_root_is_refused(tmp_path):
    root = write_fgvc_tree(tmp_path / "dogs", "dogs")
    ann = json.loads((root / "train.json").read_text())
    ann["../../../elsewhere.jpg"] = next(iter(ann.values()))
    (root / "train.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match=r"train.json: '../../../elsewhere.jpg' resolves outside the data root"):
        FGVCDataModule(root=str(root), dataset="dogs", num_workers=0).setup("fit")


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "0.png")
    with pytest.raises(DataError, match=rf"Class folder {tmp_path / 'train' / 'dog'} has no images"):
        ImageFolderDataModule(root=str(tmp_path), val_split=None, test_split=None)


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_images_are_found_at_setup(dtd):
    jpg = Path(read_list_file(dtd / "train800.txt", dtd)[2][0])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    assert image_problem(jpg) is None
    _truncate(jpg, 0.8)  # the header survives, the end of the scan data does not
    assert image_problem(jpg) == "truncated JPEG (no end marker)"
    with pytest.raises(DataError, match=rf"damaged image {jpg}: truncated JPEG .*on_bad_image: skip"):
        vtab(dtd).setup("fit")
    dm = vtab(dtd, on_bad_image="skip")
    with pytest.warns(UserWarning, match=rf"skipping 1 damaged image\(s\): {jpg}"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and dm.skipped == [f"{jpg}: truncated JPEG (no end marker)"]
    (dtd / "images" / "junk.png").write_bytes(b"not an image at all")
    assert image_problem(dtd / "images" / "junk.png").startswith("not a readable image")


def test_image_damaged_inside_is_named_when_decoded(tmp_path):
    """A PNG whose end marker survives but whose pixel data is cut: passes the cheap check, fails decoding."""
    px = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(px).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    idat = data.index(b"IDAT")
    (tmp_path / "a.png").write_bytes(data[: idat + 40] + data[-12:])  # keep IEND, drop most of the pixels
    Image.fromarray(px).save(tmp_path / "b.png")
    assert image_problem(tmp_path / "a.png") is None
    ds = ListDataset([(str(tmp_path / "a.png"), 0), (str(tmp_path / "b.png"), 1)], transform=np.asarray)
    with pytest.raises(DataError, match=rf"{tmp_path / 'a.png'}: cannot decode image .*on_bad_image: skip"):
        ds[0]
    ds = ListDataset(ds.samples, transform=lambda im: torch.from_numpy(np.asarray(im).copy()), on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping .*a.png"):
        images, labels = collate_skipping([ds[0], ds[1]])
    assert images.shape == (1, 32, 32, 3) and labels.tolist() == [1] and ds.skipped == [str(tmp_path / "a.png")]
    assert torch.equal(images[0], torch.from_numpy(px))
