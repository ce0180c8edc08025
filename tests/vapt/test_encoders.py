"""Encoder presets against an independent forward built here from each publisher's recipe, on real tissue pixels.

Each test writes random weights in the publisher's file layout, builds the preset from that file, and compares
``enc(enc.preprocess(tiles))`` with the publisher's model (timm / transformers / open_clip / torchvision /
timm_ctp built directly) after the publisher's transform (torchvision ``transforms`` on PIL images). Large models run at
reduced depth with every other keyword equal.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import SwiGLUPacked
from torch import nn
from torchvision import transforms as T

from vapt.backbones import build_encoder

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
BIL, BIC = T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """Two 256 px uint8 crops of real IHC tissue, (2, 256, 256, 3)."""
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()
    return torch.from_numpy(np.stack([img[:256, :256], img[200:456, 150:406]]).copy())


def reference_input(tiles, size, norm, interp, crop, resize=None):
    """The publisher's eval transform (torchvision ``transforms`` on 8-bit PIL images, independent of vapt.backbones)."""
    steps = [T.Resize(resize or size, interpolation=interp), T.CenterCrop(size)] if crop else \
        [T.Resize((size, size), interpolation=interp)]
    tf = T.Compose([*steps, T.ToTensor(), T.Normalize(*norm)])
    return torch.stack([tf(Image.fromarray(t.numpy())) for t in tiles])




def built(name, ckpt, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_encoder(name, checkpoint=ckpt, **kw)


def features(enc, tiles):
    with torch.no_grad():
        return enc(enc.preprocess(tiles))


SW = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
# name: (timm arch, publisher kwargs, transform (size, norm, interp, crop, resize), output rule, dim)
TIMM_RECIPES = {
    "uni_v1": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
               (224, IMAGENET, BIL, True, None), "cls", 1024),
    "uni_v2": ("vit_giant_patch14_224", dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                                             embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                                             reg_tokens=8, dynamic_img_size=True, **SW),
               (224, IMAGENET, BIL, True, None), "cls", 1536),
    "gigapath": ("vit_giant_patch14_dinov2", {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                                                  "depth": 40, "num_heads": 24, "mlp_ratio": 5.33334, "dynamic_img_size": True},
                 (224, IMAGENET, BIC, True, 256), "cls", 1536),
    "virchow": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, global_pool="",
                                             dynamic_img_size=True, **SW),
                (224, IMAGENET, BIC, False, None), "cls_mean1", 2560),
    "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, global_pool="",
                                              reg_tokens=4, dynamic_img_size=True, **SW),
                 (224, IMAGENET, BIC, False, None), "cls_mean5", 2560),
    "hoptimus0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "global_pool": "token", "init_values": 1e-5,
                                                        "dynamic_img_size": True},
                  (224, HOPT, BIC, False, None), "cls", 1536),
    "hoptimus1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "global_pool": "token", "init_values": 1e-5,
                                                        "dynamic_img_size": True},
                  (224, HOPT, BIC, False, None), "cls", 1536),
    "kaiko-vits8": ("vit_small_patch8_224", {"img_size": 224, "dynamic_img_size": True},
                    (224, ((0.5,) * 3, (0.5,) * 3), BIL, True, None), "cls", 384),
    "kaiko-vits16": ("vit_small_patch16_224", {"img_size": 224, "dynamic_img_size": True},
                     (224, ((0.5,) * 3, (0.5,) * 3), BIL, True, None), "cls", 384),
    "kaiko-vitb8": ("vit_base_patch8_224", {"img_size": 224, "dynamic_img_size": True},
                    (224, ((0.5,) * 3, (0.5,) * 3), BIL, True, None), "cls", 768),
    "kaiko-vitb16": ("vit_base_patch16_224", {"img_size": 224, "dynamic_img_size": True},
                     (224, ((0.5,) * 3, (0.5,) * 3), BIL, True, None), "cls", 768),
    "kaiko-vitl14": ("vit_large_patch14_reg4_dinov2", {"img_size": 518, "dynamic_img_size": True},
                     (224, ((0.5,) * 3, (0.5,) * 3), BIL, True, None), "cls", 1024),
    "gpfm": ("vit_large_patch14_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
             (224, IMAGENET, BIC, False, None), "cls", 1024),
}


