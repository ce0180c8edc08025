"""Noise the vapt commands silence, for the duration of a command only (nothing is changed at import time).

- :func:`quiet_command`: the known harmless Lightning / jsonargparse warnings of a prompt-tuning run and
  Lightning's promotional "Tip" lines, while a ``vapt`` command runs; :func:`no_lightning_tips` drops the Tip
  lines alone (every ``vapt`` and ``mgpath`` subcommand runs inside it).
- :func:`drop_log_records`: hide log records that start with a given text while a block runs (e.g. open_clip's
  "No pretrained weights loaded ... initialized randomly" when the user's own file is loaded right after).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["KNOWN_WARNINGS", "drop_log_records", "lightning_info_hidden", "no_lightning_tips", "quiet_command"]

#: warning-message patterns that say nothing useful in a prompt-tuning run
KNOWN_WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the frozen backbone stays in eval mode on purpose
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*Total length of `list` across ranks is zero.*",
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`.*",
)
#: Lightning loggers that print the "💡 Tip: ... try installing [litlogger] / [litmodels]" lines
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _StartsWith(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


@contextlib.contextmanager
def drop_log_records(*prefixes: str, loggers: tuple[str, ...] = ("",), enabled: bool = True) -> Iterator[None]:
    """Drop records of ``loggers`` (default: the root logger) whose message starts with one of ``prefixes``."""
    if not enabled:
        yield
        return
    filt = _StartsWith(prefixes)
    targets = [logging.getLogger(name) for name in loggers]
    for lg in targets:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(filt)


def no_lightning_tips() -> contextlib.AbstractContextManager:
    """Drop Lightning's promotional "Tip" lines inside the block (every ``vapt`` / ``mgpath`` subcommand)."""
    return drop_log_records("💡 Tip", "Tip:", loggers=_TIP_LOGGERS)


@contextlib.contextmanager
def lightning_info_hidden(enabled: bool = True) -> Iterator[None]:
    """Hide Lightning's INFO lines ("GPU available", "Seed set", "Restoring states ...") inside the block, for a
    command that prints its own progress; warnings and errors still show. Lightning is imported first (its
    import sets these loggers to INFO), so use it in commands that run Lightning anyway."""
    if enabled:
        importlib.import_module("lightning.pytorch")
    targets = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")] if enabled else []
    levels = [lg.level for lg in targets]
    for lg in targets:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(targets, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_command() -> Iterator[None]:
    """Ignore :data:`KNOWN_WARNINGS` and drop Lightning's "Tip" lines inside the block."""
    with warnings.catch_warnings(), no_lightning_tips():
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield
