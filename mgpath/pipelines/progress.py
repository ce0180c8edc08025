"""Progress of a run over many slides, counted in tiles: a bar on a terminal, a line every ``interval`` seconds
otherwise (a log file of a long job then shows how far it is and how long is left)."""
from __future__ import annotations

import sys
import time

import lightning.pytorch as pl

__all__ = ["TileProgress"]


class TileProgress(pl.Callback):
    """Counts the tiles of each predicted batch (the batch's second item holds one slide index per tile).

    Parameters
    ----------
    total : tiles the run will encode.
    interval : seconds between two lines when ``stream`` is not a terminal (the first line after one interval;
        a last line when the run ends).
    stream : where to write (stderr by default).
    """

    def __init__(self, total: int, interval: float = 30.0, stream=None, what: str = "tiles"):
        super().__init__()
        self.total, self.interval, self.what = int(total), float(interval), what
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.bar = None
        self.t0 = self.last = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.t0 = self.last = time.monotonic()
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit=" tiles", file=self.stream, dynamic_ncols=True,
                            desc="encoding")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.is_global_zero:
            return
        n = len(outputs[1]) if isinstance(outputs, (tuple, list)) and len(outputs) > 1 else 0
        self.done += n * trainer.world_size  # every rank encodes its own share at about the same pace
        if self.bar is not None:
            self.bar.update(min(n * trainer.world_size, self.total - self.bar.n))
        elif time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def on_predict_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``encoded 1,234 / 5,678 tiles (21.7%), 96 tiles/s, about 46 s left``."""
        done = min(self.done, self.total)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("nan")
        eta = "" if done >= self.total or rate <= 0 else f", about {_duration(left)} left"
        return (f"encoded {done:,} / {self.total:,} {self.what} ({100 * done / max(self.total, 1):.1f}%), "
                f"{rate:,.0f} {self.what}/s{eta}")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
