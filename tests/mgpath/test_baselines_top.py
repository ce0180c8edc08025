"""TOP against an independent re-statement of the official model and objective (miccaiif/TOP 8356b0d,
learnablePrompt_multi): '*' tokens as the only learnable context, frozen tower and temperature, prototype
pooling, loss_D + 25 loss_A, one SGD step; plus the Lightning module and its prompt file."""
import json
import math

import pytest
import torch
from test_baselines_vila import CFG

from mgpath.baselines.top import TOP
from mgpath.text import build_text_tower

BAG = ["lung tissue with glands. * * * *", "lung tissue with keratin. * * * *"]
CLASSES = ["class_a", "class_b"]
INST = ["an H&E image of stroma, pink fibres.* * * *", "an H&E image of tumour_cells.* * * *",
        "an H&E image of fat.* * * *"]


def _encode(tower, proj, texts, names, ctx):
    """Token embeddings with the '*' rows replaced by ``ctx``, through the tower, at the end of text."""
    full = [t.replace("_", " ") + " " + n.replace("_", " ") + "." for t, n in zip(texts, names)]
    tokens = tower.tokenize(full)
    emb = tower.token_embedding(tokens).clone()
    star = tower.tokenize(["*"])[0, 1]
    for i in range(len(full)):
        emb[i, tokens[i] == star] = ctx[i]
    x = tower.ln_final(tower.transformer(emb + tower.positional_embedding, attn_mask=tower.attn_mask))
    t = x[torch.arange(len(full)), tokens.argmax(-1)] @ proj
    return t / t.norm(dim=-1, keepdim=True)


def test_top_equals_the_restated_official_model_objective_and_step():
    torch.manual_seed(0)
    tower = build_text_tower("x", None, CFG, quick_gelu=True)
    proj = torch.randn(32, 24) * 32 ** -0.5
    m = TOP(tower, proj, BAG, CLASSES, INST, logit_scale=math.log(100))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == \
        {f"bag.ctx.{i}" for i in range(2)} | {f"instance.ctx.{i}" for i in range(3)}
    star = tower.token_embedding(tower.tokenize(["*"]))[0, 1]
    assert torch.equal(m.bag.ctx[0][0], star) and m.bag.ctx[0].shape == (4, 32)  # initialised from '*'
    x = 0.3 * torch.randn(17, 24)
    logits, scores = m(x)
    bag = _encode(tower, proj, BAG, CLASSES, list(m.bag.ctx))
    inst = _encode(tower, proj, INST, [f"Prototype {k}" for k in range(3)], list(m.instance.ctx))
    ref_scores = 100 * x @ inst.T
    ref_logits = 100 * (ref_scores.softmax(0).T @ x) @ bag.T
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-5)
    # official binary loss_D (class 1) + 25 * mean of the strict upper triangle of A^T A
    p1 = ref_logits.softmax(1)[:, 1]
    a = ref_scores.softmax(0)
    expect = (-(torch.log(p1 + 1e-5))).mean() + 25 * torch.triu(a.T @ a, 1).sum() / 9
    loss = TOP.objective(logits, scores, 1, 25.0)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    p0 = ref_logits.softmax(1)[:, 0]
    assert TOP.objective(logits, scores, 0, 0.0).item() == pytest.approx(-(torch.log(1 - p1 + 1e-5)).mean().item(),
                                                                         rel=1e-4)
    assert torch.allclose(p0 + p1, torch.ones(3))
    before = [c.detach().clone() for c in m.bag.ctx]
    loss.backward()
    grads = [c.grad.clone() for c in m.bag.ctx]
    torch.optim.SGD(m.parameters(), lr=0.02).step()
    for c, b, g in zip(m.bag.ctx, before, grads):
        torch.testing.assert_close(c.detach(), b - 0.02 * g)
    with pytest.raises(ValueError, match="one contiguous run of"):
        TOP(tower, proj, ["glands * and * more", "keratin * *"], CLASSES, INST, logit_scale=0.0)


def test_top_module_reads_its_prompt_file(tmp_path):
    from mgpath.baselines import TOPModule
    path = tmp_path / "top.json"
    path.write_text(json.dumps({"bag": dict(zip(CLASSES, BAG)), "instance": INST}))
    mod = TOPModule(str(path), 24, CLASSES, text_model="x", text_model_cfg=CFG)
    assert (mod.lr, mod.weight_lossA) == (0.02, 25.0)

    class Bag:
        def __init__(self, f):
            self.features = f
    batch = {"slides": [{"5x": Bag(torch.randn(6, 24)), "10x": Bag(torch.randn(9, 24))}], "labels": torch.tensor([1])}
    loss, logits = mod.loss(batch)
    assert torch.isfinite(loss) and torch.allclose(logits.softmax(-1), mod(batch["slides"]).softmax(-1))
    assert torch.allclose(logits.exp().sum(-1), torch.ones(1))  # log of the prototypes' mean probabilities
    path.write_text(json.dumps({"bag": {"class_a": BAG[0]}, "instance": INST}))
    with pytest.raises(ValueError, match=r"no bag prompt for class\(es\) \['class_b'\]"):
        TOPModule(str(path), 24, CLASSES, text_model="x", text_model_cfg=CFG)
