"""PromptedViT against an independent re-computation of the VPT / VAPT math, plus init invariants and counts."""
from __future__ import annotations

import math

import pytest
import timm.layers
import torch
import torch.nn.functional as F

from vapt import PromptConfig, PromptedViT, build_model
from vapt.backbones.errors import BackboneError

TINY = dict(backbone="vit_tiny_patch16_224", img_size=32)


@pytest.fixture(autouse=True)
def _no_fused_attention():
    timm.layers.set_fused_attn(False)
    yield
    timm.layers.set_fused_attn(True)


def _unfuse(model: PromptedViT) -> None:
    for blk in model.backbone.blocks:
        if hasattr(blk.attn, "fused_attn"):
            blk.attn.fused_attn = False


def _randomise_prompts(model: PromptedViT, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def reference_forward(model: PromptedViT, x: torch.Tensor) -> torch.Tensor:
    """The VPT / VAPT equations written out on the raw timm modules (independent of vapt.prompts)."""
    tm = model.backbone.model
    cfg = model.prompt_config
    g = model.prompts
    n, d = cfg.num_tokens, tm.embed_dim
    regs = tm.num_prefix_tokens - 1
    gh, gw = tm.patch_embed.grid_size
    h = tm._pos_embed(tm.patch_embed(x))                        # [CLS, regs, patches] + pos
    p0 = g.prompt_embeddings.expand(x.shape[0], -1, -1)
    h = torch.cat([h[:, :1], p0, h[:, 1:]], dim=1)
    for i, blk in enumerate(tm.blocks):
        if i >= 1 and cfg.deep:
            if cfg.method == "vpt" or i < cfg.vpt_depth:
                new = g.deep_prompt_embeddings[i - 1].expand(x.shape[0], -1, -1)
            else:
                j = i - cfg.vpt_depth
                patches = h[:, 1 + n + regs:]
                ln = g.norms[j]
                z = F.layer_norm(patches, (d,), ln.weight, ln.bias, eps=1e-5)
                img = z.permute(0, 2, 1).reshape(x.shape[0], d, gh, gw)
                k = g.downsamples[j].kernel
                full_kernel = k.repeat(d, 1, 1, 1) if k.shape[0] == 1 else k
                conv = F.conv2d(img, full_kernel, groups=d, padding=cfg.padding)
                lin = g.downsamples[j].linear
                gtok = torch.einsum("bdk,nk->bnd", conv.flatten(2), lin.weight) + lin.bias[None, :, None]
                proj = g.projectors[0 if cfg.share_projector else j]
                new = gtok + torch.relu(gtok @ proj.fc1.weight.T) @ proj.fc2.weight.T
            h = torch.cat([h[:, :1], new, h[:, 1 + n:]], dim=1)
        h = blk(h)
    h = tm.norm(h)
    return model.head(h[:, 0])


CASES = {
    "vpt_shallow": PromptConfig(method="vpt", num_tokens=4, deep=False),
    "vpt_deep": PromptConfig(method="vpt", num_tokens=4, deep=True),
    "vapt": PromptConfig(method="vapt", num_tokens=4, kernel_size=2, hidden_dim=8),
    "vapt_depth3_unshared_k3": PromptConfig(method="vapt", num_tokens=3, kernel_size=3, padding=1, vpt_depth=3,
                                            share_projector=False, channelwise=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_computation(case):
    torch.manual_seed(0)
    model = build_model(num_classes=7, prompt=CASES[case], **TINY).eval()
    _unfuse(model)
    _randomise_prompts(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, ref = model(x), reference_forward(model, x)
        # float64 on both sides separates real differences from summation order (fp32 agrees to ~1e-6 rel)
        ours64, ref64 = model.double()(x.double()), reference_forward(model, x.double())
    torch.testing.assert_close(ours64, ref64, atol=1e-10, rtol=0)
    assert ours.shape == (3, 7)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name,img_size", [
    ("vit_small_patch14_reg4_dinov2", (42, 56)),   # registers, patch 14, non-square 3x4 grid
    ("vit_tiny_patch16_384", (48, 80)),             # odd, non-square grid 3x5
])
def test_odd_grids_and_registers_match_reference(name, img_size):
    torch.manual_seed(1)
    cfg = PromptConfig(method="vapt", num_tokens=3, kernel_size=2, hidden_dim=4)
    model = build_model(name, num_classes=5, prompt=cfg, img_size=img_size).eval()
    _unfuse(model)
    _randomise_prompts(model)
    assert model.backbone.grid_size() == (img_size[0] // model.backbone.patch_size[0],
                                          img_size[1] // model.backbone.patch_size[1])
    x = torch.randn(2, 3, *img_size, dtype=torch.float64)
    model.double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x), atol=1e-5, rtol=0)


def test_vapt_prompts_zero_at_init_and_first_step_gradients():
    torch.manual_seed(0)
    model = build_model(num_classes=5, prompt=PromptConfig(method="vapt", num_tokens=4), **TINY)
    g = model.prompts
    patches = torch.randn(2, 4, model.backbone.embed_dim)
    for i in range(1, len(model.backbone.blocks)):
        assert torch.count_nonzero(g.prompts_for_block(i, patches)) == 0
    model.train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for ds in g.downsamples:
        assert torch.count_nonzero(ds.kernel.grad) == 0          # upstream of a zero projector
        assert ds.linear.weight.grad.abs().sum() > 0
        assert ds.linear.bias.grad.abs().sum() > 0
    for proj in g.projectors:
        assert torch.count_nonzero(proj.fc1.weight.grad) == 0
        assert torch.count_nonzero(proj.fc2.weight.grad) == 0
    assert g.prompt_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_init_bound_and_head_bias():
    torch.manual_seed(0)
    cfg = PromptConfig(method="vpt", num_tokens=50, deep=True)
    model = build_model("vit_base_patch16_224", num_classes=3, prompt=cfg, img_size=32)
    bound = math.sqrt(6 / (3 * 16 * 16 + 768))
    assert bound == pytest.approx(0.0625)
    for p in (model.prompts.prompt_embeddings, model.prompts.deep_prompt_embeddings):
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.95 * bound                      # uniform over the whole interval
        assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    torch.testing.assert_close(model.head.bias, torch.full((3,), -math.log(0.99 / 0.01)))
    assert model.head.bias[0].item() == pytest.approx(-4.59512, abs=1e-4)


def _tuned_without_head(model):
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head."))


@pytest.mark.parametrize("n,expected_vapt,expected_deep", [(10, 55_608, 92_160), (50, 161_128, 460_800),
                                                           (200, 556_828, 1_843_200)])
def test_parameter_counts_vit_b16(n, expected_vapt, expected_deep):
    with torch.device("meta"):
        vapt_model = build_model("vit_base_patch16_224", 100, PromptConfig(method="vapt", num_tokens=n))
        deep = build_model("vit_base_patch16_224", 100, PromptConfig(method="vpt", num_tokens=n, deep=True))
        shallow = build_model("vit_base_patch16_224", 100, PromptConfig(method="vpt", num_tokens=n, deep=False))
        linear = build_model("vit_base_patch16_224", 100, PromptConfig(method="linear"))
        full = build_model("vit_base_patch16_224", 100, PromptConfig(method="full"))
    k, r, d = 2, 8, 768
    closed_form = 768 * n + 16_896 + 11 * k * k + 11 * n * ((15 - k) ** 2 + 1) + 1_536 * r
    assert closed_form == expected_vapt
    assert _tuned_without_head(vapt_model) == expected_vapt
    assert _tuned_without_head(deep) == 12 * n * d == expected_deep
    assert _tuned_without_head(shallow) == n * d
    assert _tuned_without_head(linear) == 0
    assert _tuned_without_head(full) == 85_798_656
    assert sum(p.numel() for p in vapt_model.head.parameters() if p.requires_grad) == 768 * 100 + 100


def test_backbone_stays_in_eval_and_eval_is_deterministic():
    torch.manual_seed(0)
    cfg = PromptConfig(method="vapt", num_tokens=4, dropout=0.5, mlp_dropout=0.5, conv_dropout=0.5)
    model = build_model(num_classes=4, prompt=cfg, drop_rate=0.5, drop_path_rate=0.5, **TINY)
    _randomise_prompts(model)
    model.train()
    assert model.training and model.prompts.training
    assert not any(m.training for m in model.backbone.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))                 # prompt dropouts fire in train mode
        model.eval()
        assert torch.equal(model(x), model(x))
        # with prompt dropouts off, train mode equals eval mode: the backbone's dropout never fires
        off = build_model(num_classes=4, prompt=PromptConfig(method="vapt", num_tokens=4, mlp_dropout=0.0,
                                                             conv_dropout=0.0), drop_rate=0.5, drop_path_rate=0.5,
                          **TINY)
        off.eval()
        e = off(x)
        off.train()
        torch.testing.assert_close(off(x), e)


