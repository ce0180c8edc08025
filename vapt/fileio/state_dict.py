"""State-dict checks shared by vapt and mgpath: what is missing, unexpected or of the wrong shape.

Every loader in the project (backbone weights, trainable-only Lightning checkpoints, MGPATH checkpoints)
reports a mismatch the same way, through :func:`check_state_dict`, and completes a trainable-only state dict
with the frozen tensors through :func:`complete_state_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class StateDictDiff:
    """How a state dict differs from a model's: key lists, each sorted in the model's / file's order."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 10) -> str:
        """One line: ``missing keys [...]; unexpected keys [...]; wrong shapes (file vs model) [...]``."""

        def show(keys: list[str]) -> str:
            head = keys[:limit]
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return "[" + ", ".join(repr(k) for k in head) + more + "]"

        parts = []
        if self.missing:
            parts.append(f"missing keys {show(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys {show(self.unexpected)}")
        if self.wrong_shape:
            parts.append(f"wrong shapes (file vs model) {show(self.wrong_shape)}")
        return "; ".join(parts)


def diff_state_dict(
    own: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    expected: Iterable[str] | None = None,
    ignore_missing_prefixes: tuple[str, ...] = (),
) -> StateDictDiff:
    """Compare ``sd`` (a file's tensors) with ``own`` (a model's ``state_dict()``).

    Parameters
    ----------
    own, sd : the model's and the file's tensors by key.
    expected : keys ``sd`` must hold (default: every key of ``own``), e.g. only the trainable ones.
    ignore_missing_prefixes : missing keys starting with one of these are not reported (e.g. a head).
    """
    need = list(own) if expected is None else list(expected)
    missing = [k for k in need if k not in sd and not k.startswith(ignore_missing_prefixes)]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return StateDictDiff(missing, unexpected, wrong)


def check_state_dict(
    own: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    *,
    what: str,
    hint: str = "",
    expected: Iterable[str] | None = None,
    ignore_missing_prefixes: tuple[str, ...] = (),
    error: type[Exception] = KeyError,
) -> None:
    """Raise ``error("<what>: <differences>. <hint>")`` unless ``sd`` fits ``own`` exactly.

    ``what`` names the file and the model (``"Checkpoint x.pth does not fit VisionTransformer"``), ``hint``
    says what to do. ``expected`` and ``ignore_missing_prefixes`` as in :func:`diff_state_dict`.
    """
    diff = diff_state_dict(own, sd, expected, ignore_missing_prefixes)
    if diff:
        raise error(f"{what}: {diff.describe()}." + (f" {hint}" if hint else ""))


def complete_state_dict(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> dict:
    """A full state dict in ``own``'s key order: ``sd``'s tensors where present, ``own``'s (frozen) elsewhere."""
    return {k: sd.get(k, v) for k, v in own.items()}
