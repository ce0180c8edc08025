"""Exact resume of `vapt fit` (every method, dropouts on, augmentation in worker processes): a run killed at an
epoch boundary or mid-epoch and resumed with ``--ckpt_path last`` ends value for value where an uninterrupted
run ends. Checkpoints are written atomically and resume skips a damaged newest checkpoint, naming it."""
from __future__ import annotations

import contextlib
import errno
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from vapt.training.lightning_cli import main
from vapt.training.module import PromptTuningModule
from vapt.training.resume import AtomicCheckpointIO, CheckpointError, check_checkpoint, find_resume_checkpoint

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--test_after_fit=false"]
TINY = '{"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1, "proj_drop_rate": 0.1}'
METHODS = {
    "linear": ["--model.method=linear"],
    "full": ["--model.method=full"],
    "vpt_shallow": ["--model.method=vpt", "--model.deep=false", "--model.dropout=0.2"],
    "vpt_deep": ["--model.method=vpt", "--model.dropout=0.2"],
    "vapt": ["--model.dropout=0.2", "--model.mlp_dropout=0.2", "--model.conv_dropout=0.2"],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo_cache")


def demo_args(cache: Path, out: Path, method: str) -> list[str]:
    """2 epochs of 2 steps (8 images, batch 4), no warmup so both epochs learn."""
    return ["fit", "--config", str(REPO / "configs" / "demo.yaml"), f"--data.root={cache}",
            "--data.train_size=8", "--data.val_size=4", "--data.test_size=4", "--data.batch_size=4",
            "--data.img_size=16", f"--model.backbone_kwargs={TINY}", "--trainer.max_epochs=2",
            "--model.warmup_epochs=0", f"--trainer.default_root_dir={out}", *METHODS[method], *QUIET]


def final_state(run_root: Path, version: int) -> dict:
    (path,) = run_root.rglob(f"version_{version}/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def kill_at(monkeypatch, epoch: int, batch: int | None) -> None:
    """Raise at the start of ``epoch`` (batch None) or in its training step ``batch``."""
    hook = "on_train_epoch_start" if batch is None else "training_step"
    original = getattr(PromptTuningModule, hook)

    def killed(self, *args, **kwargs):
        if self.current_epoch == epoch and (batch is None or args[1] == batch):
            raise RuntimeError("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PromptTuningModule, hook, killed)


def kill_and_resume(monkeypatch, args: list[str], epoch: int, batch: int | None) -> None:
    with monkeypatch.context() as m:
        kill_at(m, epoch, batch)
        m.setenv("VAPT_DEBUG", "1")  # the crash itself, not the one-line report of it
        with pytest.raises(RuntimeError, match="simulated kill"):
            main(args)
    assert main([*args, "--ckpt_path=last"]) == 0


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    """method -> (final training state, stdout) of an uninterrupted run (one per method for the module)."""
    done: dict[str, tuple[dict, str]] = {}

    def get(method: str) -> tuple[dict, str]:
        if method not in done:
            out, text = tmp_path_factory.mktemp(f"ref_{method}"), io.StringIO()
            with contextlib.redirect_stdout(text):  # --ckpt_path last with nothing to resume: from epoch 0
                assert main([*demo_args(cache, out, method), "--ckpt_path=last"]) == 0
            done[method] = final_state(out, 0), text.getvalue()
        return done[method]

    return get


# every method is killed and resumed (VAPT mid-epoch: the augmentation-in-workers test below)
@pytest.mark.parametrize("method, kill", [("linear", "boundary"), ("vpt_shallow", "boundary"), ("vapt", "boundary"),
                                          ("full", "mid-epoch"), ("vpt_deep", "mid-epoch")])
def test_fit_killed_and_resumed_is_bit_exact(method, kill, cache, uninterrupted, tmp_path, monkeypatch, capsys):
    """Killed at the start of epoch 1, or after its first step (then resumed from the epoch-0 checkpoint)."""
    reference, _ = uninterrupted(method)
    capsys.readouterr()
    kill_and_resume(monkeypatch, demo_args(cache, tmp_path, method), epoch=1, batch=1 if kill == "mid-epoch" else None)
    out = capsys.readouterr().out
    assert "resuming from" in out and "epoch=0-step=2.ckpt" in out
    assert_same_training_state(reference, final_state(tmp_path, 1))


def _image_folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 2), ("val", 1)):
        for c in range(4):  # the demo config's num_classes
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                px = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_random_augmentation_in_workers_resumes_bit_exact(tmp_path, monkeypatch):
    """FGVC-style random crop + flip in 2 persistent workers: per-image seeds make the resumed run exact."""
    root = _image_folder(tmp_path / "imgs")

    def args(run: str) -> list[str]:
        return ["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--data=vapt.data.ImageFolderDataModule",
                f"--data.root={root}", "--data.test_split=null", "--data.augment=true", "--data.batch_size=4",
                "--data.num_workers=2", "--data.img_size=16", f"--model.backbone_kwargs={TINY}",
                "--model.mlp_dropout=0.2", "--model.warmup_epochs=0", "--trainer.max_epochs=2",
                f"--trainer.default_root_dir={tmp_path / run}", *QUIET]

    assert main(args("a")) == 0
    kill_and_resume(monkeypatch, args("b"), epoch=1, batch=1)
    assert_same_training_state(final_state(tmp_path / "a", 0), final_state(tmp_path / "b", 1))


def test_last_ckpt_is_saved_and_fit_resume_without_checkpoint_starts_at_epoch_0(uninterrupted):
    ckpt, out = uninterrupted("vapt")
    assert "no checkpoint under" in out and "starting from epoch 0" in out
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4  # last.ckpt holds the final epoch
    assert any("RNGStateCallback" in k for k in ckpt["callbacks"])


def test_truncated_newest_checkpoint_is_skipped_and_named(cache, tmp_path, capsys):
    args = demo_args(cache, tmp_path / "a", "vapt")
    assert main([*args, "--trainer.max_epochs=1"]) == 0
    folder = next((tmp_path / "a").rglob("version_0/checkpoints"))
    good = next(folder.glob("epoch=0-*.ckpt"))
    (folder / "last.ckpt").unlink()
    data = good.read_bytes()
    bad = folder / "epoch=1-step=4.ckpt"  # as a full disk leaves it: cut short under its final name
    bad.write_bytes(data[: len(data) // 2])
    logged: list[str] = []
    assert find_resume_checkpoint(tmp_path / "a", logged.append) == good
    assert len(logged) == 1 and str(bad) in logged[0] and "cannot be loaded" in logged[0]
    capsys.readouterr()
    assert main([*args, "--ckpt_path=last"]) == 0  # reruns are not blocked
    out = capsys.readouterr().out
    assert f"skipping {bad}" in out and f"resuming from {good}" in out
    assert final_state(tmp_path / "a", 1)["epoch"] == 1


def test_atomic_checkpoint_io_keeps_the_previous_file_on_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def disk_full(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)
        fh.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(check_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_check_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"x.ckpt cannot be loaded"):
        check_checkpoint(tmp_path / "x.ckpt")
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="is not a Lightning checkpoint"):
        check_checkpoint(tmp_path / "plain.ckpt")


def test_resume_of_a_first_run_that_generated_its_data(tmp_path, capsys):
    """The run's identity is recorded after the data module made the demo data, so the first run's own
    checkpoint is not called stale when it resumes."""
    args = demo_args(tmp_path / "not_yet_generated", tmp_path / "a", "vapt")
    assert main([*args, "--trainer.max_epochs=1"]) == 0
    assert main([*args, "--ckpt_path=last"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "stale" not in out
    assert final_state(tmp_path / "a", 1)["epoch"] == 1
