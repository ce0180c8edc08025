"""A weights file whose pickle runs code is refused by every loader (Python API and command lines).

The malicious file is a real ``torch.save`` of a state dict plus an object that reduces to ``os.system``
writing a marker file. That the file really carries the payload is shown without running it: its pickle
opcodes name ``os.system`` (or ``posix.system``) as a global to call.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vapt.backbones import BackboneError
from vapt.backbones import build_backbone as build_encoder
from vapt.fileio.weights import WeightsFileError, load_weights_file


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.marker}'",)


@pytest.fixture
def malicious(tmp_path):
    """(path of pytorch_model.bin whose unpickling writes ``marker``, marker path)."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    return path, marker


def _pickled_globals(path) -> set[str]:
    """Globals the pickle inside a torch zip file would import and call, read from its opcodes (nothing runs)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def test_loader_refuses_and_names_the_fix(malicious):
    path, marker = malicious
    assert _pickled_globals(path) & {"os.system", "posix.system"}  # positive control: the file is malicious
    with pytest.raises(WeightsFileError, match=r"pytorch_model.bin.*not loaded.*safetensors"):
        load_weights_file(path)
    assert not marker.exists()
    with pytest.raises(TypeError):
        load_weights_file(path, trust=True)  # there is no opt-in that unpickles code


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "uni_v1", "resnet50", "phikon", "conch_v1", "ctranspath"])
def test_every_encoder_loader_refuses(name, malicious):
    path, marker = malicious
    (path.parent / "config.json").write_text('{"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, '
                                             '"num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, '
                                             '"patch_size": 16}')
    from vapt.backbones import build_encoder as build_any

    with pytest.raises(BackboneError, match="not loaded.*safetensors"):
        build_any(name, checkpoint=path.parent if name == "phikon" else path)
    if name in ("vit_tiny_patch16_224", "uni_v1"):
        with pytest.raises(BackboneError, match="not loaded.*safetensors"):
            build_encoder(name, checkpoint=path)  # the vapt backbone path (vapt fit --model.checkpoint)
    assert not marker.exists()


def test_open_clip_and_text_tower_loaders_refuse(malicious, tiny_open_clip):
    from mgpath.text import build_text_tower, load_state_dict_file

    path, marker = malicious
    with pytest.raises(BackboneError, match="not loaded.*safetensors"):
        build_encoder(tiny_open_clip, checkpoint=path)
    with pytest.raises(WeightsFileError, match="not loaded.*safetensors"):
        load_state_dict_file(path)
    with pytest.raises(WeightsFileError, match="not loaded.*safetensors"):
        build_text_tower("mgpath-tiny", checkpoint=path)
    assert not marker.exists()


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mgpath.cli", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_command_lines_refuse(malicious, tmp_path):
    path, marker = malicious
    (tmp_path / "coords").mkdir()
    r = _cli("extract", "--coords", str(tmp_path / "coords"), "--encoder", "vit_tiny_patch16_224",
             "--checkpoint", str(path), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "safetensors" in r.stderr and str(path) in r.stderr, r.stderr
    prompts = tmp_path / "p.csv"
    prompts.write_text("a\nb\nc\nd\n")
    r = _cli("import-official", "--ckpt_path", str(path), "--descriptions", str(prompts), "--classes", "A", "B",
             "--out", str(tmp_path / "o.pt"))
    assert r.returncode == 2 and "safetensors" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_data_only_extras_load_and_garbage_is_corrupt(tmp_path):
    """Run options (argparse.Namespace) and numpy scalars beside the tensors load without the opt-in;
    a file of garbage bytes is called corrupt, not 'needs unpickling'."""
    import argparse

    import numpy as np

    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "best": np.float64(0.9)},
               tmp_path / "train.pth")
    obj = load_weights_file(tmp_path / "train.pth")
    assert obj["args"].lr == 0.1 and float(obj["best"]) == 0.9 and torch.equal(obj["model"]["w"], torch.ones(2))
    (tmp_path / "junk.pth").write_bytes(b"\x80\x04not really a pickle" * 10)
    with pytest.raises(WeightsFileError, match=r"junk.pth \(UnpicklingError: not a valid pickle\); the file is corrupt"):
        load_weights_file(tmp_path / "junk.pth")
