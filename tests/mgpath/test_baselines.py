"""Baselines: shapes, gradients only to the trainable parts, the planted signal is learnt (test AUC > 0.95),
3 classes, parameter counts of the published architectures."""
import pytest
import torch
from test_mgpath_train import ROOT, D, _datamodule

from mgpath.baselines import (
    ABMIL,
    CLAMSB,
    DSMIL,
    ABMILModule,
    CLAMModule,
    CoOpModule,
    DSMILModule,
    PoolingModule,
    TransMIL,
    TransMILModule,
    count_parameters,
)
from mgpath.lit import SlideAUROC
from mgpath.zeroshot import ZeroShotModule

DESC = str(ROOT / "data/prompts/demo.json")
TINY = {"embed_dim": 16, "text_model": "mgpath-tiny", "n_ctx": 4}


def _modules(classes, lr=5e-3):
    return {
        "abmil": ABMILModule(D, classes, hidden=32, attention_dim=16, lr=lr),
        "clam": CLAMModule(D, classes, hidden=32, attention_dim=16, k_sample=4, lr=lr),
        "transmil": TransMILModule(D, classes, dim=32, lr=lr),
        "dsmil": DSMILModule(D, classes, q_dim=16, lr=lr, weight_decay=1e-5),
        "mean": PoolingModule(D, classes, pooling="mean", lr=2e-2),
        "max": PoolingModule(D, classes, pooling="max", lr=2e-2),
        "coop": CoOpModule(DESC, D, classes, lr=1e-2, **TINY) if len(classes) == 2 else None,
    }


def _train(module, ds, epochs):
    opt = module.configure_optimizers()
    module.train()
    g = torch.Generator().manual_seed(0)
    items = [ds[i] for i in range(len(ds))]
    for _ in range(epochs):
        for i in torch.randperm(len(items), generator=g).tolist():
            batch = {"slides": [items[i]["bags"]], "labels": torch.tensor([items[i]["label"]])}
            loss, _ = module.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _test_auc(module, ds, C):
    module.eval()
    with torch.no_grad():
        probs = torch.cat([module([ds[i]["bags"]]).softmax(-1) for i in range(len(ds))])
    auc = SlideAUROC(C)
    auc.update(probs, torch.tensor(ds.labels))
    return auc.compute().item(), probs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    dm = _datamodule(tmp_path_factory.mktemp("cohort"), n_per_class=20)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", ["abmil", "clam", "transmil", "dsmil", "mean", "max", "coop"])
def test_learns_planted_signal_and_gradients_reach_only_trainable_parts(cohort, name):
    torch.manual_seed(0)
    module = _modules(cohort.classes)[name]
    train = cohort.datasets["train"]
    item = train[0]
    loss, logits = module.loss({"slides": [item["bags"]], "labels": torch.tensor([item["label"]])})
    assert logits.shape == (1, 2) and loss.ndim == 0
    loss.backward()
    for n, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: trainable {n} got no gradient"
        else:
            assert p.grad is None, f"{name}: frozen {n} got a gradient"
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    if name == "coop":  # only the context vectors learn; the tower, adaptors and temperature stay
        assert [n for n, p in module.named_parameters() if p.requires_grad] == ["model.text.prompts.ctx"]
        assert any(n.startswith("model.text.tower.") for n in frozen)
    else:
        assert not frozen
    module.zero_grad()
    if name == "max":  # max pooling over-fits 12 slides (test AUC 0.94): it gets the validation slides too
        train = torch.utils.data.ConcatDataset([train, cohort.datasets["val"]])
    _train(module, train, epochs={"coop": 8, "transmil": 8}.get(name, 6))
    auc, probs = _test_auc(module, cohort.datasets["test"], 2)
    assert auc > 0.95, f"{name}: test AUC {auc:.3f}"
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)))


def test_three_classes(tmp_path):
    torch.manual_seed(0)
    dm = _datamodule(tmp_path, classes=("A", "B", "C"), n_per_class=10)
    dm.setup()
    item = dm.datasets["train"][0]
    for name, module in _modules(list(dm.classes)).items():
        if module is None:
            continue
        loss, logits = module.loss({"slides": [item["bags"], item["bags"]], "labels": torch.tensor([2, 2])})
        assert logits.shape == (2, 3), name
        loss.backward()
    abmil = _modules(list(dm.classes))["abmil"]
    _train(abmil, dm.datasets["train"], epochs=8)
    auc, _ = _test_auc(abmil, dm.datasets["test"], 3)
    assert auc > 0.95


