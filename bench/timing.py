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


def blas_kernels():
    """Which kernels NumPy's OpenBLAS runs, with how many threads, e.g. "OpenBLAS Haswell, 2 threads
    (OPENBLAS_CORETYPE=Haswell)"; "unknown" for a BLAS that does not say (scratchnet.threads.openblas).

    OpenBLAS picks its GEMM kernels for the processor when it loads, unless OPENBLAS_CORETYPE names
    them; on a processor with AVX-512 the Haswell (AVX2) kernels ran float32 GEMMs at about half the
    rate of the SkylakeX ones, so a CPU benchmark's figures mean little without this."""
    import os

    from scratchnet.threads import openblas
    blas, coretype = openblas(), os.environ.get("OPENBLAS_CORETYPE")
    return (("unknown" if blas is None else f"OpenBLAS {blas[0]}, {blas[1]} thread{'s' * (blas[1] != 1)}")
            + (f" (OPENBLAS_CORETYPE={coretype})" if coretype else ""))


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


def run_main(main):
    """Run a bench's ``main()`` and exit with its status: running out of memory at a size asked for
    (``--batch 100000``) is one line and exit 2, not NumPy's traceback; Ctrl-C exits 130 quietly."""
    import sys
    from pathlib import Path
    name = Path(sys.argv[0]).name
    try:
        code = main()
    except MemoryError as e:
        print(f"{name}: error: out of memory: {str(e) or 'an allocation failed'} (a smaller --batch, size or "
              f"width?)", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
