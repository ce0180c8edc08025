"""`mgpath benchmark` + `mgpath report` end to end on a generated cohort (2 methods x 2 folds), resumable."""
import json

import pandas as pd
import pytest
from test_mgpath_train import ROOT, D, _datamodule

from mgpath.benchmark import method_config, parse_folds
from mgpath.cli import main


def test_benchmark_and_report_end_to_end(tmp_path, capsys):
    _datamodule(tmp_path, n_per_class=8)
    cfg = tmp_path / "bench.yaml"
    import yaml
    base = yaml.safe_load((ROOT / "configs/wsi/demo_tiny.yaml").read_text())
    base["model"].update(feature_dim=D, descriptions=str(ROOT / "data/prompts/demo.json"))
    base["data"].update(labels_csv=str(tmp_path / "labels.csv"), split_csv=str(tmp_path / "splits/splits_{fold}.csv"),
                        features_root=str(tmp_path / "features"))
    base["trainer"]["max_epochs"] = 2
    cfg.write_text(yaml.safe_dump(base))
    out = tmp_path / "runs"
    args = ["benchmark", "--config", str(cfg), "--methods", "mgpath,abmil", "--folds", "0..1", "--out", str(out)]
    assert main(args) == 0
    for meth in ("mgpath", "abmil"):
        for k in (0, 1):
            r = json.loads((out / meth / f"fold_{k}" / "result.json").read_text())
            assert 0 <= r["auc"] <= 1 and r["checkpoint"].endswith(".ckpt")
    abmil_cfg = yaml.safe_load((out / "abmil" / "config.yaml").read_text())
    assert abmil_cfg["model"] == {"class_path": "mgpath.baselines.ABMILModule", "init_args": {"feature_dim": D}}
    # resumable: a second run reads every finished fold back and trains nothing
    mtime = (out / "abmil" / "fold_1" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert (out / "abmil" / "fold_1" / "result.json").stat().st_mtime_ns == mtime
    # the report: one row per method with mean ± std over the two folds, paper columns blank
    assert main(["report", str(out)]) == 0
    table = pd.read_csv(out / "report.csv", index_col=0)
    assert list(table.index) == ["mgpath", "abmil"] and (table["folds"] == 2).all()
    for meth in ("mgpath", "abmil"):
        vals = [json.loads((out / meth / f"fold_{k}" / "result.json").read_text())["auc"] for k in (0, 1)]
        assert table.loc[meth, "auc_mean"] == pytest.approx(sum(vals) / 2, abs=1e-4)
        assert table.loc[meth, "auc_std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5, abs=1e-4)
    assert table["paper_auc"].isna().all()
    md = (out / "report.md").read_text()
    assert "| mgpath | 2 |" in md and "| abmil | 2 |" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # paper numbers only from a given file
    (tmp_path / "paper.csv").write_text("method,auc,f1,acc,source\nabmil,0.9,,,my notes\n")
    assert main(["report", str(out), "--published", str(tmp_path / "paper.csv"), "--out", str(tmp_path / "r2")]) == 0
    t2 = pd.read_csv(tmp_path / "r2" / "report.csv", index_col=0)
    assert t2.loc["abmil", "paper_auc"] == 0.9 and pd.isna(t2.loc["mgpath", "paper_auc"])


def test_method_configs_and_folds():
    base = {"model": {"descriptions": "d.json", "feature_dim": 8, "text_model": "mgpath-tiny", "lr": 0.1,
                      "ot": {"eps": 0.2}}, "data": {}, "trainer": {}}
    cfg, train = method_config(base, "mgpath_no_ot")
    assert cfg["model"]["init_args"]["ot"] == {"eps": 0.2, "backend": "uniform"} and train
    cfg, train = method_config(base, "zeroshot")
    assert cfg["model"]["class_path"] == "mgpath.zeroshot.ZeroShotModule" and not train
    assert "lr" not in cfg["model"]["init_args"]
    assert method_config(base, "coop")[0]["model"]["init_args"]["text_model"] == "mgpath-tiny"
    assert method_config(base, "maxpool")[0]["model"]["init_args"] == {"feature_dim": 8, "pooling": "max"}
    with pytest.raises(ValueError, match="unknown method"):
        method_config(base, "vit")
    assert parse_folds(["0..2"]) == [0, 1, 2] and parse_folds(["0,3"]) == [0, 3] and parse_folds(["1", "4"]) == [1, 4]


def test_a_baseline_config_gets_its_own_defaults_not_mgpaths(tmp_path):
    """A model block naming a baseline gets the baseline's published defaults (lr 2e-4), not MGPATHModule's."""
    import yaml

    from mgpath.lightning_cli import make_cli

    _datamodule(tmp_path, n_per_class=8)
    base = yaml.safe_load((ROOT / "configs/wsi/demo_tiny.yaml").read_text())
    base["model"].update(feature_dim=D, descriptions=str(ROOT / "data/prompts/demo.json"))
    base["data"].update(labels_csv=str(tmp_path / "labels.csv"), split_csv=str(tmp_path / "splits/splits_{fold}.csv"),
                        features_root=str(tmp_path / "features"))
    for method, cls, lr in (("abmil", "ABMILModule", 2e-4), ("dsmil", "DSMILModule", 2e-4), ("coop", "CoOpModule", 5e-3)):
        cfg, _ = method_config(base, method)
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(cfg))
        model = make_cli(["--config", str(tmp_path / f"{method}.yaml")], run=False).model
        assert type(model).__name__ == cls and model.lr == lr, method
    assert model.hparams.n_sets == 1 and model.model.visual.graph is None  # CoOp: not MGPATH's 4 sets / graph
    plain = make_cli(["--config", str(ROOT / "configs/wsi/demo_tiny.yaml"), "--data.labels_csv",
                      str(tmp_path / "labels.csv"), "--data.split_csv", str(tmp_path / "splits/splits_{fold}.csv"),
                      "--data.features_root", str(tmp_path / "features"), "--model.feature_dim", str(D)],
                     run=False).model
    assert type(plain).__name__ == "MGPATHModule" and plain.lr == 5e-3


def _bench_config(tmp_path, methods_block):
    import yaml
    _datamodule(tmp_path, n_per_class=8)
    base = yaml.safe_load((ROOT / "configs/wsi/demo_tiny.yaml").read_text())
    base["model"].update(feature_dim=D, descriptions=str(ROOT / "data/prompts/demo.json"))
    base["data"].update(labels_csv=str(tmp_path / "labels.csv"), split_csv=str(tmp_path / "splits/splits_{fold}.csv"),
                        features_root=str(tmp_path / "features"))
    base["trainer"]["max_epochs"] = 1
    base["methods"] = methods_block
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump(base))
    return cfg


