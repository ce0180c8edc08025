"""Every vapt.peft method against an independent re-statement of its equations on a tiny timm ViT: logits
(max |diff| <= 1e-5, fp32) and one SGD step (the parameters after the step agree), plus init invariants and the
ViT-B/16 parameter counts of the official models."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vapt import build_model
from vapt.peft import make_config, method_names
from vapt.reporting.summary import main as summary_main

TINY = dict(backbone="vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=32, num_heads=2)


def _model(method: str, **opts):
    torch.manual_seed(0)
    model = build_model(TINY["backbone"], num_classes=5, prompt=make_config(method, **opts), img_size=32,
                        depth=2, embed_dim=32, num_heads=2)
    for blk in model.backbone.blocks:
        blk.attn.fused_attn = False
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero inits hide bugs: randomise every trainable tensor
        for p in model.method.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


# ---------------------------------------------------------------- the reference ViT, written out
def ln(x, mod, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, eps)


def ref_block(blk, x, qkv_add=None, mlp_add=None, kv=None, temp=1.0, gated=None):
    """timm Block as plain math. qkv_add(y) -> (B, L, 3D); mlp_add(m) -> (B, L, D); kv = (K_p, V_p) (H, M, d_h)
    in one softmax; gated = (K_p, V_p, gate (H,)) with its own softmax."""
    b, n, d = x.shape
    heads = blk.attn.num_heads
    y = ln(x, blk.norm1)
    qkv = y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    if qkv_add is not None:
        qkv = qkv + qkv_add(y)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.split(d, -1))
    s = (d // heads) ** -0.5
    if kv is not None:
        k = torch.cat([kv[0].expand(b, -1, -1, -1), k], 2)
        v = torch.cat([kv[1].expand(b, -1, -1, -1), v], 2)
    o = torch.softmax(q @ k.transpose(-1, -2) * s / temp, -1) @ v
    if gated is not None:
        kp, vp, g = gated
        o = o + torch.tanh(g).view(1, -1, 1, 1) * (torch.softmax(q @ kp.transpose(-1, -2) * s, -1) @ vp)
    x = x + o.transpose(1, 2).reshape(b, n, d) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    m = F.gelu(ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    if mlp_add is not None:
        m = m + mlp_add(m)
    return x + m


def embed(model, x):
    tm = model.backbone.model
    return tm._pos_embed(tm.patch_embed(x))


def head(model, h, pool_skip=None, pooled=False):
    h = ln(h, model.backbone.model.norm)
    return h[:, 0] if pooled else model.head(h[:, 0])


def ref_lora(model, x):
    m, blocks = model.method, model.backbone.model.blocks
    h = embed(model, x)
    for i, blk in enumerate(blocks):
        h = ref_block(blk, h, qkv_add=lambda y, i=i: y @ m.a[i] @ m.b[i])  # NOAH: W' = W + (A B)^T
    return head(model, h)


def ref_adapter(model, x):
    ad = model.method.adapters
    h = embed(model, x)
    for i, blk in enumerate(model.backbone.model.blocks):
        a = ad[i]
        h = ref_block(blk, h, mlp_add=lambda z, a=a: F.gelu(z @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    return head(model, h)


def _vpt_like(model, x, make_prompts, n, **block_kw):
    h = embed(model, x)
    h = torch.cat([h[:, :1], make_prompts(0, x.shape[0]), h[:, 1:]], 1)
    for i, blk in enumerate(model.backbone.model.blocks):
        if i > 0:
            h = torch.cat([h[:, :1], make_prompts(i, x.shape[0]), h[:, 1 + n:]], 1)
        h = ref_block(blk, h, **{k: v(i) for k, v in block_kw.items()})
    return head(model, h)


def ref_vfpt(model, x):
    g, n = model.method, model.method.cfg.num_tokens
    nf = math.floor(n * g.cfg.fourier_fraction)

    def prompts(i, b):
        p = (g.prompt_embeddings[0] if i == 0 else g.deep_prompt_embeddings[i - 1]).expand(b, -1, -1)
        four = torch.fft.fft2(p[:, :nf].to(torch.complex64), dim=(-2, -1)).real  # 2-D DFT over (tokens, channels)
        return torch.cat([four, p[:, nf:]], 1)
    return _vpt_like(model, x, prompts, n)


def ref_e2vpt(model, x):
    g, n = model.method, model.method.cfg.num_tokens
    d = g.prompt_embeddings.shape[-1]

    def prompts(i, b):
        p = g.prompt_embeddings[0] if i == 0 else g.deep_prompt_embeddings[i - 1]
        piece = g.piece_mask.repeat_interleave(1, 0).repeat(1, d // g.cfg.num_pieces)  # [p0..p15, p0..p15, ...]
        return (p * piece * g.token_mask[:, None]).expand(b, -1, -1)
    return _vpt_like(model, x, prompts, n, kv=lambda i: (g.kv_prompts[i][None], g.kv_prompts[i][None]))


def ref_gatevpt(model, x):
    g, n = model.method, model.method.cfg.num_tokens
    h = embed(model, x)
    h = torch.cat([h[:, :1], g.prompt_embeddings.expand(x.shape[0], -1, -1), h[:, 1:]], 1)
    with torch.no_grad():  # the official reinit_temp: clamp the parameter itself before the forward
        g.temperature.data.copy_(g.temperature.data.clamp(min=g.cfg.temp_min, max=g.cfg.temp_max))
    temps = g.temperature
    for i, blk in enumerate(model.backbone.model.blocks):
        out = ref_block(blk, h, temp=temps[i])
        if i < len(g.gate_logit):
            s = torch.sigmoid(g.gate_logit[i])
            out = torch.cat([out[:, :1], s * out[:, 1:1 + n] + (1 - s) * h[:, 1:1 + n], out[:, 1 + n:]], 1)
        h = out
    return head(model, h)


def ref_replora(model, x):
    m = model.method

    def g(mlp, z):
        return F.relu(z @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias

    def add(i):
        def f(y):
            d = y.shape[-1]
            out = [torch.zeros_like(y) for _ in range(3)]
            for j, t in enumerate((0, 2)):  # q and v
                a = g(m.mlp_a[i][j], m.base_a[i])            # rows of A
                b = g(m.mlp_b[i][j], m.base_b[i].T).T        # columns of B
                out[t] = y @ (b @ a).T                       # W' = W + B A
            return torch.cat(out, -1)
        return f
    h = embed(model, x)
    for i, blk in enumerate(model.backbone.model.blocks):
        h = ref_block(blk, h, qkv_add=add(i))
    return head(model, h)


def ref_gated(model, x):
    m = model.method
    h = embed(model, x)
    for i, blk in enumerate(model.backbone.model.blocks):
        d, heads = h.shape[-1], blk.attn.num_heads
        p = m.prompts[i]
        if m.reparam is not None:
            p = F.relu(p @ m.reparam.fc1.weight.T + m.reparam.fc1.bias) @ m.reparam.fc2.weight.T + m.reparam.fc2.bias
        w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        kp = (p @ w[d:2 * d].T + b[d:2 * d]).reshape(-1, heads, d // heads).transpose(0, 1)[None]
        vp = (p @ w[2 * d:].T + b[2 * d:]).reshape(-1, heads, d // heads).transpose(0, 1)[None]
        h = ref_block(blk, h, gated=(kp, vp, m.gates[i]))
    return head(model, h)


def ref_mlp(model, x):
    """VPT's MLP head restated: (Linear, ReLU, BatchNorm1d with running statistics) per hidden layer."""
    f = head(model, ref_trunk(model, x), pooled=True)
    for i in range(0, len(model.method.hidden), 3):
        fc, bn = model.method.hidden[i], model.method.hidden[i + 2]
        f = F.batch_norm(F.relu(f @ fc.weight.T + fc.bias), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         False, 0.0, bn.eps)
    return model.head(f)


