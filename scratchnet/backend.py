"""The one place that knows NumPy and CuPy both exist.

Layer code is written once against an array module ``xp`` obtained from the
data (``xp = get_array_module(x)``); the kernels in ``scratchnet.kernels`` differ
between the CPU (Numba) and the GPU (CUDA C through CuPy), and a layer asks which
device it is on only where one device has a kernel the other lacks (see there).
"""
from __future__ import annotations

import os
import re
import sys

import numpy as np

# CuPy is an optional extra: pip install scratchnet[gpu] (CUDA 12), scratchnet[gpu-cuda13] (CUDA 13).
# It is imported on first need (a fifth of `import scratchnet`'s time otherwise, GPU or not): by
# gpu_problem and to_device, or by get_array_module once something else has imported it.
_UNTRIED = object()
_cupy = _UNTRIED            # the cupy module, None when it is missing or fails to import, or _UNTRIED
_cupy_import_error = None
_gpu_checked_for = None     # the CuPy module gpu_problem last found usable (it checks each module once)


def _cupy_module():
    """CuPy, imported the first time it is asked for; None when it is missing or fails to import."""
    global _cupy, _cupy_import_error
    if _cupy is _UNTRIED:
        try:
            import cupy
            _cupy = cupy
        except Exception as e:  # ImportError, or a CuPy that cannot find CUDA
            _cupy_import_error = e              # before _cupy: a thread seeing None finds the reason too
            _cupy = None
    return _cupy


def _imported_cupy():
    """CuPy if anything has imported it, else None: no CuPy array can exist before its import, so the
    array tests below never import CuPy themselves."""
    if _cupy is _UNTRIED and sys.modules.get("cupy") is None:
        return None
    return _cupy_module()

INSTALL_HINT = ("pip install 'scratchnet[gpu]' (CuPy with the CUDA 12 libraries from PyPI) or "
                "'scratchnet[gpu-cuda13]'; with a CUDA toolkit installed, CuPy alone: "
                "pip install cupy-cuda12x (or cupy-cuda13x)")


def _first_line(e: Exception) -> str:
    """'Type: the first line of the message that says something' (CuPy's start with a rule of '=')."""
    lines = [ln.strip() for ln in str(e).splitlines() if any(ch.isalnum() for ch in ln)]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _cuda_library(name: str):
    """CuPy's binding of a CUDA library ('nvrtc', 'cublas'), loading the library on first access as
    CuPy 14 does (ImportError when it cannot be found); older CuPys keep it in cupy_backends only."""
    lib = getattr(_cupy_module().cuda, name, None)
    if lib is None:
        import importlib
        lib = importlib.import_module(f"cupy_backends.cuda.libs.{name}")
    return lib


def gpu_problem() -> str | None:
    """Why the GPU cannot be used here, in one line; None when it can.

    Usable means: CuPy imports, a CUDA device answers, the two CUDA libraries scratchnet needs load
    (NVRTC, which compiles kernels/*.cu, and cuBLAS, the convolutions' GEMMs), and CuPy finds the
    CUDA headers it hands NVRTC. CuPy 14 finds them in a CUDA toolkit or in NVIDIA's PyPI wheels
    (``cupy-cuda12x[ctk]``) and loads them only when first used, so without this check a missing one
    would surface as an error deep inside the first kernel launch. A pass is remembered for this CuPy
    module (a command asking for the GPU checks once, however many layers and arrays it moves).
    """
    global _gpu_checked_for
    if _cupy_module() is None:
        e = _cupy_import_error
        if e is None or (isinstance(e, ModuleNotFoundError) and e.name == "cupy"):
            return "CuPy is not installed"
        return f"CuPy is installed but fails to import ({_first_line(e)})"
    if _gpu_checked_for is _cupy:
        return None
    try:
        n = _cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"CuPy finds no CUDA device ({_first_line(e)})"
    if n < 1:
        return "CuPy finds no CUDA device"
    try:
        _cuda_library("nvrtc").getVersion()
        _cuda_library("cublas").setMathMode  # noqa: B018
    except Exception as e:
        return f"CuPy sees {n} GPU(s) but cannot load NVRTC or cuBLAS ({_first_line(e)})"
    assemble = getattr(getattr(getattr(_cupy, "_core", None), "core", None), "assemble_cupy_compiler_options", None)
    if assemble is not None:            # CuPy's include paths for NVRTC (a private function: checked if there)
        try:
            assemble(())
        except Exception as e:
            return f"CuPy sees {n} GPU(s) but not the CUDA headers NVRTC needs ({_first_line(e)})"
    _gpu_checked_for = _cupy
    return None


