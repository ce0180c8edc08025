"""Tile features from a frozen encoder, one h5 per slide (and per magnification), via Lightning ``predict``.

Tiles are read straight from the slide inside DataLoader workers (each worker opens its own handle): each
tile's level-0 footprint is read from the best pyramid level and resized once, directly to the encoder's input
size (JPEG-tiled svs/TIFF through :mod:`mgpath.slides.jpeg_tiles` by default, other files and
``reader="openslide"`` through OpenSlide + an antialiased bilinear resize), then normalised with its mean/std
and encoded by any encoder
``vapt.backbones.build_backbone`` builds. Output per slide (written atomically)::

    features   (N, D) float32
    coords     (N, 2) int64, level-0 top-left, same order as the coordinates file
    adjacency  (N, 4) int64, see :func:`tile_adjacency`
    attributes encoder, checkpoint, embed_dim, patch_size, patch_size_level0, step_level0, target_mpp, ...

Multi-GPU / multi-node: slides are sharded over ranks (slide ``i`` goes to rank ``i % world_size``), each
rank writes whole slides, so no gathering is needed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from mgpath.graph import ADJACENCY_ORDER, tile_adjacency
from mgpath.io import read_features_header, write_features
from mgpath.pipelines.identity import (
    compare_identity,
    encoder_identity,
    file_sha256,
    slide_identity,
    tiles_identity,
)
from mgpath.pipelines.jobs import SlideJob
from mgpath.pipelines.locks import SlideLock
from mgpath.pipelines.progress import TileProgress
from mgpath.pipelines.summary import write_summary_files
from mgpath.pipelines.tile_dataset import TileDataset

__all__ = ["FeatureExtractor", "H5FeatureWriter", "default_precision", "extract_features", "weights_description",
           "write_summary"]


class FeatureExtractor(pl.LightningModule):
    """Wraps a frozen encoder for ``Trainer.predict``: batch -> ``(features (B, D) float32, job, tile, ok)``."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        x, j, t, ok = batch
        return self.encoder(x).float().cpu(), j.cpu(), t.cpu(), ok.cpu()


class H5FeatureWriter(pl.Callback):
    """Collects predicted features per slide and writes each slide's h5 as soon as it is complete.

    ``identity`` is the encoder part of the cache identity (:func:`~mgpath.pipelines.identity.encoder_identity`);
    each file gets it merged with its tiles' part. A slide whose file cannot be written (disk full) is
    reported and the others go on.
    """

    def __init__(self, jobs: list[SlideJob], checkpoint: str | None, identity: dict, extra_attrs: dict):
        super().__init__()
        self.jobs = jobs
        self.checkpoint = checkpoint
        self.identity = identity
        self.extra_attrs = extra_attrs
        self.buffers: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self.rows: dict[int, dict] = {}
        self.t0: dict[int, float] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        feats, js, ts, oks = outputs
        feats = feats.numpy()
        for j in np.unique(js.numpy()):
            j = int(j)
            sel = (js == j).numpy()
            if j not in self.buffers:
                self.buffers[j] = np.zeros((self.jobs[j].n, feats.shape[1]), np.float32)
                self.filled[j] = 0
                self.t0.setdefault(j, time.perf_counter())
            self.buffers[j][ts.numpy()[sel]] = feats[sel]
            self.filled[j] += int(sel.sum())
            if not bool(oks.numpy()[sel].all()):
                self.failed[j] = f"some tiles of {self.jobs[j].slide_path} could not be read (corrupt file?)"
            if self.filled[j] >= self.jobs[j].n:
                self._finish(j)

    def _finish(self, j: int) -> None:
        job = self.jobs[j]
        feats = self.buffers.pop(j)
        row = _row(job, tiles=job.n, dim=int(feats.shape[1]))
        if j in self.failed:
            row.update(status="skipped", reason=self.failed[j])
        elif not np.isfinite(feats).all():
            bad = int((~np.isfinite(feats)).any(1).sum())
            row.update(status="skipped", reason=f"the encoder gave NaN/Inf features for {bad} tiles of "
                       f"{job.slide_path}; check the weights file and --precision (nothing written)")
        else:
            adj = tile_adjacency(job.coords, job.attrs.get("step_level0") or job.attrs["patch_size_level0"])
            try:
                write_features(job.out_path, feats, job.coords, adj, self._attrs(job, feats.shape[1]))
                row.update(status="done", reason="")
            except OSError as e:
                row.update(status="skipped", reason=f"could not write {job.out_path}: {e.strerror or e} "
                           "(disk full?); free space and rerun: finished slides are kept")
        row["seconds"] = round(time.perf_counter() - self.t0.get(j, time.perf_counter()), 3)
        self.rows[j] = row

    def _attrs(self, job: SlideJob, dim: int) -> dict:
        a = job.attrs
        attrs = {
            "name": job.slide_id,
            "slide_path": os.path.abspath(job.slide_path),
            "coords_file": os.path.abspath(job.coords_path),
            "encoder": self.identity["encoder"],
            "checkpoint": os.path.abspath(self.checkpoint) if self.checkpoint else "none",
            "weights": self.identity["weights"],
            "embed_dim": dim,
            "n_tiles": job.n,
            "patch_size": int(a["patch_size"]),
            "patch_size_level0": float(a["patch_size_level0"]),
            "step_level0": float(a.get("step_level0") or a["patch_size_level0"]),
            "adjacency_order": ",".join(ADJACENCY_ORDER),
            "coords_source": a["source"],
            "identity": json.dumps(_job_identity(self.identity, job), sort_keys=True),
        }
        for k in ("target_mpp", "target_magnification", "mpp", "patch_level"):
            if a.get(k) is not None:
                attrs[k] = a[k]
        attrs.update(self.extra_attrs)
        return attrs


