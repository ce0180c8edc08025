"""Lightning checkpoints of MGPATHModule: the frozen text tower is left out when a file can rebuild it."""
import json

import lightning.pytorch as pl
import pytest
import torch
from test_mgpath_train import ROOT, D, _datamodule

from mgpath.module import CHECKPOINT_FORMAT, MGPATHModule
from mgpath.text import TINY_TEXT_CFG

DESC = str(ROOT / "data/prompts/demo.json")
TOWER = "model.text.tower."


@pytest.fixture(scope="module")
def tower_file(tmp_path_factory):
    """A local open_clip CLIP state dict (tiny architecture) for ``text_checkpoint``."""
    import open_clip

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("tower") / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**TINY_TEXT_CFG).state_dict(), path)
    return str(path)


def _module(classes, descriptions=DESC, **kw):
    args = {"embed_dim": 32, "text_model": "mgpath-tiny", "n_ctx": 4, "n_sets": 2, "n_prompts": 8, "lr": 5e-3}
    args.update(kw)
    return MGPATHModule(str(descriptions), D, list(classes), **args)


def _fit_and_save(tmp_path, dm, module):
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    return path


def _logits(module, dm):
    test = dm.datasets["test"]
    module.eval()
    with torch.no_grad():
        return torch.cat([module([test[i]["bags"]]) for i in range(min(3, len(test)))])


def _full_size(module, tmp_path):
    path = tmp_path / "full_sd.pt"
    torch.save(module.state_dict(), path)
    return path.stat().st_size


def test_tower_from_file_is_left_out_and_rebuilt(tmp_path, tower_file):
    torch.manual_seed(0)
    dm = _datamodule(tmp_path, n_per_class=8)
    dm.setup()
    m = _module(dm.classes, text_checkpoint=tower_file)
    path = _fit_and_save(tmp_path, dm, m)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["mgpath"]["format"] == CHECKPOINT_FORMAT and ckpt["mgpath"]["trainable_only"] is True
    assert not [k for k in ckpt["state_dict"] if k.startswith(TOWER)]
    trainable = {f"{n}" for n, p in m.named_parameters() if p.requires_grad}
    assert trainable <= set(ckpt["state_dict"])
    assert "model.text.prompts.token_prefix" in ckpt["state_dict"]  # prompt buffers are kept
    assert path.stat().st_size < _full_size(m, tmp_path) / 5
    expected = _logits(m, dm)

    loaded = MGPATHModule.load_from_checkpoint(path, map_location="cpu")
    torch.testing.assert_close(_logits(loaded, dm), expected, rtol=0, atol=0)
    init = _module(dm.classes, text_checkpoint=tower_file, init_checkpoint=str(path))  # e.g. `mgpath zeroshot`
    torch.testing.assert_close(_logits(init, dm), expected, rtol=0, atol=0)

    torch.manual_seed(123)  # `mgpath test --ckpt_path`: a fresh module from the config, then the checkpoint
    fresh = _module(dm.classes, text_checkpoint=tower_file)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=str(tmp_path))
    res = trainer.test(fresh, datamodule=dm, ckpt_path=str(path), verbose=False)[0]
    assert "test/auc" in res
    torch.testing.assert_close(_logits(fresh, dm), expected, rtol=0, atol=0)


def test_random_tower_is_stored(tmp_path):
    torch.manual_seed(0)
    dm = _datamodule(tmp_path, n_per_class=8)
    dm.setup()
    m = _module(dm.classes)
    path = _fit_and_save(tmp_path, dm, m)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["mgpath"]["trainable_only"] is False
    assert set(ckpt["state_dict"]) == set(m.state_dict())
    expected = _logits(m, dm)
    torch.manual_seed(5)
    loaded = MGPATHModule.load_from_checkpoint(path, map_location="cpu")
    torch.testing.assert_close(_logits(loaded, dm), expected, rtol=0, atol=0)


def test_store_frozen_forces_the_tower_in(tmp_path, tower_file):
    dm = _datamodule(tmp_path, n_per_class=8)
    dm.setup()
    path = _fit_and_save(tmp_path, dm, _module(dm.classes, text_checkpoint=tower_file, store_frozen=True))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["mgpath"]["trainable_only"] is False and any(k.startswith(TOWER) for k in ckpt["state_dict"])


def test_mismatched_model_is_refused(tmp_path, tower_file):
    dm = _datamodule(tmp_path, n_per_class=8)
    dm.setup()
    path = _fit_and_save(tmp_path, dm, _module(dm.classes, text_checkpoint=tower_file))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    other_sets = _module(dm.classes, text_checkpoint=tower_file, n_sets=3)
    with pytest.raises(KeyError, match=r"wrong shapes.*model\.text\.prompts\.ctx.*n_sets 2"):
        other_sets.on_load_checkpoint(dict(ckpt))
    desc3 = tmp_path / "three.json"
    desc3.write_text(json.dumps({"classes": ["class_a", "class_b", "class_c"], "descriptions": {
        m: {c: f"{c} tissue at {m}" for c in ("class_a", "class_b", "class_c")} for m in ("5x", "10x")}}))
    three = _module(["class_a", "class_b", "class_c"], desc3, text_checkpoint=tower_file)
    with pytest.raises(KeyError, match=r"wrong shapes.*token_prefix.*classes \['class_a', 'class_b'\]"):
        three.on_load_checkpoint(dict(ckpt))
    swapped = _module(["class_b", "class_a"], text_checkpoint=tower_file)
    with pytest.raises(KeyError, match="checkpoint classes"):
        swapped.on_load_checkpoint(dict(ckpt))
    no_graph = _module(dm.classes, text_checkpoint=tower_file, use_graph=False)
    with pytest.raises(KeyError, match="unexpected keys.*visual.graph"):
        no_graph.on_load_checkpoint(dict(ckpt))
    broken = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if k != "model.logit_scale"})
    with pytest.raises(KeyError, match=r"missing keys \['model.logit_scale'\]"):
        _module(dm.classes, text_checkpoint=tower_file).on_load_checkpoint(broken)
