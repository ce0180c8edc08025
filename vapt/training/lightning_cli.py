"""`vapt fit|validate|test|predict`: LightningCLI over `PromptTuningModule` and the vapt DataModules.

- ``num_classes`` and ``img_size`` are linked from the DataModule to the model.
- Unless ``--trainer.logger`` is given, a CSV and a TensorBoard logger write into the same folder,
  ``<default_root_dir>/<task>/<method>/version_<n>/`` (``metrics.csv``, TensorBoard events, ``config.yaml``,
  ``checkpoints/``).
- ``--result_json PATH`` writes the final metrics of the subcommand (rank 0, atomically).

Multi-GPU / multi-node runs come from Lightning: ``--trainer.devices 4 --trainer.strategy ddp``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from vapt.backbones.errors import BackboneError
from vapt.cli.errors import EXIT_SKIPPED, run_reporting_errors
from vapt.data import (  # noqa: F401 - imported so that --data takes their short names (--data VTABDataModule)
    DemoShapesDataModule,
    FGVCDataModule,
    ImageFolderDataModule,
    VTABDataModule,
)
from vapt.data.base import ClassificationDataModule, DataError
from vapt.fileio.atomic import JSONFileError
from vapt.fileio.atomic import write_text_atomic as atomic_write_text
from vapt.fileio.resources import ConfigFileError, ResourceError, resolve_config_args
from vapt.quiet import quiet_command
from vapt.training.config_keys import SuggestingArgumentParser
from vapt.training.module import ModelConfigError, PromptTuningModule
from vapt.training.resume import (
    CheckpointError,
    RecordRunIdentity,
    check_checkpoint,
    check_resume_identity,
    resolve_ckpt_path,
    resume_callbacks,
    run_settings_identity,
    use_atomic_checkpoints,
)
from vapt.training.run_folders import VERSION_ENV, default_loggers, fresh_path, unpin_used_versions

_VERSION_ENV = VERSION_ENV  # the old name, still importable


def method_label(model_args: Any) -> str:
    """``vpt`` + ``deep`` -> ``vpt_deep`` / ``vpt_shallow``; other methods keep their name."""
    get = model_args.get if hasattr(model_args, "get") else lambda k, d=None: getattr(model_args, k, d)
    method = get("method", "vapt")
    if method == "vpt":
        return "vpt_deep" if get("deep", True) else "vpt_shallow"
    return method


def experiment_name(config: Namespace) -> str:
    """``<task>/<method>`` from a parsed config: the data's ``task``, ``dataset`` or ``name``, else the folder
    name of its ``root`` (ImageFolder), else the class name."""
    data = config.get("data") or Namespace()
    init = data.get("init_args") or Namespace()
    root = init.get("root") if str(data.get("class_path", "")).endswith("ImageFolderDataModule") else None
    task = (init.get("task") or init.get("dataset") or init.get("name")
            or (Path(root).expanduser().resolve().name if root else None)
            or str(data.get("class_path", "data")).rsplit(".", 1)[-1])
    model_init = (config.get("model") or Namespace()).get("init_args") or Namespace()
    return f"{task}/{method_label(model_init)}"


class VaptCLI(LightningCLI):
    """LightningCLI with data -> model links, default CSV + TensorBoard loggers and ``--result_json``.

    ``log_name`` replaces the default ``<task>/<method>`` logger sub-folder (``""``: log into
    ``default_root_dir/version_<n>`` directly).
    """

    def __init__(self, *args, log_name: str | None = None, **kwargs):
        self.log_name = log_name
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.img_size", "model.init_args.img_size", apply_on="instantiate")
        parser.add_argument("--result_json", type=Optional[str], default=None,  # noqa: UP045 (runtime type)
                            help="write the subcommand's final metrics to this JSON file")
        parser.add_argument("--predictions_csv", type=Optional[str], default=None,  # noqa: UP045 (runtime type)
                            help="predict: write path,label,label_name,pred,pred_name,prob rows here "
                                 "(default <default_root_dir>/predictions.csv, or predictions_2.csv ... when taken; "
                                 "an existing file is never replaced)")
        parser.add_argument("--predict_images", type=Optional[str], default=None,  # noqa: UP045 (runtime type)
                            help="predict: a folder (recursive) or list file of images, labelled or not, instead "
                                 "of the DataModule's test split")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the last-epoch model (the official protocol reports it)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit --ckpt_path last: resume even when the settings or data differ from the "
                                 "checkpoint's run")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if self.subcommand == "predict":
            trainer.logger = False  # predicting writes its CSV only: never a log folder, never a run's logs,
            self.save_config_callback = None  # and no config.yaml over one that is there
            return
        if trainer.get("logger") in (None, True):
            root = trainer.get("default_root_dir") or "runs"
            name = experiment_name(config) if self.log_name is None else self.log_name
            trainer.logger = default_loggers(str(root), name)
        elif self.subcommand in ("validate", "test"):
            unpin_used_versions(trainer.get("logger"))

    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    # -- resume: RNG state + last.ckpt in every checkpointing trainer, atomic files, checked --ckpt_path
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        trainer = super()._instantiate_trainer(config, list(callbacks) + resume_callbacks(config))
        use_atomic_checkpoints(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the hyper-parameters of a ``--ckpt_path`` file here: check the file first."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "last", "best", "hpc", "registry"):
            check_checkpoint(ckpt_path, what="--ckpt_path")
        super()._parse_ckpt_path()

    def _resolve_ckpt_path(self) -> None:
        """``--ckpt_path last`` -> newest good checkpoint of this experiment's versions, refused as stale when
        that run was made with other settings or data (unless ``--overwrite``); ``fit`` records its own
        settings and data in its version folder for the next ``last``."""
        config = self.config_init[self.subcommand]
        loggers = self.trainer.loggers
        log_dir = loggers[0].log_dir if loggers else None  # None for fast_dev_run's dummy logger
        identity = None
        if self.subcommand == "fit":
            identity = self._run_identity()
            if log_dir:  # recorded once the data is prepared (a generated data set exists only then)
                self.trainer.callbacks.append(RecordRunIdentity(log_dir, self._run_identity))
        if config.get("ckpt_path") == "last":
            run_folder = Path(log_dir).parent if log_dir else Path(self.trainer.default_root_dir)
            log = print if self.trainer.is_global_zero else (lambda *a: None)
            config["ckpt_path"] = resolve_ckpt_path("last", run_folder, lambda m: log(f"vapt {self.subcommand}: {m}"))
            if config["ckpt_path"] and identity is not None and not self._config().get("overwrite"):
                check_resume_identity(config["ckpt_path"], identity)
        self.model.checkpoint_source = config.get("ckpt_path")  # named when its shapes do not fit

    def _run_identity(self) -> dict:
        """The resolved settings of this run (as saved in ``config.yaml``) and the identity of its data."""
        return run_settings_identity(self._config().clone().as_dict())

    before_fit = before_validate = before_test = _resolve_ckpt_path  # before_predict calls it too

    def after_fit(self) -> None:
        if self._config().get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
            if self.trainer.is_global_zero:
                acc = self.trainer.callback_metrics.get("test/acc")
                print(f"test/acc = {float(acc):.4f} (last-epoch model, {self.trainer.current_epoch} epochs)")
        self._write_result()

    def _write_result(self) -> None:
        path = self._config().get("result_json")
        if not path or not self.trainer.is_global_zero:
            return
        write_result(path, self.trainer, self.model, extra={"subcommand": self.subcommand})

    after_validate = _write_result
    after_test = _write_result

    def before_predict(self) -> None:
        self._resolve_ckpt_path()
        source = self._config().get("predict_images")
        if source:
            self.datamodule.use_predict_images(source)
        # read before the loop, so a bad classes.txt stops the run before any work
        self._class_names = self.datamodule.class_names() if hasattr(self.datamodule, "class_names") else None
        given = self._config().get("predictions_csv")
        if given and Path(given).exists():
            raise FileExistsError(f"--predictions_csv {given} exists; predictions never replace an earlier file: "
                                  "give another path or move that one away")
        self._predictions_path = Path(given) if given else fresh_path(
            os.path.join(self.trainer.default_root_dir, "predictions.csv"))

    def after_predict(self) -> None:
        if not self.trainer.is_global_zero:
            return
        path = self._predictions_path
        preds = self.trainer.predict_loop.predictions or []
        dataset = getattr(self.datamodule, "datasets", {}).get("predict")
        write_predictions(path, preds, dataset.samples if dataset is not None else None,
                          getattr(self, "_class_names", None))
        print(f"wrote {path}")


def write_result(path: str | os.PathLike, trainer, model: PromptTuningModule, extra: dict | None = None) -> dict:
    """Write ``trainer.callback_metrics`` plus run facts to ``path`` (atomic). Returns the dict."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
        trainer.checkpoint_callback, "best_model_path", "")
    result = {
        "metrics": metrics,
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "effective_lr": model.effective_lr,
        "world_size": trainer.world_size,
        "checkpoint": ckpt or None,
        **(extra or {}),
    }
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def write_predictions(path: str | os.PathLike, preds: list[dict], samples: Optional[list] = None,  # noqa: UP045
                      class_names: Optional[list[str]] = None) -> None:  # noqa: UP045
    """``path,label,label_name,pred,pred_name,prob`` rows (one per image, in dataset order) from
    ``predict_step`` outputs; label cells are blank for unlabelled images (label -1), name cells when the
    dataset has no class names."""
    import csv
    import io

    import torch

    pred = torch.cat([p["pred"] for p in preds]).tolist() if preds else []
    prob = torch.cat([p["probs"].max(-1).values for p in preds]).tolist() if preds else []

    def name(i) -> str:
        return class_names[i] if class_names is not None and isinstance(i, int) and 0 <= i < len(class_names) else ""

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "label_name", "pred", "pred_name", "prob"])
    for i, (y_hat, p) in enumerate(zip(pred, prob)):
        img, label = samples[i] if samples is not None and i < len(samples) else ("", "")
        label = "" if label == -1 else label
        writer.writerow([img, label, name(label), y_hat, name(y_hat), f"{p:.6f}"])
    atomic_write_text(path, buf.getvalue())


