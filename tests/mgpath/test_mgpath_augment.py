"""`mgpath extract --augment`: augmented bags beside the plain features, once, resumable, per-tile exact."""
import numpy as np
from test_features import tiled, tiny_vit  # noqa: F401  (fixtures)

from mgpath.commands.extract import main
from mgpath.io import read_features
from mgpath.pipelines.augment import tile_transform


def test_extract_augment_writes_bags_beside_once_and_resumably(tiled, slide_dir, tiny_vit, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "feats"
    args = ["--coords", str(tiled), "--slides", str(slide_dir), "--encoder", "vit_tiny_patch16_224",
            "--checkpoint", str(tiny_vit[0]), "--img-size", "64", "--out", str(out), "--batch-size", "16",
            "--workers", "0", "--accelerator", "cpu", "--no-progress", "--augment"]
    assert main(args) == 0
    plain = sorted(p.relative_to(out) for p in out.glob("*x/*.h5"))
    aug = sorted(p.relative_to(out / "augmented") for p in (out / "augmented").glob("*x/*.h5"))
    assert plain and aug == plain  # one augmented bag beside every plain one, same layout
    identity = changed = 0
    for rel in plain:
        p, a = read_features(out / rel), read_features(out / "augmented" / rel)
        np.testing.assert_array_equal(p["coords"], a["coords"])
        for t in range(len(p["features"])):
            same = np.allclose(p["features"][t], a["features"][t], atol=1e-5)
            if tile_transform(0, rel.stem, t) == (0, 0):  # rot 0, no flip: the plain tile itself
                assert same
                identity += 1
            else:
                changed += not same
    assert identity and changed
    first = read_features(out / "augmented" / plain[0])["features"]
    capsys.readouterr()
    assert main(args) == 0  # once: everything is cached
    text = capsys.readouterr().out
    assert f"{2 * len(plain)} cached" in text and " 0 done" in text
    (out / "augmented" / plain[0]).unlink()  # a killed run lost one: only it is redone, identically
    assert main(args) == 0
    np.testing.assert_array_equal(read_features(out / "augmented" / plain[0])["features"], first)
