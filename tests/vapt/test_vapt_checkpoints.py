"""Checkpoint loading in every supported file format, and the official VPT / VAPT layout in and out."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vapt import PromptConfig, build_model, export_official_checkpoint, load_official_checkpoint
from vapt.backbones import BackboneError
from vapt.backbones import build_backbone as build_encoder

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def source():
    """A randomly initialised tiny timm ViT with a 10-class head (the 'pretrained' model we save)."""
    torch.manual_seed(0)
    return timm.create_model(NAME, img_size=32, num_classes=10).eval()


def _images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _assert_same_features(encoder, source):
    with torch.no_grad():
        torch.testing.assert_close(encoder(_images()), source.forward_head(source.forward_features(_images()),
                                                                           pre_logits=True), atol=1e-5, rtol=0)


def test_timm_pth_and_safetensors(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    for f in ("vit.pth", "vit.safetensors"):
        _assert_same_features(build_encoder(NAME, checkpoint=tmp_path / f, img_size=32), source)


def to_big_vision_npz(model) -> dict[str, np.ndarray]:
    """Write a timm ViT in the original google-research ViT .npz naming (as the ImageNet-21k ViT-B_16.npz)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        r, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[r + "LayerNorm_0/scale"], out[r + "LayerNorm_0/bias"] = sd[t + "norm1.weight"], sd[t + "norm1.bias"]
        out[r + "LayerNorm_2/scale"], out[r + "LayerNorm_2/bias"] = sd[t + "norm2.weight"], sd[t + "norm2.bias"]
        q, k, v = np.split(sd[t + "attn.qkv.weight"], 3, axis=0)
        qb, kb, vb = np.split(sd[t + "attn.qkv.bias"], 3, axis=0)
        a = r + "MultiHeadDotProductAttention_1/"
        for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[a + f"{name}/kernel"] = w.T.reshape(d, heads, d // heads)
            out[a + f"{name}/bias"] = b.reshape(heads, d // heads)
        out[a + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(heads, d // heads, d)
        out[a + "out/bias"] = sd[t + "attn.proj.bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out[r + f"MlpBlock_3/Dense_{j}/kernel"] = sd[t + f"mlp.{fc}.weight"].T
            out[r + f"MlpBlock_3/Dense_{j}/bias"] = sd[t + f"mlp.{fc}.bias"]
    return out


def test_original_vit_npz(tmp_path, source):
    np.savez(tmp_path / "ViT-B_16.npz", **to_big_vision_npz(source))
    _assert_same_features(build_encoder(NAME, checkpoint=tmp_path / "ViT-B_16.npz", img_size=32), source)
    # a different input size resizes the position embeddings
    enc = build_encoder(NAME, checkpoint=tmp_path / "ViT-B_16.npz", img_size=48)
    assert enc.model.pos_embed.shape == (1, 1 + 9, 192)
    with pytest.raises(BackboneError, match="does not match a 12-block ViT"):
        np.savez(tmp_path / "short.npz", **{k: v for k, v in to_big_vision_npz(source).items()
                                            if "encoderblock_11" not in k})
        build_encoder(NAME, checkpoint=tmp_path / "short.npz", img_size=32)


def test_mae_pretrain_pth(tmp_path, source):
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    torch.save({"model": sd, "epoch": 799}, tmp_path / "mae_pretrain_vit_base.pth")
    enc = build_encoder(NAME, checkpoint=tmp_path / "mae_pretrain_vit_base.pth", img_size=32, global_pool="avg")
    assert enc.global_pool == "avg"
    torch.testing.assert_close(enc.model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    # as in the official code, fc_norm is not in the file and keeps its (1, 0) init
    assert torch.equal(enc.model.fc_norm.weight, torch.ones(192))
    with torch.no_grad():
        tokens = source.forward_features(_images())        # source.norm applied; MAE pooling skips it
        x = source.blocks(source.norm_pre(source._pos_embed(source.patch_embed(_images()))))
        expected = torch.nn.functional.layer_norm(x[:, 1:].mean(1), (192,), eps=1e-6)
        torch.testing.assert_close(enc(_images()), expected, atol=1e-5, rtol=0)
        assert tokens.shape[1] == x.shape[1]


def test_mocov3_pth_tar(tmp_path, source):
    sd = source.state_dict()
    wrapped = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    wrapped.update({f"module.momentum_encoder.{k}": v for k, v in sd.items()})
    wrapped["module.predictor.0.weight"] = torch.zeros(4, 4)
    torch.save({"state_dict": wrapped, "epoch": 300, "arch": "vit_base"}, tmp_path / "mocov3.pth.tar")
    _assert_same_features(build_encoder(NAME, checkpoint=tmp_path / "mocov3.pth.tar", img_size=32), source)


def test_open_clip_checkpoint(tmp_path, tiny_open_clip):
    import open_clip

    torch.manual_seed(3)
    clip = open_clip.create_model(tiny_open_clip.split(":", 1)[1]).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}, "epoch": 1},
               tmp_path / "clip.pt")
    enc = build_encoder(tiny_open_clip, checkpoint=tmp_path / "clip.pt")
    with torch.no_grad():
        torch.testing.assert_close(enc(_images()), clip.encode_image(_images()), atol=1e-5, rtol=0)
    # a visual-only state dict works too
    torch.save(clip.visual.state_dict(), tmp_path / "visual.pt")
    with torch.no_grad():
        torch.testing.assert_close(build_encoder(tiny_open_clip, checkpoint=tmp_path / "visual.pt")(_images()),
                                   clip.encode_image(_images()), atol=1e-5, rtol=0)


def test_position_embedding_resize(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    enc = build_encoder(NAME, checkpoint=tmp_path / "vit.pth", img_size=(48, 64))
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(3, 4), num_prefix_tokens=1)
    torch.testing.assert_close(enc.model.pos_embed, expected)
    assert enc(torch.randn(1, 3, 48, 64)).shape == (1, 192)


def test_bad_checkpoints(tmp_path, source):
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x04not really a pickle" * 10)
    with pytest.raises(BackboneError, match="corrupt.pth.*corrupt, truncated"):
        build_encoder(NAME, checkpoint=tmp_path / "corrupt.pth", img_size=32)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match="t.safetensors"):
        build_encoder(NAME, checkpoint=tmp_path / "t.safetensors", img_size=32)
    with pytest.raises(BackboneError, match="does not exist"):
        build_encoder(NAME, checkpoint=tmp_path / "missing.pth", img_size=32)
    small = timm.create_model("vit_small_patch16_224", img_size=32, num_classes=0)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(BackboneError, match="wrong architecture|wrong shapes"):
        build_encoder(NAME, checkpoint=tmp_path / "small.pth", img_size=32)
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.11.")}
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(BackboneError, match=r"missing keys \[.blocks\.11\..*unexpected keys \[.extra\.weight"):
        build_encoder(NAME, checkpoint=tmp_path / "partial.pth", img_size=32)


# ---------------------------------------------------------------------------------------------- official layout
def _randomised(method, **kw):
    torch.manual_seed(0)
    model = build_model(NAME, num_classes=5, prompt=PromptConfig(method=method, num_tokens=3, **kw), img_size=32)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("method,kw", [("vpt", {}), ("vpt", {"deep": False}), ("vapt", {}),
                                       ("vapt", {"share_projector": False})])
def test_official_layout_round_trip(method, kw):
    a = _randomised(method, **kw)
    sd = export_official_checkpoint(a)
    assert "enc.transformer.prompt_embeddings" in sd and "head.last_layer.bias" in sd
    assert "enc.transformer.encoder.layer.0.attn.query.weight" in sd
    if method == "vapt":
        assert sd["enc.transformer.deep_prompt_downsample.0.conv.kernel"].shape == (1, 1, 2, 2)
        assert sd["enc.transformer.deep_prompt_downsample.10.linear.weight"].shape == (3, 1)
    torch.manual_seed(9)
    b = build_model(NAME, num_classes=5, prompt=a.prompt_config, img_size=32).eval()
    load_official_checkpoint(b, sd)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    again = export_official_checkpoint(b)
    assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_official_layout_mismatch_names_keys():
    sd = export_official_checkpoint(_randomised("vapt"))
    vpt = build_model(NAME, num_classes=5, prompt=PromptConfig(method="vpt", num_tokens=3), img_size=32)
    with pytest.raises(KeyError, match=r"missing \[.enc.transformer.deep_prompt_embeddings.\]; unexpected \[.enc.transformer.deep_prompt_downsample"):
        load_official_checkpoint(vpt, sd)
    other_n = build_model(NAME, num_classes=5, prompt=PromptConfig(method="vapt", num_tokens=4), img_size=32)
    with pytest.raises(KeyError, match=r"prompt_embeddings: checkpoint \(1, 3, 192\) vs model \(1, 4, 192\)"):
        load_official_checkpoint(other_n, sd)


def test_official_prompt_file():
    a = _randomised("vpt")
    prompt_file = {"shallow_prompt": a.prompts.prompt_embeddings.detach().numpy(),
                   "deep_prompt": a.prompts.deep_prompt_embeddings.detach().numpy()}
    b = build_model(NAME, num_classes=5, prompt=a.prompt_config, img_size=32)
    load_official_checkpoint(b, prompt_file)
    assert torch.equal(b.prompts.deep_prompt_embeddings, a.prompts.deep_prompt_embeddings)
    shallow = build_model(NAME, num_classes=5, prompt=PromptConfig(method="vpt", num_tokens=3, deep=False),
                          img_size=32)
    with pytest.raises(KeyError, match="no static deep prompts"):
        load_official_checkpoint(shallow, prompt_file)


def _official_vapt_keys(num_layers: int, vpt_depth: int, share_projector: bool) -> set[str]:
    """Prompt keys of the official VAPT model, written from its construction rule: ``total_d_layer =
    num_layers - VPT_DEPTH`` norms / downsamples (block i uses entry ``i - VPT_DEPTH``) and a static bank
    for blocks 1 .. VPT_DEPTH - 1."""
    e = "enc.transformer."
    total_d_layer = num_layers - vpt_depth
    keys = {e + "prompt_embeddings"}
    if vpt_depth > 1:
        keys.add(e + "deep_prompt_embeddings")
    for i in range(vpt_depth, num_layers):
        k = i - vpt_depth
        keys |= {e + f"deep_prompt_norm.{k}.weight", e + f"deep_prompt_norm.{k}.bias",
                 e + f"deep_prompt_downsample.{k}.conv.kernel", e + f"deep_prompt_downsample.{k}.linear.weight",
                 e + f"deep_prompt_downsample.{k}.linear.bias"}
    assert len({k for k in keys if "deep_prompt_norm" in k}) == 2 * total_d_layer
    mlps = [""] if share_projector else [f"{k}." for k in range(total_d_layer)]
    keys |= {e + f"deep_prompt_embeddings_mlp.{m}block.{b}.weight" for m in mlps for b in (0, 2)}
    return keys


@pytest.mark.parametrize("vpt_depth", [2, 3])
@pytest.mark.parametrize("share_projector", [True, False])
def test_official_layout_vpt_depth_indexes_like_the_official_model(vpt_depth, share_projector):
    a = _randomised("vapt", vpt_depth=vpt_depth, share_projector=share_projector)
    sd = export_official_checkpoint(a)
    prompt_keys = {k for k in sd if "prompt" in k}
    assert prompt_keys == _official_vapt_keys(12, vpt_depth, share_projector)
    assert sd["enc.transformer.deep_prompt_embeddings"].shape == (vpt_depth - 1, 3, 192)
    # an official state dict (keys of the official model, values of our own making) loads, and block i uses
    # entry i - VPT_DEPTH of every list, as the official forward does
    torch.manual_seed(3)
    official = {k: torch.randn_like(v) for k, v in sd.items()}
    b = build_model(NAME, num_classes=5, prompt=a.prompt_config, img_size=32)
    load_official_checkpoint(b, official)
    g = b.prompts
    for i in range(vpt_depth, 12):
        j = i - g.first_adaptive_block
        assert torch.equal(g.norms[j].weight, official[f"enc.transformer.deep_prompt_norm.{i - vpt_depth}.weight"])
        assert torch.equal(g.downsamples[j].kernel,
                           official[f"enc.transformer.deep_prompt_downsample.{i - vpt_depth}.conv.kernel"])
