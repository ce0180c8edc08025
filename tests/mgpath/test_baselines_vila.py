"""ViLa-MIL against an independent re-statement of the official forward (Jiangbo-Shi/ViLa-MIL 68a11cf,
models/model_ViLa_MIL.py): prompt assembly with the right-shifted description, pooling at the unshifted
end-of-text, one-head cross attentions written out as matrices, gated pooling, dual-scale logits; loss and
one Adam step; plus the Lightning module's settings."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_mgpath_train import ROOT

from mgpath.baselines import ViLaMIL, ViLaMILModule
from mgpath.text import build_text_tower

CFG = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TEXTS = ["glandular tumour with lepidic_growth", "squamous nests with keratin pearls",
         "columnar cells forming glands " * 5, "polygonal cells with intercellular bridges"]
NCTX = 4


def _attend(mha, q, kv):
    """One-head attention of queries (Q, D) to keys / values (S, D), written out."""
    D = q.shape[1]
    wq, wk, wv = mha.in_proj_weight.split(D)
    bq, bk, bv = mha.in_proj_bias.split(D)
    a = ((q @ wq.T + bq) @ (kv @ wk.T + bk).T / math.sqrt(D)).softmax(-1)
    return (a @ (kv @ wv.T + bv)) @ mha.out_proj.weight.T + mha.out_proj.bias


def _reference(m, tower, low, high):
    tokens = tower.tokenize([t.replace("_", " ") for t in TEXTS])
    emb = tower.token_embedding(tokens)
    x = torch.cat([emb[:, :1], m.ctx.expand(4, -1, -1), emb[:, 1:-NCTX]], 1) + m.positional_embedding
    x = m.ln_final(m.transformer(x, attn_mask=tower.attn_mask))
    text = x[torch.arange(4), tokens.argmax(-1)] @ m.text_projection  # the unshifted end-of-text position
    out = 0
    for feats, t in ((low, text[:2]), (high, text[2:])):
        p = m.learnable_image_center[:, 0]
        comp = m.norm(_attend(m.cross_attention_1, p, feats) + p)
        a = m.attention_weights(torch.tanh(m.attention_V[0](comp)) * torch.sigmoid(m.attention_U[0](comp)))
        image = a.T.softmax(1) @ comp
        t = _attend(m.cross_attention_2, t, torch.cat([comp, feats])) + t
        out = out + image[0] @ t.T
    return out


def test_vila_mil_equals_the_restated_official_forward_loss_and_step():
    torch.manual_seed(0)
    tower = build_text_tower("x", None, CFG, quick_gelu=True)
    m = ViLaMIL(tower, torch.randn(32, 24) * 32 ** -0.5, TEXTS, n_ctx=NCTX, n_prototypes=3, hidden=8)
    low, high = 0.05 * torch.randn(9, 24), 0.05 * torch.randn(14, 24)
    logits = m(low, high)
    ref = _reference(m, tower, low, high)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    loss = m.loss(low, high, 1)
    assert loss.item() == pytest.approx(F.cross_entropy(ref[None], torch.tensor([1])).item(), abs=1e-6)
    # everything the official code leaves trainable, the text transformer included
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"ctx", "positional_embedding", "text_projection", "ln_final.weight", "learnable_image_center"} <= trainable
    assert any(n.startswith("transformer.") for n in trainable) and "token_prefix" not in trainable
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert grads["ctx"].abs().sum() > 0 and grads["transformer.resblocks.0.mlp.c_fc.weight"].abs().sum() > 0
    opt.step()
    for n, p in m.named_parameters():  # Adam step 1 (lr 1e-4, wd 1e-5 as L2), written out
        g = grads[n] + 1e-5 * before[n]
        expect = before[n] - 1e-4 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expect, atol=1e-9, rtol=1e-6)
    frozen = ViLaMIL(tower, torch.randn(32, 24), TEXTS, n_ctx=NCTX, n_prototypes=3, hidden=8, train_text=False)
    assert not frozen.text_projection.requires_grad and frozen.ctx.requires_grad


def test_vila_mil_module_settings_and_bad_feature_size():
    desc = str(ROOT / "data/prompts/demo.json")
    mod = ViLaMILModule(desc, 24, ["class_a", "class_b"], text_model="x", text_model_cfg=CFG, n_ctx=NCTX,
                        n_prototypes=3, hidden=8, recipe="official")
    assert (mod.lr, mod.weight_decay) == (1e-4, 1e-5)
    stop = mod.configure_callbacks()[0]
    assert (stop.monitor, stop.patience, stop.start_epoch) == ("val/loss", 20, 80)

    class Bag:
        def __init__(self, f):
            self.features = f
    out = mod([{"5x": Bag(torch.randn(5, 24)), "10x": Bag(torch.randn(8, 24))}])
    assert out.shape == (1, 2)
    with pytest.raises(ValueError, match="feature_dim 40 must equal the text embedding size 24"):
        ViLaMILModule(desc, 40, ["class_a", "class_b"], text_model="x", text_model_cfg=CFG, n_ctx=NCTX)
    adapted = ViLaMILModule(desc, 40, ["class_a", "class_b"], text_model="x", text_model_cfg=CFG, n_ctx=NCTX,
                            feature_adaptor=True)
    assert adapted([{"5x": Bag(torch.randn(5, 40)), "10x": Bag(torch.randn(8, 40))}]).shape == (1, 2)
