"""Runs of a sweep: `RunSpec` (one configuration in its folder), `run_one` (its separate Lightning run,
resumable) and `run_specs` (a list of them, one by one or K configurations per pass).

Every run writes ``result.json`` atomically when it finishes. On every path (separate, stacked, cluster jobs) a
run is skipped when that file was made with the same arguments and files, refused as stale otherwise (redone
with ``--overwrite``), and trained only under its folder's lock (one held by a live process is refused); a separate
run that was killed resumes from its newest checkpoint that loads, bit for bit as if never stopped (the RNG
state is in the checkpoint; a truncated newer checkpoint is named and skipped). A stacked pass that was killed
starts again at epoch 0 for the configurations it had not finished.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vapt.fileio.atomic import read_json_file, write_text_atomic
from vapt.fileio.locks import SlideLock
from vapt.training.lightning_cli import build_cli
from vapt.training.resume import compare_run_identity, find_resume_checkpoint, run_identity
from vapt.training.run_folders import VERSION_ENV
from vapt.training.stacked import build_member, group_members, run_stacked
from vapt.training.trunk_cache import TrunkCache

_log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """One configuration of a sweep: its folder, its LightningCLI overrides and how it is scored."""

    run_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    evaluate: str = "validate"  # or "test"

    @property
    def result_path(self) -> Path:
        return Path(self.run_dir) / "result.json"

    def finished(self) -> dict | None:
        """The stored result, or None while the run has not finished."""
        return json.loads(self.result_path.read_text()) if self.result_path.is_file() else None


def _cli_value(v: Any) -> str:
    return "null" if v is None else str(v)


def write_result(spec: RunSpec, result: dict) -> dict:
    write_text_atomic(spec.result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def unit_lock(run_dir: str | os.PathLike) -> SlideLock:
    """The lock of one run folder: ``<task>/<method>/.locks/grid_lr1_wd0.lock`` (held while it trains)."""
    run_dir = Path(run_dir)
    return SlideLock(run_dir.parent.parent / ".locks" / f"{run_dir.parent.name}_{run_dir.name}.lock")


def _held(run_dir: Path, lock: SlideLock) -> FileExistsError:
    return FileExistsError(f"{run_dir} is being trained by another vapt tune ({lock.owner}); wait for it to "
                           "finish and rerun (its result is then reused), or use another --out")


def spec_identity(cli_args: Sequence[str], overrides: dict[str, Any]) -> dict:
    """`run_identity` of one configuration: the sweep's arguments plus its overrides, as its run is started."""
    return run_identity(list(cli_args) + [f"--{k}={_cli_value(v)}" for k, v in overrides.items()])


def reusable_result(spec: RunSpec, identity: dict, overwrite: bool, log=_log.info, clear: bool = True
                    ) -> dict | None:
    """The finished result of ``spec`` to reuse, or None when the run is to be done.

    A ``result.json`` made with other arguments or files is a `FileExistsError` (``stale: ... pass
    --overwrite``); with ``overwrite`` it is to be redone, its folder emptied when ``clear`` (only under the
    folder's `unit_lock`).
    """
    if not spec.result_path.is_file():
        return None
    done = read_json_file(spec.result_path, f"delete it (or {spec.run_dir}) to rerun that run")
    why = compare_run_identity(done.get("identity"), identity)
    if not why:
        if clear:
            log(f"  done already: {spec.run_dir}")
        return done
    if not overwrite:
        raise FileExistsError(f"stale: {spec.result_path} was made otherwise ({why}); pass --overwrite to redo "
                              "it, or use another --out")
    if clear:
        log(f"  stale, redone (--overwrite): {spec.run_dir}")
        shutil.rmtree(spec.run_dir)
    return None


def run_one(cli_args: Sequence[str], run_dir: Path, overrides: dict[str, Any], evaluate: str,
            log=_log.info, overwrite: bool = False, before_fit: Callable[[Any, Path], None] | None = None,
            after_fit: Callable[[Any, Any, Any], dict] | None = None) -> dict:
    """Train one configuration in ``run_dir`` and evaluate it (``validate`` or ``test``).

    Returns the result dict, also written to ``run_dir/result.json``. A finished run is reused or refused as
    stale by `reusable_result`. Resumes from the newest checkpoint in ``run_dir`` that loads (damaged newer
    ones are named and skipped). A run folder another live process is training (its `unit_lock`) is a
    `FileExistsError` too. ``before_fit(module, run_dir)`` runs before training and
    ``after_fit(trainer, module, datamodule) -> dict`` after the evaluation, its entries added to the result.
    """
    lock = unit_lock(run_dir)
    if not lock.acquire():
        raise _held(Path(run_dir), lock)
    try:
        return _run_one_locked(cli_args, Path(run_dir), overrides, evaluate, log, overwrite, before_fit, after_fit)
    finally:
        lock.release()


