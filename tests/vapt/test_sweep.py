"""The sweep at the limit, checked against separate Lightning runs (CPU, bit for bit):

- the cached frozen trunk (linear probe) and K configurations in one pass give every configuration the metrics
  and trained tensors of its own run, with dropout on too (per-configuration random streams);
- a sweep through submitit with 2 local worker processes gives the sequential runner's summary, and after a
  job dies it resumes: finished runs kept, the dead run resumed from its checkpoint;
- ``vapt tune --help`` imports neither torch nor Lightning;
- ``--estimate`` predicts the sweep from measured steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from vapt.data.synthetic import write_vtab_tree
from vapt.training.decoded import transform_is_deterministic
from vapt.training.runs import run_specs
from vapt.training.trunk_cache import FrozenPrefix, TrunkCache, frozen_prefix
from vapt.training.tune import final_spec, main, tune

REPO = Path(__file__).resolve().parents[2]
TINY = {"patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2}
GRID = {"grid": "lr=2,0.5;wd=0", "seeds": [1, 2]}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_vtab_tree(tmp_path_factory.mktemp("vtab") / "vtab-1k", ["eurosat"],
                           sizes={"train800": 10, "val200": 6, "test": 7}, img_size=12)


def write_backbone(folder: Path, tiny: dict) -> str:
    path = folder / "tiny_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=0, **tiny).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    return write_backbone(tmp_path_factory.mktemp("weights"), TINY)


def run_args(method: str, root, backbone_file, *extra: str, tiny: dict = TINY) -> list[str]:
    return ["--config", str(REPO / "configs/vtab" / method / "eurosat.yaml"), f"--data.root={root}",
            f"--model.checkpoint={backbone_file}", f"--model.backbone_kwargs={json.dumps(tiny)}",
            "--data.img_size=16", "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=3",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--model.warmup_epochs=1", *extra]


@pytest.fixture(scope="module")
def sequential_linear(tree, backbone_file, tmp_path_factory):
    """The linear probe swept by the sequential runner: separate Lightning runs."""
    out = tmp_path_factory.mktemp("sequential")
    summary = tune(run_args("linear", tree, backbone_file), out, log=lambda *a: None, **GRID)
    return out, summary


def trained(run_dir: Path) -> dict[str, torch.Tensor]:
    """Trainable tensors of a run: the stacked pass's file, or the separate run's last checkpoint."""
    stacked = run_dir / "trainable.safetensors"
    if stacked.is_file():
        return load_file(stacked)
    ckpt = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def assert_same_runs(a: Path, b: Path, tensors: bool = True) -> None:
    dirs = sorted(p.parent.relative_to(a) for p in a.rglob("result.json"))
    assert dirs and dirs == sorted(p.parent.relative_to(b) for p in b.rglob("result.json"))
    for d in dirs:
        ra, rb = (json.loads((x / d / "result.json").read_text()) for x in (a, b))
        assert ra["metrics"] == rb["metrics"], d
        assert ra["effective_lr"] == rb["effective_lr"] and ra["epochs"] == rb["epochs"]
        if tensors:
            ta, tb = trained(a / d), trained(b / d)
            assert sorted(ta) == sorted(tb) and ta
            for k in ta:
                assert torch.equal(ta[k], tb[k]), (d, k)


def test_cached_trunk_and_stacked_linear_equal_separate_runs(tree, backbone_file, sequential_linear, tmp_path):
    reference, summary = sequential_linear
    out = tmp_path / "stacked"
    stacked = tune(run_args("linear", tree, backbone_file), out, stack=2, log=lambda *a: None, **GRID)
    assert stacked == summary
    assert_same_runs(reference, out)
    engines = {json.loads(p.read_text())["engine"] for p in out.rglob("result.json")}
    assert engines == {"stacked x2 + cached trunk"}  # two lrs, then two seeds, each stage in one pass
    # one file per (split, key): train800, val200, train800val200, test
    files = sorted((out / "trunk_cache").glob("*.safetensors"))
    assert len(files) == 4
    # the cached features are the model's own trunk output, bit for bit
    from vapt.training.lightning_cli import build_cli

    cli = build_cli(run_args("linear", tree, backbone_file, "--trainer.logger=false", "--data.train_split=train800"),
                    run=False)
    cli.datamodule.setup("fit")
    ds, model = cli.datamodule.datasets["train"], cli.model.model.eval()
    feats = TrunkCache(out / "trunk_cache").features(model, ds, cli.model.hparams.backbone, batch_size=4)
    assert sorted((out / "trunk_cache").glob("*.safetensors")) == files  # read, not recomputed
    with torch.no_grad():
        direct = model.forward_features(torch.stack([ds[i][0] for i in range(len(ds))]))
    assert torch.equal(feats, direct)


def test_stacked_prompts_with_dropout_equal_separate_runs(tree, tmp_path):
    """VAPT on a 3-block ViT with ``vpt_depth=2``: block 0 gets the static input prompts, block 1 static deep
    prompts (the VPT-deep path), block 2 adaptive ones; prompt dropout, Dropout2d and MLP dropout all at 0.3.
    Two seeds in one pass: two initialisations, two data orders, two random streams, and the test split
    streamed through the DataModule's loader."""
    tiny = {**TINY, "depth": 3}
    args = run_args("vapt", tree, write_backbone(tmp_path, tiny), "--model.dropout=0.3", "--model.mlp_dropout=0.3",
                    "--model.conv_dropout=0.3", "--model.num_tokens=2", "--model.vpt_depth=2", tiny=tiny)
    protocol = {"final": {"train_split": "train800val200", "val_split": None, "test_split": "test"}}

    def specs(out):
        return [final_spec(out, protocol, 2.0, 0.0, seed) for seed in (1, 2)]

    run_specs(args, specs(tmp_path / "separate"), stack=0, log=lambda *a: None)
    run_specs(args, specs(tmp_path / "stacked"), stack=2, log=lambda *a: None)
    assert_same_runs(tmp_path / "separate", tmp_path / "stacked")
    keys = trained(tmp_path / "stacked" / "final" / "seed1")
    assert {"prompts.deep_prompt_embeddings", "prompts.downsamples.0.kernel", "head.weight"} <= set(keys)
    accs = [json.loads(p.read_text())["metrics"]["test/acc"] for p in (tmp_path / "stacked").rglob("result.json")]
    assert len(accs) == 2


