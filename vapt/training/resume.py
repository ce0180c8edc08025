"""Exact and crash-safe resume of vapt training.

- `RNGStateCallback` stores the random state of torch (CPU and CUDA), numpy and python in every checkpoint
  and puts it back at the start of the first resumed epoch, so dropout draws continue as in an uninterrupted
  run. The data side needs no state: the training order depends on ``(seed, epoch)`` only and each training
  image's augmentation on ``(seed, epoch, index)`` (see `vapt.data.base`), whatever the number of workers.
- `AtomicCheckpointIO` loads every checkpoint with ``weights_only=True`` and writes each checkpoint through a temporary file in the checkpoint's own folder and
  renames it into place: a full disk or a kill leaves the previous checkpoint, never a truncated one under
  the final name.
- `find_resume_checkpoint` picks the newest checkpoint of a run folder that loads, naming those it skipped.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from vapt.fileio.atomic import atomic_path, write_text_atomic
from vapt.fileio.weights import safe_torch_load


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names it and says what to do (``reason``: what is wrong)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class CheckpointMismatchError(CheckpointError, KeyError):
    """A checkpoint whose tensors do not fit the model (a `KeyError` too, like every state-dict mismatch)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _short(e: BaseException) -> str:
    """``Type: first sentence`` of an exception (torch's messages run to several lines)."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = text.split(". ", 1)[0].rstrip(".")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The process's random state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCallback(Callback):
    """Save the RNG state with every checkpoint; restore it when the first resumed training epoch starts.

    Restoring at the epoch start rather than at load time keeps whatever runs in between (sanity-check
    validation, data set-up) from shifting the stream. A checkpoint written without this callback resumes as
    before (the current RNG state is kept).
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None


# ---------------------------------------------------------------------------------------------- atomic files
class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose files appear complete or not at all (temporary file beside the target), and
    whose loads never unpickle code (`vapt.weights.safe_torch_load`, whatever ``weights_only`` Lightning asks
    for and whatever the environment says)."""

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_torch_load(path, map_location=map_location or (lambda storage, loc: storage))

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options; got {storage_options!r}.")
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:  # disk full, folder made read-only: name the file; the previous checkpoint stays
            hint = "free space there" if e.errno == errno.ENOSPC else "make that folder writable"
            raise OSError(e.errno, f"cannot write checkpoint {path} ({e.strerror or e}); the previous checkpoint "
                                   f"is kept. {hint} or pass another --trainer.default_root_dir, then resume with "
                                   "--ckpt_path last") from e


def use_atomic_checkpoints(trainer) -> None:
    """Swap the trainer's plain `TorchCheckpointIO` for `AtomicCheckpointIO` (a user's own plugin stays)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


# ---------------------------------------------------------------------------------------------- run identity
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _folder_digest(path: Path) -> str:
    """Names, sizes and modification times of the files directly in ``path`` (cheap; no content read)."""
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return hashlib.sha256(repr(entries).encode("utf-8", "surrogateescape")).hexdigest()


def run_identity(args: list[str], extra_paths: list[str] | None = None) -> dict[str, Any]:
    """What makes a finished run: its arguments and the data they name.

    ``args`` are the command-line arguments of the run (config files, overrides). Every value among them or in
    ``extra_paths`` that names an existing file is recorded with its SHA-256 (config YAMLs, label and split
    CSVs, weights); an existing folder with the names, sizes and modification times of its files.
    """
    files: dict[str, str] = {}
    for token in [*args, *(extra_paths or [])]:
        value = str(token).split("=", 1)[1] if str(token).startswith("--") and "=" in str(token) else str(token)
        p = Path(value).expanduser()
        try:
            if p.is_file():
                files[value] = "sha256:" + _file_digest(p)
            elif p.is_dir():
                files[value] = "listing:" + _folder_digest(p)
        except OSError:
            continue
    return {"args": [str(a) for a in args], "files": files}


