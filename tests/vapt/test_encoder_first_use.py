"""Encoders as a user first meets them: a wrong weights file is named, the listing tells the truth about
presets that cannot be built, QuiltNet's activation is decided or stated, suggestions are real spellings."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from vapt.backbones import build_encoder, get_preset
from vapt.backbones.errors import BackboneError
from vapt.backbones.names import similar_names
from vapt.backbones.timm_vits import create_timm


def preset_file(name, path):
    """A file with the keys and shapes of preset ``name`` at depth 1 (zeros: only the layout matters here)."""
    p = get_preset(name)
    with torch.device("meta"):
        model = create_timm(p.arch, p.options["kwargs"], None, {"depth": 1})
    torch.save({k: torch.zeros(v.shape) for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("file_of, built_as", [("virchow", "virchow2"), ("hoptimus0", "gigapath"),
                                               ("gigapath", "uni_v2"), ("kaiko-vitl14", "gpfm")])
def test_a_wrong_file_is_named_before_any_resampling(file_of, built_as, tmp_path):
    path = preset_file(file_of, tmp_path / "pytorch_model.bin")
    with pytest.raises(BackboneError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_encoder(built_as, path, depth=1)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"not {built_as}" in msg
    assert f"it is a {file_of}" in msg and f"--encoder {file_of}" in msg


def test_the_right_file_at_another_grid_is_still_resampled(tmp_path):
    """kaiko-vitl14's file is published at 518 px: its position embedding is resampled to 224 once."""
    path = preset_file("kaiko-vitl14", tmp_path / "model.bin")
    enc = build_encoder("kaiko-vitl14", path, depth=1)
    assert enc.feature_dim == 1024 and enc.data_config["input_size"] == (3, 224, 224)


def test_unavailable_presets_list_their_publishers_transform():
    from mgpath.commands.encoders import preset_rows

    rows = {r["name"]: r for r in preset_rows()}
    musk = rows["musk"]
    assert musk["status"].startswith("unavailable") and musk["vapt_backbone"] is False
    assert (musk["input_size"], musk["interpolation"], musk["crop"]) == (384, "bicubic", True)
    assert musk["mean"] == musk["std"] == [0.5, 0.5, 0.5]
    assert (rows["conch_v15"]["input_size"], rows["conch_v15"]["interpolation"]) == (448, "bilinear")
    assert rows["hibou_l"]["mean"] == [0.7068, 0.5755, 0.722] and rows["hibou_l"]["crop"] is False
    assert rows["genbio-pathfm"]["std"] == [0.188, 0.240, 0.187]
    assert rows["h0-mini"]["mean"] is None and rows["h0-mini"]["transform"] == "from config.json"


def _quilt_folder(tmp_path, quick_gelu):
    import open_clip

    cfg = {"embed_dim": 32, "quick_gelu": quick_gelu,
           "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path / f"quilt_{quick_gelu}"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def _activation(enc) -> str:
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in enc.modules()) else "gelu"


def test_quiltnet_activation_comes_from_the_publishers_config(tmp_path):
    for quick in (True, False):
        enc = build_encoder("quiltnet", _quilt_folder(tmp_path, quick))
        assert _activation(enc) == ("quick_gelu" if quick else "gelu")
    with pytest.raises(BackboneError, match="publisher's config decides"):
        build_encoder("quiltnet", tmp_path / "quilt_True", activation="gelu")


def test_quiltnet_without_its_config_says_what_it_built(tmp_path):
    import open_clip

    with torch.device("meta"):
        layout = open_clip.CLIP(**open_clip.get_model_config("ViT-B-32")).visual.state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in layout.items()}, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.warns(UserWarning, match="no open_clip_config.json beside it: QuiltNet built as open_clip ViT-B-32 "
                                         "with GELU"):
        enc = build_encoder("quiltnet", tmp_path / "open_clip_pytorch_model.bin")
    assert _activation(enc) == "gelu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stated choice: no warning
        enc = build_encoder("quiltnet", tmp_path / "open_clip_pytorch_model.bin", activation="quick_gelu")
    assert _activation(enc) == "quick_gelu"


@pytest.mark.parametrize("typed, expected", [("midnight12k", []), ("openmidnite", []), ("uni-v1", ["uni_v1"]),
                                             ("virchw2", ["virchow2", "virchow"]), ("conch", ["conch_v1", "conch_v15"]),
                                             ("GigaPath", ["gigapath"])])
def test_suggestions_are_spellings_of_the_name(typed, expected):
    from vapt.backbones import list_presets

    assert similar_names(typed, [p.name for p in list_presets()]) == expected


def test_an_unknown_encoder_name_suggests_no_other_model():
    with pytest.raises(BackboneError) as err:
        build_encoder("midnight12k")
    assert "openmidnight" not in str(err.value) and "Did you mean" not in str(err.value)
    with pytest.raises(BackboneError, match="Did you mean: gigapath"):
        get_preset("gigapth")
