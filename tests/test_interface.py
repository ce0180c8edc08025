"""The shared command-line vocabulary of ``vapt`` and ``mgpath`` (docs/interface.md) and the one error reporter."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from mgpath.cli import SUBCOMMANDS as MGPATH_COMMANDS
from mgpath.cli import main as mgpath_main
from vapt.cli import main as vapt_main
from vapt.cli.flags import DialectParser, parse_folds
from vapt.cli.subcommands import SUBCOMMANDS as VAPT_COMMANDS

REPO = Path(__file__).resolve().parents[1]
LIGHTNING = {"fit", "validate", "test", "predict"}


class _Captured(Exception):
    pass


def _parsers() -> dict[str, DialectParser]:
    """Every argparse command of both tools, caught when its ``main`` starts parsing."""
    found = {}
    original = DialectParser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    DialectParser.parse_known_args = capture
    try:
        for tool, table in (("vapt", VAPT_COMMANDS), ("mgpath", MGPATH_COMMANDS)):
            for sub, (module, func, _) in table.items():
                if sub in LIGHTNING:
                    continue
                with pytest.raises(_Captured) as caught:
                    getattr(importlib.import_module(module), func)([])
                found[f"{tool} {sub}"] = caught.value.args[0]
    finally:
        DialectParser.parse_known_args = original
    return found


@pytest.fixture(scope="module")
def parsers():
    return _parsers()


def _vocabulary() -> list[dict[str, str]]:
    text = (REPO / "docs" / "interface.md").read_text()
    table = text.split("<!-- vocabulary:", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[1:]
            if line.startswith("|") and not line.startswith("|---")]
    return [dict(zip(("concept", "vapt", "mgpath", "old"), r)) for r in rows[1:]]


def _flags(cell: str) -> list[str]:
    return re.findall(r"`(--[a-z_.]+)`", cell)


def test_every_option_is_spelt_with_underscores_and_takes_the_dashed_alias(parsers):
    assert len(parsers) == len(VAPT_COMMANDS) + len(MGPATH_COMMANDS) - 2 * len(LIGHTNING)
    for name, parser in parsers.items():
        for action in parser._actions:
            shown = [s for s in action.option_strings if s not in getattr(action, "hidden_aliases", ())]
            for option in shown:
                assert "-" not in option.lstrip("-"), (name, option)
                dashed = option.replace("_", "-")
                assert parser._option_string_actions.get(dashed) is action, (name, dashed)


def test_names_follow_the_table(parsers):
    rows = {r["concept"]: r for r in _vocabulary()}
    assert "trained checkpoint to load" in rows and len(rows) >= 10
    everywhere = {o for p in parsers.values() for a in p._actions for o in a.option_strings}
    for row in rows.values():
        for flag in _flags(row["vapt"]) + _flags(row["mgpath"]):
            if "." not in flag and flag != "--debug":  # LightningCLI keys and the reporter's flag
                assert flag in everywhere, (row["concept"], flag)
    for row in rows.values():  # an old spelling is a hidden alias of the new name, in the command named
        for old, command in re.findall(r"`(--[a-z_]+)` \(([a-z-]+)\)", row["old"]):
            action = parsers[f"mgpath {command}"]._option_string_actions[old]
            assert old in action.hidden_aliases and f"--{action.dest}" in _flags(row["mgpath"]), (old, command)
    assert "--ckpt_path" in parsers["mgpath heatmap"]._option_string_actions
    assert "--shots" in parsers["mgpath splits"]._option_string_actions


def test_config_driven_commands_take_c_and_print_config(parsers, capsys):
    for name, parser in parsers.items():
        options = parser._option_string_actions
        if "--config" in options:
            assert options.get("-c") is options["--config"], name
            assert "--print_config" in options and "--print-config" in options, name
    for main, tool in ((vapt_main, "vapt"), (mgpath_main, "mgpath")):  # LightningCLI's own (--help is the quick one)
        with pytest.raises(SystemExit):
            main(["fit", "--help-all"])
        out = capsys.readouterr().out
        assert "-c CONFIG, --config CONFIG" in out and "--print_config" in out, tool


def test_old_spellings_work_with_one_notice(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,case_id,label\n" + "".join(f"s{i},c{i},{'AB'[i % 2]}\n" for i in range(12)))
    assert mgpath_main(["splits", "--labels", str(labels), "--k", "2", "--folds", "2", "--out",
                        str(tmp_path / "old")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mgpath splits: --k is deprecated and will be removed; use --shots",
                   "mgpath splits: --folds is deprecated and will be removed; use --num_folds"]
    assert mgpath_main(["splits", "--labels", str(labels), "--shots", "2", "--num-folds", "2", "--out",
                        str(tmp_path / "new")]) == 0
    assert capsys.readouterr().err == ""
    for f in ("splits_0.csv", "splits_1.csv"):
        assert (tmp_path / "old" / f).read_bytes() == (tmp_path / "new" / f).read_bytes()


def test_one_folds_grammar():
    assert parse_folds(["0", "1"]) == parse_folds(["0..1"]) == [0, 1]
    assert parse_folds(["0,2..3"]) == parse_folds(["0", "2..3"]) == [0, 2, 3]
    for bad in (["3..1"], ["x"], ["-1"], []):
        with pytest.raises(ValueError, match="--folds"):
            parse_folds(bad)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_both_tools_report_errors_in_one_format(capsys, monkeypatch):
    assert vapt_main(["configs", "nosuch"]) == 2
    v = _err_line(capsys)
    assert mgpath_main(["configs", "nosuch"]) == 2
    m = _err_line(capsys)
    shape = r"^{} configs: ResourceError: config 'nosuch' .* \(--debug shows the traceback\)$"
    assert re.match(shape.format("vapt"), v) and re.match(shape.format("mgpath"), m)
    assert v.replace("vapt", "X") == m.replace("mgpath", "X")

    def bug(argv):
        raise ZeroDivisionError("division by zero")

    import vapt.fileio.resources as resources

    monkeypatch.setattr(resources, "configs_main", bug)
    monkeypatch.setattr(resources, "mgpath_configs_main", bug)
    assert vapt_main(["configs"]) == 1
    v = _err_line(capsys)
    assert mgpath_main(["configs"]) == 1
    m = _err_line(capsys)
    assert v == "vapt configs: ZeroDivisionError: division by zero (this looks like a bug: rerun with --debug and " \
                "report it) (--debug shows the traceback)"
    assert m == v.replace("vapt", "mgpath", 1)
    with pytest.raises(ZeroDivisionError):
        mgpath_main(["configs", "--debug"])
    assert vapt_main(["nope"]) == 2 and mgpath_main(["nope"]) == 2  # usage errors
    capsys.readouterr()


def test_help_lists_the_canonical_spelling_only(parsers):
    text = parsers["mgpath tile"].format_help()
    assert "--tile_size" in text and "--tile-size" not in text
    assert isinstance(parsers["mgpath tile"], argparse.ArgumentParser)


def test_old_module_paths_import_with_a_notice():
    import subprocess
    import sys

    from vapt.moved_modules import MOVED

    assert MOVED["vapt.module"] == "vapt.training.module"  # the class_path of older configs
    code = ("from vapt.atomic import atomic_path as A; from vapt.fileio.atomic import atomic_path as B;"
            "from vapt.errors import one_line as C; from vapt.cli.errors import one_line as D;"
            "print(A is B and C is D)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.stdout.strip() == "True", r.stderr
    assert r.stderr.strip().splitlines() == [
        "vapt: the module vapt.atomic moved to vapt.fileio.atomic; update the import or class_path (the old "
        "path will be removed)",
        "vapt: the module vapt.errors moved to vapt.cli.errors; update the import or class_path (the old path "
        "will be removed)"]


def test_mgpath_runs_use_the_vapt_run_folder_layout(tmp_path):
    import os

    from mgpath.lightning_cli import VERSION_ENV, make_cli

    (tmp_path / "mycohort").mkdir()
    args = ["--config", str(REPO / "configs/wsi/demo_tiny.yaml"), "--trainer.logger=true",
            "--data.labels_csv", str(tmp_path / "mycohort" / "labels.csv"), "--data.split_csv", "s_{fold}.csv",
            "--data.features_root", str(tmp_path), "--model.descriptions", str(REPO / "data/prompts/demo.json"),
            "--trainer.default_root_dir", str(tmp_path / "runs")]
    trainer = make_cli(args, run=False).trainer
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert {lg.log_dir for lg in trainer.loggers} == {str(tmp_path / "runs" / "mycohort" / "mgpath" / "version_0")}
    assert VERSION_ENV not in os.environ
