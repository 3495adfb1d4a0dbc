"""Thread-pool settings that keep OpenBLAS and Numba from fighting over the cores.

A forward or backward pass alternates BLAS calls (the convolution GEMMs, run by OpenBLAS's
pthreads) with Numba kernels (im2col, ReLU, pooling, run by Numba's OpenMP pool). Both pools
busy-wait after their work by default: OpenBLAS for 2**28 cycles (~0.1 s), GNU OpenMP for
300,000 spins. So while a Numba kernel runs, the BLAS workers still spin on the same cores, and
the other way round. On a 2-core machine this made SqueezeNet saliency *slower* with 2 threads
than with 1. Letting idle workers sleep at once fixes it:

    OPENBLAS_THREAD_TIMEOUT=4   OpenBLAS workers sleep after 2**4 cycles
    OMP_WAIT_POLICY=passive     Numba's OpenMP workers sleep instead of spinning

Measured with bench/bench_threads.py (the three settings interleaved, each in a fresh process):
the README ("Threads") has the figures.

Both variables are read once, when the library loads: OpenBLAS at ``import numpy``, OpenMP at
Numba's first parallel kernel. ``import scratchnet`` sets them (``setdefault``: a value you set
yourself wins) before it imports NumPy, so they take effect for the ``scratchnet`` command and
for scripts that import scratchnet before NumPy; ``applied()`` tells which took effect.
Set SCRATCHNET_THREAD_DEFAULTS=0 to leave the environment alone.
"""
from __future__ import annotations

import functools
import os
import sys

DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"}

_numpy_was_loaded = "numpy" in sys.modules
_numba_omp_loaded = any(name.startswith("numba.np.ufunc.omppool") for name in sys.modules)


def set_defaults() -> None:
    """Put DEFAULTS into os.environ where the user has not set them (before NumPy/Numba load)."""
    if os.environ.get("SCRATCHNET_THREAD_DEFAULTS", "1") == "0":
        return
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def applied() -> dict:
    """Which settings are in force for this process: {variable: (value or None, took_effect)}."""
    return {
        "OPENBLAS_THREAD_TIMEOUT": (os.environ.get("OPENBLAS_THREAD_TIMEOUT"), not _numpy_was_loaded),
        "OMP_WAIT_POLICY": (os.environ.get("OMP_WAIT_POLICY"), not _numba_omp_loaded),
    }


def openblas() -> tuple[str, int] | None:
    """(kernels, threads) of the OpenBLAS NumPy uses, e.g. ("SkylakeX", 2): the GEMM kernels it picked
    for the processor (or that OPENBLAS_CORETYPE named) and its thread count. Both decide how a GEMM
    splits and orders its float sums, so results differ in their last bits from one setting to another
    (the README's "Reproducibility"). None where NumPy's BLAS is not an OpenBLAS (MKL, Accelerate: as
    NumPy's build configuration says, from NumPy 1.26) or the library does not answer. Asked afresh
    each call (the thread count can be changed at run time); the library is looked up once."""
    calls = _openblas_calls()
    if calls is None:
        return None
    kernels, count = calls
    return kernels().decode(), int(count())


@functools.lru_cache(maxsize=None)
def _openblas_calls():
    """The loaded OpenBLAS's get_corename and get_num_threads (ctypes functions), or None. The library
    is found among the shared objects this process has mapped (/proc/self/maps: Linux), NumPy's own
    first (SciPy brings another OpenBLAS, which another NumPy would not be using)."""
    import ctypes

    import numpy
    name = _numpy_blas_name(numpy)
    if name is not None and "openblas" not in name.lower():
        return None
    here = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))     # numpy's site-packages
    mine = (os.path.join(here, "numpy.libs"), os.path.join(here, "numpy", ".libs"))
    for path in sorted(_mapped_openblas(), key=lambda p: (not p.startswith(mine), p)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            kernels = getattr(lib, f"{prefix}_get_corename{suffix}", None)
            count = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if kernels is not None and count is not None:
                kernels.restype, count.restype = ctypes.c_char_p, ctypes.c_int
                return kernels, count
    return None


def _numpy_blas_name(numpy) -> str | None:
    """The BLAS NumPy was built against ('scipy-openblas', 'mkl', 'accelerate', ...); None where its
    configuration does not say (NumPy before 1.26)."""
    try:
        return str(numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"])
    except Exception:           # an older NumPy (no mode=), or a configuration without the entry
        return None


def _mapped_openblas() -> set[str]:
    """Absolute paths of the OpenBLAS libraries mapped into this process (none where /proc is not)."""
    try:
        with open("/proc/self/maps") as f:
            return openblas_in_maps(f.read().splitlines())
    except OSError:
        return set()


def openblas_in_maps(lines) -> set[str]:
    """The absolute OpenBLAS library paths in lines of /proc/PID/maps ("address perms offset dev inode
    path"; the path may hold spaces, and ends in " (deleted)" once its file is gone)."""
    paths = set()
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6:
            path = fields[5].removesuffix(" (deleted)")
            name = os.path.basename(path).lower()
            if path.startswith("/") and "openblas" in name and ".so" in name:
                paths.add(path)
    return paths
