"""``mgpath extract --encoder <preset> --checkpoint FILE`` end to end on a generated slide: the features equal the
publisher's recipe (model + transform) applied to the tiles, and the h5 identity records preset, options, weights."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import timm
import torch
from torch import nn
from torchvision import transforms as T

from mgpath.commands.extract import main as extract_main
from mgpath.commands.tile import main as tile_main
from mgpath.io import read_features
from mgpath.slides.reader import Slide

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def one_slide(slide_dir, tmp_path_factory):
    """One generated slide tiled at 5x with 256 px tiles (so presets resize and crop)."""
    root = tmp_path_factory.mktemp("preset_slides")
    (root / "slides").mkdir()
    (root / "slides" / "s0_ihc.tiff").symlink_to(slide_dir / "s0_ihc.tiff")
    assert tile_main([str(root / "slides"), "--out", str(root / "tiles"), "--magnification", "5",
                      "--tile-size", "256", "--no-progress"]) == 0
    return root


def _tiles(root):
    """The tiles as the tiler defined them: (N, 256, 256, 3) uint8, and their coordinates."""
    coords = root / "tiles" / "coords" / "s0_ihc.h5"
    if not coords.exists():
        coords = next((root / "tiles").rglob("s0_ihc.h5"))
    with h5py.File(coords) as f:
        xy, ps, mpp = f["coords"][()], int(f.attrs["patch_size"]), float(f.attrs["target_mpp"])
    with Slide(root / "slides" / "s0_ihc.tiff") as s:
        return np.stack([s.read_footprint(c, ps * mpp / s.mpp, ps) for c in xy]), xy


def _extract(root, out, encoder, checkpoint, *extra):
    return extract_main(["--coords", str(root / "tiles"), "--slides", str(root / "slides"), "--encoder", encoder,
                         "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "8", "--workers", "0",
                         "--accelerator", "cpu", "--no-progress", *extra])


def _reference(model, tiles, size, crop, interp=T.InterpolationMode.BILINEAR):
    """The publisher's eval transform (torchvision on 8-bit PIL images), then the publisher's model."""
    from PIL import Image

    steps = [T.Resize(size, interpolation=interp), T.CenterCrop(size)] if crop else \
        [T.Resize((size, size), interpolation=interp)]
    tf = T.Compose([*steps, T.ToTensor(), T.Normalize(*IMAGENET)])
    x = torch.stack([tf(Image.fromarray(t)) for t in tiles])
    with torch.no_grad():
        return model(x).numpy()


def _features(out):
    path = next(out.rglob("s0_ihc.h5"))
    return read_features(path), json.loads(h5py.File(path).attrs["identity"])


def test_extract_uni_v1_equals_timm_recipe_and_records_identity(one_slide, tmp_path, randomise):
    torch.manual_seed(0)
    ref = randomise(timm.create_model("vit_large_patch16_224", num_classes=0, img_size=224, patch_size=16,
                                      init_values=1e-5, dynamic_img_size=True, depth=1))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    assert _extract(one_slide, tmp_path / "uni", "uni_v1", tmp_path / "pytorch_model.bin",
                    "--encoder-kwargs", '{"depth": 1}') == 0
    d, ident = _features(tmp_path / "uni")
    tiles, xy = _tiles(one_slide)
    assert np.array_equal(d["coords"], xy) and d["features"].shape == (len(xy), 1024)
    np.testing.assert_allclose(d["features"], _reference(ref, tiles, 224, True), atol=1e-4, rtol=1e-4)
    assert ident["encoder"] == "uni_v1" and ident["weights"].startswith("sha256:")
    assert ident["mean"] == list(IMAGENET[0]) and ident["extra"]["overrides"] == {"depth": "1"}
    assert ident["extra"]["transform"] == {"resize": 224, "crop": True, "interpolation": "bilinear",
                                           "pixels": "8-bit PIL"}
    # another option is another identity: the cached file is reported stale, not reused
    assert _extract(one_slide, tmp_path / "uni", "uni_v1", tmp_path / "pytorch_model.bin",
                    "--encoder-kwargs", '{"depth": 1}', "--mean", "0.5", "0.5", "0.5") == 1


def test_extract_resnet50_phikon_conch(one_slide, tmp_path, randomise):
    import torchvision
    from transformers import ViTConfig, ViTModel

    tiles, _ = _tiles(one_slide)
    torch.manual_seed(0)
    tv = randomise(torchvision.models.resnet50())
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")
    assert _extract(one_slide, tmp_path / "r50", "resnet50", tmp_path / "resnet50.pth") == 0
    trunk = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    np.testing.assert_allclose(_features(tmp_path / "r50")[0]["features"], _reference(trunk, tiles, 224, True),
                               atol=1e-4, rtol=1e-4)

    vit = randomise(ViTModel(ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=384, image_size=224, patch_size=16), add_pooling_layer=False))
    vit.save_pretrained(tmp_path / "phikon")
    assert _extract(one_slide, tmp_path / "ph", "phikon", tmp_path / "phikon") == 0
    d, ident = _features(tmp_path / "ph")
    np.testing.assert_allclose(d["features"], _reference(lambda x: vit(pixel_values=x).last_hidden_state[:, 0],
                                                         tiles, 224, False), atol=1e-4, rtol=1e-4)
    assert ident["encoder"] == "phikon" and ident["weights"].startswith("sha256:")  # the folder's weights file

    trunk_sd = timm.create_model("vit_base_patch16_224", num_classes=0, img_size=448, depth=1).state_dict()
    sd = {f"visual.trunk.{k}": v for k, v in trunk_sd.items()}
    from vapt.backbones.timm_vits import ConchPool

    sd.update({f"visual.{k.replace('attn_pool.', 'attn_pool_contrast.').replace('ln.', 'ln_contrast.')}": v
               for k, v in ConchPool(proj=False).state_dict().items()})
    sd["visual.proj_contrast"] = torch.randn(512, 512)
    torch.save(sd, tmp_path / "conch.bin")
    assert _extract(one_slide, tmp_path / "conch", "conch_v1", tmp_path / "conch.bin",
                    "--encoder-kwargs", '{"depth": 1}') == 0
    d, ident = _features(tmp_path / "conch")
    assert d["features"].shape[1] == 512 and ident["input_size"] == [448, 448]
    assert ident["extra"]["transform"]["interpolation"] == "bicubic"
