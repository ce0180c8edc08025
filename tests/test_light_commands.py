"""Light commands do not import Lightning, nor torch where they need none: every ``--help`` of both tools,
``mgpath splits/report/configs/encoders`` and ``vapt report/configs/summary``.

One fresh interpreter forks a child per command; each child runs the command and reports which heavy libraries
ended up in ``sys.modules`` (libraries a command may use are loaded once before the forks, to save time). Start-up times are measured by
``scripts/bench/startup.py``, not here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUNNER = r"""
import contextlib, importlib, io, json, os, sys
commands, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert not {"torch", "lightning"} & set(sys.modules)
for name in preload:  # libraries a command may use, loaded once before the forks
    importlib.import_module(name)
out = {}
for label, (prog, args) in commands.items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                main = __import__(prog + ".cli", fromlist=["main"]).main
                code = main(args)
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = repr(e)
        heavy = [m for m in ("lightning", "torch", "torchvision", "timm") if m in sys.modules]
        os.write(w, json.dumps({"code": code, "heavy": heavy, "out": buf.getvalue()[-2000:]}).encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    out[label] = json.loads(data)
print(json.dumps(out))
"""


def _inputs(d: Path) -> dict[str, str]:
    labels = d / "labels.csv"
    labels.write_text("slide_id,case_id,label\n" + "".join(f"s{i},p{i},{'a' if i % 2 else 'b'}\n" for i in range(10)))
    for method in ("mgpath", "abmil"):
        for k in range(2):
            f = d / "bench" / method / f"fold_{k}" / "result.json"
            f.parent.mkdir(parents=True)
            f.write_text(json.dumps({"fold": k, "auc": 0.9 - 0.1 * k, "f1": 0.8, "acc": 0.85}))
    s = d / "runs" / "dtd" / "vapt" / "summary.json"
    s.parent.mkdir(parents=True)
    s.write_text(json.dumps({"task": "dtd", "method": "vapt", "family": "vtab", "best_lr": 5.0, "best_wd": 0.001,
                             "seeds": [42, 44], "test_acc": [0.70, 0.72], "test_acc_mean": 0.71,
                             "test_acc_std": 0.01}))
    return {"labels": str(labels), "bench": str(d / "bench"), "runs": str(d / "runs")}


def _run(commands: dict, preload: list[str], cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands), json.dumps(preload)], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from mgpath.cli import SUBCOMMANDS as MGPATH
    from vapt.cli.subcommands import SUBCOMMANDS as VAPT

    d = tmp_path_factory.mktemp("light")
    i = _inputs(d)
    light = {"vapt --help": ["vapt", ["--help"]], "mgpath --help": ["mgpath", ["--help"]]}
    light |= {f"vapt {n} --help": ["vapt", [n, "--help"]] for n in VAPT}
    light |= {f"mgpath {n} --help": ["mgpath", [n, "--help"]] for n in MGPATH}
    light |= {
        "mgpath splits": ["mgpath", ["splits", "--labels", i["labels"], "--k", "2", "--folds", "2",
                                     "--out", str(d / "splits")]],
        "mgpath report": ["mgpath", ["report", i["bench"], "--out", str(d / "mg_report")]],
        "mgpath configs --list": ["mgpath", ["configs", "--list"]],
        "vapt report": ["vapt", ["report", i["runs"], "--out", str(d / "vapt_report")]],
        "vapt configs --list": ["vapt", ["configs", "--list"]],
        "mgpath encoders": ["mgpath", ["encoders"]],
        "mgpath encoders --format json": ["mgpath", ["encoders", "--format", "json"]],
    }
    models = {  # this builds a torch model: torch is its to use, Lightning is not
        "vapt summary": ["vapt", ["summary", "vit_tiny_patch16_224", "--method", "vapt", "--num-classes", "10"]],
    }
    res = _run(light, ["numpy", "pandas", "yaml", "matplotlib.pyplot"], d)
    res |= _run(models, ["numpy", "pandas", "torch", "timm"], d)
    return res, d


def test_every_light_command_succeeds(results):
    res, _ = results
    failed = {k: (v["code"], v["out"][-300:]) for k, v in res.items() if v["code"] not in (0, None)}
    assert not failed


def test_help_imports_neither_lightning_nor_torch(results):
    res, _ = results
    helps = {k: v["heavy"] for k, v in res.items() if k.endswith("--help")}
    assert len(helps) >= 2 + 8 + 16  # both tools, every subcommand
    assert {k: h for k, h in helps.items() if h} == {}


def test_tables_and_configs_import_neither_lightning_nor_torch(results):
    res, d = results
    for label in ("mgpath splits", "mgpath report", "mgpath configs --list", "vapt report", "vapt configs --list",
                  "mgpath encoders", "mgpath encoders --format json"):
        assert res[label]["heavy"] == [], label
    # and they did their job: 2 folds written, both reports written
    assert sorted(p.name for p in (d / "splits").glob("splits_*.csv")) == ["splits_0.csv", "splits_1.csv"]
    assert (d / "mg_report" / "report.md").is_file() and (d / "vapt_report" / "report.md").is_file()


def test_model_commands_do_not_import_lightning(results):
    res, _ = results
    assert "plus any timm model name" in res["mgpath encoders"]["out"]
    listed = res["mgpath encoders --format json"]["out"]  # its last 2000 characters: the last preset
    assert '"name": "genbio-pathfm",\n  "dim": 4608,' in listed and listed.rstrip().endswith("]")
    assert "lightning" not in res["vapt summary"]["heavy"] and "torch" in res["vapt summary"]["heavy"]
    assert "| **all** |" in res["vapt summary"]["out"]


def test_encoder_listing_reads_the_builders_table():
    """``mgpath encoders`` (no torch) lists exactly the presets the builders register, with their metadata."""
    from mgpath.commands.encoders import preset_rows
    from vapt.backbones import list_presets

    rows, presets = preset_rows(), list_presets()
    assert [r["name"] for r in rows] == [p.name for p in presets]
    for r, p in zip(rows, presets, strict=True):
        assert (r["dim"], r["architecture"], r["weights"], r["source"], r["licence"], r["magnification"],
                r["notes"], r["vapt_backbone"]) == (p.dim, p.arch, p.layout, p.source, p.licence, p.magnification,
                                                    p.notes, p.vit and not p.unavailable)
        assert r["status"] == ("available" if p.unavailable is None else f"unavailable: {p.unavailable}")
        hub = p.options.get("hub_config", False)
        assert r["input"] == ("config.json" if hub else p.preprocess.size)


@pytest.mark.parametrize("prog,config", [("vapt", "configs/demo.yaml"), ("mgpath", "configs/wsi/demo_tiny.yaml")])
def test_quick_help_names_only_options_lightningcli_accepts(prog, config, capsys):
    """The quick ``fit --help`` cannot drift from LightningCLI: every option it names is in ``--help-all``, and
    the dotted keys of its examples are keys of a resolved config (``--print_config``)."""
    import re

    import yaml

    main = __import__(f"{prog}.cli", fromlist=["main"]).main
    assert main(["fit", "--help"]) == 0
    quick = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help-all"])
    full = capsys.readouterr().out
    flags = set(re.findall(r"(?<![\w.-])(--[a-z_]+)\b(?!\.)", quick)) - {"--help", "--debug", "--list"}
    assert {"--config", "--ckpt_path", "--print_config", "--trainer", "--model", "--data"} <= flags
    assert {f for f in flags if f not in full} == set()
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / config), "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    for key in re.findall(r"--((?:trainer|model|data)\.[a-z_.]+) ", quick):
        parts = key.split(".")
        if "init_args" in resolved[parts[0]] and parts[1] != "init_args":  # the short form --model.lr
            parts.insert(1, "init_args")
        node = resolved
        for part in parts:
            assert part in node, (key, part)
            node = node[part]


@pytest.mark.parametrize("command", ["folds", "report", "splits"])
def test_table_command_help_imports_no_pandas(command):
    """``mgpath folds/report/splits --help`` load neither pandas nor matplotlib (pandas is imported by the work)."""
    code = (f"import sys\nfrom mgpath.cli import main\ntry:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n"
            "    pass\nprint([m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       check=True)
    assert "usage: mgpath " + command in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "[]"