def test_full_finetuning_trains_backbone_and_linear_does_not():
    full = build_model(num_classes=3, prompt=PromptConfig(method="full"), **TINY)
    assert all(p.requires_grad for p in full.backbone.parameters())
    full.train()
    assert full.backbone.training
    linear = build_model(num_classes=3, prompt=PromptConfig(method="linear"), **TINY)
    assert set(linear.trainable_parameters()) == {"head.weight", "head.bias"}
    assert linear.prompts is None


def test_trainable_state_dict_round_trip():
    torch.manual_seed(0)
    a = build_model(num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=4), **TINY).eval()
    _randomise_prompts(a)
    sd = a.trainable_state_dict()
    assert all(k.startswith(("prompts.", "head.")) for k in sd)
    b = build_model(num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=4), **TINY).eval()
    b.backbone.load_state_dict(a.backbone.state_dict())
    b.load_trainable_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    c = build_model(num_classes=3, prompt=PromptConfig(method="vpt", num_tokens=4), **TINY)
    with pytest.raises(KeyError, match="missing"):
        c.load_trainable_state_dict(sd)


def test_bf16_autocast_and_mae_pooling():
    model = build_model(num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=4), global_pool="avg", **TINY)
    assert model.backbone.global_pool == "avg"
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()
    # avg pooling: mean over everything after CLS (prompts included, as the official MAE code), then fc_norm
    model.eval()
    tm = model.backbone.model
    captured = {}
    tm.fc_norm.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    with torch.no_grad():
        model(x)
    tokens = {}
    tm.norm.register_forward_hook(lambda m, i, o: tokens.setdefault("out", o))
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(captured["in"], tokens["out"][:, 1:].mean(1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(backbone="vit_bse_patch16_224"), "Unknown timm backbone.*vit_base_patch16_224"),
    (dict(backbone="resnet18"), "not a Vision Transformer"),
    (dict(backbone="vit_tiny_patch16_224", img_size=40), "not divisible by the patch size"),
])
def test_bad_backbones(kwargs, match):
    with pytest.raises(BackboneError, match=match):
        build_model(num_classes=2, prompt=PromptConfig(method="vpt"), **kwargs)