def test_per_method_settings_reach_the_model_and_the_results(tmp_path):
    """A `methods:` block setting k_sample and lr per method: in each method's config, module and result.json."""
    import torch
    import yaml
    cfg = _bench_config(tmp_path, {"clam": {"k_sample": 3, "lr": 0.003, "recipe": "official"},
                                   "dsmil": {"lr": 0.0007, "recipe": "official"}, "transmil": {"recipe": "official", "dim": 32}})
    out = tmp_path / "runs"
    assert main(["benchmark", "--config", str(cfg), "--methods", "clam,dsmil,transmil", "--folds", "0",
                 "--out", str(out)]) == 0
    # the official TransMIL recipe ran under Lightning: Lookahead(RAdam), checkpoint on the validation loss
    tm = json.loads((out / "transmil" / "fold_0" / "result.json").read_text())
    ck = torch.load(tm["checkpoint"], weights_only=False)
    assert "slow_state" in ck["optimizer_states"][0] and ck["hyper_parameters"]["recipe"] == "official"
    assert any("val/loss" in k for k in ck["callbacks"])
    clam = json.loads((out / "clam" / "fold_0" / "result.json").read_text())
    assert clam["settings"] == {"k_sample": 3, "lr": 0.003, "recipe": "official"}
    assert clam["class_path"] == "mgpath.baselines.CLAMModule"
    dsmil = json.loads((out / "dsmil" / "fold_0" / "result.json").read_text())
    assert dsmil["settings"] == {"lr": 0.0007, "recipe": "official"}
    # DSMIL's official model selection: its own validation score
    assert any("val/dsmil_score" in k for k in torch.load(dsmil["checkpoint"], weights_only=True)["callbacks"])
    written = yaml.safe_load((out / "clam" / "config.yaml").read_text())
    assert "methods" not in written and written["model"]["init_args"]["k_sample"] == 3
    hp = torch.load(clam["checkpoint"], weights_only=False)["hyper_parameters"]
    assert (hp["k_sample"], hp["lr"], hp["recipe"]) == (3, 0.003, "official")
    assert main(["report", str(out)]) == 0
    table = pd.read_csv(out / "report.csv", index_col=0)
    assert json.loads(table.loc["clam", "settings"]) == {"k_sample": 3, "lr": 0.003, "recipe": "official"}


@pytest.mark.parametrize("block, message", [
    ({"clam": {"k_samples": 4}}, "'k_samples' is not a setting of clam (CLAMModule); did you mean 'k_sample'?"),
    ({"clamm": {"lr": 0.1}}, "'methods: clamm' is not a method; did you mean 'clam'"),
    ({"transmil": {"recipe": "official", "lrr": 1}}, "did you mean 'lr'?"),
    ({"abmil": 3}, "must be a mapping of settings"),
])
def test_bad_method_settings_are_refused_with_did_you_mean(tmp_path, capsys, block, message):
    cfg = _bench_config(tmp_path, block)
    assert main(["benchmark", "--config", str(cfg), "--methods", "abmil", "--folds", "0",
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs" / "abmil").exists()
