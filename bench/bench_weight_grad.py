"""A convolution's weight gradient on the CPU: dy @ cols.T, or (cols @ dy.T).T, layer by layer.

    python bench/bench_weight_grad.py [--repeats 7]

dW = dy2 @ cols.T (dy2 (O, L), cols (K, L), L = N*oh*ow, a long sum with a small (O, K) result) is one
BLAS GEMM either way round: as dy2 @ cols.T, or as (cols @ dy2.T).T, the same products summed in the
same order. kernels.weight_grad uses the second, because OpenBLAS ran it faster. This bench takes the
(dy2, cols) pairs of every convolution of two networks from a real backward pass (the paper network at
64 px, width 0.25, batch 128, as trained here; and at 224 px, batch 8), times both orientations
alternately (bench/timing.py), checks that they give the same bits, and prints each layer's median
times and the median of the pairs' ratios (second / first; below 1: the second is faster).
The last line is one JSON object. About half a minute.
"""
from __future__ import annotations

import argparse
import json
import statistics

import scratchnet  # noqa: F401  first: its thread settings must precede NumPy's OpenBLAS (scratchnet/threads.py)
import numpy as np

from scratchnet import kernels
from scratchnet.models import paper_net
from timing import alternating, blas_kernels, median_ratio, run_main

NETWORKS = [("paper64 w0.25", 64, 0.25, 200, 128), ("paper224", 224, 1.0, 1000, 8)]


def captured_pairs(size, width, classes, batch):
    """[(layer name, dy2, cols)] of each convolution's weight gradient in one training backward."""
    net = paper_net(size, num_classes=classes, width=width, seed=0)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    pairs, real = [], kernels.weight_grad

    def spy(dy2, cols):
        pairs.append((dy2.copy(), cols.copy()))
        return real(dy2, cols)
    kernels.weight_grad = spy
    try:
        scores = net.forward(x, train=True)
        net.backward(np.ones_like(scores) / len(scores), param_grads=True, input_grad=False)
    finally:
        kernels.weight_grad = real
    convs = [name for name, layer in net.named_layers() if type(layer).__name__ == "Conv2d"]
    return [(name, d, c) for name, (d, c) in zip(reversed(convs), pairs)]    # backward meets them last first


def main(argv=None):
    from scratchnet.cli import positive_int
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=7)
    args = ap.parse_args(argv)
    print(f"BLAS: {blas_kernels()}; medians of {args.repeats} alternating pairs")
    print(f"{'layer':24s} {'dy2 (O, L)':>14s} {'cols (K, L)':>14s} {'dy2 @ cols.T':>13s} "
          f"{'(cols @ dy2.T).T':>17s} {'ratio':>6s}  same bits")
    rows = []
    for tag, size, width, classes, batch in NETWORKS:
        for name, d, c in captured_pairs(size, width, classes, batch):
            a = np.matmul(d, c.T)
            b = np.ascontiguousarray(np.matmul(c, d.T).T)
            same = bool(np.array_equal(a, b))
            ta, tb = alternating(lambda: np.matmul(d, c.T), lambda: np.ascontiguousarray(np.matmul(c, d.T).T),
                                 args.repeats)
            r = median_ratio(tb, ta)
            rows.append(dict(layer=f"{tag} {name}", batch=batch, dy2=list(d.shape), cols=list(c.shape),
                             nt_ms=round(1e3 * statistics.median(ta), 2), tn_ms=round(1e3 * statistics.median(tb), 2),
                             ratio=round(r, 3), same_bits=same))
            print(f"{tag + ' ' + name:24s} {str(d.shape):>14s} {str(c.shape):>14s} "
                  f"{1e3 * statistics.median(ta):10.1f} ms {1e3 * statistics.median(tb):14.1f} ms {r:6.2f}  {same}")
    print(json.dumps(dict(bench="weight_grad", repeats=args.repeats, blas=blas_kernels(), rows=rows)))
    return 0 if all(r["same_bits"] for r in rows) else 1


if __name__ == "__main__":
    run_main(main)
