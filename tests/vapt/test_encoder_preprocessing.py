"""Every buildable preset preprocesses 8-bit tiles exactly as its publisher's own transform does.

The references are the publishers' transform code (timm ``create_transform`` from the hub ``pretrained_cfg``,
open_clip ``image_transform``, Hugging Face ``CLIPImageProcessor``, torchvision ``transforms`` as the model
cards write them) applied to the same PIL image; the comparison is exact (no tolerance).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vapt.backbones import list_presets, preprocess_tiles, resize_tiles
from vapt.backbones.files import Weights
from vapt.backbones.timm_vits import _hub_config

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HALF = ((0.5,) * 3, (0.5,) * 3)
BIL, BIC = T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC


def timm_eval(size, interpolation, crop_pct, norm):
    """timm's eval transform as ``create_transform`` builds it from a hub ``pretrained_cfg``."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(pretrained_cfg={"input_size": (3, size, size), "interpolation": interpolation,
                                              "crop_pct": crop_pct, "mean": norm[0], "std": norm[1]})
    return create_transform(**cfg, is_training=False)


def torchvision_card(size, interp, crop, norm, resize=None):
    """The model card's ``transforms.Compose`` (TRIDENT writes the same)."""
    steps = [T.Resize(resize or size, interpolation=interp), T.CenterCrop(size)] if crop else \
        [T.Resize(size, interpolation=interp)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*norm)])


def open_clip_eval(size):
    import open_clip

    return open_clip.image_transform(size, is_train=False, mean=OPENAI[0], std=OPENAI[1])


#: preset -> the publisher's transform, built with the publisher's tool
PUBLISHER = {
    "uni_v1": lambda: torchvision_card(224, BIL, True, IMAGENET),
    "uni_v2": lambda: torchvision_card(224, BIL, True, IMAGENET),
    "conch_v1": lambda: open_clip_eval(448),
    "gigapath": lambda: torchvision_card(224, BIC, True, IMAGENET, resize=256),
    "virchow": lambda: timm_eval(224, "bicubic", 1.0, IMAGENET),
    "virchow2": lambda: timm_eval(224, "bicubic", 1.0, IMAGENET),
    "hoptimus0": lambda: timm_eval(224, "bicubic", 1.0, HOPT),
    "hoptimus1": lambda: timm_eval(224, "bicubic", 1.0, HOPT),
    "h0-mini": lambda: timm_eval(224, "bicubic", 1.0, HOPT),
    "lunit-vits8": lambda: timm_eval(224, "bicubic", 224 / 248, IMAGENET),
    "gpfm": lambda: torchvision_card(224, BIC, False, IMAGENET),
    "phikon": lambda: torchvision_card(224, BIL, False, IMAGENET),
    "phikon_v2": lambda: torchvision_card(224, BIL, True, IMAGENET),
    "plip": lambda: open_clip_eval(224),
    "plip_pooled": lambda: open_clip_eval(224),
    "quiltnet": lambda: open_clip_eval(224),
    "resnet50": lambda: torchvision_card(224, BIL, True, IMAGENET),
    "ctranspath": lambda: torchvision_card(224, BIL, False, IMAGENET),
    **{f"kaiko-{n}": (lambda: timm_eval(224, "bilinear", 1.0, HALF))
       for n in ("vits8", "vits16", "vitb8", "vitb16", "vitl14")},
}
#: hub-config presets: the publisher's timm config.json (pretrained_cfg) that the preset reads
HUB_CFG = {"h0-mini": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 1.0,
                       "mean": list(HOPT[0]), "std": list(HOPT[1])},
           "lunit-vits8": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 224 / 248,
                           "mean": list(IMAGENET[0]), "std": list(IMAGENET[1])}}


@pytest.fixture(scope="module")
def tiles() -> list[np.ndarray]:
    """Real IHC tissue crops at the sizes tiles come in: 256 px (resized), 300 px, and 224 px (no resize)."""
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()
    return [img[:256, :256].copy(), img[100:400, 50:350].copy(), img[200:424, 150:374].copy()]


def data_config(preset, tmp_path):
    if preset.options.get("hub_config"):
        (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_small_patch8_224",
                                                          "pretrained_cfg": HUB_CFG[preset.name]}))
        weights = Weights(tmp_path / "model.safetensors", tmp_path, {"config.json": json.loads(
            (tmp_path / "config.json").read_text())})
        return _hub_config(preset, weights, {})[2].data_config()
    return preset.preprocess.data_config()


def test_every_buildable_preset_has_a_publisher_reference():
    assert {p.name for p in list_presets() if not p.unavailable} == set(PUBLISHER)


@pytest.mark.parametrize("name", sorted(PUBLISHER))
def test_preprocessing_equals_the_publishers_transform(name, tiles, tmp_path):
    preset = next(p for p in list_presets() if p.name == name)
    cfg = data_config(preset, tmp_path)
    publisher = PUBLISHER[name]()
    for tile in tiles:
        expected = publisher(Image.fromarray(tile))
        got = preprocess_tiles(torch.from_numpy(tile)[None], cfg)[0]
        assert got.shape == expected.shape == (3, *cfg["input_size"][1:])
        assert torch.equal(got, expected), f"{name}: max |diff| {(got - expected).abs().max():.3g}"


def test_plip_pixels_equal_the_hf_clip_image_processor(tiles):
    """PLIP's own processor (HF CLIP image processor, PIL backend as published: shortest edge 224, bicubic, centre
    crop 224): same pixels. transformers 5's default torchvision backend resizes tensors instead (<= 2 levels off)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                              do_rescale=False, do_normalize=False, do_convert_rgb=True)
    cfg = next(p for p in list_presets() if p.name == "plip").preprocess.data_config()
    for tile in tiles:
        ref = proc(images=Image.fromarray(tile), return_tensors="np")["pixel_values"][0]
        got = np.asarray(resize_tiles(torch.from_numpy(tile)[None], cfg)[0]).transpose(2, 0, 1)
        assert np.abs(got.astype(np.float64) - ref).max() == 0


def test_channel_first_and_channel_last_tiles_agree(tiles):
    cfg = next(p for p in list_presets() if p.name == "gigapath").preprocess.data_config()
    hwc = torch.from_numpy(np.stack([tiles[0], tiles[0]]))
    a, b = preprocess_tiles(hwc, cfg), preprocess_tiles(hwc.permute(0, 3, 1, 2), cfg)
    assert a.shape == (2, 3, 224, 224) and torch.equal(a, b)
    assert float(a.min()) >= (0 - 0.485) / 0.229 - 1e-6 and float(a.max()) <= (1 - 0.406) / 0.225 + 1e-6
