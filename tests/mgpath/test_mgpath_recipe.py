"""The paper's recipe exactly: unbalanced OT at the defaults, one convergence rule for every backend, the
fastest exact balanced solver, checkpoint selection on ties, the fold summary, starting from PLIP-G."""
import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from mgpath.ot import (
    OTError,
    balanced_residual,
    cosine_cost,
    ot_similarity,
    sinkhorn_log,
    sinkhorn_pot,
    unbalanced_residual,
)


def _cost(P=6, M=64, S=4, D=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(P, M, D, generator=g, dtype=dtype), dim=-1)
    t = F.normalize(torch.randn(P, S, D, generator=g, dtype=dtype), dim=-1)
    return 1 - torch.einsum("pmd,psd->pms", v, t)


def _pot_unbalanced(cost, eps, reg_m):
    M, S = cost.shape[1:]
    return np.stack([ot.unbalanced.sinkhorn_unbalanced(np.full(M, 1 / M), np.full(S, 1 / S), c.double().numpy(),
                                                       eps, reg_m, numItermax=200000, stopThr=1e-13)
                     for c in cost])


@pytest.mark.parametrize("reg_m,eps", [(10.0, 0.1), (1.0, 0.01), (1.0, 0.1), (100.0, 0.1)])
def test_unbalanced_converges_at_default_budget_and_equals_pot(reg_m, eps):
    """reg_m=10 (and reg_m=1 at eps 0.01) with the default 100 iterations / tol 1e-2 used to raise OTError."""
    cost = _cost()
    plan, it = sinkhorn_log(cost, eps=eps, reg_m=reg_m)  # max_iter 100, tol 1e-2, raises if not converged
    assert it <= 100
    ref = _pot_unbalanced(cost, eps, reg_m)
    assert ref.sum() < 0.999 * len(ref)  # really unbalanced: mass is not conserved
    np.testing.assert_allclose(plan.numpy(), ref, atol=5e-4)
    sim = 1 - (plan * cost).sum((1, 2))
    np.testing.assert_allclose(sim.numpy(), 1 - (ref * cost.double().numpy()).sum((1, 2)), atol=2e-4)
    # float64 and a tight tolerance: equal to POT to round-off
    plan64, _ = sinkhorn_log(cost.double(), eps=eps, reg_m=reg_m, max_iter=5000, tol=1e-12)
    np.testing.assert_allclose(plan64.numpy(), ref, atol=1e-9)


def test_pot_backend_flags_nonconvergence_by_the_torch_rule():
    """POT's balanced path used to accept marginal errors up to 10x tol; now both backends use one rule."""
    cost = _cost(P=4, M=64, S=4, seed=3, dtype=torch.float64) * 4  # a slowly converging problem
    a = torch.full((4, 64), 1 / 64, dtype=torch.float64)
    tol = 1e-3
    seen_between = False
    for max_iter in (5, 10, 20, 40, 80, 160, 320):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            plan = sinkhorn_pot(cost, eps=0.05, max_iter=max_iter, tol=tol, on_nonconvergence="warn")
        flagged = any("did not converge" in str(w.message) for w in rec)
        err = balanced_residual(plan, a)
        assert flagged == (err >= tol), (max_iter, err)
        seen_between |= tol <= err < 10 * tol
    assert seen_between  # the case the old 10x-looser rule accepted silently
    # unbalanced: POT's plan is judged by the same residual as the torch solver
    with pytest.raises(OTError, match="POT did not converge"):
        sinkhorn_pot(cost, eps=0.05, reg_m=10.0, max_iter=2, tol=1e-6)
    plan = sinkhorn_pot(cost, eps=0.1, reg_m=10.0)  # defaults converge
    ref = _pot_unbalanced(cost, 0.1, 10.0)
    np.testing.assert_allclose(plan.numpy(), ref, atol=5e-4)
    f = torch.zeros(4, 64, dtype=torch.float64)
    assert unbalanced_residual(cost, a, torch.full((4, 4), 0.25, dtype=torch.float64), f, f[:, :4], 0.1, 10.0) > 1


