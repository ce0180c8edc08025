"""The preset table as plain data: every encoder preset's listing metadata, without importing torch or timm.

One entry per preset, keyed by name, in listing order: output ``dim``, the publisher's ``preprocess``
(:class:`Preprocess`), ``arch``, weights ``layout``, ``source``, ``licence``, ``magnification``, ``vit`` (usable as
a prompt-tuning backbone), ``unavailable`` (why it cannot be rebuilt here) and ``notes``. The builder modules
(``timm_vits``, ``cnn``, ``hf``) register their presets from these entries, so ``mgpath encoders`` and the
builders read one table; :mod:`vapt.backbones.preprocess` applies :class:`Preprocess` to tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GENBIO",
    "HALF",
    "HIBOU",
    "HOPTIMUS",
    "HUB_CONFIG",
    "IMAGENET",
    "OPENAI_CLIP",
    "PIXELS",
    "PRESET_INFO",
    "Preprocess",
]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
GENBIO = ((0.697, 0.575, 0.728), (0.188, 0.240, 0.187))
#: how tiles are resampled (recorded with features, so features made another way are not mixed with these)
PIXELS = "8-bit PIL"


@dataclass(frozen=True)
class Preprocess:
    """A publisher's eval transform: Resize(resize, interpolation) [-> CenterCrop(size)] -> Normalize."""

    size: int
    norm: tuple[tuple[float, float, float], tuple[float, float, float]]
    interpolation: str = "bilinear"
    crop: bool = True
    resize: int | None = None

    def data_config(self, size: int | None = None, mean=None, std=None) -> dict:
        """The dict encoders carry; ``size`` / ``mean`` / ``std`` override the publisher's values."""
        s = int(size or self.size)
        resize = round(s * (self.resize or self.size) / self.size)  # the publisher's resize/crop ratio kept
        return {
            "input_size": (3, s, s),
            "resize": int(resize),
            "crop": bool(self.crop),
            "interpolation": self.interpolation,
            "mean": tuple(mean or self.norm[0]),
            "std": tuple(std or self.norm[1]),
            "pixels": PIXELS,
        }


# presets whose architecture and transform come from the publisher's timm config.json in the model folder
HUB_CONFIG = frozenset({"h0-mini", "lunit-vits8"})

