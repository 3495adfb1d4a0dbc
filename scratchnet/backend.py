"""The one place that knows NumPy and CuPy both exist.

Layer code is written once against an array module ``xp`` obtained from the
data (``xp = get_array_module(x)``); only the kernels in ``scratchnet.kernels``
differ between the CPU (Numba) and the GPU (CUDA C through CuPy).
"""
from __future__ import annotations

import os

import numpy as np

try:  # CuPy is an optional extra: pip install scratchnet[gpu] (CUDA 12), scratchnet[gpu-cuda13] (CUDA 13)
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy that cannot find CUDA
    _cupy = None


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the arrays (numpy for plain Python values)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(a) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def default_device() -> str:
    """The device named by $SCRATCHNET_DEVICE ('cpu' or 'gpu'), 'cpu' when unset."""
    return (os.environ.get("SCRATCHNET_DEVICE") or "cpu").lower()      # unset or empty: cpu


def resolve_device(device: str | None) -> str:
    """'cpu' or 'gpu'; a request for 'gpu' without CuPy/GPU falls back to 'cpu' with a message."""
    device = (device or default_device()).lower()
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and not gpu_available():
        import sys
        print("scratchnet: no usable GPU (CuPy missing or no CUDA device); running on the CPU. "
              "Install CuPy with `pip install scratchnet[gpu]` (CUDA 12) or `scratchnet[gpu-cuda13]` (CUDA 13).",
              file=sys.stderr)
        return "cpu"
    return device


def to_device(a, device: str):
    """Move an array to 'cpu' (NumPy) or 'gpu' (CuPy); no copy when it is already there."""
    if a is None:
        return None
    if device == "cpu":
        return _cupy.asnumpy(a) if is_gpu_array(a) else np.asarray(a)
    if device == "gpu":
        if _cupy is None:
            raise RuntimeError("device 'gpu' needs CuPy: pip install scratchnet[gpu] (CUDA 12) or "
                               "scratchnet[gpu-cuda13] (CUDA 13)")
        return _cupy.asarray(a)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def to_numpy(a):
    return to_device(a, "cpu")
