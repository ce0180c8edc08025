"""Every shipped YAML config (19 VTAB-1k tasks + 5 FGVC datasets, x 13 methods, + the demo) trains one step on a
tiny random ViT: the VPT/VAPT/linear configs and the VTAB cifar100 config of every other method through the
LightningCLI (fast_dev_run, generated data in the real on-disk layout), every other config by building its
module from the YAML and taking one optimiser step."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from vapt.data.fgvc import FGVC_DATASETS
from vapt.data.synthetic import PATTERNS, write_fgvc_tree, write_vtab_tree
from vapt.data.vtab import VTAB_TASKS
from vapt.training.lightning_cli import build_cli, main
from vapt.training.module import PromptTuningModule

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "vtab").glob("*/*.yaml")) + sorted((REPO / "configs" / "fgvc").glob("*/*.yaml"))
CLI_METHODS = ("vapt", "vpt_deep", "vpt_shallow", "linear")
METHODS = CLI_METHODS + ("adapter", "lora", "vfpt", "e2vpt", "gatevpt", "replora", "gated_prompt", "mlp", "sidetune")
CLI_CONFIGS = [p for p in CONFIGS if p.parent.name in CLI_METHODS or p.stem == "cifar100"]
STEP_CONFIGS = [p for p in CONFIGS if p not in CLI_CONFIGS]
TINY = json.dumps({"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 1})
TINY_SIDE = json.dumps({"patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 1})  # 64 px, 16 patches
QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu", "--trainer.devices=1"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    sizes = {"train800": 2, "val200": 2, "test": 2}
    write_vtab_tree(root / "vtab", list(VTAB_TASKS), sizes=sizes, img_size=8)
    for name in FGVC_DATASETS:
        write_fgvc_tree(root / "fgvc" / name, name, sizes={"train": 2, "val": 2, "test": 2}, img_size=8)
    return root


def test_shipped_config_set_is_complete():
    names = {(p.parent.parent.name, p.parent.name, p.stem) for p in CONFIGS}
    expected = {("vtab", m, t) for m in METHODS for t in VTAB_TASKS}
    expected |= {("fgvc", m, d) for m in METHODS for d in FGVC_DATASETS}
    assert names == expected  # 312 files
    spec = importlib.util.spec_from_file_location("make_vapt_configs", REPO / "scripts" / "make_vapt_configs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    generated = gen.all_configs()
    assert sorted(generated) == sorted(CONFIGS)
    stale = [p for p, text in generated.items() if p.read_text() != text]
    assert not stale, f"configs out of date, run python scripts/make_vapt_configs.py: {stale}"


def test_configs_encode_the_official_recipe():
    cfg = yaml.safe_load((REPO / "configs/vtab/vapt/cifar100.yaml").read_text())
    init = cfg["model"]["init_args"]
    assert (init["method"], init["num_tokens"], init["hidden_dim"], init["kernel_size"]) == ("vapt", 10, 8, 2)
    assert (init["lr"], init["weight_decay"], cfg["data"]["init_args"]["batch_size"]) == (2.5, 0.01, 64)
    assert cfg["trainer"]["max_epochs"] == 100
    shallow = yaml.safe_load((REPO / "configs/vtab/vpt_shallow/svhn.yaml").read_text())["model"]["init_args"]
    assert (shallow["method"], shallow["deep"], shallow["num_tokens"]) == ("vpt", False, 50)
    for path in CONFIGS:  # every number in a config is a number (YAML 1.1 reads 1e-3 as a string)
        init = yaml.safe_load(path.read_text())["model"]["init_args"]
        assert isinstance(init["lr"], float) and isinstance(init["weight_decay"], float), path


def _id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.parent.name}/{p.stem}"


@pytest.mark.parametrize("config", CLI_CONFIGS, ids=_id)
def test_config_fast_dev_run(config: Path, trees: Path, tmp_path: Path):
    family = config.parent.parent.name
    root = trees / "vtab" if family == "vtab" else trees / "fgvc" / config.stem
    # run=False builds one parser instead of four (the `fit` subcommand path is tested with the demo config)
    side = config.parent.name == "sidetune"  # AlexNet needs >= 63 px; its weights file is not shipped
    extra = ['--model.method_kwargs={"side_checkpoint": null}'] if side else []
    cli = build_cli(["--config", str(config), f"--data.root={root}", "--model.checkpoint=null", *extra,
                     f"--model.backbone_kwargs={TINY_SIDE if side else TINY}", f"--data.img_size={64 if side else 16}",
                     "--data.batch_size=2",
                     "--data.num_workers=0", "--trainer.fast_dev_run=true", *QUIET], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    spec = yaml.safe_load(config.read_text())
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes  # linked from the data
    assert cli.model.model.head.out_features == cli.datamodule.num_classes
    init = spec["model"]["init_args"]
    assert cli.model.prompt_config.method == init["method"]
    for key, value in (init.get("method_kwargs") or {}).items():
        assert getattr(cli.model.prompt_config, key) == (None if side else value)
    scale = 2 / 256 if init.get("scale_lr", True) else 1.0  # x batch / 256
    assert cli.model.effective_lr == pytest.approx(init["lr"] * scale)


@pytest.mark.parametrize("config", STEP_CONFIGS, ids=_id)
def test_config_builds_and_steps(config: Path):
    """The YAML's model init_args build a module on a tiny ViT (classes from the data) that takes one step."""
    spec = yaml.safe_load(config.read_text())
    init = dict(spec["model"]["init_args"])
    data = spec["data"]["init_args"]
    classes = (VTAB_TASKS[data["task"]] if "task" in data else FGVC_DATASETS[data["dataset"]]).num_classes
    size, tiny = 16, TINY
    if init["method"] == "sidetune":  # AlexNet needs >= 63 px; its weights file is not shipped
        init["method_kwargs"] = {**init["method_kwargs"], "side_checkpoint": None}
        size, tiny = 64, TINY_SIDE
    init.update(checkpoint=None, backbone_kwargs=json.loads(tiny), img_size=size, num_classes=classes)
    module = PromptTuningModule(**init)
    assert module.prompt_config.method == init["method"]
    for key, value in (init.get("method_kwargs") or {}).items():
        assert getattr(module.prompt_config, key) == value
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    loss = torch.nn.functional.cross_entropy(module(torch.randn(2, 3, size, size)), torch.tensor([0, classes - 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any((a != b).any() for a, b in zip(before, params))


def test_demo_config_parses_and_runs_one_step(tmp_path: Path):
    result = tmp_path / "demo.json"
    main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), f"--data.root={tmp_path / 'cache'}",
          "--data.train_size=8", "--data.val_size=4", "--data.test_size=4", "--trainer.fast_dev_run=true",
          f"--result_json={result}", *QUIET])
    out = json.loads(result.read_text())
    assert out["global_step"] == 1 and "test/acc" in out["metrics"]  # test_after_fit ran
    assert (tmp_path / "cache").is_dir()


