"""User errors and faults at the edges of ``vapt`` (and ``mgpath``): each is one line, exit 2, nothing lost.

All cases run in ONE interpreter through ``tests/cli_driver.py`` (each calls the tool's ``main(argv)``, as
``python -m vapt.cli`` does; a full disk is a ``torch.save`` made to fail with ENOSPC). Classes covered:
5 (two runs into one folder: version folders, predictions files, tune grid points), 4 (``fit --ckpt_path
last`` after a change is stale) and 8 (one-line errors: full disk, read-only output and HOME cache
folders, checkpoints whose shapes do not fit, YAML tags that would build objects, damaged JSON results,
unknown backbones).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_driver import run_cases

from vapt.data.synthetic import write_vtab_tree
from vapt.fileio.locks import process_start
from vapt.training.run_folders import claim_version

REPO = Path(__file__).resolve().parents[2]
TINY = json.dumps({"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1})
READ_ONLY = Path("/sys/kernel")  # read-only even for root (a chmod 500 folder is not, and tests may run as root)


def fit_args(root: Path, runs, *extra: str, sub: str = "fit", task: str = "dtd") -> list[str]:
    return [sub, "--config", str(REPO / f"configs/vtab/vapt/{task}.yaml"), f"--data.root={root}",
            "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}", "--data.img_size=16",
            "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={runs}", *extra]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every case of the module, run in order in one driver process: ``(folder, results)``."""
    base = tmp_path_factory.mktemp("edges")
    root = write_vtab_tree(base / "vtab-1k", ["dtd", "svhn"], sizes={"train800": 4, "val200": 2, "test": 2},
                           img_size=16)
    runs = base / "runs"
    (base / "evil.yaml").write_text(f"trainer: !!python/object/apply:os.system ['touch {base / 'PWNED'}']\n")
    (base / "vruns" / "dtd" / "vapt").mkdir(parents=True)
    (base / "vruns" / "dtd" / "vapt" / "summary.json").write_text('{"task": "dtd", "meth')
    (base / "bench" / "mgpath" / "fold_0").mkdir(parents=True)
    (base / "bench" / "mgpath" / "fold_0" / "result.json").write_text('{"fold": 0, "auc": 0.')
    tune_out, resumed = base / "tune", base / "tune_resumed"
    (resumed / "dtd" / "vapt" / "grid" / "lr1_wd0").mkdir(parents=True)
    (resumed / "dtd" / "vapt" / "grid" / "lr1_wd0" / "result.json").write_text('{"metrics": {"val/acc": 0.')
    grid_lock = tune_out / "dtd" / "vapt" / ".locks" / "grid_lr1_wd0.lock"
    grid_lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a live "other run"
    grid_lock.write_text(json.dumps({"host": os.uname().nodename, "pid": other.pid, "start": process_start(other.pid)}))
    dtd_ckpt = runs / "dtd" / "vapt" / "version_0" / "checkpoints" / "last.ckpt"
    preds = runs / "predictions.csv"
    last = "--ckpt_path=last"
    cases = [
        ("good fit", fit_args(root, runs)),
        ("second fit into the same folder", fit_args(root, runs)),
        ("predict", fit_args(root, runs, last, sub="predict")),
        ("predict again", fit_args(root, runs, last, sub="predict")),
        ("predict to an existing --predictions_csv", fit_args(root, runs, last, f"--predictions_csv={preds}",
                                                               sub="predict")),
        ("fit --ckpt_path last after num_tokens changed", fit_args(root, runs, last, "--model.init_args.num_tokens=3")),
        ("the same with --overwrite: shapes do not fit", fit_args(root, runs, last, "--model.init_args.num_tokens=3",
                                                                  "--overwrite=true")),
        ("47-class checkpoint on a 10-class task", fit_args(root, base / "svhn_runs", f"--ckpt_path={dtd_ckpt}",
                                                            sub="test", task="svhn")),
        ("disk full while checkpointing", fit_args(root, base / "full_disk")),
        ("read-only output folder", fit_args(root, READ_ONLY / "vapt_runs")),
        ("read-only HOME (cache folder)", ["fit", "--config", "demo", "--data.train_size=8", "--data.val_size=4",
                                           "--data.test_size=4", f"--trainer.default_root_dir={base / 'demo'}"]),
        ("config YAML with a !!python tag (vapt)", fit_args(root, runs, "--config", str(base / "evil.yaml"))),
        ("config YAML with a !!python tag (mgpath)", ["fit", "--config", str(base / "evil.yaml")]),
        ("truncated summary.json in vapt report", ["report", str(base / "vruns")]),
        ("unknown backbone in vapt summary", ["summary", "no_such_vit"]),
        ("truncated result.json in mgpath report", ["report", str(base / "bench")]),
        ("tune grid point another run is training", [
            "tune", "--config", str(REPO / "configs/vtab/vapt/dtd.yaml"), f"--data.root={root}",
            "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}", "--data.img_size=16", "--grid",
            "lr=1;wd=0", "--seeds", "1", "--out", str(tune_out), "--trainer.max_epochs=1"]),
        ("truncated result.json in a vapt tune resume", [
            "tune", "--config", str(REPO / "configs/vtab/vapt/dtd.yaml"), f"--data.root={root}",
            "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}", "--data.img_size=16", "--grid",
            "lr=1;wd=0", "--seeds", "1", "--out", str(resumed), "--trainer.max_epochs=1"]),
    ]
    specs = []
    for name, argv in cases:
        spec = {"name": name, "prog": "mgpath" if "mgpath" in name else "vapt", "argv": argv, "cwd": str(base),
                "digest": [str(runs)]}
        if name == "disk full while checkpointing":
            spec["patch"] = "enospc"
        if name.startswith("read-only HOME"):
            spec["env"] = {"HOME": str(READ_ONLY)}
        specs.append(spec)
    try:
        results = run_cases(specs)
    finally:
        other.kill()
        other.wait()
    for name, r in results.items():
        ours = [ln for ln in r["stderr"].splitlines() if ln.startswith(("vapt ", "mgpath "))]
        print(f"| {name} | {r['code']} | {(ours or ['-'])[-1][:200]} |")
    return base, results


