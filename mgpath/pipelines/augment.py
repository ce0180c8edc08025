"""Augmented bags: features of randomly rotated and flipped tiles (the MGPATH paper's extra training copy)."""

from __future__ import annotations

import os

import torch

from mgpath.pipelines.extract import extract_features
from mgpath.pipelines.jobs import find_jobs

__all__ = ["TileAugmentEncoder", "extract_augmented_features"]


class TileAugmentEncoder(torch.nn.Module):
    """A tile encoder that first rotates and flips every input tile at random (the paper's augmented bags).

    As the official ``SpatialAugmentor('baseline')``: each tile independently gets ``rot90`` with
    ``k in {0, 1, 2, 3}`` and a flip in {none, vertical, horizontal, both}; reproducible from ``seed`` for a
    given tile order. Forward: (B, 3, H, W) normalised tiles (H == W) -> the wrapped encoder's (B, D).
    """

    def __init__(self, encoder: torch.nn.Module, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        self.data_config = getattr(encoder, "data_config", None)
        self.generator = torch.Generator().manual_seed(seed)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rot90 augmentation needs square tiles, got {tuple(x.shape[-2:])}")
        k = torch.randint(0, 4, (x.shape[0],), generator=self.generator).tolist()
        f = torch.randint(0, 4, (x.shape[0],), generator=self.generator).tolist()
        out = []
        for xi, ki, fi in zip(x, k, f):
            xi = torch.rot90(xi, ki, dims=(1, 2))
            if fi & 1:
                xi = xi.flip(1)
            if fi & 2:
                xi = xi.flip(2)
            out.append(xi)
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.augment(x))


def extract_augmented_features(coords: str | os.PathLike, out: str | os.PathLike, encoder: torch.nn.Module,
                               encoder_name: str, seed: int = 0, **kwargs) -> list[dict]:
    """Features of rotated/flipped tiles with :func:`mgpath.pipelines.extract.extract_features`, one h5 per slide in
    ``out/<mag>/`` (use as ``data.augmented_dirs``). ``coords`` is a ``mgpath tile`` output folder; keyword
    arguments go to ``extract_features``."""
    jobs, problems = find_jobs(coords, out)
    rows = extract_features(jobs, TileAugmentEncoder(encoder, seed), encoder_name + "+rot90flip", **kwargs)
    return problems + rows
