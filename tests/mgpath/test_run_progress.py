"""Run summaries count slides and magnifications apart; extraction progress counts tiles, and writes lines
(not a bar) when its output is not a terminal."""
from __future__ import annotations

import io
from types import SimpleNamespace

import torch

from mgpath.pipelines.progress import TileProgress
from mgpath.pipelines.summary import count_line


def test_summary_counts_slides_and_magnifications_apart():
    rows = [{"slide_id": f"s{i}", "status": "done", "out": f"feats/{m}/s{i}.h5"} for i in range(4)
            for m in ("10x", "5x")]
    rows[-1]["status"] = "skipped"
    mag = lambda r: r["out"].split("/")[1]
    assert count_line(rows, mag, "feature files") == ("4 slides x 2 magnifications (10x, 5x) = 8 feature files: "
                                                      "7 done, 0 cached, 1 skipped")
    assert count_line(rows[:2:2] + rows[2:3]) == "2 slides: 2 done, 0 cached, 0 skipped"
    assert count_line(rows[:1], mag) == "1 slide: 1 done, 0 cached, 0 skipped"


def test_progress_writes_tile_lines_into_a_log_file():
    log = io.StringIO()  # not a terminal
    progress = TileProgress(100, interval=0.0, stream=log)
    trainer = SimpleNamespace(is_global_zero=True, world_size=1)
    progress.on_predict_start(trainer, None)
    for n in (64, 36):
        batch_slides = torch.zeros(n, dtype=torch.long)
        progress.on_predict_batch_end(trainer, None, (torch.zeros(n, 4), batch_slides, None, None), None, 0)
    progress.on_predict_end(trainer, None)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("encoded 64 / 100 tiles (64.0%), ") and "tiles/s, about " in lines[0]
    assert lines[-1].startswith("encoded 100 / 100 tiles (100.0%), ") and "left" not in lines[-1]
    assert progress.bar is None


def test_progress_waits_its_interval_between_lines():
    log = io.StringIO()
    progress = TileProgress(1000, interval=3600.0, stream=log)
    trainer = SimpleNamespace(is_global_zero=True, world_size=1)
    progress.on_predict_start(trainer, None)
    for _ in range(5):
        progress.on_predict_batch_end(trainer, None, (None, torch.zeros(10), None, None), None, 0)
    assert log.getvalue() == ""  # nothing before the first interval ...
    progress.on_predict_end(trainer, None)
    assert log.getvalue().startswith("encoded 50 / 1,000 tiles (5.0%)")  # ... and a last line at the end
