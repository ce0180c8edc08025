"""Pathology presets as vapt backbones: VAPT on UNI (reduced depth) from a UNI-layout file, and bad inputs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch

from vapt import PromptConfig, build_model
from vapt.backbones import build_encoder
from vapt.backbones.errors import BackboneError
from vapt.reporting.summary import parameter_table

UNI = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}


@pytest.fixture(scope="module")
def uni_file(tmp_path_factory):
    """A UNI-layout pytorch_model.bin (ViT-L/16, layer scale) at depth 2, and its timm source model."""
    torch.manual_seed(0)
    src = timm.create_model("vit_large_patch16_224", num_classes=0, depth=2, **UNI).eval()
    path = tmp_path_factory.mktemp("uni") / "pytorch_model.bin"
    torch.save(src.state_dict(), path)
    return path, src


def _tissue(n=2, size=224):
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()
    return torch.from_numpy(np.stack([img[i * 100:i * 100 + size, :size] for i in range(n)]).copy())


def test_vapt_on_uni_forward_counts_and_one_step(uni_file):
    path, src = uni_file
    n, k, r, d, depth, grid = 10, 2, 8, 1024, 2, 14
    torch.manual_seed(0)
    model = build_model("uni_v1", num_classes=9, checkpoint=path, depth=depth,
                        prompt=PromptConfig(method="vapt", num_tokens=n, kernel_size=k, hidden_dim=r))
    enc = model.backbone
    assert enc.name == "uni_v1" and enc.data_config["mean"] == (0.485, 0.456, 0.406)
    # prompt parameters by the VAPT closed form (as for ViT-B/16 in test_vapt_model): first-layer prompts,
    # per later layer a norm (2d), a k x k kernel and the token map ((g-k+1)^2 + 1) x N, one shared projector
    tuned = {name: t for name, t, _ in parameter_table(model) if name.startswith("prompts.")}
    closed = d * n + (depth - 1) * (2 * d + k * k + n * ((grid - k + 1) ** 2 + 1)) + 2 * d * r
    assert sum(tuned.values()) == closed
    assert sum(p.numel() for p in model.head.parameters()) == d * 9 + 9
    assert not any(p.requires_grad for p in enc.parameters())

    x = enc.preprocess(_tissue())
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src(x), atol=1e-4, rtol=1e-4)  # the frozen UNI features
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 4]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "head.weight" in changed and any(k.startswith("prompts.") for k in changed)
    assert not any(k.startswith("backbone.") for k in changed)
    assert torch.isfinite(loss)


def test_bad_inputs_name_the_fix(uni_file, tmp_path):
    path, src = uni_file
    with pytest.raises(BackboneError, match=r"Unknown encoder preset 'uni_v3'.*Did you mean: uni_v1, uni_v2"):
        from vapt.backbones import get_preset

        get_preset("uni_v3")
    with pytest.raises(BackboneError, match=r"Unknown encoder 'virchov2'.*Did you mean: virchow2"):
        build_encoder("virchov2")
    # another preset's file: both names in the message
    with pytest.raises(BackboneError, match=r"does not fit preset uni_v2.*it is a uni_v1 checkpoint"):
        build_encoder("uni_v2", checkpoint=path, depth=2)
    with pytest.raises(BackboneError, match=r"no 'visual.trunk.\*' keys.*looks like a uni_v1 checkpoint"):
        build_encoder("conch_v1", checkpoint=path, depth=2)
    # training-checkpoint wrappers are unwrapped (DINO teacher with backbone. prefix and heads, DDP module.)
    sd = src.state_dict()
    wrapped = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "dino_head.w": torch.zeros(3)},
               "student": {}, "epoch": 3}
    torch.save(wrapped, tmp_path / "teacher.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}, tmp_path / "ddp.pth")
    x = torch.randn(1, 3, 224, 224)
    for f in ("teacher.pth", "ddp.pth"):
        enc = build_encoder("uni_v1", checkpoint=tmp_path / f, depth=2)
        with torch.no_grad():
            torch.testing.assert_close(enc(x), src(x))
    torch.save({"epoch": 3, "args": [1, 2]}, tmp_path / "no_tensors.pth")
    with pytest.raises(BackboneError, match=r"no_tensors.pth holds no state dict.*\['args', 'epoch'\]"):
        build_encoder("uni_v1", checkpoint=tmp_path / "no_tensors.pth", depth=2)
    # presets that need a package or code not rebuilt here: one line naming it
    with pytest.raises(BackboneError, match=r"'musk' is not available: needs the musk package"):
        build_encoder("musk")
    with pytest.raises(BackboneError, match="not a Vision Transformer"):
        build_model("resnet50", num_classes=2)
    with pytest.raises(BackboneError, match="loads the publisher's file from your disk"):
        build_encoder("uni_v1", pretrained=True)
    with pytest.raises(BackboneError, match="needs the publisher's model folder"):
        build_encoder("lunit-vits8", checkpoint=path)
    with pytest.raises(BackboneError, match="needs the config.json beside the weights"):
        build_encoder("phikon", checkpoint=path)
    with pytest.raises(BackboneError, match="conch_v1 output must be"):
        build_encoder("conch_v1", output="pre_proj")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_encoder("kaiko-vits16", depth=1)
    assert any("WITHOUT weights" in str(w.message) for w in caught)


def test_tile_config_prompt_tunes_uni(uni_file, tmp_path):
    """configs/tiles/uni_v1_vapt_nct_crc.yaml: one VAPT step on generated NCT-CRC-style tiles from a UNI file."""
    from pathlib import Path

    from PIL import Image

    from vapt.training.lightning_cli import build_cli

    path, _ = uni_file
    tiles = _tissue(3, 224).numpy()
    for split in ("train", "val", "test"):
        for c, name in enumerate(("ADI", "LYM", "TUM")):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.ascontiguousarray(np.rot90(tiles[c], k=len(split)))).save(tmp_path / split / name / "a.tif")
    config = Path(__file__).resolve().parents[2] / "configs" / "tiles" / "uni_v1_vapt_nct_crc.yaml"
    cli = build_cli(["--config", str(config), f"--data.root={tmp_path}", f"--model.checkpoint={path}",
                     '--model.backbone_kwargs={"depth": 2}', "--data.batch_size=2", "--data.num_workers=0",
                     "--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                     "--trainer.accelerator=cpu", "--trainer.devices=1"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1 and cli.model.model.head.out_features == 3
    assert cli.model.model.backbone.name == "uni_v1"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_mgpath_encoders_lists_every_preset(capsys):
    import json

    from mgpath.commands.encoders import main

    assert main(["--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    dims = {"uni_v1": 1024, "uni_v2": 1536, "conch_v1": 512, "virchow2": 2560, "gigapath": 1536, "phikon": 768,
            "phikon_v2": 1024, "ctranspath": 768, "resnet50": 1024, "plip": 512, "quiltnet": 512, "hoptimus0": 1536}
    assert {n: rows[n]["dim"] for n in dims} == dims
    assert rows["uni_v1"]["mean_std"] == "ImageNet" and rows["conch_v1"]["mean_std"] == "OpenAI CLIP"
    assert rows["musk"]["status"].startswith("unavailable: needs the musk package")
    assert main(["--format", "markdown"]) == 0 and "| `gigapath` | 1536 | 224 | resize 256 bicubic + crop 224 |" in \
        capsys.readouterr().out