def gpu_available() -> bool:
    """True when CuPy imports, a CUDA device answers and CuPy has what it compiles and multiplies with
    (see gpu_problem)."""
    return gpu_problem() is None


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the arrays (numpy for plain Python values)."""
    cupy = _imported_cupy()
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def is_gpu_array(a) -> bool:
    cupy = _imported_cupy()
    return cupy is not None and isinstance(a, cupy.ndarray)


def device_of(a) -> str:
    """'gpu' for a CuPy array, else 'cpu'."""
    return "gpu" if is_gpu_array(a) else "cpu"


def default_device() -> str:
    """The device named by $SCRATCHNET_DEVICE ('cpu' or 'gpu'), 'cpu' when unset."""
    return (os.environ.get("SCRATCHNET_DEVICE") or "cpu").lower()      # unset or empty: cpu


def resolve_device(device: str | None) -> str:
    """'cpu' or 'gpu'; a request for 'gpu' without CuPy/GPU falls back to 'cpu' with a message."""
    device = (device or default_device()).lower()
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu":
        problem = gpu_problem()
        if problem is not None:
            print(f"scratchnet: no usable GPU: {problem}; running on the CPU. To use a GPU: {INSTALL_HINT}.",
                  file=sys.stderr)
            return "cpu"
    return device




def numerics(device: str) -> str:
    """What besides a network and its input decides the last bits of what it computes on ``device``, as
    a short name for cache keys (the localisation's map cache): on the CPU, OpenBLAS's kernels and
    thread count ('cpu-openblas-skylakex-2t'; 'cpu-blas-unknown' for another BLAS); on the GPU, the
    device, CuPy's and cuBLAS's versions (cuBLAS may come from NVIDIA's wheels or a toolkit, apart from
    CuPy) and whether float32 GEMMs may run in TF32 (set_tf32, $SCRATCHNET_TF32 or $CUPY_TF32):
    'gpu-nvidia-h200-cupy14.0.1-cublas120904-fp32'. Maps cached under one setting are then never
    served to a run under another, which would repeat the earlier run's numbers instead of computing
    its own."""
    if device == "cpu":
        from .threads import openblas
        blas = openblas()
        tag = "cpu-blas-unknown" if blas is None else f"cpu-openblas-{blas[0]}-{blas[1]}t"
    else:
        tag = _gpu_numerics()
    return re.sub(r"[^a-z0-9.+_]+", "-", tag.lower()).strip("-")


def _gpu_numerics() -> str:
    try:
        cupy = _cupy_module()
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        cublas = _cuda_library("cublas").getVersion(cupy.cuda.device.get_cublas_handle())
        from .kernels.gpu import tf32_enabled
        tf32 = tf32_enabled() or os.environ.get("CUPY_TF32") == "1"      # CuPy's own switch: its 2-D matmuls
        return f"gpu-{name}-cupy{cupy.__version__}-cublas{cublas}-{'tf32' if tf32 else 'fp32'}"
    except Exception:                   # a CuPy that does not answer: the cache still keeps the devices apart
        return "gpu-unknown"


def to_device(a, device: str):
    """Move an array to 'cpu' (NumPy) or 'gpu' (CuPy); no copy when it is already there. The device's
    name in any case ('GPU'), as resolve_device and $SCRATCHNET_DEVICE take it."""
    if a is None:
        return None
    device = device.lower() if isinstance(device, str) else device
    if device == "cpu":
        return _cupy.asnumpy(a) if is_gpu_array(a) else np.asarray(a)
    if device == "gpu":
        problem = gpu_problem()                 # checked once per CuPy module, then remembered
        if problem is not None:
            raise RuntimeError(f"device 'gpu' is not usable here: {problem}. To use a GPU: {INSTALL_HINT}")
        return _cupy.asarray(a)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def to_numpy(a):
    return to_device(a, "cpu")