def test_auto_solver_is_exact_and_falls_back_to_log_domain():
    cost = _cost(P=4)  # MGPATH's per-slide size: 2 magnifications x 2 classes, 64 tokens, 4 prompt sets
    fast, _ = sinkhorn_log(cost, solver="auto")
    log, _ = sinkhorn_log(cost, solver="log")
    torch.testing.assert_close(fast, log, atol=2e-6, rtol=0)
    ref = np.stack([ot.sinkhorn(np.full(64, 1 / 64), np.full(4, 0.25), c.double().numpy(), 0.1,
                                method="sinkhorn_log", numItermax=10000, stopThr=1e-12) for c in cost])
    assert balanced_residual(fast, torch.full((4, 64), 1 / 64)) < 1e-2
    tight, _ = sinkhorn_log(cost.double(), max_iter=5000, tol=1e-12, solver="scaling")
    np.testing.assert_allclose(tight.numpy(), ref, atol=1e-10)
    # a range the exp kernel cannot hold in float32 (cost range / eps ~ 400): auto uses the log domain
    small = _cost(P=2) * 2
    plan, _ = sinkhorn_log(small, eps=0.005, max_iter=5000, tol=1e-4, solver="auto")
    plan_log, _ = sinkhorn_log(small, eps=0.005, max_iter=5000, tol=1e-4, solver="log")
    torch.testing.assert_close(plan, plan_log)
    assert torch.isfinite(plan).all()
    with pytest.raises(ValueError, match="unknown solver"):
        sinkhorn_log(cost, solver="fast")
    # ot_similarity and the model's OTConfig reach it
    v = F.normalize(torch.randn(1, 64, 32), dim=-1)
    t = F.normalize(torch.randn(4, 2, 32), dim=-1)
    from mgpath.ot import OTConfig
    torch.testing.assert_close(ot_similarity(v, t, config=OTConfig(solver="scaling")),
                               ot_similarity(v, t, config=OTConfig(solver="log")), atol=1e-5, rtol=0)
    assert cosine_cost(v, t).shape == (1, 2, 64, 4)


