"""Augmented bags: features of randomly rotated and flipped tiles (the MGPATH paper's extra training copy)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

from mgpath.pipelines.extract import extract_features
from mgpath.pipelines.jobs import find_jobs

__all__ = ["AUGMENTED_DIR", "AugmentKeys", "TileAugmentEncoder", "extract_augmented_features", "tile_transform"]


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
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        #: per-tile ``(slide_id, tile_index)`` of the next batch (set by :class:`AugmentKeys`): the transform
        #: of a tile then depends only on (seed, slide, tile), not on batch order, workers or resumes
        self.keys: list[tuple[str, int]] | None = None

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rot90 augmentation needs square tiles, got {tuple(x.shape[-2:])}")
        if self.keys is not None:
            if len(self.keys) != x.shape[0]:
                raise ValueError(f"{len(self.keys)} augmentation keys for a batch of {x.shape[0]} tiles")
            k, f = zip(*(tile_transform(self.seed, sid, t) for sid, t in self.keys))
        else:
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


def tile_transform(seed: int, slide_id: str, tile: int) -> tuple[int, int]:
    """``(k, flip)`` of one tile, both in 0..3, from a hash of (seed, slide id, tile index)."""
    import hashlib

    h = hashlib.blake2b(f"{seed}:{slide_id}:{tile}".encode(), digest_size=2).digest()
    return h[0] % 4, h[1] % 4


class AugmentKeys(pl.Callback):
    """Before each predict batch ``(x, job, tile, ok)``, hands :class:`TileAugmentEncoder` the slide id and
    tile index of every tile (the jobs come from the feature writer of :func:`extract_features`)."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        from mgpath.pipelines.extract import H5FeatureWriter

        writer = next(cb for cb in trainer.callbacks if isinstance(cb, H5FeatureWriter))
        _, j, t, _ = batch
        enc = pl_module.encoder
        enc.keys = [(writer.jobs[int(a)].slide_id, int(b)) for a, b in zip(j, t)]


#: where ``mgpath extract --augment`` writes the augmented bags, inside its ``--out`` (same layout as the plain
#: features: ``OUT/augmented/<mag>/<slide_id>.h5``); ``data.augmented: true`` reads them from there
AUGMENTED_DIR = "augmented"
AUGMENT_IDENTITY = "rot90flip-per-tile-v1"


def extract_augmented_features(coords: str | os.PathLike, out: str | os.PathLike, encoder: torch.nn.Module,
                               encoder_name: str, *, seed: int = 0, **kwargs) -> list[dict]:
    """Features of rotated/flipped tiles with :func:`mgpath.pipelines.extract.extract_features`, one h5 per slide in
    ``out/<mag>/`` (use as ``data.augmented_dirs``). ``coords`` is a ``mgpath tile`` output folder; keyword
    arguments go to ``extract_features``."""
    jobs, problems = find_jobs(coords, out, kwargs.pop("slides", None), kwargs.pop("mpp", None),
                                 kwargs.pop("recursive", False))
    extra = {**(kwargs.pop("identity_extra", None) or {}), "augment": AUGMENT_IDENTITY, "augment_seed": seed}
    callbacks = [AugmentKeys(), *(kwargs.pop("callbacks", None) or [])]
    rows = extract_features(jobs, TileAugmentEncoder(encoder, seed), encoder_name + "+rot90flip",
                            identity_extra=extra, callbacks=callbacks, **kwargs)
    return problems + rows