def ref_trunk(model, x):
    h = embed(model, x)
    for blk in model.backbone.model.blocks:
        h = ref_block(blk, h)
    return h


CASES = {
    "lora": ({}, ref_lora),
    "adapter": ({}, ref_adapter),
    "vfpt": ({"num_tokens": 4, "fourier_fraction": 0.5}, ref_vfpt),
    "e2vpt": ({"num_tokens": 3, "num_kv_tokens": 2}, ref_e2vpt),
    "gatevpt": ({"num_tokens": 3}, ref_gatevpt),
    "replora": ({"rank": 2, "hidden_dim": 4}, ref_replora),
    "gated_prompt": ({"num_tokens": 3}, ref_gated),
    "gated_prompt_nonlinear": ({"num_tokens": 3, "prompt_type": "nonlinear", "hidden_dim": 4}, ref_gated),
    "mlp": ({"num_layers": 3, "dropout": 0.0}, ref_mlp),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_matches_its_equations_and_one_step(name):
    opts, ref = CASES[name]
    model = _model(name.replace("_nonlinear", ""), **opts)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 1])
    with torch.no_grad():
        assert (model(x) - ref(model, x)).abs().max().item() <= 1e-5
    twin = copy.deepcopy(model)  # the deep copy must carry its own hooks and parameters
    for m, f in ((model, lambda m: m(x)), (twin, lambda m: ref(m, x))):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        F.cross_entropy(f(m), y).backward()
        opt.step()
    for (k, a), b in zip(model.named_parameters(), twin.parameters()):
        assert (a - b).abs().max().item() <= 1e-5, k
    assert any((a != b).any() for a, b in zip(model.method.parameters(), _model(name.replace("_nonlinear", ""),
                                                                                  **opts).method.parameters()))


