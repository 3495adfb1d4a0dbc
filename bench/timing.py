"""Timing helpers shared by the benchmarks: warm-up, then the median of repeats."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeats=5, warmup=1):
    """Median wall time of fn() in seconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def gemm_gflops(n=2048, dtype="float32"):
    """This machine's measured float32 GEMM rate (GFLOP/s) through NumPy's BLAS."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    b = a.copy()
    t = median_time(lambda: a @ b, repeats=5)
    return 2 * n ** 3 / t / 1e9


def alternating(fa, fb, repeats=5, warmup=1):
    """Time fa and fb alternately (a, b, a, b, ...) after ``warmup`` calls of each.

    Returns (times_a, times_b), lists of seconds. The figure to read is the median of the per-pair
    ratios a/b: the dev machines' speed drifts by up to 1.5x within a minute, so two separately taken
    medians are not comparable, while the two calls of one pair see the same machine."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return ta, tb


def median_ratio(ta, tb):
    return statistics.median(a / b for a, b in zip(ta, tb))


def import_peer_then_scratchnet():
    """Import PyTorch (if installed), then scratchnet, with each thread pool set as it suits that engine.

    Call before anything imports NumPy. OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads, so
    scratchnet's value is put into the environment first; PyTorch is imported before scratchnet so that
    its OpenMP pool keeps its default wait policy, and Numba's pool then gets scratchnet's "passive"
    (scratchnet/threads.py). Returns the torch module or None."""
    import os
    if os.environ.get("SCRATCHNET_THREAD_DEFAULTS", "1") != "0":   # (importing scratchnet.threads here would
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")       # import scratchnet, and NumPy, too early)
    try:
        import torch
    except ImportError:
        torch = None
    import scratchnet  # noqa: F401
    return torch
