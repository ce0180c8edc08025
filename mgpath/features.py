"""Tile features from a frozen encoder, one h5 per slide (and per magnification), via Lightning ``predict``.

Tiles are read straight from the slide inside DataLoader workers (each worker opens its own OpenSlide
handle): each tile's level-0 footprint is read from the best pyramid level and resized once, directly to the
encoder's input size (bilinear, antialiased), then normalised with its mean/std and encoded by any encoder
``vapt.backbones.build_encoder`` builds. Output per slide (written atomically)::

    features   (N, D) float32
    coords     (N, 2) int64, level-0 top-left, same order as the coordinates file
    adjacency  (N, 4) int64, see :func:`tile_adjacency`
    attributes encoder, checkpoint, embed_dim, patch_size, patch_size_level0, step_level0, target_mpp, ...

Multi-GPU / multi-node: slides are sharded over ranks (slide ``i`` goes to rank ``i % world_size``), each
rank writes whole slides, so no gathering is needed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "tile_adjacency",
    "adjacency_to_edge_index",
    "SlideJob",
    "TileDataset",
    "FeatureExtractor",
    "H5FeatureWriter",
    "find_jobs",
    "extract_features",
    "read_features",
    "main",
]

#: column order of :func:`tile_adjacency`
ADJACENCY_ORDER = ("left", "right", "up", "down")


# -- adjacency -----------------------------------------------------------------------------------------
def tile_adjacency(coords: np.ndarray | torch.Tensor, step: float, tol: int = 1) -> np.ndarray:
    """4-neighbour adjacency of grid tiles from their coordinates.

    Parameters
    ----------
    coords : ``(N, 2)`` level-0 top-left ``(x, y)`` of each tile.
    step : grid step in level-0 pixels (the ``step_level0`` attribute; ``patch_size_level0`` when tiles do
        not overlap).
    tol : a neighbour may be off by up to ``tol`` pixels per axis (coordinates are rounded to integers).

    Returns
    -------
    ``(N, 4)`` int64: column 0 = index of the tile at ``x - step`` (left), 1 = ``x + step`` (right),
    2 = ``y - step`` (up), 3 = ``y + step`` (down); ``-1`` where there is no such tile. Indices are 0-based
    rows of ``coords`` (index 0 is a valid neighbour). ``N = 0`` gives ``(0, 4)``, ``N = 1`` gives ``[[-1]*4]``.
    """
    c = np.asarray(coords.cpu() if isinstance(coords, torch.Tensor) else coords, dtype=np.float64).reshape(
        -1, 2
    )
    n = len(c)
    adj = np.full((n, 4), -1, dtype=np.int64)
    if n == 0:
        return adj
    if not step > 0:
        raise ValueError(f"tile_adjacency: step must be > 0, got {step}")
    c = np.round(c).astype(np.int64)
    pad = int(np.ceil(step)) + tol + 1
    x, y = c[:, 0] - c[:, 0].min() + pad, c[:, 1] - c[:, 1].min() + pad
    span = int(y.max()) + 2 * pad + 1
    keys = x * span + y
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    offsets = [(0, 0)] + [(dx, dy) for dx in range(-tol, tol + 1) for dy in range(-tol, tol + 1) if dx or dy]
    for col, (ux, uy) in enumerate([(-1, 0), (1, 0), (0, -1), (0, 1)]):
        tx = np.round(x + ux * step).astype(np.int64)
        ty = np.round(y + uy * step).astype(np.int64)
        found = np.full(n, -1, dtype=np.int64)
        for dx, dy in offsets:
            q = (tx + dx) * span + (ty + dy)
            pos = np.clip(np.searchsorted(skeys, q), 0, n - 1)
            hit = (skeys[pos] == q) & (found < 0)
            found[hit] = order[pos[hit]]
        adj[:, col] = found
    return adj


def adjacency_to_edge_index(adj: np.ndarray) -> np.ndarray:
    """``(N, 4)`` adjacency -> ``(2, E)`` int64 edge index (source row 0, target row 1), both directions present."""
    adj = np.asarray(adj)
    src = np.repeat(np.arange(len(adj)), adj.shape[1] if adj.ndim == 2 else 0)
    dst = adj.reshape(-1)
    keep = dst >= 0
    return np.stack([src[keep], dst[keep]]).astype(np.int64)


# -- jobs ----------------------------------------------------------------------------------------------
@dataclass
class SlideJob:
    """One slide to encode: where to read tiles and where to write features."""

    slide_id: str
    slide_path: str
    coords_path: str
    out_path: str
    coords: np.ndarray = field(repr=False)
    attrs: dict = field(repr=False)
    mpp: float | None = None

    @property
    def n(self) -> int:
        return len(self.coords)


def _index_slides(slides_dir: str | None) -> dict[str, str]:
    from mgpath.slides.reader import slide_id_from_path
    from mgpath.slides.tiling import SLIDE_EXTENSIONS

    out: dict[str, str] = {}
    if slides_dir:
        for p in sorted(Path(slides_dir).rglob("*")):
            if p.is_file() and p.name.lower().endswith(SLIDE_EXTENSIONS):
                out.setdefault(slide_id_from_path(p), str(p))
    return out


def find_jobs(
    coords: str | os.PathLike, out: str | os.PathLike, slides: str | None = None, mpp: float | None = None
) -> tuple[list[SlideJob], list[dict]]:
    """Jobs from a coordinates folder; returns ``(jobs, problems)`` (problems are summary rows).

    ``coords`` is either a ``mgpath tile`` output root (with ``<tag>/coords/*.h5``; features go to
    ``out/<tag>/<slide_id>.h5``) or a folder of coordinate h5 files from mgpath, CLAM or TRIDENT (features go
    to ``out/<slide_id>.h5``). Slides are looked up by id under ``slides``, else through the ``slide_path``
    attribute mgpath stores.
    """
    from mgpath.slides.tiling import read_coords

    root = Path(coords)
    if not root.is_dir():
        raise FileNotFoundError(f"--coords {root} is not a folder of coordinate h5 files")
    groups: list[tuple[Path, Path]] = []
    tagged = sorted(p for p in root.glob("*/coords") if p.is_dir())
    if tagged:
        groups = [(p, Path(out) / p.parent.name) for p in tagged]
    elif (root / "coords").is_dir():
        groups = [(root / "coords", Path(out))]
    else:
        groups = [(root, Path(out))]
    index = _index_slides(slides)
    jobs, problems = [], []
    for cdir, odir in groups:
        files = sorted(cdir.glob("*.h5"))
        if not files:
            problems.append(
                {
                    "slide_id": cdir.name,
                    "status": "skipped",
                    "reason": f"no .h5 files in {cdir}",
                    "path": str(cdir),
                }
            )
        for f in files:
            try:
                xy, attrs = read_coords(f)
            except ValueError as e:
                problems.append({"slide_id": f.stem, "status": "skipped", "reason": str(e), "path": str(f)})
                continue
            sid = attrs["slide_id"]
            sp = index.get(sid)
            if sp is None and not slides:
                sp = attrs["raw"].get("slide_path")
            if sp is None or not Path(sp).exists():
                where = f"under --slides {slides}" if slides else "(pass --slides DIR)"
                problems.append(
                    {
                        "slide_id": sid,
                        "status": "skipped",
                        "path": str(f),
                        "reason": f"slide for {f.name} not found {where}",
                    }
                )
                continue
            jobs.append(SlideJob(sid, str(sp), str(f), str(odir / f"{sid}.h5"), xy, attrs, mpp))
    return jobs, problems


# -- data ----------------------------------------------------------------------------------------------
class TileDataset(torch.utils.data.Dataset):
    """Tiles of several slides, read lazily in each worker.

    Item ``i`` -> ``(image (3, H, W) float32 normalised, job index, tile index, ok)``; ``ok`` is False (and the
    image white) when the slide could not be read, so the writer can report the slide instead of crashing.
    """

    def __init__(self, jobs: list[SlideJob], input_size: tuple[int, int], mean, std, max_open: int = 4):
        self.jobs = jobs
        self.input_size = tuple(int(v) for v in input_size)
        self._mean_np = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self._std_np = np.asarray(std, np.float32).reshape(1, 1, 3)
        self.offsets = np.concatenate([[0], np.cumsum([j.n for j in jobs])]).astype(np.int64)
        self.max_open = max_open
        self._open: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_open"] = OrderedDict()
        return st

    def _slide(self, j: int):
        from mgpath.slides.reader import Slide

        if j in self._open:
            self._open.move_to_end(j)
            return self._open[j]
        s = Slide(self.jobs[j].slide_path, mpp=self.jobs[j].mpp)
        self._open[j] = s
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return s

    def read_tile(self, j: int, t: int, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """Tile ``t`` of job ``j``: its level-0 footprint read at ``size`` px (default: the file's ``patch_size``).

        The dataset reads each footprint straight at the encoder's input size (one resize from the best
        pyramid level instead of two), so ``(H, W, 3)`` uint8.
        """
        job = self.jobs[j]
        size = job.attrs["patch_size"] if size is None else size
        return self._slide(j).read_footprint(job.coords[t], job.attrs["patch_size_level0"], size)

    def transform(self, tile: np.ndarray) -> torch.Tensor:
        """``(S, S, 3)`` uint8 -> ``(3, H, W)`` float32: PIL bilinear resize (antialiased), /255, normalise.

        Done in numpy/PIL (single-threaded), so DataLoader workers and the main process do not fight over
        cores with the encoder's threads.
        """
        h, w = self.input_size
        if tile.shape[:2] != (h, w):
            tile = np.asarray(Image.fromarray(tile).resize((w, h), Image.Resampling.BILINEAR))
        x = tile.astype(np.float32) * np.float32(1 / 255.0)
        x = (x - self._mean_np) / self._std_np
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __getitem__(self, i: int):
        j = int(np.searchsorted(self.offsets, i, side="right") - 1)
        t = int(i - self.offsets[j])
        from mgpath.slides.reader import SlideError

        try:
            tile, ok = self.read_tile(j, t, self.input_size[::-1]), True
        except SlideError:
            tile, ok = np.full((*self.input_size, 3), 255, np.uint8), False
            self._open.pop(j, None)
        return self.transform(tile), j, t, ok


# -- model + writer ------------------------------------------------------------------------------------
def _lightning():
    import lightning.pytorch as pl

    return pl


class FeatureExtractor(_lightning().LightningModule):
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


def _atomic_h5(path: Path, fill) -> None:
    from mgpath.slides.tiling import _atomic_h5 as impl

    impl(path, fill)


class H5FeatureWriter(_lightning().Callback):
    """Collects predicted features per slide and writes each slide's h5 as soon as it is complete."""

    def __init__(self, jobs: list[SlideJob], encoder_name: str, checkpoint: str | None, extra_attrs: dict):
        super().__init__()
        self.jobs = jobs
        self.encoder_name = encoder_name
        self.checkpoint = checkpoint
        self.extra_attrs = extra_attrs
        self.buffers: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self.rows: dict[int, dict] = {}
        self.t0: dict[int, float] = {}
        self.batch_times: list[tuple[float, int]] = []  # (time, tiles) per batch, for throughput figures

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        feats, js, ts, oks = outputs
        self.batch_times.append((time.perf_counter(), int(len(js))))
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
        row = {
            "slide_id": job.slide_id,
            "path": job.slide_path,
            "out": job.out_path,
            "tiles": job.n,
            "dim": int(feats.shape[1]),
        }
        if j in self.failed:
            row.update(status="skipped", reason=self.failed[j])
        else:
            adj = tile_adjacency(job.coords, job.attrs.get("step_level0") or job.attrs["patch_size_level0"])
            write_features(job.out_path, feats, job.coords, adj, self._attrs(job, feats.shape[1]))
            row.update(status="done", reason="")
        row["seconds"] = round(time.perf_counter() - self.t0.get(j, time.perf_counter()), 3)
        self.rows[j] = row

    def _attrs(self, job: SlideJob, dim: int) -> dict:
        a = job.attrs
        attrs = {
            "name": job.slide_id,
            "slide_path": os.path.abspath(job.slide_path),
            "coords_file": os.path.abspath(job.coords_path),
            "encoder": self.encoder_name,
            "checkpoint": os.path.abspath(self.checkpoint) if self.checkpoint else "none",
            "embed_dim": dim,
            "n_tiles": job.n,
            "patch_size": int(a["patch_size"]),
            "patch_size_level0": float(a["patch_size_level0"]),
            "step_level0": float(a.get("step_level0") or a["patch_size_level0"]),
            "adjacency_order": ",".join(ADJACENCY_ORDER),
            "coords_source": a["source"],
        }
        for k in ("target_mpp", "target_magnification", "mpp", "patch_level"):
            if a.get(k) is not None:
                attrs[k] = a[k]
        attrs.update(self.extra_attrs)
        return attrs


def write_features(
    path: str | os.PathLike, features: np.ndarray, coords: np.ndarray, adjacency: np.ndarray, attrs: dict
) -> None:
    """Write a features h5 atomically (``features`` (N, D) float32, ``coords`` (N, 2), ``adjacency`` (N, 4))."""

    def fill(f):
        f.create_dataset("features", data=np.asarray(features, np.float32))
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        f.create_dataset("adjacency", data=np.asarray(adjacency, np.int64).reshape(-1, 4))
        for k, v in attrs.items():
            f.attrs[k] = "none" if v is None else v

    _atomic_h5(Path(path), fill)


def read_features(path: str | os.PathLike) -> dict:
    """Read a features h5 (ours, CLAM's ``h5_files`` or TRIDENT's): dict of arrays plus ``attrs``."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {k: np.asarray(f[k][()]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return out


def _done(job: SlideJob, encoder_name: str) -> bool:
    import h5py

    p = Path(job.out_path)
    if not p.exists():
        return False
    try:
        with h5py.File(p, "r") as f:
            enc = f.attrs.get("encoder")
            enc = enc.decode() if isinstance(enc, bytes) else enc
            return (
                f["features"].shape[0] == job.n
                and enc == encoder_name
                and np.array_equal(f["coords"][()], job.coords)
            )
    except (OSError, KeyError):
        return False


class _ShardedData(_lightning().LightningDataModule):
    """Gives each rank its slides (``i % world_size == rank``) in a sequential, unsharded loader."""

    def __init__(self, jobs, input_size, mean, std, batch_size, workers, writer):
        super().__init__()
        self.jobs, self.input_size, self.mean, self.std = jobs, input_size, mean, std
        self.batch_size, self.workers, self.writer = batch_size, workers, writer

    def setup(self, stage=None):
        r, w = self.trainer.global_rank, self.trainer.world_size
        self.mine = [j for i, j in enumerate(self.jobs) if i % w == r]
        self.writer.jobs = self.mine

    def predict_dataloader(self):
        ds = TileDataset(self.mine, self.input_size, self.mean, self.std)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )


def extract_features(
    jobs: list[SlideJob],
    encoder: torch.nn.Module,
    encoder_name: str,
    checkpoint: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    accelerator: str = "auto",
    devices="auto",
    precision: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_nodes: int = 1,
) -> list[dict]:
    """Encode the tiles of ``jobs`` and write one features h5 per job; returns summary rows.

    ``encoder`` maps ``(B, 3, H, W)`` normalised images to ``(B, D)``; it must carry ``data_config`` (input
    size, mean, std) as built by ``vapt.backbones.build_encoder``. Jobs whose output already exists with
    the same encoder and coordinates are reported ``cached``.
    """
    pl = _lightning()
    rows: list[dict] = []
    todo = []
    for job in jobs:
        if not overwrite and _done(job, encoder_name):
            rows.append(
                {
                    "slide_id": job.slide_id,
                    "path": job.slide_path,
                    "out": job.out_path,
                    "tiles": job.n,
                    "status": "cached",
                    "reason": "features exist",
                }
            )
        elif job.n == 0:
            rows.append(
                {
                    "slide_id": job.slide_id,
                    "path": job.slide_path,
                    "status": "skipped",
                    "reason": f"{job.coords_path} has no tiles",
                }
            )
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
            ok.append(job)
        except SlideError as e:
            rows.append(
                {"slide_id": job.slide_id, "path": job.slide_path, "status": "skipped", "reason": str(e)}
            )
    if not ok:
        return rows
    cfg = encoder.data_config
    input_size = tuple(cfg["input_size"][-2:])
    if precision is None:
        precision = (
            "bf16-mixed"
            if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
            else "32-true"
        )
    writer = H5FeatureWriter(
        ok,
        encoder_name,
        checkpoint,
        {
            "input_size": np.array(input_size),
            "mean": np.array(cfg["mean"]),
            "std": np.array(cfg["std"]),
            "precision": precision,
        },
    )
    dm = _ShardedData(ok, input_size, cfg["mean"], cfg["std"], batch_size, workers, writer)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        num_nodes=num_nodes,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        callbacks=[writer],
        use_distributed_sampler=False,
        inference_mode=True,
    )
    trainer.predict(FeatureExtractor(encoder), datamodule=dm, return_predictions=False)
    rows += [writer.rows[j] for j in sorted(writer.rows)]
    extract_features.last_writer = writer  # batch timings of the last run (used by scripts/bench/tiling.py)
    return rows


def _write_summary(rows: list[dict], out: Path, rank: int, world: int) -> Path:
    from vapt.atomic import write_bytes_atomic

    fields = ["slide_id", "status", "reason", "tiles", "dim", "seconds", "out", "path"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    name = "features_summary" + (f"_rank{rank}" if world > 1 else "")
    write_bytes_atomic(out / f"{name}.csv", buf.getvalue().encode())
    write_bytes_atomic(out / f"{name}.json", json.dumps(rows, indent=1, default=str).encode())
    return out / f"{name}.csv"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgpath extract", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--coords",
        required=True,
        help="`mgpath tile` output folder, or a folder of coordinate h5 "
        "files (mgpath, CLAM patches/, TRIDENT patches/)",
    )
    p.add_argument("--slides", default=None, help="folder with the slides (searched recursively by slide id)")
    p.add_argument("--encoder", required=True, help="timm ViT name or open_clip:<name> (see vapt.backbones)")
    p.add_argument("--checkpoint", default=None, help="local weights file for the encoder")
    p.add_argument("--img-size", type=int, default=None, help="encoder input size (default: the encoder's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers reading tiles")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto", help="Lightning devices (e.g. 1, 4, auto)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument(
        "--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32-true on CPU)"
    )
    p.add_argument("--mpp", type=float, default=None, help="level-0 um/px override for the slides")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``mgpath extract``. Exit status 0 when every slide is done or cached, 1 when some were skipped."""
    args = build_parser().parse_args(argv)
    try:
        jobs, problems = find_jobs(args.coords, args.out, args.slides, args.mpp)
        from vapt.backbones import build_encoder

        encoder = build_encoder(args.encoder, checkpoint=args.checkpoint, img_size=args.img_size)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"mgpath extract: {e}", file=sys.stderr)
        return 2
    if (
        "LOCAL_RANK" not in os.environ and Path(args.out).exists()
    ):  # launcher process, before any DDP rank starts
        from mgpath.slides.tiling import _clean_temp

        _clean_temp(Path(args.out))  # temporary files a killed run left behind
    devices = (
        args.devices
        if args.devices == "auto"
        else (int(args.devices) if args.devices.isdigit() else args.devices)
    )
    rows = problems + extract_features(
        jobs,
        encoder,
        args.encoder,
        args.checkpoint,
        args.batch_size,
        args.workers,
        args.accelerator,
        devices,
        args.precision,
        args.overwrite,
        progress=not args.no_progress,
        num_nodes=args.num_nodes,
    )
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = _write_summary(rows, Path(args.out), rank, world)
    n = {s: sum(r["status"] == s for r in rows) for s in ("done", "cached", "skipped")}
    print(f"{len(rows)} slides: {n['done']} done, {n['cached']} cached, {n['skipped']} skipped")
    for r in rows:
        why = f" - {r['reason']}" if r["status"] == "skipped" else ""
        where = (
            f"{Path(r['out']).parent.name}/"
            if r.get("out") and Path(r["out"]).parent != Path(args.out)
            else ""
        )
        print(f"  {r['status']:<8} {where}{r['slide_id']} ({r.get('tiles', '?')} tiles){why}")
    print(f"summary: {path}")
    return 0 if all(r["status"] in ("done", "cached") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
