"""Image transforms of the official VPT / VAPT recipes.

VTAB-1k: bilinear resize to ``img_size x img_size`` (aspect ratio not kept, no antialiasing, as
``tf.image.resize`` does), scale to [0, 1], ImageNet normalisation, no augmentation.
FGVC: train ``Resize(s*256/224) -> RandomCrop(s) -> RandomHorizontalFlip -> ToTensor -> Normalize``;
eval ``Resize(s*256/224) -> CenterCrop(s)``; ``s = 224`` gives the official 256 -> 224 (384 gives 438 -> 384).
"""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize(normalize: bool) -> list:
    return [T.Normalize(IMAGENET_MEAN, IMAGENET_STD)] if normalize else []


def vtab_transform(img_size: int = 224, normalize: bool = True) -> T.Compose:
    """VTAB-1k transform: PIL image -> float tensor ``(3, img_size, img_size)``.

    The resize runs on the [0, 1] tensor with ``antialias=False`` so that it matches
    ``tf.image.resize(img, [s, s])`` (bilinear, half-pixel centres) of the official TFDS pipeline.
    """
    return T.Compose(
        [
            T.ToTensor(),
            T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BILINEAR, antialias=False),
            *_normalize(normalize),
        ]
    )


def fgvc_resize_size(img_size: int) -> int:
    """Short-side resize before the crop: 256 for 224, 438 for 384 (``int(s * 256 / 224)``)."""
    return int(img_size * 256 / 224)


def fgvc_train_transform(img_size: int = 224, normalize: bool = True) -> T.Compose:
    """FGVC training transform (random crop + horizontal flip) -> ``(3, img_size, img_size)``."""
    return T.Compose(
        [
            T.Resize(fgvc_resize_size(img_size), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomCrop(img_size),
            T.RandomHorizontalFlip(0.5),
            T.ToTensor(),
            *_normalize(normalize),
        ]
    )


def fgvc_eval_transform(img_size: int = 224, normalize: bool = True) -> T.Compose:
    """FGVC evaluation transform (resize + centre crop) -> ``(3, img_size, img_size)``."""
    return T.Compose(
        [
            T.Resize(fgvc_resize_size(img_size), interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(img_size),
            T.ToTensor(),
            *_normalize(normalize),
        ]
    )
