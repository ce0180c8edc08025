"""PromptTuningModule: official optimiser groups, warmup + cosine per epoch (epoch 0 at lr 0), lr scaling,
trainable-only checkpoints (< 1 MB for ViT-B/16 VAPT) that load back to identical logits."""
from __future__ import annotations

import math
import os
import warnings

import lightning.pytorch as pl
import pytest
import timm
import torch

from vapt.data import DemoShapesDataModule
from vapt.training.module import PromptTuningModule, load_trained_model, warmup_cosine_factor

TINY = {"patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 1}


def tiny_module(**kw) -> PromptTuningModule:
    args = {"num_classes": 4, "backbone": "vit_tiny_patch16_224", "img_size": 16, "backbone_kwargs": TINY,
                "method": "vapt", "num_tokens": 3, "conv_dropout": 0.0, "mlp_dropout": 0.0}
    args.update(kw)
    return PromptTuningModule(**args)


@pytest.fixture(scope="module")
def tiny_backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pth"
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=0, **TINY)
    torch.save(m.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return {"root": str(root), "train_size": 16, "val_size": 8, "test_size": 8, "image_pixels": 16, "img_size": 16}


def trainer(tmp_path, **kw) -> pl.Trainer:
    args = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "default_root_dir": str(tmp_path), "num_sanity_val_steps": 0}
    args.update(kw)
    return pl.Trainer(**args)


def test_warmup_cosine_matches_official_values():
    # official WarmupCosineSchedule(warmup_steps=10, t_total=100) stepped per epoch: 0, .1, ..., 1, .9997, ...
    f = [warmup_cosine_factor(e, 10, 100) for e in range(100)]
    assert f[:11] == pytest.approx([e / 10 for e in range(10)] + [1.0])
    assert f[11] == pytest.approx(0.5 * (1 + math.cos(math.pi / 90)))
    assert f[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))  # ~3e-4
    assert 2.9e-4 < f[99] < 3.1e-4
    assert warmup_cosine_factor(0, 0, 10) == 1.0  # no warmup: full lr at once


def test_param_groups_follow_the_official_rule():
    m = tiny_module(weight_decay=0.01)
    groups = m.param_groups()
    names = {id(p): n for n, p in m.model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad}
    assert no_decay == {"head.bias"}  # SGD: only the head bias escapes weight decay
    assert decay | no_decay == trainable and "head.weight" in decay
    assert any("prompt" in n for n in decay) and not any(n.startswith("backbone.") for n in decay)
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    adamw = tiny_module(optimizer="adamw").param_groups()
    no_decay = {names_ for names_ in (n for n, p in tiny_module().model.named_parameters()
                                      if p.requires_grad and (n.endswith(".bias") or "norm" in n and p.ndim == 1))}
    assert len(adamw[1]["params"]) == len(no_decay) > 1  # AdamW: biases and norm parameters


def test_epoch0_runs_at_lr0_then_warmup_and_lr_scaling(tmp_path, demo_data):
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    m = tiny_module(lr=2.0, warmup_epochs=2)
    init = {k: v.clone() for k, v in m.model.trainable_state_dict().items()}
    dm = DemoShapesDataModule(batch_size=8, **demo_data)
    t = trainer(tmp_path, max_epochs=1, callbacks=[Spy()], limit_val_batches=0)
    t.fit(m, dm)
    after = m.model.trainable_state_dict()
    assert t.global_step == 2  # two optimiser steps in epoch 0 ...
    assert all(torch.equal(init[k], after[k]) for k in init)  # ... at lr 0: nothing moved (official quirk)
    assert m.effective_lr == pytest.approx(2.0 * 8 / 256)  # base x batch / 256

    seen.clear()
    m = tiny_module(lr=2.0, warmup_epochs=2)
    t = trainer(tmp_path, max_epochs=4, callbacks=[Spy()], limit_val_batches=0)
    t.fit(m, DemoShapesDataModule(batch_size=8, **demo_data))
    base = 2.0 * 8 / 256
    expected = [0.0, base / 2, base, base * 0.5 * (1 + math.cos(math.pi / 2))]
    assert seen == pytest.approx(expected)

    m = tiny_module(lr=0.3, scale_lr=False, schedule="constant")
    t = trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    t.fit(m, DemoShapesDataModule(batch_size=8, **demo_data))
    assert m.effective_lr == 0.3 and t.optimizers[0].param_groups[0]["lr"] == 0.3