def _row(job: SlideJob, **kw) -> dict:
    return {"slide_id": job.slide_id, "path": job.slide_path, "out": job.out_path, **kw}


def _job_identity(identity: dict, job: SlideJob) -> dict:
    """Encoder + tiles + slide file: a features file is reused only when all three match."""
    return {**identity, **tiles_identity(job.coords, job.attrs), **slide_identity(job.slide_path)}


def _cache_state(job: SlideJob, identity: dict) -> str | None:
    """None when ``job.out_path`` is to be made; ``""`` when it holds exactly these features; else why stale."""
    if not Path(job.out_path).exists():
        return None
    try:
        attrs, shape, _ = read_features_header(job.out_path)
    except (OSError, KeyError, ValueError):
        return None  # unreadable (a torn file of another tool): redo it
    if shape[0] != job.n:
        return f"has {shape[0]} tiles, the coordinates file {job.n}"
    return compare_identity(attrs.get("identity"), _job_identity(identity, job))


class _ShardedData(pl.LightningDataModule):
    """Gives each rank its slides (``i % world_size == rank``) in a sequential, unsharded loader.

    Each slide is locked (``<features file>.lock``) before it is read; slides another live run holds are
    reported as busy and left to it.
    """

    def __init__(self, jobs, input_size, mean, std, batch_size, workers, writer, identity, overwrite,
                 reader="fast"):
        super().__init__()
        self.reader = reader
        self.jobs, self.input_size, self.mean, self.std = jobs, input_size, mean, std
        self.batch_size, self.workers, self.writer = batch_size, workers, writer
        self.identity, self.overwrite = identity, overwrite
        self.data_config = None  # set by extract_features: the encoder's own transform, when it has one
        self.locks: list[SlideLock] = []
        self.other_rows: list[dict] = []

    def setup(self, stage=None):
        r, w = self.trainer.global_rank, self.trainer.world_size
        self.mine = []
        for i, job in enumerate(self.jobs):
            if i % w != r:
                continue
            lock = SlideLock(job.out_path + ".lock")
            if not lock.acquire():
                self.other_rows.append(_row(job, tiles=job.n, status="skipped", reason=(
                    f"busy: another run ({lock.owner}) is writing {job.out_path}; rerun when it ends")))
                continue
            self.locks.append(lock)
            if not self.overwrite and _cache_state(job, self.identity) == "":  # finished meanwhile by another run
                self.other_rows.append(_row(job, tiles=job.n, status="cached", reason="features exist"))
                continue
            self.mine.append(job)
        self.writer.jobs = self.mine

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []

    def predict_dataloader(self):
        ds = TileDataset(self.mine, self.input_size, self.mean, self.std, reader=self.reader,
                         data_config=self.data_config)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )


