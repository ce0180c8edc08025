"""Named tile encoders of computational pathology (UNI, CONCH, Virchow, GigaPath, Phikon, CTransPath, ...).

``build_encoder("uni_v1", checkpoint="pytorch_model.bin")`` rebuilds the publisher's model, loads the file from
your disk (never downloads) and returns a frozen encoder that knows its input size, mean/std, interpolation,
output rule and feature dimension. Names follow TRIDENT's. Every ViT preset is also a ``vapt`` backbone
(``vapt.build_model("uni_v1", checkpoint=...)``). See ``docs/encoders.md`` for the table.
"""
from vapt.encoders.preprocess import Preprocess, preprocess_tiles, resize_tiles
from vapt.encoders.registry import PRESETS, Preset, build_encoder, get_preset, list_presets

__all__ = ["PRESETS", "Preprocess", "Preset", "build_encoder", "get_preset", "list_presets", "preprocess_tiles",
           "resize_tiles"]