def _linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def test_parameter_counts_of_the_published_architectures():
    """At 1024-d features and 2 classes, counted layer by layer from the published architectures."""
    gated = _linear(512, 256) * 2 + _linear(256, 1)
    assert count_parameters(ABMIL(1024, 2)) == _linear(1024, 512) + gated + _linear(512, 2) == 788_739
    assert count_parameters(CLAMSB(1024, 2)) == 788_739 + 2 * _linear(512, 2)
    nystrom = _linear(512, 3 * 512, bias=False) + _linear(512, 512) + 8 * 33  # qkv, out, residual conv
    layer = 2 * 512 + nystrom  # LayerNorm + attention
    ppeg = sum(512 * k * k + 512 for k in (7, 5, 3))
    expected = _linear(1024, 512) + 512 + 2 * layer + ppeg + 2 * 512 + _linear(512, 2)
    assert count_parameters(TransMIL(1024, 2)) == expected == 2_672_146  # the 2.67M usually quoted
    q = _linear(1024, 128) + _linear(128, 128)
    assert count_parameters(DSMIL(1024, 2)) == _linear(1024, 2) + q + 2 * 2 * 1024 + 2
    for net in (ABMIL(1024, 3), TransMIL(1024, 3), DSMIL(1024, 3)):
        assert net(torch.randn(10, 1024)).shape == (3,)
    with pytest.raises(ValueError, match="expects tile features"):
        ABMIL(8, 2)(torch.randn(5, 9))
    with pytest.raises(ValueError, match="not among"):
        ABMILModule(8, ["a", "b"], magnifications=["5x"], magnification="20x")


def test_zero_shot_module_and_no_ot_ablation(cohort):
    """Zero-shot has nothing to train; the "no OT" ablation is the mean cosine."""
    import torch.nn.functional as F

    from mgpath.module import MGPATHModule

    torch.manual_seed(0)
    zs = ZeroShotModule(DESC, D, cohort.classes, **TINY)
    assert count_parameters(zs) == 0
    item = cohort.datasets["test"][0]
    assert zs([item["bags"]]).shape == (1, 2)
    m = MGPATHModule(DESC, D, cohort.classes, ot={"backend": "uniform"}, n_sets=2, n_prompts=8, **TINY).eval()
    with torch.no_grad():
        text = m.model.text()
        vis = m.model.visual_tokens([item["bags"]])
        expected = sum(torch.einsum("bmd,scd->bc", vis[g], text[g]) / (8 * 2) for g in m.model.magnifications)
        torch.testing.assert_close(m([item["bags"]]), m.model.logit_scale.exp() * expected)
    region = MGPATHModule(DESC, D, cohort.classes, ratio_graph=1.0, n_sets=2, n_prompts=8, **TINY)
    patch = MGPATHModule(DESC, D, cohort.classes, use_graph=False, n_sets=2, n_prompts=8, **TINY)
    assert patch.model.visual.graph is None and region.model.visual.ratio_graph == 1.0
    assert F.cross_entropy(region([item["bags"]]), torch.tensor([item["label"]])).isfinite()


def test_prompt_baselines_reload_from_their_checkpoints(cohort, tmp_path):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    for cls, kw in ((CoOpModule, {}), (ZeroShotModule, {"n_sets": 2, "n_prompts": 8})):
        m = cls(DESC, D, cohort.classes, **TINY, **kw)
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", default_root_dir=str(tmp_path))
        if cls is CoOpModule:
            trainer.fit(m, datamodule=cohort)
        else:
            trainer.strategy.connect(m)
        path = tmp_path / f"{cls.__name__}.ckpt"
        trainer.save_checkpoint(path)
        back = cls.load_from_checkpoint(path, map_location="cpu").eval()
        item = cohort.datasets["test"][0]
        with torch.no_grad():
            torch.testing.assert_close(back([item["bags"]]), m.eval()([item["bags"]]), rtol=0, atol=0)
