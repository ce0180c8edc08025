"""LightningCLI entry point: ``mgpath fit|validate|test|predict --config configs/wsi/<task>.yaml``.

The model block configures :class:`mgpath.module.MGPATHModule` (the default when the block has no
``class_path``) or any other :class:`mgpath.lit.SlideClassifier` named by ``model.class_path``, e.g. the
baselines of :mod:`mgpath.baselines` (``class_path: mgpath.baselines.ABMILModule``); the data block
:class:`mgpath.data.WSIFeatureDataModule`; ``data.classes`` and ``data.magnifications`` are linked into the
model. After ``fit`` the best checkpoint (best validation macro-F1, ties to the later epoch, see
:mod:`mgpath.selection`) is what ``mgpath test --ckpt_path`` takes; ``--ckpt_path .../last.ckpt`` with
``fit`` resumes bit-exactly (RNG states are in the checkpoint).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mgpath.data import WSIFeatureDataModule
from mgpath.lit import SlideClassifier
from vapt.cli.errors import report_error
from vapt.fileio.resources import ResourceError, resolve_config_args
from vapt.fileio.weights import safe_torch_load
from vapt.training.config_keys import SuggestingArgumentParser
from vapt.training.resume import use_atomic_checkpoints
from vapt.training.run_folders import default_loggers, method_folder, unpin_used_versions

__all__ = ["MGPATHCLI", "main", "make_cli"]

VERSION_ENV = "MGPATH_LOG_VERSION"


class MGPATHCLI(LightningCLI):
    """LightningCLI with the class list and magnifications linked from the data to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.classes", "model.init_args.classes")
        parser.link_arguments("data.magnifications", "model.init_args.magnifications")

    def after_fit(self) -> None:
        """Say where the best checkpoint went (the file ``mgpath test`` / ``predict`` take as ``--ckpt_path``)."""
        if not self.trainer.is_global_zero:
            return
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if best:
            score = ckpt.best_model_score
            what = f"{ckpt.monitor} {float(score):.4f}" if ckpt.monitor and score is not None else "last epoch"
            print(f"best checkpoint ({what}): {best}")
        else:
            print("no checkpoint was written (checkpointing is off, e.g. with trainer.fast_dev_run)")

    def before_instantiate_classes(self) -> None:
        """The run-folder layout and loggers of ``vapt`` (:mod:`vapt.training.run_folders`) unless
        ``--trainer.logger`` is given: ``<default_root_dir>/<task>/<method>/version_<n>/``, where the task is the
        folder of ``data.labels_csv`` (``tcga_nsclc``) and the method the model class (``mgpath``, ``abmil``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if self.subcommand == "predict":
            trainer.logger = False  # predicting writes predictions only: never a log folder or a run's logs,
            self.save_config_callback = None  # and no config.yaml over one that is there
            return
        if trainer.get("logger") not in (None, True):
            if self.subcommand in ("validate", "test"):
                unpin_used_versions(trainer.get("logger"))
        else:
            data = (config.get("data") or {}).get("init_args") or config.get("data") or {}
            labels = data.get("labels_csv") if hasattr(data, "get") else None
            task = Path(labels).resolve().parent.name if labels else "wsi"
            name = f"{task}/{method_folder((config.get('model') or {}).get('class_path', DEFAULT_MODEL))}"
            trainer.logger = default_loggers(str(trainer.get("default_root_dir") or "runs"), name, VERSION_ENV)


    def _instantiate_trainer(self, config, callbacks):
        """The trainer, with checkpoints written atomically and loaded with ``weights_only=True``."""
        trainer = super()._instantiate_trainer(config, callbacks)
        use_atomic_checkpoints(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Refuse, in one line naming the file, a ``--ckpt_path`` that is not an mgpath checkpoint (before
        Lightning applies its hyper-parameters to the model block, which fails with a parser dump)."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and Path(path).is_file():
            try:
                ckpt = safe_torch_load(path)
            except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
                raise ValueError(f"mgpath: --ckpt_path {path} is not a readable checkpoint ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}); give a file written by "
                                 "`mgpath fit`") from None
            sd = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
            if not isinstance(ckpt, dict) or not any(k.startswith("model.") for k in sd):
                vapt = any(k.startswith(("backbone.", "prompt", "head.")) for k in sd)
                kind = "a vapt (ViT prompt-tuning) checkpoint" if vapt else "not an mgpath checkpoint"
                raise ValueError(f"mgpath: --ckpt_path {path} is {kind} (state-dict keys such as {list(sd)[:2]}); "
                                 "give a checkpoint written by `mgpath fit`")
            _check_ckpt_classes(path, ckpt.get("hyper_parameters") or {}, self.config[sub].get("data"))
        try:
            super()._parse_ckpt_path()
        except SystemExit:
            raise ValueError(f"mgpath: the hyper-parameters stored in --ckpt_path {path} do not fit this "
                             "config's model block (see the lines above); use the config the checkpoint was "
                             "trained with") from None


def _check_ckpt_classes(path: str, hparams: dict, data) -> None:
    """Refuse a checkpoint trained on other classes than the config's ``data.classes`` in one line (Lightning
    puts the checkpoint's hyper-parameters over the command line, which otherwise fails later and unclearly)."""
    init = data.get("init_args", data) if hasattr(data, "get") else {}
    wanted = init.get("classes") if hasattr(init, "get") else None
    stored = hparams.get("classes") if hasattr(hparams, "get") else None
    if wanted is not None and stored is not None and list(map(str, wanted)) != list(map(str, stored)):
        raise ValueError(f"mgpath: --ckpt_path {path} was trained on {len(stored)} classes {list(stored)}, the "
                         f"config gives {len(list(wanted))} classes {list(wanted)}; use the config (data.classes, "
                         "labels) the checkpoint was trained with, or train a checkpoint on these classes")


