"""Drawing heatmaps people can read: per-tile values painted over the slide thumbnail, one page per slide.

Each panel shows the whole slide at least ``PANEL_PX`` (1024) px on its long side, the tissue visible through
a translucent overlay (drawn only on tissue when a mask is given), and a colour bar whose ends are the real
range of the values drawn (ticks as plain numbers, no offset or exponent labels). ``colouring="rank"`` colours
each tile by its percentile rank among the slide's tiles instead, and the colour bar says so.

:func:`heatmap_figure` builds the page of one slide (rows: magnifications; columns: attention, then one panel
per class); :func:`overview_image` the small picture of a slide that the index of a folder shows.
"""
from __future__ import annotations

import numpy as np

__all__ = ["COLOURINGS", "PANEL_PX", "colour_key", "heatmap_figure", "overview_image", "panel_values",
           "tile_value_map"]

#: the long side of every panel, in pixels of the saved PNG (at ``DPI``)
PANEL_PX = 1024
DPI = 100
#: how values become colours: the value itself, or its percentile rank among the slide's tiles
COLOURINGS = ("value", "rank")
ALPHA = 0.45  # overlay opacity: the tissue stays visible under the colours


def tile_value_map(
    shape: tuple[int, int],
    coords: np.ndarray,
    tile_level0: float,
    scale: float,
    values: np.ndarray,
    smooth: float = 0.5,
) -> np.ndarray:
    """Per-tile values painted on a thumbnail grid: ``(h, w)`` float32, NaN where no tile reaches.

    Each tile covers at least one pixel (so every tile with a value is drawn, however small); overlapping
    tiles average. With ``smooth > 0`` value and coverage are both blurred with a Gaussian of ``smooth`` tile
    widths and divided, so the map is continuous across tile borders while a region of equal values keeps
    its value exactly (and no pixel leaves the range of the tile values).
    """
    import cv2

    h, w = shape[:2]
    acc = np.zeros((h, w), np.float64)
    cov = np.zeros((h, w), np.float64)
    t = tile_level0 * scale
    for (x, y), v in zip(np.asarray(coords, np.float64), np.asarray(values, np.float64)):
        x0, y0 = min(max(int(np.floor(x * scale)), 0), w - 1), min(max(int(np.floor(y * scale)), 0), h - 1)
        x1, y1 = max(x0 + 1, min(w, int(np.ceil(x * scale + t)))), max(y0 + 1, min(h, int(np.ceil(y * scale + t))))
        acc[y0:y1, x0:x1] += v
        cov[y0:y1, x0:x1] += 1
    support = cov > 0
    if smooth > 0 and t * smooth >= 0.5:
        sig = float(t * smooth)
        k = max(1, int(sig // 4))  # a wide blur is done on a k-times smaller grid (same ratio acc / cov)
        if k > 1:
            small = (max(1, w // k), max(1, h // k))
            acc = cv2.resize(cv2.GaussianBlur(cv2.resize(acc, small, interpolation=cv2.INTER_AREA), (0, 0), sig / k),
                             (w, h), interpolation=cv2.INTER_LINEAR)
            cov = cv2.resize(cv2.GaussianBlur(cv2.resize(cov, small, interpolation=cv2.INTER_AREA), (0, 0), sig / k),
                             (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            acc = cv2.GaussianBlur(acc, (0, 0), sig)
            cov = cv2.GaussianBlur(cov, (0, 0), sig)
    out = np.full((h, w), np.nan, np.float32)
    out[support] = (acc[support] / np.maximum(cov[support], 1e-12)).astype(np.float32)
    return out


def panel_values(values: np.ndarray, colouring: str = "value") -> tuple[np.ndarray, float, float]:
    """``(N,)`` tile values -> (values to draw, colour-bar low end, high end).

    ``"value"``: the values and their real minimum and maximum; ``"rank"``: each tile's percentile rank among
    the slide's tiles (0 = lowest, 100 = highest; ties share their mean rank) on a 0-100 bar.
    """
    v = np.asarray(values, np.float64)
    if colouring not in COLOURINGS:
        raise ValueError(f"colouring must be one of {COLOURINGS}; got {colouring!r}")
    if colouring == "rank":
        from scipy.stats import rankdata

        r = (rankdata(v) - 1) / max(len(v) - 1, 1) * 100 if len(v) else v
        return r, 0.0, 100.0
    return v, (float(v.min()) if v.size else 0.0), (float(v.max()) if v.size else 1.0)


def _norm_and_cmap(lo: float, hi: float, diverging: bool):
    """A colour norm whose ends are exactly ``lo`` and ``hi``; diverging maps keep 0 at their centre colour."""
    import matplotlib as mpl

    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    if not diverging:
        return mpl.colors.Normalize(lo, hi), mpl.colormaps["viridis"]
    base = mpl.colormaps["coolwarm"]
    if lo < 0 < hi:
        return mpl.colors.TwoSlopeNorm(0.0, lo, hi), base
    half = np.linspace(0.5, 1.0, 128) if lo >= 0 else np.linspace(0.0, 0.5, 128)  # one side of 0 only
    return mpl.colors.Normalize(lo, hi), mpl.colors.ListedColormap(base(half))


def _ticks(lo: float, hi: float, diverging: bool) -> list[float]:
    if diverging and lo < 0 < hi:
        return [lo, lo / 2, 0.0, hi / 2, hi]
    return list(np.linspace(lo, hi, 5))


def _tick_format(lo: float, hi: float):
    """Plain numbers with as many decimals as the tick spacing needs (never an offset or ``1e-3`` label)."""
    from matplotlib.ticker import FuncFormatter

    step = max(abs(hi - lo) / 4, 1e-12)
    digits = int(min(8, max(0, -np.floor(np.log10(step)))))
    return FuncFormatter(lambda v, _: f"{v:.{digits}f}")


def _overlay(vmap: np.ndarray, norm, cmap, tissue: np.ndarray | None) -> np.ndarray:
    rgba = cmap(norm(np.nan_to_num(vmap, nan=float(norm.vmin))))
    shown = np.isfinite(vmap) & (tissue if tissue is not None else True)
    rgba[..., 3] = np.where(shown, ALPHA, 0.0)
    return rgba


def _draw_panel(fig, box, cbox, thumbnail, vmap, tissue, title, label, lo, hi, diverging):
    ax = fig.add_axes(box)
    norm, cmap = _norm_and_cmap(lo, hi, diverging)
    ax.imshow(thumbnail, interpolation="antialiased")
    ax.imshow(_overlay(vmap, norm, cmap, tissue), interpolation="bilinear")
    ax.set_title(title, fontsize=17, loc="left")
    ax.axis("off")
    import matplotlib as mpl

    cax = fig.add_axes(cbox)
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, ticks=_ticks(norm.vmin, norm.vmax,
                                                                                        diverging))
    cb.ax.yaxis.set_major_formatter(_tick_format(norm.vmin, norm.vmax))
    cb.ax.tick_params(labelsize=13)
    cb.set_label(label, fontsize=14)
    return ax, cb


def _panels(scores: dict, classes: list[str], colouring: str) -> list[list[tuple]]:
    """Per magnification: (title, tile values, colour-bar label, diverging) of each panel."""
    rank = colouring == "rank"
    others = "the other class" if len(classes) == 2 else "the other classes"
    rows = []
    for m, s in scores.items():
        att = np.asarray(s["attention"], np.float64)
        spread = f"; highest tile {att.max() / att.min():.3g}x the lowest" if att.size and att.min() > 0 else ""
        row = [(f"{m}: where the model looks", att,
                "percentile rank of attention among the slide's tiles (%)" if rank else
                f"attention per tile (share of the slide's total{spread})", False)]
        contrast = s["transport"] - s["transport"].mean(0, keepdims=True)  # class c vs the class average
        for i, c in enumerate(classes):
            row.append((f"{m}: evidence for {c} (slide p = {s['probs'][i]:.2f})", contrast[i],
                        f"percentile rank of the evidence for {c} (%)" if rank else
                        f"supports {c} (+) or {others} (-)", not rank))
        rows.append(row)
    return rows


def heatmap_figure(thumbnail: np.ndarray, slide_dims: tuple[int, int], scores: dict, coords: dict[str, np.ndarray],
                   tile_level0: dict[str, float], classes: list[str], title: str = "",
                   tissue_mask: np.ndarray | None = None, smooth: float = 0.5, colouring: str = "value"):
    """The page of one slide as a matplotlib figure (close it with ``plt.close(fig)``).

    Rows: magnifications. Columns: attention (mean over the visual prompts; sums to 1 over the tiles), then per
    class the tile's transport score for the class minus its mean over classes (positive: the tile supports
    the class; diverging colours with 0 in the middle). Every panel is at least ``PANEL_PX`` px on its long
    side when saved at ``DPI``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if colouring not in COLOURINGS:
        raise ValueError(f"colouring must be one of {COLOURINGS}; got {colouring!r}")
    h, w = thumbnail.shape[:2]
    long_px = max(PANEL_PX, h, w)
    pw, ph = long_px * w / max(h, w) / DPI, long_px * h / max(h, w) / DPI  # panel size, inches
    bar_w, bar_gap, bar_text, col_gap, title_h, top, left = 0.3, 0.2, 1.9, 0.5, 0.8, 1.1, 0.3
    rows = _panels(scores, classes, colouring)
    ncol = max(len(r) for r in rows)
    fw = left + ncol * (pw + bar_gap + bar_w + bar_text + col_gap)
    fh = top + len(rows) * (ph + title_h) + 0.2
    fig = plt.figure(figsize=(fw, fh), dpi=DPI)
    scale = w / float(slide_dims[0])
    for r, (m, row) in enumerate(zip(scores, rows)):
        y = fh - top - r * (ph + title_h) - title_h - ph
        for c, (name, vals, label, div) in enumerate(row):
            drawn, lo, hi = panel_values(vals, colouring)
            vmap = tile_value_map(thumbnail.shape, coords[m], tile_level0[m], scale, drawn, smooth)
            x = left + c * (pw + bar_gap + bar_w + bar_text + col_gap)
            box = [x / fw, y / fh, pw / fw, ph / fh]
            cbox = [(x + pw + bar_gap) / fw, y / fh, bar_w / fw, ph / fh]
            _draw_panel(fig, box, cbox, thumbnail, vmap, tissue_mask, name, label, lo, hi, div)
    if title:
        fig.text(left / fw, 1 - 0.35 / fh, title, fontsize=20, va="top", ha="left", weight="bold")
    note = ("colour = percentile rank among the slide's tiles, not the value" if colouring == "rank" else
            "colour bars span the real range of each map")
    fig.text(left / fw, 1 - 0.8 / fh, note, fontsize=13, va="top", ha="left", color="0.3")
    return fig


def overview_image(thumbnail: np.ndarray, vmap: np.ndarray, tissue: np.ndarray | None = None,
                   max_side: int = 640) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)``, at most ``max_side`` px: the thumbnail with ``vmap`` (already 0-1) blended on as
    viridis, for an index."""
    import cv2
    import matplotlib as mpl

    rgba = _overlay(vmap, mpl.colors.Normalize(0, 1), mpl.colormaps["viridis"], tissue)
    a = rgba[..., 3:4]
    out = np.clip(np.round(thumbnail[..., :3].astype(np.float64) * (1 - a) + rgba[..., :3] * 255 * a), 0, 255)
    out = out.astype(np.uint8)
    f = max_side / max(out.shape[:2])
    if f < 1:
        out = cv2.resize(out, (max(1, round(out.shape[1] * f)), max(1, round(out.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return out


def colour_key(low: str, high: str, width: int = 480, height: int = 44) -> np.ndarray:
    """RGB uint8 ``(height, width + text, 3)``: the viridis gradient of :func:`overview_image`, ``low`` written at
    its dark end and ``high`` at its bright end."""
    import cv2
    import matplotlib as mpl

    bar_h = height // 2
    grad = (mpl.colormaps["viridis"](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    out = np.full((height, width + 16, 3), 255, np.uint8)
    out[:bar_h, 8:8 + width] = grad[None]
    for text, x in ((low, 8), (high, None)):
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.putText(out, text, (x if x is not None else 8 + width - tw, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (20, 20, 20), 1, cv2.LINE_AA)
    return out