# keyword fields of vapt.backbones.registry.Preset (all but name, build and options)
PRESET_INFO: dict[str, dict] = {
    "uni_v1": {
        "dim": 1024,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=True),
        "arch": "vit_large_patch16_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf MahmoodLab/UNI (gated): pytorch_model.bin",
        "licence": "CC BY-NC-ND 4.0, gated",
        "magnification": "20x (unverified)",
    },
    "uni_v2": {
        "dim": 1536,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=True),
        "arch": "vit_giant_patch14_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf MahmoodLab/UNI2-h (gated): pytorch_model.bin",
        "licence": "CC BY-NC-ND 4.0, gated",
        "magnification": "20x (unverified)",
        "notes": "CLS after norm; the 8 registers are not pooled",
    },
    "conch_v1": {
        "dim": 512,
        "preprocess": Preprocess(448, OPENAI_CLIP, "bicubic", crop=True),
        "arch": "vit_base_patch16_224",
        "layout": "CONCH pytorch_model.bin (full CoCa: visual.trunk.*, visual.attn_pool_contrast.*, ...)",
        "source": "hf MahmoodLab/conch (gated): pytorch_model.bin",
        "licence": "CC BY-NC-ND 4.0, gated",
        "magnification": "20x (unverified)",
        "notes": "default output = encode_image(proj_contrast=True, normalize=False), the space of CONCH's "
        "text tower; output='trident' = TRIDENT's (no projection), 'trunk_cls' = 768-d CLS",
    },
    "gigapath": {
        "dim": 1536,
        "preprocess": Preprocess(224, IMAGENET, "bicubic", crop=True, resize=256),
        "arch": "vit_giant_patch14_dinov2",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf prov-gigapath/prov-gigapath (gated): pytorch_model.bin",
        "licence": "Apache-2.0 code; weights gated",
        "magnification": "20x, 0.5 mpp",
        "notes": "timm's entrypoint adds init_values=1e-5 and the SwiGLU MLP",
    },
    "virchow": {
        "dim": 2560,
        "preprocess": Preprocess(224, IMAGENET, "bicubic", crop=False),
        "arch": "vit_huge_patch14_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf paige-ai/Virchow (gated): pytorch_model.bin",
        "licence": "Apache-2.0, gated",
        "magnification": "20x (unverified)",
        "notes": "CLS concatenated with the mean of the patch tokens; output='token' = CLS",
    },
    "virchow2": {
        "dim": 2560,
        "preprocess": Preprocess(224, IMAGENET, "bicubic", crop=False),
        "arch": "vit_huge_patch14_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf paige-ai/Virchow2 (gated): pytorch_model.bin",
        "licence": "CC BY-NC-ND 4.0, gated",
        "magnification": "5/10/20/40x (unverified)",
        "notes": "CLS concatenated with the mean of the patch tokens, the 4 registers excluded",
    },
    "hoptimus0": {
        "dim": 1536,
        "preprocess": Preprocess(224, HOPTIMUS, "bicubic", crop=False),
        "arch": "vit_giant_patch14_reg4_dinov2",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf bioptimus/H-optimus-0 (gated): pytorch_model.bin",
        "licence": "Apache-2.0, gated",
        "magnification": "20x, 0.5 mpp",
        "notes": "bicubic as the hub pretrained_cfg (TRIDENT resizes bilinear)",
    },
    "hoptimus1": {
        "dim": 1536,
        "preprocess": Preprocess(224, HOPTIMUS, "bicubic", crop=False),
        "arch": "vit_giant_patch14_reg4_dinov2",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf bioptimus/H-optimus-1 (gated): pytorch_model.bin",
        "licence": "unverified (non-commercial?), gated",
        "magnification": "20x, 0.5 mpp",
    },
    "h0-mini": {
        "dim": 768,
        "preprocess": Preprocess(224, HOPTIMUS, "bicubic", crop=False),
        "arch": "from config.json",
        "layout": "timm hub folder (config.json + model.safetensors)",
        "source": "hf bioptimus/H0-mini (gated): the model folder",
        "licence": "CC BY-NC-ND 4.0 (unverified), gated",
        "magnification": "20x, 0.5 mpp",
        "notes": "output='cls_mean' gives Bioptimus' 1536-d CLS + patch mean",
    },
    "kaiko-vits8": {
        "dim": 384,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "vit_small_patch8_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf 1aurent/vit_small_patch8_224.kaiko_ai_towards_large_pathology_fms: model.safetensors",
        "licence": "kaiko non-commercial",
        "magnification": "20x (unverified)",
    },
    "kaiko-vits16": {
        "dim": 384,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "vit_small_patch16_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf 1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms: model.safetensors",
        "licence": "kaiko non-commercial",
        "magnification": "20x (unverified)",
    },
    "kaiko-vitb8": {
        "dim": 768,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "vit_base_patch8_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf 1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms: model.safetensors",
        "licence": "kaiko non-commercial",
        "magnification": "20x (unverified)",
    },
    "kaiko-vitb16": {
        "dim": 768,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "vit_base_patch16_224",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf 1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms: model.safetensors",
        "licence": "kaiko non-commercial",
        "magnification": "20x (unverified)",
    },
    "kaiko-vitl14": {
        "dim": 1024,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "vit_large_patch14_reg4_dinov2",
        "layout": "timm state dict (pytorch_model.bin / model.safetensors)",
        "source": "hf 1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms: model.safetensors",
        "licence": "kaiko non-commercial",
        "magnification": "20x (unverified)",
        "notes": "ViT-L/14 file is at 518 px; its position embeddings are resampled to 224 once",
    },
    "lunit-vits8": {
        "dim": 384,
        "preprocess": Preprocess(224, HALF, "bilinear", crop=True),
        "arch": "from config.json",
        "layout": "timm hub folder (config.json + model.safetensors)",
        "source": "hf 1aurent/vit_small_patch8_224.lunit_dino: the model folder",
        "licence": "Lunit non-commercial (unverified)",
        "magnification": "20x (unverified)",
    },
    "gpfm": {
        "dim": 1024,
        "preprocess": Preprocess(224, IMAGENET, "bicubic", crop=False),
        "arch": "vit_large_patch14_dinov2",
        "layout": "GPFM.pth (state_dict wrapper unwrapped)",
        "source": "hf majiabo/GPFM: GPFM.pth",
        "magnification": "20x (unverified)",
    },
    "resnet50": {
        "dim": 1024,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=True),
        "arch": "timm resnet50 (layer3 + global average pool, CLAM's truncation)",
        "layout": "timm / torchvision ResNet-50 state dict (layer4 and fc ignored)",
        "source": "timm resnet50.tv_in1k or torchvision resnet50 ImageNet weights",
        "licence": "BSD-3 (torchvision)",
        "magnification": "any (ImageNet)",
        "vit": False,
    },
    "ctranspath": {
        "dim": 768,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=False),
        "arch": "Swin-T/4 window 7 + ConvStem (timm SwinTransformer)",
        "layout": "TransPath ctranspath.pth / CHIEF_CTransPath.pth ('model' wrapper, timm 0.5 Swin keys)",
        "source": "hf dataset MahmoodLab/hest-bench fm_v1/ctranspath/CHIEF_CTransPath.pth",
        "licence": "GPL-3.0 (TransPath repo, unverified)",
        "magnification": "20x (unverified)",
        "vit": False,
        "notes": "final norm -> average pool; rebuilt on timm 1.x Swin with the keys remapped",
    },
    "phikon": {
        "dim": 768,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=False),
        "arch": "HF ViTModel",
        "layout": "HF folder (config.json + pytorch_model.bin / model.safetensors)",
        "source": "hf owkin/phikon: the folder",
        "licence": "Owkin non-commercial",
        "magnification": "20x (unverified)",
        "notes": "last_hidden_state[:, 0]; rebuilt as a timm ViT",
    },
    "phikon_v2": {
        "dim": 1024,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=True),
        "arch": "HF Dinov2Model",
        "layout": "HF folder (config.json + model.safetensors)",
        "source": "hf owkin/phikon-v2: the folder",
        "licence": "Owkin non-commercial",
        "magnification": "20x (unverified)",
        "notes": "last_hidden_state[:, 0]; rebuilt as a timm ViT with layer scale",
    },
    "plip": {
        "dim": 512,
        "preprocess": Preprocess(224, OPENAI_CLIP, "bicubic", crop=True),
        "arch": "HF CLIPModel ViT-B/32",
        "layout": "HF folder (config.json + pytorch_model.bin)",
        "source": "hf vinid/plip: the folder",
        "licence": "research only (unverified)",
        "magnification": "mixed (Twitter images)",
        "notes": "get_image_features: post-LN CLS @ visual_projection; rebuilt as an open_clip tower",
    },
    "quiltnet": {
        "dim": 512,
        "preprocess": Preprocess(224, OPENAI_CLIP, "bicubic", crop=True),
        "arch": "ViT-B-32",
        "layout": "open_clip file or folder (open_clip_pytorch_model.bin [+ open_clip_config.json])",
        "source": "hf wisdomik/QuiltNet-B-32: open_clip_pytorch_model.bin",
        "licence": "MIT tag; research data terms",
        "magnification": "mixed (video frames)",
        "notes": "open_clip ViT-B-32; the folder's open_clip_config.json decides the architecture and "
        "activation; without it GELU (warned; activation='quick_gelu' for QuickGELU)",
    },
    "conch_v15": {
        "dim": 768,
        "preprocess": Preprocess(448, IMAGENET, "bilinear", crop=True),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs TRIDENT's vendored conchv1_5 model (its iBOT position-embedding interpolation "
        "is not timm's); use TRIDENT (github.com/mahmoodlab/TRIDENT)",
    },
    "hibou_l": {
        "dim": 1024,
        "preprocess": Preprocess(224, HIBOU, "bicubic", crop=False),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs the publisher's trust_remote_code model code (histai/hibou-L "
        "modeling_dinov2.py), which is not rebuilt here",
    },
    "musk": {
        "dim": 1024,
        "preprocess": Preprocess(384, HALF, "bicubic", crop=True),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs the musk package (git only: github.com/lilab-stanford/MUSK) and fairscale",
    },
    "openmidnight": {
        "dim": 1536,
        "preprocess": Preprocess(224, IMAGENET, "bilinear", crop=False),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs the facebookresearch/dinov2 torch.hub code (dinov2_vitg14_reg)",
    },
    "keep": {
        "dim": 768,
        "preprocess": Preprocess(224, IMAGENET, "bicubic", crop=True),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs the publisher's trust_remote_code model code (Astaxanthin/KEEP); 768-d unverified",
    },
    "genbio-pathfm": {
        "dim": 4608,
        "preprocess": Preprocess(224, GENBIO, "bilinear", crop=False),
        "arch": "-",
        "layout": "-",
        "source": "see TRIDENT",
        "unavailable": "needs TRIDENT's vendored genbio_pathfm model (RoPE ViT, one channel at a time)",
    },
}

#: PLIP's image tower without its projection (MSCPT's 20x input): the same files and transform as ``plip``, listed
#: after it
_PLIP_POOLED = {**PRESET_INFO["plip"], "dim": 768, "notes": "vision_model pooler_output: post-LN CLS before "
                "visual_projection (MSCPT's 20x input); rebuilt as an open_clip tower without its projection"}
PRESET_INFO = {k: v for name, info in PRESET_INFO.items()
               for k, v in ((name, info), *((("plip_pooled", _PLIP_POOLED),) if name == "plip" else ()))}
