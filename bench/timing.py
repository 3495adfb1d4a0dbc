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