@pytest.mark.parametrize("override, message", [
    ("--data.task=cifar10", "DataError: Unknown VTAB-1k task 'cifar10'; choose one of: cifar100"),
    ("--data.num_classes=10", "DataError: VTAB-1k task 'cifar100' has 100 classes but the config says num_classes=10"),
    ("--data.root=/nonexistent/vtab", "DataError: VTAB-1k root /nonexistent/vtab does not exist"),
    ("--model.deep=false", "ModelConfigError: model.init_args: VAPT inserts adaptive prompts at every layer"),
    ("--model.method=lorra", "ModelConfigError: model.init_args: Unknown method 'lorra'; choose one of vpt, vapt"),
])
def test_cli_bad_inputs_give_one_clear_line(override, message, capsys):
    config = REPO / "configs/vtab/vapt/cifar100.yaml"
    rc = main(["fit", "--config", str(config), "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}",
               "--data.img_size=16", override, *QUIET])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_writes_one_row_per_image(tmp_path: Path):
    out = tmp_path / "pred.csv"
    rc = main(["predict", "--config", str(REPO / "configs" / "demo.yaml"), f"--data.root={tmp_path / 'cache'}",
               "--data.train_size=4", "--data.val_size=4", "--data.test_size=6", f"--predictions_csv={out}", *QUIET])
    assert rc == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "path,label,label_name,pred,pred_name,prob" and len(rows) == 7
    for row in rows[1:]:
        path, label, label_name, pred, pred_name, prob = row.split(",")
        assert Path(path).is_file() and int(label) in range(4) and int(pred) in range(4) and 0 < float(prob) <= 1
        assert label_name == PATTERNS[int(label)] and pred_name == PATTERNS[int(pred)]  # names beside the ids
