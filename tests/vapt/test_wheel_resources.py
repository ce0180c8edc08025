"""Shipped configs and data by name (`vapt.fileio.resources`), the `configs` subcommands, did-you-mean for misspelt
config keys and the per-command silencing of known noise (`vapt.quiet`), in the checkout."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from vapt.cli import main as vapt_main
from vapt.fileio.resources import (
    ResourceError,
    config_names,
    data_file,
    resolve_config,
    resolve_config_args,
    resolve_data_path,
)
from vapt.quiet import drop_log_records, lightning_info_hidden, quiet_command
from vapt.training.config_keys import suggestions
from vapt.training.lightning_cli import main as fit_main

REPO = Path(__file__).resolve().parents[2]


def test_names_and_repository_paths_resolve_to_the_same_files(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # outside the checkout: relative repository paths do not exist here
    cifar = (REPO / "configs" / "vtab" / "vapt" / "cifar100.yaml").resolve()
    for spelling in ("vtab/vapt/cifar100", "vtab/vapt/cifar100.yaml", "configs/vtab/vapt/cifar100.yaml"):
        assert resolve_config(spelling) == cifar
    assert resolve_config("tcga_nsclc_16shot", ("", "wsi/")) == (REPO / "configs/wsi/tcga_nsclc_16shot.yaml").resolve()
    assert resolve_data_path("data/prompts/demo.json") == (REPO / "data/prompts/demo.json").resolve()
    assert data_file("vtab/published.csv").read_bytes() == (REPO / "data/vtab/published.csv").read_bytes()
    own = tmp_path / "configs" / "demo.yaml"  # a user's own file of the same relative name wins
    own.parent.mkdir()
    own.write_text("seed_everything: 1\n")
    assert resolve_config("configs/demo.yaml") == Path("configs/demo.yaml")
    assert resolve_config_args(["fit", "-c", "demo", "--config=vtab/vapt/dtd", "--x", "1"]) == [
        "fit", "-c", str((REPO / "configs/demo.yaml").resolve()),
        f"--config={(REPO / 'configs/vtab/vapt/dtd.yaml').resolve()}", "--x", "1"]
    assert resolve_config_args(["--config", "trainer: {max_epochs: 1}"]) == ["--config", "trainer: {max_epochs: 1}"]
    with pytest.raises(ResourceError, match=r"Did you mean vtab/vapt/cifar100.*vapt configs --list"):
        resolve_config("vtab/vapt/cifar10")
    # the shipped WSI configs name their description files as data/prompts/...: found from any folder
    from mgpath.text import load_descriptions

    table = load_descriptions("data/prompts/tcga_nsclc.json", ["LUAD", "LUSC"])
    assert set(table) == {"5x", "10x"} and set(table["5x"]) == {"LUAD", "LUSC"}
    with pytest.raises(FileNotFoundError, match="data/prompts/nope.json does not exist"):
        load_descriptions("data/prompts/nope.json")


def test_configs_subcommands_list_and_print(capsys):
    assert vapt_main(["configs", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == [n for n in config_names() if not n.startswith("wsi/")] and "demo" in listed
    from vapt.data.fgvc import FGVC_DATASETS
    from vapt.data.vtab import VTAB_TASKS
    vtab_methods = sorted(p.name for p in (REPO / "configs" / "vtab").iterdir() if p.is_dir())
    fgvc_methods = sorted(p.name for p in (REPO / "configs" / "fgvc").iterdir() if p.is_dir())
    assert {"vpt_shallow", "vpt_deep", "vapt", "linear"} <= set(vtab_methods)
    expected = ({f"vtab/{m}/{t}" for m in vtab_methods for t in VTAB_TASKS}
                | {f"fgvc/{m}/{d}" for m in fgvc_methods for d in FGVC_DATASETS})
    assert expected <= set(listed)  # every method has all 19 VTAB-1k tasks and all 5 FGVC sets
    assert len(listed) == len(expected) + 2 and "tiles/uni_v1_vapt_nct_crc" in listed  # + the demo + the tile config
    assert vapt_main(["configs", "demo"]) == 0
    assert capsys.readouterr().out == (REPO / "configs" / "demo.yaml").read_text()
    from mgpath.cli import main as mgpath_main

    assert mgpath_main(["configs", "--list"]) == 0
    assert capsys.readouterr().out.split() == config_names("wsi/")
    assert mgpath_main(["configs", "demo_tiny", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str((REPO / "configs/wsi/demo_tiny.yaml").resolve())
    assert vapt_main(["configs", "nope"]) == 2
    assert "neither a file nor a shipped config" in capsys.readouterr().err


def test_fit_with_an_unknown_config_name_is_one_line(capsys):
    assert fit_main(["fit", "--config", "vtab/vapt/cifar10"]) == 2
    err = capsys.readouterr().err
    assert "vtab/vapt/cifar100" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("override, hint", [
    ("--model.init_args.num_tokns=3", "'num_tokns' is not an option of PromptTuningModule; did you mean 'num_tokens'?"),
    ("--data.init_args.batchsize=3", "did you mean 'batch_size'?"),
    ("--trainr.max_epochs=3", "'trainr.max_epochs' is not an option; did you mean 'trainer.max_epochs'"),
])
def test_misspelt_keys_get_a_suggestion(override, hint, capsys):
    with pytest.raises(SystemExit):
        fit_main(["fit", "--config", "demo", override])
    assert hint in capsys.readouterr().err


def test_misspelt_yaml_key_gets_a_suggestion(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 2\n")
    with pytest.raises(SystemExit):
        fit_main(["fit", "--config", "demo", "--config", str(bad)])
    assert "did you mean 'trainer.max_epochs'" in capsys.readouterr().err
    assert suggestions("Option 'zzz' is not accepted") == []  # nothing close: no hint


def test_noise_is_silenced_only_inside_a_command(caplog):
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_command():
            warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.", UserWarning)
            warnings.warn("something else", UserWarning)
        warnings.warn("The 'val_dataloader' does not have many workers which may be a bottleneck.", UserWarning)
    assert [str(w.message)[:14] for w in seen] == ["something else", "The 'val_datal"]
    assert warnings.filters == before  # nothing process-wide is left behind
    lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=lg.name):
        with quiet_command():
            lg.info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
            lg.info("GPU available: False")
        lg.info("💡 Tip: outside")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False", "💡 Tip: outside"]


def test_no_random_init_line_when_the_users_open_clip_file_is_loaded(tiny_open_clip, tmp_path, caplog):
    import open_clip
    import torch

    from vapt.backbones import build_backbone as build_encoder

    clip = open_clip.create_model(tiny_open_clip.split(":", 1)[1])
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    caplog.clear()  # the random model made just above said so, rightly
    with caplog.at_level(logging.WARNING):
        build_encoder(tiny_open_clip, checkpoint=tmp_path / "clip.pt")
        assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
        build_encoder(tiny_open_clip)  # a really random tower still says so
        assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING), drop_log_records("No pretrained", enabled=False):
        logging.getLogger().warning("No pretrained weights loaded")
    assert len(caplog.records) == 1


def test_every_subcommand_of_both_tools_runs_without_lightning_tips(tmp_path, monkeypatch, caplog):
    """`vapt.cli.subcommands.dispatch` (used by `vapt` and `mgpath`) drops the Tip lines of any subcommand."""
    from vapt.cli.subcommands import dispatch
    (tmp_path / "tipping_command.py").write_text(
        "import logging\n"
        "def main(argv):\n"
        "    lg = logging.getLogger('lightning.fabric.utilities.rank_zero')\n"
        "    lg.info('💡 Tip: For seamless cloud logging, try installing [litlogger]')\n"
        "    lg.info('GPU available: False')\n"
        "    return len(argv)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="lightning.fabric.utilities.rank_zero"):
        rc = dispatch("mgpath", {"demo": ("tipping_command", "main", "")}, ["demo", "--out", "x"], set())
    assert rc == 2 and [r.getMessage() for r in caplog.records] == ["GPU available: False"]


def test_lightning_info_is_hidden_only_inside_the_block(caplog):
    """`mgpath demo` prints its own progress: Lightning's INFO lines are hidden while it runs, its warnings are
    not, and the loggers' levels are put back afterwards."""
    lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    parent = logging.getLogger("lightning.pytorch")
    before = parent.level
    with caplog.at_level(logging.INFO):
        with lightning_info_hidden():
            lg.info("GPU available: False, used: False")
            lg.warning("a real warning")
        lg.info("Seed set to 0")
        with lightning_info_hidden(enabled=False):
            lg.info("shown with --verbose")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("lightning")] == [
        "a real warning", "Seed set to 0", "shown with --verbose"]
    assert parent.level == before
