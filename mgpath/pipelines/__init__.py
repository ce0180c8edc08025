"""Batch runners over many slides: tiling and feature extraction (discovery, resume, workers, summaries).

Each runner returns one summary row per slide and never raises for a bad slide; the command-line tools in
:mod:`mgpath.commands` only parse arguments, call a runner and print its rows.
"""