@pytest.mark.parametrize("name", list(TIMM_RECIPES))
def test_timm_presets_match_publisher_recipe(name, tiles, tmp_path, randomise):
    arch, kw, tf, rule, dim = TIMM_RECIPES[name]
    torch.manual_seed(0)
    ref = randomise(timm.create_model(arch, pretrained=False, num_classes=0, **{**kw, "depth": 1}))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    enc = built(name, tmp_path / "pytorch_model.bin", depth=1)
    assert enc.feature_dim == dim and enc.data_config["input_size"] == (3, 224, 224)
    with torch.no_grad():
        out = ref(reference_input(tiles, *tf))
    if rule.startswith("cls_mean"):
        out = torch.cat([out[:, 0], out[:, int(rule[-1]):].mean(1)], dim=-1)
    got = features(enc, tiles)
    assert got.shape == (2, dim)
    torch.testing.assert_close(got, out, atol=1e-4, rtol=1e-4)


class ConchReferencePooler(nn.Module):
    """CONCH's AttentionalPooler as its code writes it (sequence-first MultiheadAttention)."""

    def __init__(self, d_model=512, context_dim=768, n_head=8, n_queries=1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q, self.ln_k = nn.LayerNorm(d_model), nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


def test_conch_v1_matches_coca_visual(tiles, tmp_path, randomise):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tiles = tiles[:1]
    trunk = VisionTransformer(embed_dim=768, depth=1, num_heads=12, mlp_ratio=4, img_size=448, patch_size=16,
                              num_classes=0, dynamic_img_size=True)
    visual = nn.ModuleDict({"trunk": trunk, "attn_pool_contrast": ConchReferencePooler(),
                            "ln_contrast": nn.LayerNorm(512), "attn_pool_caption": ConchReferencePooler(n_queries=4),
                            "ln_caption": nn.LayerNorm(512)})
    randomise(visual)
    proj = torch.randn(512, 512) * 0.04
    sd = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    sd.update({"visual.proj_contrast": proj, "logit_scale": torch.tensor(2.6), "text.cls_emb": torch.randn(768),
               "text_decoder.x": torch.zeros(3)})
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.bin")
    x = reference_input(tiles, 448, OPENAI, BIC, True)
    with torch.no_grad():
        pooled = visual["ln_contrast"](visual["attn_pool_contrast"](trunk.forward_features(x))[:, 0])
        cls = trunk.forward_features(x)[:, 0]
    for output, expected in (("proj_contrast", pooled @ proj), ("trident", pooled), ("trunk_cls", cls)):
        enc = built("conch_v1", tmp_path / "pytorch_model.bin", depth=1, output=output)
        assert enc.feature_dim == expected.shape[1]
        torch.testing.assert_close(features(enc, tiles), expected, atol=1e-4, rtol=1e-4)


def test_phikon_and_phikon_v2_match_transformers(tiles, tmp_path, randomise):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = randomise(ViTModel(ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=384, image_size=224, patch_size=16),
                             add_pooling_layer=False))
    vit.save_pretrained(tmp_path / "phikon")
    enc = built("phikon", tmp_path / "phikon")
    with torch.no_grad():
        ref = vit(pixel_values=reference_input(tiles, 224, IMAGENET, BIL, False)).last_hidden_state[:, 0]
    torch.testing.assert_close(features(enc, tiles), ref, atol=1e-4, rtol=1e-4)

    dino = randomise(Dinov2Model(Dinov2Config(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                              image_size=224, patch_size=16)))
    dino.save_pretrained(tmp_path / "phikon2")
    enc = built("phikon_v2", tmp_path / "phikon2")
    with torch.no_grad():
        ref = dino(pixel_values=reference_input(tiles, 224, IMAGENET, BIL, True)).last_hidden_state[:, 0]
    torch.testing.assert_close(features(enc, tiles), ref, atol=1e-4, rtol=1e-4)
    assert enc.feature_dim == 96  # the folder's config decides the width (1024 for the published Phikon-v2)