def one_line(result: dict, *named: str) -> str:
    """The case exited 2 with its last stderr line its only own line, naming each of ``named``; that line."""
    err = [ln for ln in result["stderr"].splitlines() if ln.strip()]
    ours = [ln for ln in err if ln.startswith(("vapt ", "mgpath "))]
    assert result["code"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"] and len(ours) == 1 and ours[0] == err[-1], err[-6:]
    for text in named:
        assert text in ours[0], (text, ours[0])
    return ours[0]


def unchanged(results: dict, after: str, later: str) -> None:
    """Every file of the runs folder after case ``after`` is there, byte for byte, after case ``later``."""
    a, b = results[after]["digest"], results[later]["digest"]
    for folder, files in a.items():
        assert all(b[folder].get(k) == v for k, v in files.items()), (after, later)


# -- class 5: two runs into one folder ------------------------------------------------------------------
def test_fits_get_their_own_version_folder(ran):
    base, results = ran
    assert results["good fit"]["code"] == 0 and results["second fit into the same folder"]["code"] == 0
    versions = base / "runs" / "dtd" / "vapt"
    assert (versions / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (versions / "version_1" / "checkpoints" / "last.ckpt").is_file()
    unchanged(results, "good fit", "second fit into the same folder")


def _claim(folder: str, queue) -> None:
    queue.put(claim_version(folder))


def test_version_folders_are_claimed_atomically(tmp_path):
    """Six runs starting together get six different version numbers (each folder created by its claimer)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    assert got == list(range(6)) and sorted(p.name for p in tmp_path.iterdir()) == [f"version_{i}" for i in range(6)]


def test_predict_never_replaces_earlier_predictions(ran):
    base, results = ran
    assert results["predict"]["code"] == 0 and results["predict again"]["code"] == 0, results["predict again"]["stderr"]
    first = results["predict"]["digest"][str(base / "runs")]["predictions.csv"]
    again = results["predict again"]["digest"][str(base / "runs")]
    assert again["predictions.csv"] == first and "predictions_2.csv" in again  # the second went beside it
    assert (base / "runs" / "predictions_2.csv").read_text().startswith("path,label,label_name,pred,pred_name,prob")
    one_line(results["predict to an existing --predictions_csv"], str(base / "runs" / "predictions.csv"),
             "exists")
    unchanged(results, "predict again", "predict to an existing --predictions_csv")


def test_a_grid_point_another_tune_is_training_is_left_to_it(ran):
    base, results = ran
    one_line(results["tune grid point another run is training"], str(base / "tune" / "dtd" / "vapt" / "grid"),
             "another vapt tune")
    assert not (base / "tune" / "dtd" / "vapt" / "grid" / "lr1_wd0").exists()  # nothing written there


# -- class 4: --ckpt_path last after a change ------------------------------------------------------------
def test_resuming_after_a_settings_change_is_stale(ran):
    base, results = ran
    line = one_line(results["fit --ckpt_path last after num_tokens changed"], "stale:", "num_tokens", "--overwrite",
                    str(base / "runs" / "dtd" / "vapt"))
    assert "10 -> 3" in line
    unchanged(results, "predict to an existing --predictions_csv", "fit --ckpt_path last after num_tokens changed")


# -- class 8: one line ----------------------------------------------------------------------------------
def test_checkpoints_whose_shapes_do_not_fit_are_one_line(ran):
    base, results = ran
    one_line(results["the same with --overwrite: shapes do not fit"], "does not fit this model", "prompt_embeddings",
             str(base / "runs" / "dtd" / "vapt"))
    one_line(results["47-class checkpoint on a 10-class task"], "does not fit this model", "10 classes",
             str(base / "runs" / "dtd" / "vapt" / "version_0" / "checkpoints" / "last.ckpt"))


def test_file_system_refusals_are_one_line(ran):
    base, results = ran
    line = one_line(results["disk full while checkpointing"], "No space left", str(base / "full_disk"), "checkpoint")
    assert "--ckpt_path last" in line
    assert not list((base / "full_disk").rglob("*.ckpt")) and not list((base / "full_disk").rglob("*.tmp"))
    one_line(results["read-only output folder"], str(READ_ONLY / "vapt_runs"))
    one_line(results["read-only HOME (cache folder)"], str(READ_ONLY / ".cache"))


def test_yaml_tags_are_refused_in_one_line_and_never_run(ran):
    base, results = ran
    for prog in ("vapt", "mgpath"):
        line = one_line(results[f"config YAML with a !!python tag ({prog})"], str(base / "evil.yaml"), "line 1")
        assert line.startswith(f"{prog} fit: ") and "tag" in line
    assert not (base / "PWNED").exists()


def test_damaged_results_and_unknown_names_are_one_line(ran):
    base, results = ran
    one_line(results["truncated summary.json in vapt report"], "summary.json")
    one_line(results["unknown backbone in vapt summary"], "no_such_vit")
    one_line(results["truncated result.json in a vapt tune resume"],
             str(base / "tune_resumed" / "dtd" / "vapt" / "grid" / "lr1_wd0" / "result.json"))
    one_line(results["truncated result.json in mgpath report"],
             str(base / "bench" / "mgpath" / "fold_0" / "result.json"))


def test_resume_identity_follows_the_data_not_its_path(tmp_path):
    """A copied data folder is the same data; a changed image or setting is not."""
    import shutil

    from vapt.training.resume import (
        CheckpointError,
        check_resume_identity,
        run_settings_identity,
        write_resume_identity,
    )

    root = write_vtab_tree(tmp_path / "a", ["dtd"], sizes={"train800": 2, "val200": 1, "test": 1}, img_size=8)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    config = {"model": {"init_args": {"lr": 0.1}}, "data": {"init_args": {"root": str(root)}},
              "trainer": {"max_epochs": 1, "default_root_dir": "x"}}
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    write_resume_identity(ckpt.parent.parent, run_settings_identity(config))
    moved = {**config, "data": {"init_args": {"root": str(tmp_path / "b" / root.relative_to(tmp_path / "a"))}},
             "trainer": {"max_epochs": 5, "default_root_dir": "y"}}
    check_resume_identity(ckpt, run_settings_identity(moved))  # same files elsewhere, more epochs: not stale
    image = next((tmp_path / "b").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="stale: .*data.init_args.root: its files changed"):
        check_resume_identity(ckpt, run_settings_identity(moved))
    with pytest.raises(CheckpointError, match=r"stale: .*model.init_args.lr: 0.1 -> 0.2"):
        check_resume_identity(ckpt, run_settings_identity({**config, "model": {"init_args": {"lr": 0.2}}}))
