"""`vapt tune --e2vpt_prune` end to end on a tiny 2-block, 32-dim ViT and a tiny VTAB tree (1 epoch, 2 candidate
prunings): the chosen pruning is the best-val rewind run, the rewind runs start from the search run's saved
initial tensors, and the final runs keep the pruned masks at 0 and frozen."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from vapt.data.synthetic import write_vtab_tree
from vapt.training.e2vpt_prune import PruneError, parse_percents
from vapt.training.lightning_cli import build_cli
from vapt.training.tune import TuneError, tune

REPO = Path(__file__).resolve().parents[2]
TINY = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune")
    tree = write_vtab_tree(tmp / "vtab-1k", ["eurosat"], sizes={"train800": 8, "val200": 6, "test": 6}, img_size=12)
    weights = tmp / "tiny_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=0, **TINY).state_dict(), weights)
    args = ["--config", str(REPO / "configs/vtab/e2vpt/eurosat.yaml"), f"--data.root={tree}",
            f"--model.checkpoint={weights}", f"--model.backbone_kwargs={json.dumps(TINY)}",
            '--model.method_kwargs={"num_tokens": 2, "num_kv_tokens": 1}', "--data.img_size=16",
            "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=1", "--model.schedule=constant",
            "--model.warmup_epochs=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.accelerator=cpu", "--trainer.devices=1"]
    out = tmp / "runs"
    # 2 tokens, 16 pieces; 50 % / 60 % -> 1 token and 8 or 9 pieces per token: 2 candidates
    summary = tune(args, out, grid="lr=1;wd=0", seeds=[3], log=lambda *a: None, e2vpt_prune="50,60")
    return args, out / "eurosat" / "e2vpt", summary


def method_of(args, overrides: dict):
    cli = build_cli(list(args) + ["--trainer.logger=false"] + [f"--{k}={'null' if v is None else v}" for k, v in overrides.items()],
                    run=False, log_name="")
    return cli.model.model.method


def test_best_pruning_is_the_best_val_rewind_run(setup):
    _, base, summary = setup
    runs = sorted(p for p in (base / "prune").iterdir() if p.name != "search")
    assert [p.name for p in runs] == ["t1_p8", "t1_p9"]
    vals = [json.loads((p / "result.json").read_text())["metrics"]["val/acc"] for p in runs]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))  # same token count: ties go to fewer pieces
    assert summary["pruning"]["best"] == best
    assert [c["val_acc"] for c in summary["pruning"]["candidates"]] == vals
    assert summary["pruning"]["candidates"][best]["run"] == runs[best].name


def test_rewind_runs_start_from_the_search_runs_initial_tensors(setup):
    args, base, _ = setup
    search = json.loads((base / "prune" / "search" / "result.json").read_text())
    initial = load_file(search["initial"])
    # the saved tensors are the search run's own initialisation (same config and seed)
    fresh = method_of(args, json.loads((base / "prune" / "search" / "result.json").read_text())["overrides"])
    for k, p in fresh.named_parameters():
        assert torch.equal(p.detach(), initial[k]), k
    for run in ("t1_p8", "t1_p9"):
        overrides = json.loads((base / "prune" / run / "result.json").read_text())["overrides"]
        kwargs = json.loads(overrides["model.init_args.method_kwargs"])
        assert kwargs["rewind_from"] == search["initial"]
        method = method_of(args, overrides)
        for k in ("prompt_embeddings", "deep_prompt_embeddings", "kv_prompts"):
            assert torch.equal(getattr(method, k).detach(), initial[k]), (run, k)
        assert not method.token_mask.requires_grad and not method.piece_mask.requires_grad


def test_final_runs_keep_the_chosen_masks_at_zero_and_frozen(setup):
    args, base, summary = setup
    chosen = summary["pruning"]["candidates"][summary["pruning"]["best"]]
    tm = torch.ones(2)
    tm[chosen["tokens"]] = 0
    pm = torch.ones(2, 16)
    for t, pieces in enumerate(chosen["pieces"]):
        pm[t, pieces] = 0
    assert len(chosen["tokens"]) == 1 and all(len(p) == len(chosen["pieces"][0]) for p in chosen["pieces"])
    final = base / "final" / "seed3"
    ckpts = sorted(final.rglob("*.ckpt"))
    assert ckpts, "the final run wrote no checkpoint"
    sd = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(sd["model.peft.token_mask"], tm)  # unchanged by training: frozen
    assert torch.equal(sd["model.peft.piece_mask"], pm)
    overrides = json.loads((final / "result.json").read_text())["overrides"]
    method = method_of(args, overrides)
    assert not method.token_mask.requires_grad and not method.piece_mask.requires_grad
    initial = load_file(json.loads((base / "prune" / "search" / "result.json").read_text())["initial"])
    assert not torch.equal(sd["model.peft.prompt_embeddings"], initial["prompt_embeddings"])  # kept prompts trained
    assert 0.0 <= summary["test_acc_mean"] <= 1.0


def test_bad_requests_are_refused(setup, tmp_path):
    args, _, _ = setup
    with pytest.raises(PruneError, match="between 0 and 100"):
        parse_percents("0,150")
    vpt = [a.replace("configs/vtab/e2vpt/", "configs/vtab/vpt_deep/") if a.endswith(".yaml") else a for a in args
           if not a.startswith("--model.method_kwargs")]
    with pytest.raises(TuneError, match="e2vpt only"):
        tune(vpt, tmp_path, grid="lr=1;wd=0", seeds=[3], log=lambda *a: None, e2vpt_prune="50")


def test_rerun_skips_every_finished_unit(setup):
    args, base, summary = setup
    stamps = {p: p.stat().st_mtime_ns for p in base.rglob("result.json")}
    assert len(stamps) == 5  # grid, search, 2 rewind runs, 1 seed
    again = tune(args, base.parents[1], grid="lr=1;wd=0", seeds=[3], log=lambda *a: None, e2vpt_prune="50,60")
    assert again == summary
    assert {p: p.stat().st_mtime_ns for p in base.rglob("result.json")} == stamps