def test_plip_and_quiltnet_match_clip(tiles, tmp_path, randomise, plip_folder):
    import open_clip

    folder, plip = plip_folder
    enc = built("plip", folder)
    x = reference_input(tiles, 224, OPENAI, BIC, True)
    with torch.no_grad():
        ref = plip.visual_projection(plip.vision_model(pixel_values=x).pooler_output)
    assert enc.feature_dim == 48
    torch.testing.assert_close(features(enc, tiles), ref, atol=1e-4, rtol=1e-4)
    pooled = built("plip_pooled", folder)  # before visual_projection: the vision width (MSCPT's 20x input)
    with torch.no_grad():
        ref = plip.vision_model(pixel_values=x).pooler_output
    assert pooled.feature_dim == 96
    torch.testing.assert_close(features(pooled, tiles), ref, atol=1e-4, rtol=1e-4)

    # QuiltNet's hub folder: open_clip_config.json (here a narrow ViT-B/32) + open_clip_pytorch_model.bin
    model_cfg = {"embed_dim": 48, "vision_cfg": {"image_size": 224, "layers": 2, "width": 96, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "quilt").mkdir()
    (tmp_path / "quilt" / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    quilt = randomise(open_clip.CLIP(**model_cfg))
    torch.save(quilt.state_dict(), tmp_path / "quilt" / "open_clip_pytorch_model.bin")
    enc = built("quiltnet", tmp_path / "quilt")
    with torch.no_grad():
        torch.testing.assert_close(features(enc, tiles), quilt.encode_image(x), atol=1e-4, rtol=1e-4)


def test_resnet50_is_clams_truncation(tiles, tmp_path, randomise):
    import torchvision

    tiles = tiles[:1]
    torch.manual_seed(0)
    tv = randomise(torchvision.models.resnet50())
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")
    enc = built("resnet50", tmp_path / "resnet50.pth")
    trunk = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        ref = trunk(reference_input(tiles, 224, IMAGENET, BIL, True))
    assert enc.feature_dim == 1024
    torch.testing.assert_close(features(enc, tiles), ref, atol=1e-4, rtol=1e-4)


def test_ctranspath_matches_timm_ctp(tiles, tmp_path, randomise):
    import timm_ctp  # in [dev] as the reference; the preset itself runs on timm 1.x

    class RefStem(nn.Module):  # CTransPath's ConvStem as the TransPath code writes it (flattened tokens out)
        def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=768, norm_layer=None, flatten=True):
            super().__init__()
            self.img_size, self.patch_size = (img_size, img_size), (4, 4)
            self.grid_size = (img_size // 4, img_size // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            d = embed_dim // 8
            self.proj = nn.Sequential(nn.Conv2d(3, d, 3, 2, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(True),
                                      nn.Conv2d(d, 2 * d, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * d), nn.ReLU(True),
                                      nn.Conv2d(2 * d, embed_dim, 1))
            self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

        def forward(self, x):
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    tiles = tiles[:1]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = timm_ctp.create_model("swin_tiny_patch4_window7_224", embed_layer=RefStem, pretrained=False,
                                    img_size=224)
    ref.head = nn.Identity()
    randomise(ref)
    torch.save({"model": ref.state_dict()}, tmp_path / "CHIEF_CTransPath.pth")
    enc = built("ctranspath", tmp_path / "CHIEF_CTransPath.pth")
    with torch.no_grad():
        expected = ref(reference_input(tiles, 224, IMAGENET, BIL, False))
    assert expected.shape == (1, 768)
    torch.testing.assert_close(features(enc, tiles), expected, atol=1e-4, rtol=1e-4)


def test_timm_hub_folder_presets(tiles, tmp_path, randomise):
    """h0-mini / lunit-vits8: architecture and transform from the publisher's timm config.json."""
    from safetensors.torch import save_file

    folder = tmp_path / "models--bioptimus--H0-mini" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    args = {"img_size": 224, "patch_size": 14, "embed_dim": 96, "depth": 1, "num_heads": 4, "reg_tokens": 4,
            "no_embed_class": True, "init_values": 1e-5}
    pcfg = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 1.0, "mean": list(HOPT[0]),
            "std": list(HOPT[1])}
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch14_reg4_dinov2",
                                                    "model_args": args, "pretrained_cfg": pcfg}))
    torch.manual_seed(0)
    ref = randomise(timm.create_model("vit_base_patch14_reg4_dinov2", num_classes=0, dynamic_img_size=True, **args,
                                      **SW))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    x = reference_input(tiles, 224, HOPT, BIC, True)
    with torch.no_grad():
        tokens = ref.forward_features(x)
    enc = built("h0-mini", tmp_path / "models--bioptimus--H0-mini")
    torch.testing.assert_close(features(enc, tiles), tokens[:, 0], atol=1e-4, rtol=1e-4)
    enc = built("h0-mini", folder, output="cls_mean")
    torch.testing.assert_close(features(enc, tiles), torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1),
                               atol=1e-4, rtol=1e-4)