def test_bad_config_and_input_size():
    with pytest.raises(ValueError, match="needs deep=True"):
        PromptConfig(method="vapt", deep=False)
    with pytest.raises(ValueError, match="Unknown method"):
        PromptConfig(method="lora")
    model = build_model(num_classes=2, prompt=PromptConfig(method="vpt"), **TINY)
    with pytest.raises(BackboneError, match="built for 32x32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(BackboneError, match="not divisible"):
        model(torch.randn(1, 3, 40, 40))


def test_open_clip_tower_prompted(tiny_open_clip):  # noqa: F811
    torch.manual_seed(0)
    model = build_model(tiny_open_clip, num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=2))
    enc = model.backbone
    assert enc.library == "open_clip" and enc.grid_size() == (2, 2) and enc.feature_dim == 24
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.model(x))   # our token path == open_clip's own forward
    model.train()
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert model.prompts.prompt_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


@pytest.mark.parametrize("name,img,grid", [("vit_base_patch16_384", 384, 24), ("vit_base_patch14_dinov2", 224, 16),
                                           ("vit_large_patch16_224", 224, 14)])
def test_vapt_counts_follow_the_backbone_grid(name, img, grid):
    n, k, r = 10, 2, 8
    with torch.device("meta"):
        model = build_model(name, 10, PromptConfig(method="vapt", num_tokens=n), img_size=img)
    d, depth = model.backbone.embed_dim, len(model.backbone.blocks)
    assert model.backbone.grid_size() == (grid, grid)
    expected = d * n + (depth - 1) * (2 * d + k * k + n * ((grid - k + 1) ** 2 + 1)) + 2 * d * r
    assert _tuned_without_head(model) == expected


def test_full_size_384_forward():
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_384", num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=2))
    assert model.backbone.grid_size() == (24, 24)
    model.eval()
    _unfuse(model)
    _randomise_prompts(model)
    x = torch.randn(1, 3, 384, 384, dtype=torch.float64)
    model.double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x), atol=1e-5, rtol=0)


def test_traces_as_one_graph_under_torch_compile():
    """torch.compile(fullgraph=True) would fail on any graph break (python loop over the batch, .item(), ...)."""
    torch.manual_seed(0)
    model = build_model(num_classes=3, prompt=PromptConfig(method="vapt", num_tokens=2, mlp_dropout=0.0,
                                                           conv_dropout=0.0), **TINY).eval()
    _randomise_prompts(model)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=0)


def test_conv_dropout_zeroes_whole_channels_like_dropout2d():
    torch.manual_seed(0)
    cfg = PromptConfig(method="vapt", num_tokens=4, conv_dropout=0.5, mlp_dropout=0.0, feature_projector=False)
    model = build_model(num_classes=2, prompt=cfg, **TINY).double()
    _randomise_prompts(model)
    g = model.prompts
    patches = torch.randn(8, 4, model.backbone.embed_dim, dtype=torch.float64)
    bias = g.downsamples[0].linear.bias[None, :, None]
    with torch.no_grad():
        g.eval()
        clean = g.prompts_for_block(1, patches) - bias               # (B, N, D)
        g.train()
        noisy = g.prompts_for_block(1, patches) - bias
    kept = (noisy.abs().sum(1) > 0).double()                         # (B, D): channel kept for that sample
    torch.testing.assert_close(noisy, clean * 2.0 * kept[:, None, :])  # whole channels, scaled 1 / (1 - p)
    assert 0.3 < kept.mean() < 0.7
