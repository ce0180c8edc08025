"""The reproduction pipeline end to end on a miniature 2-task VTAB-1k tree (grid -> seeds -> report),
resuming after an interrupted run, and 2-process DDP on CPU (gloo) matching 1 process."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from vapt.data.synthetic import write_vtab_tree
from vapt.training.lightning_cli import main
from vapt.training.module import PromptTuningModule
from vapt.training.tune import parse_grid, tune

REPO = Path(__file__).resolve().parents[2]
TINY = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 1}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_vtab_tree(tmp_path_factory.mktemp("vtab") / "vtab-1k", ["dtd", "eurosat"],
                           sizes={"train800": 8, "val200": 4, "test": 8}, img_size=12)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=0, **TINY).state_dict(), path)
    return str(path)


def run_args(root, backbone_file, epochs=2) -> list[str]:
    """Overrides that make every shipped config tiny and deterministic (no dropout)."""
    return [f"--data.root={root}", f"--model.checkpoint={backbone_file}", f"--model.backbone_kwargs={json.dumps(TINY)}",
            "--data.img_size=16", "--data.batch_size=4", "--data.num_workers=0", f"--trainer.max_epochs={epochs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.accelerator=cpu", "--trainer.devices=1"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_seeds_report_end_to_end(tree, backbone_file, tmp_path):
    out = tmp_path / "runs"
    repro = load_script("reproduce_vtab")
    rc = repro.main(["--root", str(tree), "--out", str(out), "--tasks", "dtd,eurosat", "--methods", "vapt,linear",
                     "--fast", "--grid", "lr=1,0.1;wd=0.001", "--seeds", "1,2", "--model.dropout=0",
                     "--model.mlp_dropout=0", "--model.warmup_epochs=1", *run_args(tree, backbone_file)[1:]])
    assert rc == 0
    for task in ("dtd", "eurosat"):
        for method in ("vapt", "linear"):
            base = out / task / method
            summary = json.loads((base / "summary.json").read_text())
            grid = {p.name: json.loads((p / "result.json").read_text()) for p in (base / "grid").iterdir()}
            assert sorted(grid) == ["lr0.1_wd0.001", "lr1_wd0.001"]  # fast: wd sweep at lr 1, then lr sweep
            accs = {k: v["metrics"]["val/acc"] for k, v in grid.items()}
            best = "lr1_wd0.001" if accs["lr1_wd0.001"] >= accs["lr0.1_wd0.001"] else "lr0.1_wd0.001"
            assert f"lr{summary['best_lr']:g}_wd{summary['best_wd']:g}" == best  # ties -> higher lr
            seeds = [json.loads((base / "final" / f"seed{s}" / "result.json").read_text()) for s in (1, 2)]
            tests = [r["metrics"]["test/acc"] for r in seeds]
            assert summary["test_acc"] == pytest.approx(tests)
            assert summary["test_acc_mean"] == pytest.approx(sum(tests) / 2)
            assert all(r["overrides"]["data.init_args.train_split"] == "train800val200" for r in seeds)
            assert grid[best]["overrides"]["data.init_args.train_split"] == "train800"
    with open(out / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    dtd_linear = next(r for r in rows if r["name"] == "dtd" and r["method"] == "linear")
    ours = 100 * json.loads((out / "dtd/linear/summary.json").read_text())["test_acc_mean"]
    assert float(dtd_linear["ours"]) == pytest.approx(ours)
    assert float(dtd_linear["published"]) == 63.2 and float(dtd_linear["delta"]) == pytest.approx(ours - 63.2)
    natural = next(r for r in rows if r["name"] == "natural" and r["method"] == "linear")
    assert natural["note"] == "1/7" and float(natural["published"]) == 63.2  # same-task published mean
    mean = next(r for r in rows if r["name"] == "mean" and r["method"] == "vapt")
    assert mean["note"] == "2/19" and mean["published"] == ""  # VAPT: only full-group numbers are published
    md = (out / "report.md").read_text()
    assert "| dtd |" in md and "**structured**" not in md and "VTAB-1k top-1" in md
    with Image.open(out / "report.png") as im:
        assert im.size[0] > 500 and im.size[1] > 200


def test_interrupted_run_resumes_and_finished_runs_are_skipped(tree, backbone_file, tmp_path, monkeypatch):
    args = ["--config", str(REPO / "configs/vtab/vpt_deep/eurosat.yaml"), "--model.dropout=0.2",  # resume is exact
            "--model.warmup_epochs=1", "--model.num_tokens=2", *run_args(tree, backbone_file, epochs=3)]
    kw = {"grid": "lr=1,0.1;wd=0", "seeds": [7], "name": "eurosat/vpt_deep", "log": lambda *a: None}
    reference = tune(args, tmp_path / "a", **kw)

    calls = {"n": 0}
    original = PromptTuningModule.on_train_epoch_start

    def killed(self):
        calls["n"] += 1
        if calls["n"] == 6:  # run 1 has epochs 0-2 (calls 1-3); die at the start of run 2's epoch 2
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(PromptTuningModule, "on_train_epoch_start", killed)
    with pytest.raises(RuntimeError, match="simulated kill"):
        tune(args, tmp_path / "b", **kw)
    monkeypatch.setattr(PromptTuningModule, "on_train_epoch_start", original)
    grid = tmp_path / "b" / "eurosat" / "vpt_deep" / "grid"
    first, second = grid / "lr1_wd0" / "result.json", grid / "lr0.1_wd0" / "result.json"
    assert first.is_file() and not second.is_file()
    assert list((grid / "lr0.1_wd0").rglob("*.ckpt"))
    stamp = first.stat().st_mtime_ns
    # a full disk left a newer checkpoint cut short under its final name: named, skipped, not blocking
    ckpt_dir = next((grid / "lr0.1_wd0").rglob("checkpoints"))
    truncated = ckpt_dir / "epoch=2-step=8.ckpt"
    truncated.write_bytes(next(ckpt_dir.glob("epoch=1-*.ckpt")).read_bytes()[:500])
    said: list[str] = []

    resumed = tune(args, tmp_path / "b", **{**kw, "log": said.append})
    assert any(f"skipping {truncated}" in line for line in said)
    assert first.stat().st_mtime_ns == stamp  # finished run not redone
    res = json.loads(second.read_text())
    assert res["resumed_from"] and "epoch=1" in res["resumed_from"]
    ref = json.loads((tmp_path / "a/eurosat/vpt_deep/grid/lr0.1_wd0/result.json").read_text())
    assert res["metrics"]["val/loss"] == pytest.approx(ref["metrics"]["val/loss"], abs=1e-6)
    assert resumed["grid"] == reference["grid"] and resumed["test_acc"] == reference["test_acc"]


def test_grid_parsing():
    assert parse_grid(None)[0][:3] == (50.0, 25.0, 10.0) and parse_grid("official")[1] == (0.01, 0.001, 0.0001, 0.0)
    assert parse_grid("lr=2,1;wd=0") == ((2.0, 1.0), (0.0,))
    with pytest.raises(ValueError, match="unknown key 'momentum'"):
        parse_grid("momentum=0.9")


def test_ddp_two_cpu_processes_match_one(tree, backbone_file, tmp_path):
    """Full-batch steps (8 images: 1 x 8 or 2 x 4 per rank) make the two runs mathematically identical."""
    results = {}
    for devices, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"d{devices}"
        cmd = [sys.executable, "-m", "vapt.cli", "fit", "--config", str(REPO / "configs/vtab/vpt_deep/dtd.yaml"),
               *run_args(tree, backbone_file, epochs=3), f"--data.batch_size={batch}", "--model.dropout=0",
               "--model.warmup_epochs=1", "--model.num_tokens=2", "--data.train_split=train800",
               "--data.val_split=val200", f"--trainer.devices={devices}", "--trainer.strategy=ddp" if devices > 1
               else "--trainer.strategy=auto", f"--trainer.default_root_dir={out}", f"--result_json={out}/r.json"]
        if devices == 1:  # the reference runs in-process (saves a Python start-up)
            assert main(cmd[3:]) == 0
        else:  # Lightning's DDP launcher re-runs this command line once per extra rank
            env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                                  check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads((out / "r.json").read_text())
        results[devices]["state"] = torch.load(results[devices]["checkpoint"], weights_only=False)["state_dict"]
    one, two = results[1], results[2]
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["effective_lr"] == two["effective_lr"]  # global batch 8 in both
    assert one["global_step"] == two["global_step"] == 3  # 3 epochs x 1 full-batch step
    for key in ("val/loss", "val/acc", "train/loss"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], abs=1e-5), key
    assert set(one["state"]) == set(two["state"])
    for k in one["state"]:
        assert torch.allclose(one["state"][k], two["state"][k], atol=1e-5), k