@pytest.mark.parametrize("method", ["lora", "adapter", "replora", "gated_prompt"])
def test_additive_methods_start_as_the_frozen_model(method):
    torch.manual_seed(0)
    model = build_model(TINY["backbone"], num_classes=5, prompt=make_config(method), img_size=32, depth=2,
                        embed_dim=32, num_heads=2).eval()
    lin = build_model(TINY["backbone"], num_classes=5, prompt=make_config("linear"), img_size=32, depth=2,
                      embed_dim=32, num_heads=2).eval()
    lin.load_state_dict({k: v for k, v in model.state_dict().items() if k in lin.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), lin(x), atol=1e-6)


def test_lora_init_and_frozen_prefix():
    torch.manual_seed(0)
    model = build_model(TINY["backbone"], num_classes=5, prompt=make_config("lora", rank=4), img_size=32, depth=2,
                        embed_dim=32, num_heads=2)
    a, b = model.method.a[0], model.method.b[0]
    assert a.shape == (32, 4) and b.shape == (4, 96) and not b.any()
    assert a.abs().max() <= 1 / math.sqrt(4) and a.abs().max() > 0.3  # kaiming a=sqrt5 over (D, r): bound 1/sqrt(r)
    assert set(model.trainable_parameters()) == {"peft.a.0", "peft.a.1", "peft.b.0", "peft.b.1", "head.weight",
                                                 "head.bias"}
    assert model.method.frozen_prefix_blocks == 0
    lin = build_model(TINY["backbone"], num_classes=5, prompt=make_config("linear"), img_size=32, depth=2,
                      embed_dim=32, num_heads=2)
    assert lin.method.frozen_prefix_blocks == 2
    part = build_model(TINY["backbone"], num_classes=5, prompt=make_config("partial"), img_size=32, depth=2,
                       embed_dim=32, num_heads=2)
    assert part.method.frozen_prefix_blocks == 1
    assert all(p.requires_grad for p in part.backbone.blocks[1].parameters())
    assert not any(p.requires_grad for p in part.backbone.blocks[0].parameters())


