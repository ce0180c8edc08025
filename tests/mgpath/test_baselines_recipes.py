"""The baselines' official recipes (``recipe: official``): loss and one optimiser step against the official
training code's formulas, re-stated here independently (DSMIL train_tcga.py, CLAM core_utils.py + smooth-topk,
TransMIL MyOptimizer), plus the Lightning wiring (gradient accumulation, early stopping, checkpoint on the
validation loss)."""
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler

from mgpath.baselines import CLAMModule, DSMILModule, TransMILModule
from mgpath.baselines.recipes import EarlyStoppingAfter, Lookahead, smooth_top1_svm
from mgpath.selection import BestCheckpoint

D = 12


class _Bag:
    def __init__(self, features):
        self.features = features

    def to(self, device):
        return _Bag(self.features.to(device))


def _batch(x, y):
    return {"slides": [{"10x": _Bag(x)}], "labels": torch.tensor([y])}


def _bce(logit, target):
    """-(y log s + (1 - y) log(1 - s)), mean over classes (torch's BCEWithLogitsLoss, written out)."""
    s = 1 / (1 + torch.exp(-logit.double()))
    return (-(target * torch.log(s) + (1 - target) * torch.log(1 - s))).mean()


def _adam_l2(p, g, lr, betas, wd, eps=1e-8):
    """One Adam step from zero state, L2 weight decay added to the gradient (torch.optim.Adam, step 1)."""
    g = g + wd * p
    m, v = (1 - betas[0]) * g, (1 - betas[1]) * g * g
    return p - lr * (m / (1 - betas[0])) / ((v / (1 - betas[1])).sqrt() + eps)


def test_dsmil_official_loss_init_step_scheduler_and_sigmoid():
    torch.manual_seed(0)
    mod = DSMILModule(D, ["a", "b", "c"], q_dim=8, recipe="official")
    m = mod.model
    for lin in (m.instance, m.q[0], m.q[2]):  # orthogonal weights, zero biases (apply_sparse_init)
        w = lin.weight
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)
        assert lin.bias.abs().max() == 0
    assert m.fcc.bias.abs().max() == 0
    x, y = torch.randn(9, D), 2
    loss, logits = mod.loss(_batch(x, y))
    scores = m.instance(x)
    onehot = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ref = 0.5 * _bce(logits[0], onehot) + 0.5 * _bce(scores.max(0).values, onehot)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert (mod.lr, mod.weight_decay) == (1e-4, 1e-3)
    conf = mod.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert (sched.T_max, sched.eta_min) == (50, 5e-6)  # CosineAnnealingLR(opt, num_epochs, 0.000005)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    opt.step()
    for n, p in m.named_parameters():
        expect = _adam_l2(before[n], grads[n], 1e-4, (0.5, 0.9), 1e-3)
        assert torch.allclose(p.detach(), expect, atol=1e-7), n
    z = torch.tensor([[0.3, -1.2, 2.0]])
    assert torch.allclose(mod.probabilities(z), torch.sigmoid(z))  # sigmoid at prediction (test())
    fewshot = DSMILModule(D, ["a", "b", "c"], q_dim=8)
    assert (fewshot.lr, fewshot.weight_decay) == (2e-4, 5e-3)
    assert torch.allclose(fewshot.probabilities(z), z.softmax(-1))


def test_smooth_top1_svm_equals_the_official_loss():
    s = (torch.arange(12.0) * 0.9).sin()
    x = torch.stack([s, -s], 1) * torch.tensor([1.0] * 6 + [9.0] * 6)[:, None]  # 5 rows take the hard branch
    y = torch.tensor([0, 1] * 6)
    # topk.svm.SmoothTop1SVM(n_classes=2) of oval-group/smooth-topk 12c1645 on this input
    assert smooth_top1_svm(x, y).item() == pytest.approx(3.62870454788208, abs=2e-6)
    # re-stated: tau * log sum_j exp(x_j + [j != y] - x_y), hard max where top1 - top2 >= log(1000)
    per = []
    for xi, yi in zip(x.double(), y):
        shifted = xi + (torch.arange(2) != yi).double() - xi[yi]
        hard = (xi.max() - xi.min()) >= math.log(1e3)
        per.append(shifted.max() if hard else torch.logsumexp(shifted, 0))
    assert smooth_top1_svm(x, y).item() == pytest.approx(torch.stack(per).mean().item(), abs=1e-6)


