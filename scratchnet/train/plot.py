"""Training curves as a PNG, drawn with PIL only: loss (left) and accuracy (right) against epochs.

    plot_metrics("RUN/metrics.jsonl", "RUN/curves.png")

Left : the running training loss ("step" lines), the epoch's training and validation loss.
Right: training top-1, validation top-1 and top-5, in percent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..tempfiles import atomic_write

COLOURS = {"train loss (steps)": (170, 190, 230), "train": (31, 119, 180), "val": (214, 39, 40),
           "val top-5": (44, 160, 44)}


def read_metrics(path):
    """The rows of a metrics.jsonl file (dicts), skipping blank lines."""
    rows = []
    for ln in Path(path).read_text().splitlines():
        if ln.strip():
            rows.append(json.loads(ln))
    return rows


def plot_metrics(metrics_path, png_path, size=(960, 400)):
    rows = read_metrics(metrics_path)
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    loss_series = {"train loss (steps)": [(r["epoch"], r["loss"]) for r in steps],
                   "train": [(r["epoch"], r["train_loss"]) for r in epochs],
                   "val": [(r["epoch"], r["val_loss"]) for r in epochs if "val_loss" in r]}
    acc_series = {"train": [(r["epoch"], 100 * r["train_top1"]) for r in epochs],
                  "val": [(r["epoch"], 100 * r["val_top1"]) for r in epochs if "val_top1" in r],
                  "val top-5": [(r["epoch"], 100 * r["val_top5"]) for r in epochs if r.get("val_top5") is not None]}
    W, H = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    _panel(d, (0, 0, W // 2, H), "loss", loss_series)
    _panel(d, (W // 2, 0, W, H), "accuracy (%)", acc_series, y_range=(0.0, 100.0))
    png_path = Path(png_path)
    atomic_write(png_path, lambda fh: img.save(fh, format="PNG"), suffix=".tmp.png")
    return png_path


def _panel(d, box, title, series, y_range=None):
    """One panel: the series' lines (and epoch dots), y from the data (padded 5%) or ``y_range``."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 55, x1 - 15, y0 + 30, y1 - 40
    d.text((left, y0 + 8), title, fill="black")
    pts = [p for s in series.values() for p in s if math.isfinite(p[1])]
    d.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    if not pts:
        return
    xmax = max(1.0, max(p[0] for p in pts))
    if y_range is not None:                             # accuracy: 0..100, ticks at quarters
        ylo, yhi = y_range
    else:
        ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
        if yhi - ylo < 1e-9:
            ylo, yhi = ylo - 1, yhi + 1
        pad = 0.05 * (yhi - ylo)
        ylo, yhi = ylo - pad, yhi + pad

    def to_px(x, y):
        return (left + (right - left) * x / xmax, bottom - (bottom - top) * (y - ylo) / (yhi - ylo))

    for i in range(5):                                  # y grid and labels
        v = ylo + (yhi - ylo) * i / 4
        _, py = to_px(0, v)
        d.line((left, py, right, py), fill=(230, 230, 230))
        d.text((x0 + 4, py - 6), f"{v:.3g}", fill="black")
    for e in _ticks(xmax):                              # x ticks in epochs
        px, _ = to_px(e, ylo)
        d.line((px, bottom, px, bottom + 4), fill="black")
        d.text((px - 4, bottom + 6), f"{e:g}", fill="black")
    d.text(((left + right) // 2 - 15, bottom + 22), "epoch", fill="black")
    lx = left + 8
    for name, s in series.items():
        colour = COLOURS[name]
        xy = [to_px(x, y) for x, y in s if math.isfinite(y)]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        dots = xy if name != "train loss (steps)" else []
        for px, py in dots:
            d.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        if len(xy) > 1 or dots:                         # in the legend only what was drawn
            d.line((lx, top + 10, lx + 16, top + 10), fill=colour, width=3)
            d.text((lx + 20, top + 4), name, fill="black")
            lx += 34 + int(d.textlength(name))


def _ticks(xmax):
    step = max(1, int(math.ceil(xmax / 10)))
    return list(range(0, int(math.floor(xmax)) + 1, step))