DEFAULT_MODEL = "mgpath.module.MGPATHModule"


def _with_class_path(path: str, tmp: list) -> str:
    """``path``, or a temporary copy whose class_path-less ``model:`` block is made MGPATHModule's init_args
    (a parser default would hand MGPATHModule's default values to any class named later)."""
    import yaml

    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text()) if p.is_file() else yaml.safe_load(path)  # a file or inline YAML
    except (OSError, yaml.YAMLError):
        return path
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or "class_path" in model:
        return path
    import atexit
    import shutil
    import tempfile

    if not tmp:
        tmp.append(tempfile.mkdtemp(prefix="mgpath-cli-"))
        atexit.register(shutil.rmtree, tmp[0], True)
    cfg["model"] = {"class_path": DEFAULT_MODEL, "init_args": model}
    out = Path(tmp[0]) / f"{len(list(Path(tmp[0]).iterdir()))}_{p.name if p.is_file() else 'inline.yaml'}"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def _model_blocks_with_class_path(argv: list[str]) -> list[str]:
    """The arguments with every ``--config`` file's model block given its class path (MGPATHModule when the
    block names none)."""
    out, tmp, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            out += [a, _with_class_path(argv[i + 1], tmp)]
            i += 2
            continue
        if a.startswith("--config="):
            a = "--config=" + _with_class_path(a.split("=", 1)[1], tmp)
        out.append(a)
        i += 1
    return out


def make_cli(argv: list[str], run: bool = True) -> MGPATHCLI:
    """Build the CLI from an argument list (``argv[0]`` is the subcommand when ``run``).

    ``--config`` takes a path or a shipped config name (``tcga_nsclc_16shot``, see ``mgpath configs --list``).
    """
    argv = resolve_config_args(list(argv), prefixes=("", "wsi/"), lister="mgpath configs")
    argv = _model_blocks_with_class_path(argv)
    if not any(a.startswith(("--config", "--model")) for a in argv):
        argv = [*argv[:1], "--model", DEFAULT_MODEL, *argv[1:]] if run else ["--model", DEFAULT_MODEL, *argv]
    saved, owns_version = sys.argv, VERSION_ENV not in os.environ
    sys.argv = [saved[0] if saved else "mgpath"]  # LightningCLI warns when both sys.argv and args are given
    try:
        return MGPATHCLI(SlideClassifier, WSIFeatureDataModule, subclass_mode_model=True, args=argv, run=run,
                         seed_everything_default=2023, save_config_kwargs={"overwrite": True},
                         parser_class=SuggestingArgumentParser)
    finally:
        sys.argv = saved
        if owns_version:  # the next run in this process takes the next free version
            os.environ.pop(VERSION_ENV, None)


def main(argv: list[str] | None = None) -> int:
    """``argv[0]`` is fit | validate | test | predict; the rest are LightningCLI options."""

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        make_cli(argv)
    except ResourceError as e:  # --config names neither a file nor a shipped config
        return report_error(f"mgpath {argv[0] if argv else ''}".strip(), e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