@pytest.mark.parametrize("method, expected", [
    ("lora", 294_912),           # NOAH LoRA-8: 0.29 M
    ("adapter", 1_779_840),      # VPT Adapter rf 8: 12 x (768*96 + 96 + 96*768 + 768)
    ("vfpt", 92_160),            # = VPT-deep N=10
    ("e2vpt", 92_245),           # 12*5*768 visual + 12*12*5*64 kv + 5 + 5*16 masks
    ("gatevpt", 76_823),         # 100*768 + 11 gates + 12 temperatures
    ("bitfit", 102_912),
    ("mlp", 1_184_256),          # VPT MLP-3: 2 x (768*768 + 768) + 2 x 2*768 BatchNorm
    ("sidetune", 9_547_585),     # VPT Sidetune: AlexNet features + 9216 x 768 projection + alpha
])
def test_summary_counts_vit_b16(method, expected, capsys):
    assert summary_main(["vit_base_patch16_224", "--method", method]) == 0
    assert f"| **without head** | {expected:,} |" in capsys.readouterr().out


def test_bad_method_options_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        summary_main(["vit_base_patch16_224", "--method", "lora", "--set", "rnk=4"])
    assert e.value.code == 2 and "has no option(s) rnk" in capsys.readouterr().err
    with pytest.raises(ValueError, match="targets must be one of"):
        make_config("lora", targets="qk")
    with pytest.raises(ValueError, match="1 is the linear probe"):
        make_config("mlp", num_layers=1)
    with pytest.raises(ValueError, match="Unknown method 'lorra'"):
        make_config("lorra")
    assert {"vpt", "vapt", "lora", "adapter", "vfpt", "e2vpt", "gatevpt", "replora", "gated_prompt"} <= set(
        method_names())


def test_e2vpt_prune_zeroes_and_freezes_masks_and_they_are_saved():
    model = _model("e2vpt", num_tokens=3, num_kv_tokens=2)
    model.method.prune(tokens=[1], pieces={0: [2, 5]})
    g = model.method
    assert g.token_mask[1] == 0 and g.piece_mask[0, 2] == 0 and g.piece_mask[0, 5] == 0
    assert not g.token_mask.requires_grad and not g.piece_mask.requires_grad
    sd = model.trainable_state_dict()  # frozen masks still travel with the trainable tensors
    assert torch.equal(sd["peft.token_mask"], g.token_mask) and "peft.kv_prompts" in sd


def test_sidetune_blends_torchvision_alexnet_loaded_from_its_file_and_trains(tmp_path):
    import safetensors.torch
    import torchvision

    torch.manual_seed(3)
    alex = torchvision.models.alexnet(weights=None).eval()  # an independent side network with the file's weights
    path = tmp_path / "alexnet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in alex.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match="side network starts from random weights"):
        random_side = build_model(TINY["backbone"], num_classes=5, prompt=make_config("sidetune"), img_size=64,
                                  depth=2, embed_dim=32, num_heads=2)
    assert random_side.method.frozen_prefix_blocks == 2
    torch.manual_seed(0)
    model = build_model(TINY["backbone"], num_classes=5, img_size=64, depth=2, embed_dim=32, num_heads=2,
                        prompt=make_config("sidetune", side_checkpoint=str(path))).eval()
    with torch.no_grad():
        model.method.alpha.fill_(0.7)
        model.method.projection.weight.mul_(30.0)  # make the side branch count in the logits
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def ref(m):
        f = head(m, ref_trunk(m, x), pooled=True)
        s = alex.avgpool(alex.features(x)).flatten(1) @ m.method.projection.weight.T
        a = torch.sigmoid(m.method.alpha)
        return m.head(a * f + (1 - a) * s)

    with torch.no_grad():
        assert (model(x) - ref(model)).abs().max().item() <= 1e-5
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 1 + 10 + 1 + 2  # alpha, 5 convs, projection, head
    F.cross_entropy(model(x), torch.tensor([1, 4])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({"features.0.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="do not fit torchvision's AlexNet features"):
        build_model(TINY["backbone"], num_classes=5, img_size=64, depth=2, embed_dim=32, num_heads=2,
                    prompt=make_config("sidetune", side_checkpoint=str(bad)))
