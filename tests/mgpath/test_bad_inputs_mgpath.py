"""The bad-input matrix of the mgpath command line, run as a user would.

Each case asserts the exit status (2 bad input, 1 some slides skipped), that the message names the file
and fits on one line without a traceback, and that the good outputs made before are left intact. The cases
run one after another in one interpreter (``tests/cli_driver.py``: each calls ``mgpath.cli.main(argv)`` as
``python -m mgpath.cli`` does, with stdout and stderr caught at the file descriptors), which spares a torch
import per case.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import timm
import torch
from cli_driver import digest, run_cases

ENC = "vit_tiny_patch16_224"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def good_run(slide_dir, tmp_path_factory):
    """A finished tile + extract run whose outputs every bad case below must leave untouched."""
    root = tmp_path_factory.mktemp("matrix")
    slides = root / "slides"
    shutil.copytree(slide_dir, slides)
    torch.manual_seed(0)
    timm_model = timm.create_model(ENC, pretrained=False, num_classes=0, img_size=64)
    torch.save(timm_model.state_dict(), root / "w.pth")
    done = run_cases([
        {"name": "tile", "prog": "mgpath", "argv": ["tile", str(slides), "--out", str(root / "tiles"),
                                                     "--magnification", "2.5", "--tile-size", "96", "--no-progress"]},
        {"name": "extract", "prog": "mgpath", "argv": ["extract", *_extract_args(root), "--checkpoint",
                                                        str(root / "w.pth")]}])
    assert [r["code"] for r in done.values()] == [0, 0], {k: r["stderr"][-2000:] for k, r in done.items()}
    return root


@pytest.fixture(scope="module")
def matrix(good_run):
    """``(digest before, name -> (expected exit, named text, driver result))`` of every case, run in one go."""
    before = _digest(good_run)
    order = sorted(CASES, key=lambda n: not n.startswith("coords_"))  # before any case writes features/s0_ihc.h5
    cases = {name: _case(good_run, name) for name in order}
    results = run_cases([{"name": name, "prog": "mgpath", "argv": argv,
                          "digest": [str(good_run / "tiles"), str(good_run / "features")]}
                         for name, (argv, _, _) in cases.items()])
    return before, {name: (code, named, results[name]) for name, (_, code, named) in cases.items()}


def _extract_args(root, coords=None):
    return ["--coords", str(coords or root / "tiles"), "--slides", str(root / "slides"), "--encoder", ENC,
            "--img-size", "64", "--out", str(root / "features"), "--workers", "0", "--accelerator", "cpu",
            "--no-progress"]


def _digest(root, found=None):
    """SHA-256 of every h5 under ``root``'s tiles and features folders (``found``: the driver's digests)."""
    found = found or {str(root / d): digest(root / d) for d in ("tiles", "features")}
    return {f"{Path(d).name}/{k}": v for d, files in found.items() for k, v in files.items() if k.endswith(".h5")}


def _case(root, name):
    """``(argv, expected exit, text the message must contain)`` of one bad input."""
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    if name == "garbage_checkpoint":
        (bad / "garbage.pth").write_bytes(b"not a checkpoint")
        return ["extract", *_extract_args(root), "--checkpoint", str(bad / "garbage.pth")], 2, "garbage.pth"
    if name == "truncated_checkpoint":
        data = (root / "w.pth").read_bytes()
        (bad / "trunc.pth").write_bytes(data[: len(data) // 2])
        return ["extract", *_extract_args(root), "--checkpoint", str(bad / "trunc.pth"), "--overwrite"], 2, "trunc.pth"
    if name == "missing_checkpoint":
        return ["extract", *_extract_args(root), "--checkpoint", str(bad / "nope.pth")], 2, "nope.pth"
    if name == "no_coords_folder":
        return ["extract", *_extract_args(root, coords=bad / "nowhere")], 2, "nowhere"
    if name == "corrupt_coords_h5":
        cdir = bad / "coords"
        shutil.copytree(root / "tiles" / "2.5x" / "coords", cdir, dirs_exist_ok=True)
        (cdir / "s1_he.h5").write_bytes(b"\x89HDF torn")
        return ["extract", *_extract_args(root, coords=cdir), "--checkpoint", str(root / "w.pth")], 1, "s1_he.h5"
    if name == "mpp_csv_without_columns":
        (bad / "mpp.csv").write_text("name,resolution\ns0_ihc,0.5\n")
        return ["tile", str(root / "slides"), "--out", str(root / "tiles"), "--magnification", "2.5",
                "--tile-size", "96", "--mpp-csv", str(bad / "mpp.csv"), "--no-progress"], 2, "mpp.csv"
    if name == "not_a_slide":
        (bad / "notes.svs").write_text("this is text")
        return ["tile", str(bad / "notes.svs"), "--out", str(root / "tiles"), "--magnification", "2.5",
                "--tile-size", "96", "--no-progress"], 1, "notes.svs"
    if name == "garbage_mgpath_checkpoint":
        (bad / "model.ckpt").write_bytes(b"garbage")
        return ["heatmap", "--ckpt_path", str(bad / "model.ckpt"), "--slide", str(root / "slides" / "s0_ihc.tiff"),
                "--out", str(bad / "h.png")], 2, "model.ckpt"
    if name in ("test_with_other_classes", "predict_with_other_classes"):
        ckpt = bad / "two_class.ckpt"
        if not ckpt.is_file():  # a 2-class module saved in Lightning's checkpoint layout (no fit needed)
            from mgpath.module import MGPATHModule

            torch.manual_seed(0)
            module = MGPATHModule(str(ROOT / "data/prompts/demo.json"), 32, ["class_a", "class_b"], embed_dim=32,
                                  text_model="mgpath-tiny", n_ctx=4, n_sets=2, n_prompts=8)
            torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                        "epoch": 0, "global_step": 0}, ckpt)
        return [name.split("_")[0], "--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.classes",
                "[class_a, class_b, class_c]", "--model.descriptions", str(ROOT / "data/prompts/demo.json"),
                "--data.labels_csv", str(bad / "labels.csv"), "--ckpt_path", str(ckpt)], 2, (
            f"{ckpt} was trained on 2 classes ['class_a', 'class_b'], the config gives 3 classes "
            "['class_a', 'class_b', 'class_c']")
    if name in ("coords_escaping_name_and_external_storage", "coords_transposed_and_outside_slide"):
        cdir = bad / name
        shutil.copytree(root / "tiles" / "2.5x" / "coords", cdir, dirs_exist_ok=True)
        first, second = (("name escapes --out", "external storage") if name.startswith("coords_escaping")
                         else ("transposed", "outside the slide"))
        for sid, damage in (("s0_ihc", first), ("s1_he", second)):
            with h5py.File(cdir / f"{sid}.h5", "a") as f:
                xy = f["coords"][()]
                if damage == "name escapes --out":  # a slide name that would write outside --out
                    f.attrs["name"] = f["coords"].attrs["name"] = "../../escaped"
                    continue
                del f["coords"]
                if damage == "external storage":  # the coordinates "live" in another file
                    (bad / "elsewhere.bin").write_bytes(xy.astype("<i8").tobytes())
                    f.create_dataset("coords", shape=xy.shape, dtype="<i8",
                                     external=[(str(bad / "elsewhere.bin"), 0, xy.nbytes)])
                else:
                    f["coords"] = xy.T if damage == "transposed" else xy + 10**6
        return ["extract", *_extract_args(root, coords=cdir), "--checkpoint", str(root / "w.pth")], 1, str(cdir)
    if name == "mpp_typed_as_magnification":
        return ["tile", str(root / "slides"), "--out", str(root / "tiles"), "--magnification", "2.5",
                "--tile-size", "96", "--mpp", "40", "--no-progress"], 2, "--mpp"
    if name == "mpp_csv_non_numeric_cell":
        (bad / "mpp_cells.csv").write_text("slide_id,mpp\ns0_ihc,0.5\ns1_he,n/a\n")
        return ["tile", str(root / "slides"), "--out", str(root / "tiles"), "--magnification", "2.5",
                "--tile-size", "96", "--mpp-csv", str(bad / "mpp_cells.csv"), "--no-progress"], 2, "mpp_cells.csv row 3"
    raise KeyError(name)


CASES = ["garbage_checkpoint", "truncated_checkpoint", "missing_checkpoint", "no_coords_folder",
         "corrupt_coords_h5", "mpp_csv_without_columns", "not_a_slide", "garbage_mgpath_checkpoint",
         "coords_escaping_name_and_external_storage", "coords_transposed_and_outside_slide",
         "mpp_typed_as_magnification", "mpp_csv_non_numeric_cell", "test_with_other_classes",
         "predict_with_other_classes"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, good_run, matrix):
    before, cases = matrix
    code, named, result = cases[name]
    stdout, stderr = result["stdout"], result["stderr"]
    assert result["code"] == code, (stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stderr + stdout
    if code == 2:  # bad input: one line on stderr naming the file
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and named in lines[0], stderr
    else:  # some slides skipped: the skipped slide's line names the file
        skipped = [ln for ln in stdout.splitlines() if ln.strip().startswith("skipped")]
        assert skipped and all(named in ln for ln in skipped), stdout
        if name.startswith("coords_"):  # both damaged files of the case are skipped, each with its own line
            assert len(skipped) == 2 and "s0_ihc.h5" not in result["digest"][str(good_run / "features")], stdout
    after = _digest(good_run, result["digest"])
    assert {k: after.get(k) for k in before} == before  # nothing lost: every earlier output is unchanged
    assert not list(good_run.parent.glob("escaped*")) and not (good_run / "escaped.h5").exists()  # nothing left --out
    with h5py.File(good_run / "features" / "2.5x" / "s0_ihc.h5") as f:
        assert f["features"].shape[0] > 0