def test_vitb16_vapt_checkpoint_is_small(tmp_path):
    # store_frozen=False: what a run with a backbone weights file writes (round trips are tested on a tiny ViT)
    m = PromptTuningModule(num_classes=100, backbone="vit_base_patch16_224", method="vapt", num_tokens=10,
                           kernel_size=2, hidden_dim=8, store_frozen=False)
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ckpt)
    path = tmp_path / "vapt.ckpt"
    torch.save(ckpt, path)
    size = os.path.getsize(path)
    n_trainable = sum(v.numel() for v in ckpt["state_dict"].values())
    assert n_trainable == 55_608 + 768 * 100 + 100  # reference section 2 count + head
    assert set(ckpt["state_dict"]) == set(m.trainable_keys())
    assert size < 1_000_000, size  # ~0.53 MB instead of ~340 MB
    assert ckpt["vapt"]["trainable_only"] is True and ckpt["vapt"]["prompt_config"]["num_tokens"] == 10


def test_lightning_checkpoint_round_trip_and_mismatch(tmp_path, demo_data, tiny_backbone_file):
    m = tiny_module(checkpoint=tiny_backbone_file, warmup_epochs=0, lr=5.0)
    t = trainer(tmp_path, max_epochs=2, enable_checkpointing=True, limit_val_batches=0)
    t.fit(m, DemoShapesDataModule(batch_size=8, **demo_data))
    path = t.checkpoint_callback.last_model_path or t.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=False)
    assert all(not k.startswith("model.backbone.") for k in ckpt["state_dict"])  # frozen part not stored
    assert set(ckpt["state_dict"]) == set(m.trainable_keys())
    restored = load_trained_model(path)
    x = torch.randn(2, 3, 16, 16)
    m.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored(x), m.model(x), atol=1e-6)
    # resuming training from the trainable-only checkpoint works (the frozen part comes from the file)
    t2 = trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    m2 = tiny_module(checkpoint=tiny_backbone_file, warmup_epochs=0, lr=5.0)
    t2.fit(m2, DemoShapesDataModule(batch_size=8, **demo_data), ckpt_path=path)
    assert t2.current_epoch == 3
    with pytest.raises(KeyError, match="does not fit this model"):
        PromptTuningModule.load_from_checkpoint(path, method="vpt")  # wrong method for these tensors


def test_random_backbone_checkpoint_keeps_the_backbone(tmp_path, demo_data):
    m = tiny_module()  # no backbone file: the random init cannot be rebuilt, so it is stored
    t = trainer(tmp_path, max_epochs=1, enable_checkpointing=True, limit_val_batches=0)
    t.fit(m, DemoShapesDataModule(batch_size=8, **demo_data))
    path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["vapt"]["trainable_only"] is False
    assert any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    x = torch.randn(2, 3, 16, 16)
    m.model.eval()
    with torch.no_grad():
        assert torch.allclose(load_trained_model(path)(x), m.model(x), atol=1e-6)


def test_predict_and_test_steps(tmp_path, demo_data):
    m = tiny_module()
    dm = DemoShapesDataModule(batch_size=8, **demo_data)
    t = trainer(tmp_path)
    preds = t.predict(m, datamodule=dm)
    assert sum(p["pred"].numel() for p in preds) == 8
    assert torch.allclose(preds[0]["probs"].sum(-1), torch.ones(8))
    res = t.test(m, datamodule=dm, verbose=False)[0]
    assert 0.0 <= res["test/acc"] <= 1.0 and math.isfinite(res["test/loss"])


def test_compiled_model_trains_and_keeps_checkpoint_keys(tmp_path, demo_data):
    m = tiny_module(compile=True, compile_backend="aot_eager")
    eager = tiny_module()
    assert set(m.state_dict()) == set(eager.state_dict())      # compiled in place: no `_orig_mod.` prefix
    dm = DemoShapesDataModule(batch_size=8, **demo_data)
    t = trainer(tmp_path)
    res = t.test(m, datamodule=dm, verbose=False)[0]
    assert 0.0 <= res["test/acc"] <= 1.0 and math.isfinite(res["test/loss"])


def test_warmup_not_shorter_than_training_is_warned(tmp_path, demo_data):
    m = tiny_module(lr=2.0, warmup_epochs=10)
    t = trainer(tmp_path, max_epochs=2, limit_val_batches=0, limit_train_batches=1)
    with pytest.warns(UserWarning, match=r"warmup_epochs \(10\) >= trainer.max_epochs \(2\): the learning rate "
                                         r"never leaves its linear warmup \(it ends at 10% of lr\)"):
        t.fit(m, DemoShapesDataModule(batch_size=8, **demo_data))
    m = tiny_module(lr=2.0, warmup_epochs=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2, limit_val_batches=0, limit_train_batches=1).fit(
            m, DemoShapesDataModule(batch_size=8, **demo_data))
    assert not [w for w in seen if "warmup_epochs" in str(w.message)]