def _run_one_locked(cli_args: Sequence[str], run_dir: Path, overrides: dict[str, Any], evaluate: str,
                    log, overwrite: bool, before_fit=None, after_fit=None) -> dict:
    spec = RunSpec(run_dir, dict(overrides), evaluate)
    identity = spec_identity(cli_args, overrides)
    done = reusable_result(spec, identity, overwrite, log)
    if done is not None:
        return done
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    args = list(cli_args) + [f"--trainer.default_root_dir={run_dir}"]
    args += [f"--{k}={_cli_value(v)}" for k, v in overrides.items()]
    resume = find_resume_checkpoint(run_dir, log=lambda m: log(f"  {m}"))
    log(f"  {'resuming' if resume else 'running'}: {run_dir}" + (f" from {resume.name}" if resume else ""))
    t0 = time.time()
    try:
        cli = build_cli(args, run=False, log_name="")
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if before_fit is not None:
            before_fit(model, run_dir)
        trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
        metrics = (trainer.validate if evaluate == "validate" else trainer.test)(
            model, datamodule=data, verbose=False)[0]
        extra = after_fit(trainer, model, data) if after_fit is not None else {}
    finally:
        os.environ.pop(VERSION_ENV, None)
    result = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "overrides": overrides,
        "epochs": trainer.current_epoch,
        "effective_lr": model.effective_lr,
        "resumed_from": str(resume) if resume else None,
        "seconds": round(time.time() - t0, 2),
        "identity": identity,
        **extra,
    }
    write_result(spec, result)
    del cli, trainer, model, data
    gc.collect()
    return result


def run_specs(cli_args: Sequence[str], specs: Sequence[RunSpec], stack: int = 0,
              trunk_cache: str | os.PathLike | None = None, log: Callable[[str], Any] = _log.info,
              overwrite: bool = False) -> list[dict]:
    """Run ``specs`` (skipping finished ones) and return their results in order.

    ``stack=0``: each as its separate Lightning run (`run_one`). ``stack=K>=1``: up to K configurations that
    share a backbone, split and method set-up per pass (`vapt.training.stacked`), with the whole-trunk prefix
    of head-only methods read from a `TrunkCache` in ``trunk_cache`` (None: computed in every pass).
    """
    if stack < 1:
        return [run_one(cli_args, s.run_dir, s.overrides, s.evaluate, log, overwrite) for s in specs]
    identities = {str(s.run_dir): spec_identity(cli_args, s.overrides) for s in specs}
    todo = [s for s in specs if reusable_result(s, identities[str(s.run_dir)], overwrite, log, clear=False) is None]
    for s in specs:
        if s not in todo:
            log(f"  done already: {s.run_dir}")
    cache = TrunkCache(trunk_cache) if trunk_cache is not None else None
    for evaluate in ("validate", "test"):
        pending = [s for s in todo if s.evaluate == evaluate]
        for start in range(0, len(pending), stack):
            with ExitStack() as held:
                chunk = []
                for s in pending[start:start + stack]:
                    lock = unit_lock(s.run_dir)
                    if not lock.acquire():
                        raise _held(Path(s.run_dir), lock)
                    held.callback(lock.release)
                    if reusable_result(s, identities[str(s.run_dir)], overwrite, log) is None:
                        chunk.append(s)  # (finished meanwhile by another process: kept)
                _run_chunk_stacked(cli_args, chunk, evaluate, cache, identities, log)
    return [s.finished() for s in specs]


def _run_chunk_stacked(cli_args, chunk: list[RunSpec], evaluate: str, cache, identities: dict, log) -> None:
    by_dir = {str(s.run_dir): s for s in chunk}
    members = [build_member(cli_args, s.run_dir, s.overrides) for s in chunk]
    for group in group_members(members):
        log(f"  running {len(group)} configuration(s) in one pass: " + ", ".join(Path(m.run_dir).name for m in group))
        for m, result in zip(group, run_stacked(group, evaluate, cache)):
            write_result(by_dir[str(m.run_dir)], {**result, "identity": identities[str(m.run_dir)]})
    del members
    gc.collect()