def compare_run_identity(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    """``""`` when ``stored`` equals ``wanted`` (or is absent: a result of an older version), else what differs."""
    if not stored:
        return ""
    diff = []
    if stored.get("args") != wanted.get("args"):
        old, new = stored.get("args") or [], wanted.get("args") or []
        diff.append(f"arguments {sorted(set(old) - set(new))[:4]} -> {sorted(set(new) - set(old))[:4]}")
    sf, wf = stored.get("files") or {}, wanted.get("files") or {}
    changed = sorted(k for k in set(sf) | set(wf) if sf.get(k) != wf.get(k))
    if changed:
        diff.append(f"changed file(s) {changed[:4]}")
    return "; ".join(diff)


# ---------------------------------------------------------------------------------------------- fit identity
#: settings that do not change what training produces (or that may change on a resume: more epochs)
_NOT_IDENTITY = ("config", "ckpt_path", "overwrite", "result_json", "predictions_csv", "predict_images",
                 "test_after_fit", "trainer.logger", "trainer.max_epochs", "trainer.max_steps",
                 "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary")
_IDENTITY_FILE = "resume_identity.json"
_MAX_LISTED = 200_000


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def path_identity(value: str) -> str | None:
    """What a path in the settings holds: a file's SHA-256 (size and mtime above 16 MB), a folder's names,
    sizes and modification times below it (the first 200,000 files); None when it names nothing."""
    p = Path(value).expanduser()
    try:
        if p.is_file():
            st = p.stat()
            return f"size:{st.st_size}:mtime:{st.st_mtime_ns}" if st.st_size > 16 << 20 else "sha256:" + _file_digest(p)
        if p.is_dir():
            h, n = hashlib.sha256(), 0
            for dirpath, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files)[:max(0, _MAX_LISTED - n)]:
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(repr((os.path.relpath(os.path.join(dirpath, f), p), st.st_size, st.st_mtime_ns)).encode(
                        "utf-8", "surrogateescape"))
                    n += 1
            return "listing:" + h.hexdigest()
    except (OSError, ValueError):
        return None
    return None


def run_settings_identity(config: dict[str, Any]) -> dict[str, Any]:
    """``{"settings": {dotted key: value}, "data": {dotted key: identity}}`` of a resolved ``vapt fit`` config:
    what the checkpoints of that run were made with (keys in ``_NOT_IDENTITY`` left out). A setting that names
    a data or weights file or folder is recorded by what it holds (`path_identity`), not by its path, so a
    data folder copied or moved elsewhere is the same data."""
    flat = {k: v for k, v in _flat(config).items()
            if not any(k == n or k.startswith(n + ".") for n in _NOT_IDENTITY)}
    settings = json.loads(json.dumps(flat, default=str, sort_keys=True))
    data = {}
    for k, v in settings.items():
        if isinstance(v, str) and v and (k.startswith("data.") or k.endswith("checkpoint")):
            ident = path_identity(v)
            if ident is not None:
                data[k], settings[k] = ident, "<path>"
    return {"settings": settings, "data": data}


def write_resume_identity(log_dir: str | os.PathLike, identity: dict[str, Any]) -> None:
    """Record ``identity`` in the run's version folder (read back by `check_resume_identity`)."""
    write_text_atomic(Path(log_dir) / _IDENTITY_FILE, json.dumps(identity, indent=1, sort_keys=True) + "\n")


class RecordRunIdentity(Callback):
    """Write the run's identity (`write_resume_identity`) when fitting sets up: after the data module's
    ``prepare_data`` / ``setup``, so data that the run itself generates or downloads is recorded as it is
    then, not as the empty folder it was before."""

    def __init__(self, log_dir: str | os.PathLike, make_identity: Callable[[], dict[str, Any]]):
        self.log_dir, self.make_identity = log_dir, make_identity

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            write_resume_identity(self.log_dir, self.make_identity())