@pytest.mark.parametrize("inst_loss", ["ce", "svm"])
def test_clam_official_loss_is_one_pass_with_clams_k(inst_loss):
    torch.manual_seed(1)
    mod = CLAMModule(D, ["a", "b"], hidden=16, attention_dim=8, dropout=0.0, k_sample=8, inst_loss=inst_loss,
                     recipe="official")
    m = mod.model
    calls = []
    m.fc.register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.randn(11, D), 1  # 8 <= N < 16: CLAM keeps k = 8 (top and bottom overlap)
    loss, logits = mod.loss(_batch(x, y))
    assert len(calls) == 1  # the instance loss comes from the same forward pass
    h = torch.relu(m.fc[0](x))
    a = m.attention(h)[:, 0].softmax(0)
    top, bottom = a.topk(8).indices, (-a).topk(8).indices
    lossfn = F.cross_entropy if inst_loss == "ce" else smooth_top1_svm
    pos = lossfn(m.instance_classifiers[1](torch.cat([h[top], h[bottom]])), torch.tensor([1] * 8 + [0] * 8))
    neg = lossfn(m.instance_classifiers[0](h[top]), torch.zeros(8, dtype=torch.long))  # subtyping
    bag = F.cross_entropy(m.classifier(a @ h)[None], torch.tensor([y]))
    assert loss.item() == pytest.approx((0.7 * bag + 0.3 * (pos + neg) / 2).item(), abs=1e-6)
    assert torch.allclose(logits[0], m.classifier(a @ h), atol=1e-6)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = mod.configure_optimizers()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    opt.step()
    for n, p in m.named_parameters():  # Adam(lr 2e-4, weight_decay 1e-5) of CLAM's get_optim
        assert torch.allclose(p.detach(), _adam_l2(before[n], grads[n], 2e-4, (0.9, 0.999), 1e-5), atol=1e-7)
    small = mod.loss(_batch(torch.randn(5, D), 0))[0]  # fewer tiles than k_sample: all of them
    assert torch.isfinite(small)
    assert CLAMModule(D, ["a", "b"]).model.inst_loss == "ce"
    assert CLAMModule(D, ["a", "b"], recipe="official").model.inst_loss == "svm"


def _radam_lookahead_reference(params, grads_per_step, groups_wd, lr=2e-4, betas=(0.9, 0.999), eps=1e-8,
                               alpha=0.5, k=6):
    """TransMIL's RAdam (LiyuanLucasLiu) + its Lookahead, written out for plain tensors."""
    p = [q.clone().double() for q in params]
    m = [torch.zeros_like(q) for q in p]
    v = [torch.zeros_like(q) for q in p]
    slow = [None] * len(p)
    rho_inf = 2 / (1 - betas[1]) - 1
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            b2t = betas[1] ** t
            rho = rho_inf - 2 * t * b2t / (1 - b2t)
            p[i] = p[i] - groups_wd[i] * lr * p[i]
            if rho >= 5:
                r = math.sqrt((1 - b2t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2))
                p[i] = p[i] - lr * r / (1 - betas[0] ** t) * m[i] / (v[i].sqrt() + eps)
            else:
                p[i] = p[i] - lr / (1 - betas[0] ** t) * m[i]
        if t % k == 0:
            for i in range(len(p)):
                slow[i] = p[i].clone() if slow[i] is None else slow[i]  # slow copy taken at the first sync
                slow[i] = slow[i] + alpha * (p[i] - slow[i])
                p[i] = slow[i].clone()
    return p


def test_transmil_official_optimiser_groups_and_seven_steps():
    torch.manual_seed(2)
    mod = TransMILModule(D, ["a", "b"], dim=16, dropout=0.0, recipe="official")
    opt = mod.configure_optimizers()
    assert isinstance(opt, Lookahead) and isinstance(opt.base_optimizer, torch.optim.RAdam)
    names = {id(p): n for n, p in mod.model.named_parameters()}
    no_decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0 and opt.param_groups[1]["weight_decay"] == 1e-5
    assert "norm.weight" in no_decay and "fc1.0.bias" in no_decay and "cls_token" not in no_decay
    assert {n for n in names.values()} - no_decay == {n for n, p in mod.model.named_parameters()
                                                       if p.ndim > 1 and not n.endswith(".bias")}
    params = [p for g in opt.param_groups for p in g["params"]]
    wds = [g["weight_decay"] for g in opt.param_groups for _ in g["params"]]
    start = [p.detach().clone() for p in params]
    grads_per_step = []
    for step in range(7):
        for x, y in ((torch.randn(7 + step, D), step % 2), (torch.randn(20 - step, D), 1 - step % 2)):
            (mod.loss(_batch(x, y))[0] / 2).backward()  # gradient accumulation 2 (Lightning divides the loss)
        grads_per_step.append([p.grad.clone() for p in params])
        opt.step()
        opt.zero_grad()
    # the reference replays the same gradients, so it checks the optimiser arithmetic (RAdam + Lookahead)
    ref = _radam_lookahead_reference(start, grads_per_step, wds)
    for p, r in zip(params, ref):
        assert torch.allclose(p.detach().double(), r, atol=1e-7)
    sd = opt.state_dict()
    fresh = TransMILModule(D, ["a", "b"], dim=16, dropout=0.0, recipe="official").configure_optimizers()
    fresh.load_state_dict(sd)
    assert len(fresh.state) == len(params)  # slow weights restored on resume


