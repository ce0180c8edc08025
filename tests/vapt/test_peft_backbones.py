"""PEFT methods beyond timm's ViT-B: LoRA and Adapter on an open_clip tower (``nn.MultiheadAttention``) against
the tower's blocks written out, every method on the timm pathology presets, and the one-line refusal where a
method cannot reach the blocks."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from vapt import build_model
from vapt.cli.subcommands import main as vapt_main
from vapt.peft import make_config, method_names


def _open_clip_model(name: str, method: str):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, prompt=make_config(method))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero inits hide bugs
        for p in model.method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _ref_open_clip(model, x):
    """The tower's pre-norm blocks as plain math, LoRA added as ``y A B`` and the adapter to the MLP output."""
    enc, m = model.backbone, model.method
    h = enc.embed(x)
    for i, blk in enumerate(enc.blocks):
        b, n, d = h.shape
        heads = blk.attn.num_heads
        y = F.layer_norm(h, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        qkv = y @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
        if model.prompt_config.method == "lora":
            qkv = qkv + y @ m.a[i] @ m.b[i]
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.split(d, -1))
        o = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, -1) @ v
        h = h + blk.ls_1(o.transpose(1, 2).reshape(b, n, d) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias)
        y = F.layer_norm(h, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        mlp = F.gelu(y @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias) @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
        if model.prompt_config.method == "adapter":
            a = m.adapters[i]
            mlp = mlp + F.gelu(mlp @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
        h = h + blk.ls_2(mlp)
    return model.head(enc.pool(enc.final_norm(h), num_skip=1))


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_open_clip_tower_matches_written_out_blocks_and_one_step(method, tiny_open_clip):
    model = _open_clip_model(tiny_open_clip, method)
    assert "attn.in_proj_weight" in dict(model.backbone.blocks[0].named_parameters())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 1])
    with torch.no_grad():
        assert (model(x) - _ref_open_clip(model, x)).abs().max().item() <= 1e-5
    twin = copy.deepcopy(model)
    for m, f in ((model, lambda m: m(x)), (twin, lambda m: _ref_open_clip(m, x))):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        F.cross_entropy(f(m), y).backward()
        opt.step()
    for (k, a), b in zip(model.named_parameters(), twin.parameters()):
        assert (a - b).abs().max().item() <= 1e-5, k
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_methods_needing_timm_attention_refuse_open_clip_in_one_line(tiny_open_clip, capsys):
    assert vapt_main(["summary", tiny_open_clip, "--method", "e2vpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "e2vpt needs a timm ViT with fused qkv attention" in err
    assert "open_clip towers take vpt, vapt, vfpt, lora, replora, adapter" in err


# timm presets at toy size: SwiGLU + register tokens + layer scale + CLS/mean output (virchow2), DINOv2 registers
# (hoptimus0), patch 8 (kaiko-vits8). sidetune reads the images, not the blocks (tested in test_peft_methods).
PRESETS = {"virchow2": 14, "hoptimus0": 14, "kaiko-vits8": 8}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_method_trains_on_the_timm_pathology_presets(preset):
    size = 2 * PRESETS[preset]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for method in (m for m in method_names() if m != "sidetune"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-weights and normalisation warnings of weightless presets
            model = build_model(preset, num_classes=3, prompt=make_config(method), img_size=size, depth=2,
                                embed_dim=32, num_heads=2)
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():  # zero-initialised updates: give them a value so that the step is visible
            for p in model.method.parameters():
                if p.requires_grad:
                    p.add_(0.01)
        before = model(x).detach()
        F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
        torch.optim.SGD(params, lr=0.5).step()
        assert not torch.equal(before, model(x).detach()), (preset, method)
        assert not any(p.grad is not None for p in model.backbone.parameters() if not p.requires_grad)
