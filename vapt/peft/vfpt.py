"""VFPT: visual Fourier prompt tuning (runtsang/VFPT @ 1b3d984, ``src/models/vit_prompt/vit_fourier.py``,
config ``MODEL.PROMPT_FOURIER``; arXiv 2411.01327).

VPT-deep (or shallow) prompts where, in every prompt set, the first ``n_f = floor(N * fourier_fraction)``
tokens pass through the real part of a 2-D FFT over their (token, channel) axes before insertion::

    X  = Drop(proj(P_i)).expand(B)                     (B, N, D)
    P' = [ Re(FFT_tok(FFT_ch(X[:, :n_f]))) ; X[:, n_f:] ]

(official defaults: ``FOURIER_DIMENSION="all"``, ``FOURIER_PERCENTAGE=0.5``, ``FOURIER_LOCATION="prepend"``,
``FOURIER_FIRST_LAYER=True``). ``fourier_dimension="hidden"`` / ``"sequence"`` transform one axis only;
``fourier_location="append"`` puts the Fourier tokens after the plain ones. No parameters beyond VPT's.
The official ``random`` location, ``FOURIER_HALF`` / ``MIXED`` layer patterns and ``FOURIER_ADDITION`` are
ablations of the paper and are not offered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from vapt.peft.base import MethodConfig, register
from vapt.peft.vpt import PromptGenerator

DIMENSIONS = ("all", "hidden", "sequence")


@dataclass
class VFPTConfig(MethodConfig):
    """VFPT options: VPT's ``num_tokens``, ``deep``, ``dropout``, ``project`` plus the Fourier part."""

    method: str = "vfpt"
    num_tokens: int = 10
    deep: bool = True
    dropout: float = 0.0
    project: int = -1
    fourier_fraction: float = 0.5
    fourier_dimension: str = "all"
    fourier_location: str = "prepend"
    fourier_first_layer: bool = True

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"vfpt: num_tokens must be >= 1; got {self.num_tokens}.")
        if not 0.0 <= self.fourier_fraction <= 1.0:
            raise ValueError(f"vfpt: fourier_fraction must be in [0, 1]; got {self.fourier_fraction}.")
        if self.fourier_dimension not in DIMENSIONS:
            raise ValueError(f"vfpt: fourier_dimension must be one of {', '.join(DIMENSIONS)}; "
                             f"got {self.fourier_dimension!r}.")
        if self.fourier_location not in ("prepend", "append"):
            raise ValueError(f"vfpt: fourier_location must be 'prepend' or 'append'; got {self.fourier_location!r}.")


def fourier_transform(x: torch.Tensor, dimension: str = "all") -> torch.Tensor:
    """Real part of the FFT over channels (``hidden``), tokens (``sequence``) or both (``all``). (B, n, D)."""
    if dimension == "hidden":
        return torch.fft.fft(x, dim=-1).real
    if dimension == "sequence":
        return torch.fft.fft(x, dim=-2).real
    return torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real


@register
class VFPT(PromptGenerator):
    """VPT prompts (``prompts.prompt_embeddings``, ``prompts.deep_prompt_embeddings``) with Fourier tokens."""

    names: ClassVar[tuple[str, ...]] = ("vfpt",)
    config_class: ClassVar[type] = VFPTConfig

    def __init__(self, cfg: VFPTConfig, encoder):
        super().__init__(cfg, encoder)
        self.num_fourier = math.floor(cfg.num_tokens * cfg.fourier_fraction)

    def input_prompts(self, batch_size: int) -> torch.Tensor:
        x = super()._static(self.prompt_embeddings[0], batch_size)
        return self._fourier(x) if self.cfg.fourier_first_layer else x

    def _static(self, prompt: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self._fourier(super()._static(prompt, batch_size))

    def _fourier(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> the same with the Fourier part transformed and placed first (or last)."""
        nf = self.num_fourier
        if nf == 0:
            return x
        dim = self.cfg.fourier_dimension
        with torch.autocast(x.device.type, enabled=False):  # half-precision FFTs need power-of-two sizes
            f = fourier_transform(x[:, :nf].float(), dim).to(x.dtype)
        parts = [f, x[:, nf:]] if self.cfg.fourier_location == "prepend" else [x[:, nf:], f]
        return torch.cat(parts, dim=1)