def check_resume_identity(ckpt: str | os.PathLike, identity: dict[str, Any]) -> None:
    """`CheckpointError` ``stale: ...`` when the run that wrote ``ckpt`` (``version_<n>/checkpoints/x.ckpt``)
    recorded other settings or data than ``identity``; nothing when it recorded none (an older vapt)."""
    recorded = Path(ckpt).resolve().parent.parent / _IDENTITY_FILE
    if not recorded.is_file():
        return
    try:
        old = json.loads(recorded.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{recorded} is damaged ({_short(e)}); delete it to resume from {ckpt} anyway.") from e
    a, b = old.get("settings") or {}, identity.get("settings") or {}
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    da, db = old.get("data") or {}, identity.get("data") or {}
    diff += [f"{k}: its files changed" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
    if diff:
        raise CheckpointError(f"stale: {ckpt} was made with other settings or data ({'; '.join(diff[:4])}); pass "
                              "--overwrite to resume from it anyway, or leave out --ckpt_path last to start afresh.",
                              "stale")


# ---------------------------------------------------------------------------------------------- choosing one
def check_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Load ``path`` safely (``weights_only=True``, CPU); `CheckpointError` naming it when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; pass an existing .ckpt file or 'last'.", "missing")
    try:
        ckpt = safe_torch_load(path)
    except Exception as e:  # truncated zip, not a torch file, a pickle that needs code to run
        reason = f"cannot be loaded ({_short(e)})"
        raise CheckpointError(f"{what} {path} {reason}; it is truncated, damaged or not a vapt checkpoint. "
                              "Delete it or pass another file.", reason) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{what} {path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt "
                              "written by vapt fit / vapt tune.", "not a Lightning checkpoint")
    return ckpt


def _rank(path: Path) -> tuple[int, int, float]:
    """Newest first: epoch and step from the name (``epoch=3-step=40.ckpt``), then mtime; unnamed ones last."""
    epoch, step = (re.search(rf"{k}=(\d+)", path.name) for k in ("epoch", "step"))
    return (int(epoch.group(1)) if epoch else -1, int(step.group(1)) if step else -1, path.stat().st_mtime)


def find_resume_checkpoint(folder: str | os.PathLike, log: Callable[[str], Any] = print) -> Path | None:
    """The newest checkpoint under ``folder`` that loads, or None; each damaged newer one is named via ``log``.

    Candidates are the ``*.ckpt`` files below ``folder`` (temporary ``*.tmp`` files of an interrupted write are
    not), ordered by the epoch and step in their names, then by modification time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in sorted(folder.rglob("*.ckpt"), key=_rank, reverse=True):
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            log(f"skipping {path}: {e.reason}")
            continue
        return path
    return None


def resume_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """Callbacks every vapt trainer gets: `RNGStateCallback`, and a ``ModelCheckpoint(save_last=True)``
    (``last.ckpt`` beside the epoch file) unless the config brings its own or disables checkpointing."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    given = trainer_config.get("callbacks") or []
    given = given if isinstance(given, list) else [given]
    out: list[Callback] = [] if any(isinstance(c, RNGStateCallback) for c in given) else [RNGStateCallback()]
    if trainer_config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in given):
        out.append(ModelCheckpoint(save_last=True))
    return out


def resolve_ckpt_path(ckpt_path: str | None, run_folder: str | os.PathLike, log: Callable[[str], Any] = print
                      ) -> str | None:
    """``--ckpt_path`` of a vapt subcommand -> the file to load, or None.

    ``last``: the newest good checkpoint of any earlier version of this experiment (``run_folder`` holds the
    ``version_<n>/`` folders); none -> None (training starts at epoch 0, said via ``log``). Anything else
    passes through (a file is checked with `check_checkpoint` when the command line is parsed).
    """
    if ckpt_path != "last":
        return ckpt_path
    found = find_resume_checkpoint(run_folder, log)
    log(f"resuming from {found}" if found else f"no checkpoint under {run_folder}; starting from epoch 0")
    return None if found is None else str(found)