def test_official_callbacks_early_stopping_and_checkpoint_on_val_loss():
    cbs = TransMILModule(D, ["a", "b"], dim=16, recipe="official").configure_callbacks()
    acc = next(c for c in cbs if isinstance(c, GradientAccumulationScheduler))
    assert acc.scheduling == {0: 2}
    stop = next(c for c in cbs if isinstance(c, EarlyStoppingAfter))
    assert (stop.monitor, stop.patience, stop.start_epoch) == ("val/loss", 10, 0)
    ck = next(c for c in cbs if isinstance(c, BestCheckpoint))
    assert (ck.monitor, ck.mode, ck.ties) == ("val/loss", "min", "first")
    clam = CLAMModule(D, ["a", "b"], recipe="official").configure_callbacks()
    stop = next(c for c in clam if isinstance(c, EarlyStoppingAfter))
    assert (stop.patience, stop.start_epoch) == (20, 50)
    assert next(c for c in clam if isinstance(c, BestCheckpoint)).ties == "latest"  # CLAM saves on val_loss <= best
    assert CLAMModule(D, ["a", "b"]).configure_callbacks() == []
    # CLAM's EarlyStopping: counter >= patience stops only when epoch > stop_epoch
    es = EarlyStoppingAfter(monitor="val/loss", mode="min", patience=2, start_epoch=3)
    out = []
    for epoch, v in enumerate([1.0, 2.0, 2.0, 2.0, 2.0, 2.0]):
        es._epoch = epoch
        out.append(es._evaluate_stopping_criteria(torch.tensor(v))[0])
    assert out == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="recipe must be one of"):
        DSMILModule(D, ["a", "b"], recipe="authors")


def test_dsmil_selection_score_is_auc_sum_plus_thresholded_accuracy_over_two():
    """A case worked by hand: per class AUC 3/4; optimal thresholds 0.9 and 0.8 (the first minimum of fpr - tpr);
    2 of 4 thresholded vectors equal the one-hot label; (0.75 + 0.75 + 0.5) / 2."""
    from mgpath.baselines.recipes import dsmil_selection_score

    probs = torch.tensor([[0.9, 0.2], [0.6, 0.5], [0.4, 0.8], [0.7, 0.3]]).numpy()
    assert dsmil_selection_score(probs, [0, 0, 1, 1]) == pytest.approx(1.0, abs=1e-12)
    # one class only: each AUC counts 1 and each threshold is inf (train_tcga.multi_label_roc's fallback), so no
    # slide matches its one-hot label
    assert dsmil_selection_score(probs, [0, 0, 0, 0]) == pytest.approx((1 + 1 + 0) / 2, abs=1e-12)


def test_dsmil_official_selects_and_stops_on_its_score(tmp_path):
    from lightning.pytorch import Trainer

    from mgpath.baselines.recipes import dsmil_selection_score

    mod = DSMILModule(D, ["a", "b"], q_dim=8, recipe="official")
    stop = next(c for c in mod.configure_callbacks() if isinstance(c, EarlyStoppingAfter))
    ck = next(c for c in mod.configure_callbacks() if isinstance(c, BestCheckpoint))
    assert (stop.monitor, stop.mode, stop.patience) == ("val/dsmil_score", "max", 11)  # counter > stop_epochs 10
    assert (ck.monitor, ck.mode, ck.ties) == ("val/dsmil_score", "max", "first")  # score > best, strictly
    assert DSMILModule(D, ["a", "b"]).configure_callbacks() == []
    torch.manual_seed(0)
    bags = [(torch.randn(5, D) + (2 * y - 1), y) for y in (0, 1, 0, 1, 1)]
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, enable_model_summary=False)
    batches = [_batch(x, y) for x, y in bags]
    res = trainer.validate(mod, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)
    with torch.no_grad():
        probs = torch.sigmoid(torch.stack([mod.model.streams(x)[1] for x, _ in bags])).numpy()
    assert res[0]["val/dsmil_score"] == pytest.approx(dsmil_selection_score(probs, [y for _, y in bags]), abs=1e-6)