def default_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` where a CUDA device will be used, else ``32-true``."""
    return "bf16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"


def weights_description(checkpoint: str | None, random_seed: int | None = None) -> str:
    """The ``weights`` part of an identity: ``sha256:<hex>`` of the file, or ``random-init(seed=S)``."""
    if checkpoint:
        return "sha256:" + file_sha256(checkpoint)
    return f"random-init(seed={random_seed})" if random_seed is not None else "random-init(unseeded)"


def extract_features(
    jobs: list[SlideJob],
    encoder: torch.nn.Module,
    encoder_name: str,
    *,
    checkpoint: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    accelerator: str = "auto",
    devices="auto",
    precision: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_nodes: int = 1,
    callbacks: list | None = None,
    weights: str | None = None,
    identity_extra: dict | None = None,
    reader: str = "fast",
    progress_interval: float = 30.0,
) -> list[dict]:
    """Encode the tiles of ``jobs`` and write one features h5 per job; returns summary rows.

    ``progress``: tiles encoded so far, as a bar on a terminal, else as a line every ``progress_interval``
    seconds (:class:`~mgpath.pipelines.progress.TileProgress`).

    ``encoder`` maps ``(B, 3, H, W)`` normalised images to ``(B, D)``; it must carry ``data_config`` (input
    size, mean, std) as built by ``vapt.backbones.build_backbone``. ``weights`` describes the encoder's
    weights for the cache identity (default: the checkpoint's SHA-256, else random-init); ``identity_extra``
    holds any other setting that changes the features. A job whose output holds features of the same
    identity is ``cached``; one made with anything else is reported stale (``skipped``) unless ``overwrite``.
    ``reader="fast"`` (the default) reads JPEG-tiled slides through :mod:`mgpath.slides.jpeg_tiles` (others
    through OpenSlide), ``"openslide"`` reads every slide with OpenSlide; it is part of the identity.
    """
    precision = precision or default_precision(accelerator)
    cfg = encoder.data_config
    if "resize" in cfg or getattr(encoder, "overrides", None):  # a preset: its transform and options count too
        identity_extra = {**(identity_extra or {}), "overrides": dict(getattr(encoder, "overrides", {}) or {}),
                          "transform": {k: cfg.get(k) for k in ("resize", "crop", "interpolation", "pixels")}}
    if reader != "openslide":
        identity_extra = {**(identity_extra or {}), "reader": reader}
    identity = encoder_identity(encoder_name, weights or weights_description(checkpoint), cfg, precision,
                                identity_extra)
    rows: list[dict] = []
    todo = []
    for job in jobs:
        state = None if overwrite else _cache_state(job, identity)
        if state == "":
            rows.append(_row(job, tiles=job.n, status="cached", reason="features exist"))
        elif state is not None:
            rows.append(_row(job, tiles=job.n, status="skipped", reason=(
                f"stale: {job.out_path} {state}; pass --overwrite to redo it (or use another --out)")))
        elif job.n == 0:
            rows.append(_row(job, status="skipped", reason=f"{job.coords_path} has no tiles"))
        else:
            todo.append(job)
    # check every slide opens before starting the loader: a broken one is reported, the rest go on
    from mgpath.slides.reader import Slide, SlideError

    ok = []
    for job in todo:
        try:
            with Slide(job.slide_path, mpp=job.mpp) as s:
                if job.attrs.get("mpp") and s.has_mpp and abs(s.mpp / job.attrs["mpp"] - 1) > 0.02:
                    raise SlideError(
                        f"{job.slide_path} has mpp {s.mpp:g} but {job.coords_path} was made with mpp "
                        f"{job.attrs['mpp']:g}; retile it or pass the same --mpp"
                    )
                w, h = s.dimensions
                outside = (job.coords[:, 0] >= w) | (job.coords[:, 1] >= h)
                if outside.any():
                    i = int(np.flatnonzero(outside)[0])
                    raise SlideError(
                        f"{job.coords_path} lists {int(outside.sum())} tile(s) outside {job.slide_path} ({w} x {h} "
                        f"px), e.g. row {i} {tuple(int(v) for v in job.coords[i])}; were the coordinates made for "
                        "another slide? regenerate them with mgpath tile")
            ok.append(job)
        except SlideError as e:
            rows.append(_row(job, status="skipped", reason=str(e)))
    if not ok:
        return rows
    input_size = tuple(cfg["input_size"][-2:])
    extra_attrs = {"input_size": np.array(input_size), "mean": np.array(cfg["mean"]),
                   "std": np.array(cfg["std"]), "precision": precision}
    writer = H5FeatureWriter(ok, checkpoint, identity, extra_attrs)
    dm = _ShardedData(ok, input_size, cfg["mean"], cfg["std"], batch_size, workers, writer, identity, overwrite,
                      reader)
    dm.data_config = cfg
    shown = [TileProgress(sum(job.n for job in ok), interval=progress_interval)] if progress else []
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        num_nodes=num_nodes,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,  # TileProgress counts tiles (a bar, or lines in a log file)
        enable_model_summary=False,
        callbacks=[writer, *shown, *(callbacks or [])],
        use_distributed_sampler=False,
        inference_mode=True,
    )
    try:
        trainer.predict(FeatureExtractor(encoder), datamodule=dm, return_predictions=False)
    finally:
        dm.release()
    return rows + dm.other_rows + [writer.rows[j] for j in sorted(writer.rows)]


def write_summary(rows: list[dict], out: Path, rank: int = 0, world: int = 1) -> Path:
    """Write ``features_summary.csv``/``.json`` (``_rank<r>`` per rank when ``world > 1``) into ``out``."""
    fields = ["slide_id", "status", "reason", "tiles", "dim", "seconds", "out", "path"]
    name = "features_summary" + (f"_rank{rank}" if world > 1 else "")
    return write_summary_files(rows, Path(out), name, fields)