def build_cli(argv: list[str], run: bool = True, log_name: str | None = None) -> VaptCLI:
    """Construct the CLI (``run=False``: instantiate model, data and trainer only; argv has no subcommand).

    ``--config`` takes a YAML path or a shipped config name (``vtab/vapt/cifar100``; ``vapt configs --list``).
    """
    argv = resolve_config_args(argv)
    return VaptCLI(
        PromptTuningModule,
        ClassificationDataModule,
        log_name=log_name,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
        run=run,
        auto_configure_optimizers=False,
        parser_class=SuggestingArgumentParser,  # did-you-mean for misspelt keys
    )


#: the exceptions that mean "this input cannot be used" in a training command (each module owns its error)
#: bad input of vapt fit|validate|test|predict (OSError: the file system said no - disk full, read-only folder;
#: JSONFileError: a damaged result or summary file)
USER_ERRORS = (DataError, ModelConfigError, CheckpointError, BackboneError, ResourceError, MisconfigurationException,
               JSONFileError, OSError, ConfigFileError)


def _run(argv: list[str]) -> int:
    with quiet_command():
        cli = build_cli(argv, run=True)
    skipped = getattr(cli.datamodule, "skipped", None)
    if skipped:
        print(f"vapt {argv[0]}: skipped {len(skipped)} unreadable image(s) (data.on_bad_image: skip), e.g. "
              f"{skipped[0]}", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


def main(argv: list[str] | None = None) -> int:
    """``argv[0]`` is ``fit`` | ``validate`` | ``test`` | ``predict``; the rest are LightningCLI options.

    Exit 0, 1 when images were skipped (``data.on_bad_image: skip``), 2 on bad input (one line on stderr;
    ``--debug`` or ``VAPT_DEBUG=1`` shows the traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    owns_version = _VERSION_ENV not in os.environ
    try:
        return run_reporting_errors(f"vapt {argv[0] if argv else ''}".strip(), _run, argv, USER_ERRORS,
                                    report_bugs=False)
    finally:
        if owns_version:
            os.environ.pop(_VERSION_ENV, None)


if __name__ == "__main__":
    sys.exit(main())