KILLER = """
import os, signal
from pathlib import Path
from lightning.pytorch.callbacks import Callback


class KillOnce(Callback):
    \"\"\"SIGKILL this process when run folder ``run`` starts epoch ``epoch``, once (while ``marker`` exists).\"\"\"

    def __init__(self, marker: str, run: str, epoch: int = 2):
        self.marker, self.run, self.epoch = marker, run, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        here = Path(trainer.default_root_dir).name == self.run and trainer.current_epoch == self.epoch
        if here and os.path.exists(self.marker):
            os.remove(self.marker)
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_local_cluster_sweep_equals_sequential_and_resumes(tree, backbone_file, sequential_linear, tmp_path, capsys,
                                                           monkeypatch):
    """The grid stage's finished runs are the sequential runner's (copied: each worker process costs a torch +
    Lightning import), so the seeds stage is the one that goes through the engine: 2 seeds on 2 local workers."""
    import shutil

    reference, summary = sequential_linear
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "killonce.py").write_text(KILLER)
    monkeypatch.syspath_prepend(str(helpers))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]))
    marker = tmp_path / "kill-once"
    marker.touch()
    killer = {"class_path": "killonce.KillOnce", "init_args": {"marker": str(marker), "run": "seed2"}}
    out = tmp_path / "cluster"
    grid = out / "eurosat/linear/grid"
    shutil.copytree(reference / "eurosat/linear/grid", grid)
    for p in grid.rglob("result.json"):  # made without the killing callback: kept as results without identity
        p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "identity"}))
    kept = {p: p.stat().st_mtime_ns for p in grid.rglob("result.json")}
    assert len(kept) == 2
    argv = [*run_args("linear", tree, backbone_file), f"--trainer.callbacks+={json.dumps(killer)}",
            "--grid", GRID["grid"], "--seeds", "1,2", "--out", str(out), "--cluster", "local", "--workers", "2"]
    # the worker training seed 2 is killed (SIGKILL) as its epoch 2 starts; the other worker finishes seed 1
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vapt tune: SweepError: 1 of 2 job(s) failed") and "Rerun the same command" in err
    assert not marker.exists()
    other = out / "eurosat/linear/final/seed1/result.json"
    assert other.is_file() and not (out / "eurosat/linear/final/seed2/result.json").exists()
    assert not (out / "eurosat/linear/summary.json").exists()
    kept[other] = other.stat().st_mtime_ns
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished runs kept
    resumed = json.loads((out / "eurosat/linear/final/seed2/result.json").read_text())
    assert resumed["resumed_from"] and "epoch=1" in Path(resumed["resumed_from"]).name
    assert json.loads((out / "eurosat/linear/summary.json").read_text()) == summary
    assert_same_runs(reference, out, tensors=False)


def test_estimate_prints_predicted_hours(tree, backbone_file, tmp_path, capsys):
    argv = [*run_args("linear", tree, backbone_file), "--out", str(tmp_path), "--estimate", "--estimate_steps", "1",
            "--stack", "4", "--fast"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["grid_runs"] == 13 and report["seeds"] == 5 and report["cached_trunk"] is True
    assert report["sizes"] == {"tune": 10, "val": 6, "final": 16, "test": 7}
    steps = {"tune": 3, "val": 2, "final": 4, "test": 2}  # batch 4
    train, head, trunk = report["train_step_s"], report["head_step_s"], report["trunk_step_s"]
    assert train > 0 and head > 0 and trunk > 0
    expected_grid = 4 * (3 * steps["tune"] * head + steps["val"] * head / 2) / 3600  # ceil(13 / 4) passes
    assert report["grid_h"] == pytest.approx(expected_grid, rel=1e-9)
    assert report["final_h"] == pytest.approx(2 * 3 * steps["final"] * head / 3600, rel=1e-9)  # ceil(5 / 4)
    assert report["trunk_h"] == pytest.approx((steps["final"] + steps["test"]) * trunk / 3600, rel=1e-9)
    total = sum(report[k] for k in ("grid_h", "final_h", "test_h", "trunk_h"))
    assert report["total_h"] == pytest.approx(total, rel=1e-9)


def test_frozen_prefix_and_deterministic_transforms(tmp_path):
    from PIL import Image
    from torchvision import transforms as T

    from vapt.data.base import ListDataset
    from vapt.data.transforms import fgvc_eval_transform, fgvc_train_transform, vtab_transform
    from vapt.prompts import PromptConfig
    from vapt.training.decoded import decoded_split
    from vapt.training.sweep_errors import SweepError

    assert frozen_prefix(PromptConfig(method="linear"), 12) == FrozenPrefix(12, whole_trunk=True)
    assert frozen_prefix("vapt", 12) == FrozenPrefix(0) and frozen_prefix("vpt", 12).blocks == 0

    class Declared:  # a method that says itself which blocks it leaves alone
        def frozen_prefix(self, depth):
            return FrozenPrefix(depth - 2)

    assert frozen_prefix(Declared(), 12) == FrozenPrefix(10)
    assert transform_is_deterministic(vtab_transform(32)) and transform_is_deterministic(fgvc_eval_transform(32))
    assert not transform_is_deterministic(fgvc_train_transform(32))
    assert not transform_is_deterministic(T.Compose([T.ToTensor(), T.ColorJitter(0.1)]))
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "a.png")
    images, labels = decoded_split(ListDataset([(str(tmp_path / "a.png"), 3)], vtab_transform(8)))
    assert images.shape == (1, 3, 8, 8) and labels.tolist() == [3]
    with pytest.raises(SweepError, match="draws random numbers"):
        decoded_split(ListDataset([(str(tmp_path / "a.png"), 0)], fgvc_train_transform(8)))


def test_tune_help_imports_neither_torch_nor_lightning():
    code = ("import sys\nfrom vapt.cli import main\ntry:\n    main(['tune', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'pytorch_lightning'}))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--cluster" in proc.stdout and "--estimate" in proc.stdout  # the help was printed
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_stacked_rerun_with_changed_settings_is_stale_and_a_held_run_is_not_retrained(
        tree, backbone_file, sequential_linear, tmp_path, capsys):
    """``--stack 2`` applies the sequential runner's checks: a finished run made with other settings is refused
    (one line, exit 2, results untouched) and a run folder locked by a live process is not trained."""
    import hashlib
    import shutil
    import socket

    reference, _ = sequential_linear
    out = tmp_path / "rerun"
    shutil.copytree(reference, out)
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("result.json")}
    assert len(digest) == 4
    changed = [*run_args("linear", tree, backbone_file, "--model.warmup_epochs=2"), "--grid", GRID["grid"],
               "--seeds", "1,2", "--out", str(out), "--stack", "2"]
    assert main(changed) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vapt tune: ") and "stale: " in err[0]
    assert "warmup_epochs=2" in err[0] and "pass --overwrite" in err[0]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("result.json")} == digest

    fresh = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = fresh / "eurosat/linear/.locks/grid_lr2_wd0.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        argv = [*run_args("linear", tree, backbone_file), "--grid", GRID["grid"], "--seeds", "1,2",
                "--out", str(fresh), "--stack", "2"]
        assert main(argv) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"being trained by another vapt tune (pid {holder.pid}" in err[0]
    assert not list(fresh.rglob("result.json")) and not list(fresh.rglob("*.safetensors"))