def _fit_scripted(tmp_path, scores, **kw):
    import lightning.pytorch as pl

    from mgpath.selection import BestCheckpoint

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w - batch[0]).pow(2).sum()

        def validation_step(self, batch, i):
            self.log("val/f1", scores[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=1)
    cb = BestCheckpoint(monitor="val/f1", mode="max", filename="best-{epoch}", dirpath=tmp_path, **kw)
    trainer = pl.Trainer(max_epochs=len(scores), callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(M(), data, data)
    return cb


def test_checkpoint_ties_go_to_the_latest_epoch_as_the_official_code(tmp_path):
    scores = [0.70, 0.80, 0.80, 0.75, 0.80, 0.78]
    cb = _fit_scripted(tmp_path / "latest", scores)
    assert cb.best_model_path.endswith("best-epoch=4.ckpt") and float(cb.best_model_score) == pytest.approx(0.8)
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["best-epoch=4.ckpt"]
    cb = _fit_scripted(tmp_path / "first", scores, ties="first")  # Lightning's strict rule, on request
    assert cb.best_model_path.endswith("best-epoch=1.ckpt")
    with pytest.raises(ValueError, match="ties must be"):
        _fit_scripted(tmp_path / "bad", scores, ties="middle")


def test_shipped_configs_select_checkpoints_by_the_official_rule():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs" / "wsi"
    for p in sorted(root.glob("*.yaml")):
        cfg = yaml.safe_load(p.read_text())
        cbs = [c for c in cfg["trainer"]["callbacks"] if "Checkpoint" in c["class_path"]]
        assert [c["class_path"] for c in cbs] == ["mgpath.selection.BestCheckpoint"], p.name
        assert cbs[0]["init_args"]["ties"] == "latest" and cbs[0]["init_args"]["monitor"] == "val/f1", p.name


def test_fold_summary_reports_the_official_std_and_the_sample_std(tmp_path):
    from mgpath.folds import summarise

    vals = [0.91, 0.85, 0.88, 0.80, 0.95]
    table = summarise([{"fold": k, "auc": v, "f1": v - 0.1, "acc": v - 0.05} for k, v in enumerate(vals)], tmp_path)
    assert table.loc["std_ddof0", "auc"] == pytest.approx(np.std(vals))  # official main.py (row 'var')
    assert table.loc["std", "auc"] == pytest.approx(np.std(vals, ddof=1))
    md = (tmp_path / "results.md").read_text()
    assert "ddof 1" in md and "np.std, as the official main.py, which labels it 'var'" in md
    assert f"auc {np.mean(vals):.4f} ± {np.std(vals):.4f}" in md


def test_start_from_plip_g_alignment_through_the_cli(tmp_path, capsys):
    """The official few-shot training starts from the PLIP-G alignment file: adaptors, temperature and tower
    load, context / visual prompts / graph / norm keep their fresh initialisation; then `mgpath fit` runs."""
    from pathlib import Path

    import yaml
    from test_mgpath_official import (
        DESC,
        DIN,
        HEADS,
        NCTX,
        NSETS,
        ROWS,
        M,
        _slide,
        official_checkpoints,
        reference_forward,
    )
    from test_mgpath_train import _datamodule

    from mgpath.cli import main as mgpath_main
    from mgpath.module import MGPATHModule

    ft, align, tokens = official_checkpoints()
    torch.save({"model_state_dict": align}, tmp_path / "clip_mlp_weights_dual_tokenSave_plip_best.pth")
    (tmp_path / "prompts.csv").write_text("\n".join(ROWS) + "\n")
    conv = tmp_path / "plipg.pt"
    assert mgpath_main(["import-official", "--ckpt_path", str(tmp_path / "clip_mlp_weights_dual_tokenSave_plip_best.pth"),
                        "--descriptions", str(tmp_path / "prompts.csv"), "--classes", "LUAD", "LUSC",
                        "--heads", str(HEADS), "--out", str(conv)]) == 0
    saved = torch.load(conv, weights_only=True)
    assert "text.prompts.ctx" not in saved["state_dict"] and "visual.prompts" not in saved["state_dict"]
    block = yaml.safe_load(conv.with_suffix(".yaml").read_text())["model"]
    assert block["init_checkpoint"] == str(conv.resolve()) and block["ot"] == {"backend": "plot"}

    torch.manual_seed(0)
    assert block.get("n_ctx", 16) == 16  # the official defaults (16 ctx x 4 sets, 64 prompts) unless overridden
    module = MGPATHModule(**{**block, "n_ctx": NCTX, "n_sets": NSETS, "n_prompts": M}, classes=["LUAD", "LUSC"])
    module.eval()
    m = module.model
    torch.testing.assert_close(m.text.adaptor.linear1.weight, align["TextMLP.linear1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(m.visual.adaptor.linear2.bias, align["ImageMLP.linear2.bias"], rtol=0, atol=0)
    torch.testing.assert_close(m.logit_scale, align["temperature"], rtol=0, atol=0)
    assert m.text.prompts.ctx.std() < 0.05 and m.visual.prompts.std() < 0.05  # fresh (std 0.02) initialisation
    # the official MGPATH built on PLIP-G with these fresh parts gives the same logits
    ref = dict(ft)
    ref.update({k.replace("TextMLP", "text_encoder.proj"): v for k, v in align.items() if k.startswith("TextMLP")})
    ref.update({k: v for k, v in align.items() if k.startswith("ImageMLP")})
    ref.update({"logit_scale": align["temperature"], "prompt_learner.ctx": m.text.prompts.ctx.detach(),
                "learnable_image_center": m.visual.prompts.detach()[:, None],
                "norm.weight": m.visual.norm.weight.detach(), "norm.bias": m.visual.norm.bias.detach(),
                "graph.lin.weight": m.visual.graph.lin.weight.detach(), "graph.bias": m.visual.graph.bias.detach(),
                "graph.att_src": m.visual.graph.att_src.detach().reshape(1, 1, -1),
                "graph.att_dst": m.visual.graph.att_dst.detach().reshape(1, 1, -1)})
    ref_slide, our_slide = _slide()
    with torch.no_grad():
        torch.testing.assert_close(module([our_slide])[0], reference_forward(ref, tokens, ref_slide), atol=1e-4,
                                   rtol=1e-4)
    # to the end: fit + test through the CLI with the written model block
    _datamodule(tmp_path, classes=("LUAD", "LUSC"), n_per_class=8, dim=DIN)
    root = Path(__file__).resolve().parents[2]
    args = ["--config", str(root / "configs/wsi/demo_tiny.yaml"), "--config", str(conv.with_suffix(".yaml")),
            "--data.classes", "[LUAD, LUSC]", "--data.labels_csv", str(tmp_path / "labels.csv"),
            "--data.split_csv", str(tmp_path / "splits" / "splits_{fold}.csv"),
            "--data.features_root", str(tmp_path / "features"), "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert mgpath_main(["fit", *args]) == 0
    best = sorted((tmp_path / "run").rglob("best-*.ckpt"))
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best checkpoint")]
    assert len(best) == 1 and shown and shown[0].endswith(f": {best[0]}")  # fit says where the best model went
    assert best and mgpath_main(["test", *args, "--ckpt_path", str(best[0])]) == 0
    assert DESC["5x"]["LUAD"] in ROWS


def test_ot_settings_are_one_nested_block_and_flat_keys_are_deprecated_aliases():
    from pathlib import Path

    import yaml

    from mgpath.module import ot_config
    from mgpath.ot import OTConfig

    assert ot_config({"eps": 0.2, "reg_m": 10.0}) == OTConfig(eps=0.2, reg_m=10.0)
    with pytest.warns(FutureWarning, match=r"write them as a nested block `ot: \{eps: 0.2\}`"):
        assert ot_config(None, ot_eps=0.2) == OTConfig(eps=0.2)
    with pytest.warns(FutureWarning):
        assert ot_config({"max_iter": 7}, ot_backend="pot") == OTConfig(max_iter=7, backend="pot")
    for p in sorted((Path(__file__).resolve().parents[2] / "configs" / "wsi").glob("*.yaml")):
        model = yaml.safe_load(p.read_text())["model"]
        assert not [k for k in model if k.startswith("ot_")], p.name
