"""Plain against "wide" im2col columns, layer by layer: where does each pay?

    python bench/bench_im2col.py [--repeats 5]

For stride-1 convolutions, Conv2d can build its GEMM operand from "wide" columns (one contiguous copy
per image and kernel offset, the output computed on the padded width Wp and cropped to ow) instead of
plain im2col columns (oh copies of ow values each). Wide columns make the copies several times cheaper
but give the GEMMs Wp/ow more columns, so they pay where the copy is a large part of the layer: few
output channels, or large maps. ``scratchnet.layers.conv._wide_pays`` decides with one number,
(Wp/ow - 1) * O/G ("extra output channels"): wide when it is <= 24. This bench is where that number
comes from: for the layers of the networks in this repository it times one training step of the layer
(forward, then backward with weight and input gradients) and one saliency step (backward with the input
gradient only) in each mode, alternately, and prints the median time ratio wide/plain.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import scratchnet  # noqa: F401  first: its thread settings must precede NumPy's OpenBLAS (scratchnet/threads.py)
import numpy as np

from scratchnet.layers import Conv2d
from scratchnet.layers.conv import _wide_pays
from timing import run_main

#: (name, batch, in channels, out channels, kernel, padding, map size)
LAYERS = [
    ("paper64 w0.25 conv2", 128, 16, 64, 5, 2, 16),
    ("paper64 w0.25 conv3", 128, 64, 64, 3, 1, 8),
    ("paper64 w0.5 conv2", 128, 32, 128, 5, 2, 16),
    ("paper64 w0.5 conv3", 128, 128, 128, 3, 1, 8),
    ("paper64 w1.0 conv3", 128, 256, 256, 3, 1, 8),
    ("squeezenet fire2 e3x3", 16, 16, 64, 3, 1, 55),
    ("squeezenet fire4 e3x3", 16, 32, 128, 3, 1, 55),
    ("squeezenet fire8 e3x3", 16, 64, 256, 3, 1, 27),
    ("squeezenet fire9 e3x3", 16, 64, 256, 3, 1, 13),
    ("paper224 conv3", 8, 256, 256, 3, 1, 13),
    ("squeezenet conv_final", 16, 512, 1000, 1, 1, 13),      # 1x1, pad 1: wide columns add no column
    ("7x7 unpadded", 16, 8, 512, 7, 0, 14),                  # ow = 8 of Wp = 14: 75% more columns
]


def step(conv, x, dy, param_grads):
    conv.forward(x, train=True)
    conv.backward(dy, "gradient", param_grads, True)


def main(argv=None):
    from scratchnet.cli import positive_int      # counts: an integer >= 1, else a clear refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'layer':24s} {'extra O':>8s} {'auto':>6s} {'train plain ms':>15s} {'wide/plain':>11s} "
          f"{'saliency plain ms':>18s} {'wide/plain':>11s}")
    for name, n, c, o, k, p, hw in LAYERS:
        conv = Conv2d(c, o, k, 1, p)
        conv.init_params(rng)
        ow = hw + 2 * p - k + 1                         # stride 1; the padded width is hw + 2p
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        dy = rng.standard_normal((n, o, ow, ow)).astype(np.float32)
        extra = (hw + 2 * p - ow) / ow * o
        row = dict(layer=name, extra_out_channels=extra, auto_picks_wide=_wide_pays(hw + 2 * p, ow, o))
        for what, pg in (("train", True), ("saliency", False)):
            times = {"plain": [], "wide": []}
            for mode in ("plain", "wide"):              # warm-up (compilation, allocator)
                conv.im2col_mode = mode
                step(conv, x, dy, pg)
            for _ in range(args.repeats):
                for mode in ("plain", "wide"):
                    conv.im2col_mode = mode
                    t0 = time.perf_counter()
                    step(conv, x, dy, pg)
                    times[mode].append(time.perf_counter() - t0)
            ratio = float(np.median([w / q for w, q in zip(times["wide"], times["plain"])]))
            row[what] = dict(plain_ms=1e3 * min(times["plain"]), wide_ms=1e3 * min(times["wide"]), wide_over_plain=ratio)
        rows.append(row)
        print(f"{name:24s} {extra:8.1f} {'wide' if row['auto_picks_wide'] else 'plain':>6s} "
              f"{row['train']['plain_ms']:15.1f} {row['train']['wide_over_plain']:11.2f} "
              f"{row['saliency']['plain_ms']:18.1f} {row['saliency']['wide_over_plain']:11.2f}")
    print(json.dumps(dict(bench="im2col", repeats=args.repeats, rows=rows)))


if __name__ == "__main__":
    run_main(main)
