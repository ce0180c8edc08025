"""Loading never runs code, whatever the environment.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns torch's safe default off for every ``torch.load`` that does not pass
``weights_only`` itself. Every entry point of both command lines that reads a checkpoint, weights file or
``.pt`` is run here under that variable with a pickled payload that creates a marker file when unpickled:
each must refuse the file (exit 2, one line naming it) and the marker must never appear. A control shows that
the payload is live (a plain ``torch.load`` under the variable runs it). A static check keeps every
``torch.load`` of the packages inside :func:`vapt.fileio.weights.safe_torch_load` and every Lightning load explicit.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_mgpath_train import D, make_cohort

from vapt.data.synthetic import write_vtab_tree

ROOT = Path(__file__).resolve().parents[2]
TINY = json.dumps({"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1})

_DRIVER = r"""
import json, os, sys, contextlib, io
from pathlib import Path
import torch
cases, marker = json.loads(sys.argv[1]), Path(sys.argv[2])
torch.load(sys.argv[3])  # control: the variable makes a plain torch.load unpickle the payload
out = {"control": marker.exists()}
marker.unlink(missing_ok=True)
from vapt.cli import main as vapt_main
from mgpath.cli import main as mgpath_main
for name, (prog, argv) in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = (vapt_main if prog == "vapt" else mgpath_main)(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            code = "raised " + type(e).__name__
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    out[name] = {"code": code, "lines": lines[-3:], "n_lines": len(lines), "ran": marker.exists()}
    marker.unlink(missing_ok=True)
print("RESULT " + json.dumps(out))
"""


class _Payload:
    """Unpickling it calls ``open(marker, "w")``: the file appears only if code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_every_entry_point_refuses_a_payload_under_torch_force_no_weights_only(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {}, "x": _Payload(marker)}
    files = {}
    for name in ("evil.ckpt", "evil.pth", "evil.pt", "evil_backbone.pth", "evil_init.pt"):
        files[name] = tmp_path / name
        torch.save(evil, files[name])
    make_cohort(tmp_path, n_per_class=3)
    for mag in ("5x", "10x"):
        clam = tmp_path / "clam" / mag / "pt_files"
        clam.mkdir(parents=True)
        for sid in (f"class_{c}_{i:02d}" for c in "ab" for i in range(3)):
            torch.save(evil, clam / f"{sid}.pt")
    vtab = write_vtab_tree(tmp_path / "vtab-1k", ["dtd"], sizes={"train800": 2, "val200": 1, "test": 1}, img_size=16)
    def vapt(sub, *extra):
        return ["vapt", [sub, "--config", str(ROOT / "configs/vtab/vapt/dtd.yaml"), f"--data.root={vtab}",
                         "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}", "--data.img_size=16",
                         "--data.batch_size=2", "--data.num_workers=0", "--trainer.max_epochs=1",
                         "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path / 'vruns'}", *extra]]

    wsi = ["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv", str(tmp_path / "labels.csv"),
           "--data.split_csv", str(tmp_path / "splits_{fold}.csv"), "--data.features_root",
           str(tmp_path / "features"), "--model.descriptions", str(ROOT / "data/prompts/demo.json"),
           "--model.feature_dim", str(D), "--trainer.default_root_dir", str(tmp_path / "mruns")]
    slide = tmp_path / "class_a_00.tiff"
    slide.write_bytes(b"not read: the checkpoint is refused first")
    cases = {
        **{f"vapt {s} --ckpt_path": vapt(s, f"--ckpt_path={files['evil.ckpt']}")
           for s in ("fit", "validate", "test", "predict")},
        "vapt fit --model.checkpoint": vapt("fit", f"--model.checkpoint={files['evil_backbone.pth']}"),
        "mgpath extract --checkpoint": ["mgpath", [
            "extract", "--coords", str(tmp_path), "--encoder", "vit_tiny_patch16_224", "--checkpoint",
            str(files["evil.pth"]), "--out", str(tmp_path / "feats_out"), "--no-progress"]],
        **{f"mgpath {s} --ckpt_path": ["mgpath", [s, *wsi, "--ckpt_path", str(files["evil.ckpt"])]]
           for s in ("fit", "validate", "test", "predict")},
        "mgpath fit --model.init_checkpoint": ["mgpath", ["fit", *wsi, "--model.init_checkpoint",
                                                          str(files["evil_init.pt"])]],
        "mgpath heatmap --ckpt": ["mgpath", ["heatmap", "--ckpt", str(files["evil.ckpt"]), "--slide", str(slide),
                                             "--out", str(tmp_path / "h.png")]],
        "mgpath import-official --checkpoint": ["mgpath", [
            "import-official", "--checkpoint", str(files["evil.pt"]), "--descriptions",
            str(ROOT / "data/prompts/demo.json"), "--classes", "class_a", "class_b", "--out",
            str(tmp_path / "conv.pt")]],
        "mgpath fit on CLAM .pt features": ["mgpath", [
            "fit", *wsi[:6], "--data.features_root", str(tmp_path / "clam"), *wsi[8:]]],
    }
    for i in range(2):
        (tmp_path / f"splits_{i}.csv").write_text(
            "train,val,test\nclass_a_00,class_a_01,class_a_02\nclass_b_00,class_b_01,class_b_02\n")
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases), str(marker), str(files["evil.pt"])],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False)
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result.pop("control") is True  # the payload is live under the variable
    assert set(result) == set(cases)
    for name, r in result.items():
        print(f"| {name} | {r['code']} | {(r['lines'] or ['-'])[-1][:150]} | payload ran: {r['ran']} |")
    for name, r in result.items():
        assert r["ran"] is False, (name, r)  # the payload never ran
        assert r["code"] == 2, (name, r)  # refused as bad input
        assert "Traceback" not in "\n".join(r["lines"]), (name, r)
        named = "evil" if "CLAM" not in name else "pt_files"
        assert named in r["lines"][-1], (name, r)  # the last line names the file


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr, {k.arg: k.value for k in node.keywords}


def test_every_load_in_the_packages_is_explicitly_weights_only():
    """``torch.load`` only in the one loader; Lightning's loads (``load_from_checkpoint``, ``fit/validate/test/
    predict`` with ``ckpt_path``) pass ``weights_only=True``."""
    found = []
    for path in sorted([*(ROOT / "vapt").rglob("*.py"), *(ROOT / "mgpath").rglob("*.py")]):
        for node, attr, kw in _calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                found.append(where)
                assert path.name == "weights.py", f"{where}: call vapt.fileio.weights.safe_torch_load instead"
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if attr == "load_from_checkpoint" or (attr in ("fit", "validate", "test", "predict")
                                                  and "ckpt_path" in kw):
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{where}: {attr}(...) without weights_only=True"
    assert found == ["vapt/fileio/weights.py:" + found[0].split(":")[1]]  # exactly one torch.load
