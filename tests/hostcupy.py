"""A stand-in for CuPy on a machine without a GPU: arrays that live "on the device" only in name.

What it is for: running scratchnet's ``--device gpu`` code paths end to end here (the trainer, the
checkpoints, the visualisers, the CLI) and catching the host/device mistakes that would otherwise
first show on a rented GPU: a CuPy array handed to ``np.asarray``, Pillow or Numba; a NumPy array
mixed into a CuPy operation; an array left on the wrong device after ``net.to(...)``. (NumPy
functions called on a device array dispatch to CuPy's, as with CuPy: ``np.sum(a)`` and even
``np.savez(f, a=a)`` work on both.)

What it copies from CuPy (the parts that make those mistakes fail):
  * ``ndarray`` is not a ``numpy.ndarray``, and its ``__array__`` raises TypeError with CuPy's
    message, so ``np.asarray(a)``, ``Image.fromarray(a)`` and friends fail as they do on a GPU;
    ``a.get()`` and ``cupy.asnumpy(a)`` are the ways back to the host.
  * Operations (ufuncs, ``cupy.*`` functions, NumPy functions reached through
    ``__array_function__``) refuse a ``numpy.ndarray`` operand, 0-d ones too, as CuPy does
    ("Unsupported type"); NumPy and Python scalars are fine. ``cupy.asarray`` / ``cupy.array``
    are the ways onto the device.
  * ``a[idx] = numpy_array`` and indexing with NumPy arrays are refused too (CuPy accepts some of
    these; code that moves its data explicitly works on both).
  * ``type(a).__module__`` starts with "cupy", which is how ``scratchnet.kernels`` picks the GPU path.

Kernels: ``scratchnet.kernels.gpu`` asks its backend for them; tests pair this module with the
g++-built emulator of kernels/*.cu (tests/test_gpu.py), whose launcher unwraps these arrays.
What it cannot show: anything about CuPy itself (NVRTC, launches, cuBLAS, streams, memory).
"""
from __future__ import annotations

import collections
import ctypes
import sys
import time
import types

import numpy as np

#: every CuPy name scratchnet reached through this stand-in ("cupy.zeros", "ndarray.astype",
#: "cupy.add.at", "cupy.random.Generator.standard_normal", ...): tests/test_gpu_host.py checks them
#: against a real CuPy's API where one is installed (this module forwards any NumPy name)
USED = collections.Counter()

#: copies between host and device, by direction and the line outside this module that asked:
#: {("to_host", "scratchnet/layers/loss.py:41"): 3, ("to_device", ...): ...}. Counted: reads back
#: (a.get(), cupy.asnumpy, float/int/bool/index/format/item/tolist, pickling) and cupy.asarray/array/
#: ascontiguousarray of host data; not counted: NumPy functions that reach the buffer through
#: __array_function__ (np.save of a device array), so it is a lower bound. On a GPU each read back
#: waits for the device; tests/test_gpu_host.py holds a training step to its count.
TRANSFERS = collections.Counter()

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


def _transfer(kind):
    """Count one copy ``kind`` ("to_host" / "to_device") at the first caller outside this module."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename == __file__:
        f = f.f_back
    where = "?" if f is None else f"{'/'.join(f.f_code.co_filename.split('/')[-3:])}:{f.f_lineno}"
    TRANSFERS[kind, where] += 1


def _reject_host(obj, where):
    if isinstance(obj, np.ndarray):
        raise TypeError(f"Unsupported type {type(obj)} in {where} (a NumPy array where CuPy needs a "
                        f"cupy.ndarray: move it with cupy.asarray first)")


def _unwrap(obj, where):
    """ndarray -> its NumPy buffer, recursively through lists/tuples/dicts; NumPy arrays refused."""
    if isinstance(obj, ndarray):
        return obj._a
    _reject_host(obj, where)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, where) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, where) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """NumPy results -> device arrays; a NumPy scalar (a full reduction, one element) -> a 0-d device
    array, as CuPy returns (``float(a)``, ``a.item()`` and formatting bring it to the host)."""
    if isinstance(obj, np.ndarray):
        return ndarray(obj)
    if isinstance(obj, np.generic):
        return ndarray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
    """A NumPy buffer in a wrapper that behaves, for host/device purposes, like ``cupy.ndarray``."""

    __slots__ = ("_a",)
    __module__ = "cupy._host"           # scratchnet.kernels sends arrays of a "cupy..." module to the GPU

    def __init__(self, a):
        assert isinstance(a, np.ndarray) and not isinstance(a, ndarray)
        self._a = a

    # --- leaving the device: explicit only ----------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def get(self, stream=None, order="C", out=None):
        _transfer("to_host")
        return np.array(self._a, order=order)

    def __repr__(self):
        return f"hostcupy.{self._a!r}"

    # --- attributes -----------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    @property
    def data(self):
        """CuPy's device memory (``a.data.ptr``), here the host address of the first element; the bytes
        from there to the end of the array are noted, so the cuBLAS stand-in can refuse to reach past them."""
        ptr = self._a.ctypes.data
        _REACH[ptr] = max(_REACH.get(ptr, 0), self._a.nbytes if self._a.flags.c_contiguous else 0)
        return types.SimpleNamespace(ptr=ptr)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __float__(self):
        _transfer("to_host")
        return float(self._a)

    def __int__(self):
        _transfer("to_host")
        return int(self._a)

    def __index__(self):
        _transfer("to_host")
        return self._a.__index__()

    def __bool__(self):
        _transfer("to_host")
        return bool(self._a)

    def __format__(self, spec):         # CuPy formats through get()
        _transfer("to_host")
        return format(self._a[()] if self._a.ndim == 0 else self._a, spec)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):               # pickling a device array is fine in CuPy (it copies)
        _transfer("to_host")
        return (_from_host, (np.array(self._a),))

    def __getattr__(self, name):        # methods: reshape, astype, sum, max, argmax, fill, ...
        if name == "_a" or name.startswith("__"):      # no __array_interface__ etc.: no way to the host
            raise AttributeError(name)
        if name == "ctypes":                # the host buffer: CuPy has no such thing
            raise AttributeError(f"cupy.ndarray has no attribute {name!r}")
        attr = getattr(self._a, name)
        USED[f"ndarray.{name}"] += 1
        if not callable(attr):
            return _wrap(attr) if isinstance(attr, np.ndarray) else attr    # .real, .imag: device arrays

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args, f"ndarray.{name}"), **_unwrap(kwargs, f"ndarray.{name}")))
        return method

    def item(self, *args):
        _transfer("to_host")
        return self._a.item(*args)

    def tolist(self):
        _transfer("to_host")
        return self._a.tolist()

    # --- indexing ---------------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "indexing")])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "indexing")] = _unwrap(value, "__setitem__")

    # --- NumPy protocols ----------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"cupy.{ufunc.__name__}"
        USED[where if method == "__call__" else f"{where}.{method}"] += 1
        if method == "reduceat":
            raise NotImplementedError(f"{where}.reduceat is not in CuPy")
        for a in inputs:                    # CuPy takes device arrays and scalars, not lists
            if isinstance(a, (list, tuple)):
                raise TypeError(f"Unsupported type {type(a)} in {where}")
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap(out, where)
        result = getattr(ufunc, method)(*_unwrap(inputs, where), **kwargs)
        if out is not None and len(out) == 1 and isinstance(out[0], ndarray):
            return out[0]                   # in place (a += b): the wrapper that was passed
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        where = f"numpy.{func.__name__} on a cupy.ndarray"
        sub = func.__module__.split(".")[1:]           # CuPy answers numpy.linalg.norm with cupy.linalg.norm
        USED[".".join(["cupy", *sub, func.__name__])] += 1
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))


def _from_host(a):
    return ndarray(np.array(a))


# --- the module's functions ----------------------------------------------------------------------
def asarray(a, dtype=None, order=None, **kwargs):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype))
    _transfer("to_device")
    return ndarray(np.array(a, dtype=dtype, order=order or "K"))


def array(a, dtype=None, copy=True, order="K", **kwargs):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, order=order, copy=True))
    _transfer("to_device")
    return ndarray(np.array(a, dtype=dtype, order=order))


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        _reject_host(a, "cupy.ascontiguousarray")
        _transfer("to_device")
        return ndarray(np.ascontiguousarray(a, dtype=dtype))
    out = np.ascontiguousarray(a._a, dtype=dtype)
    return a if out is a._a else ndarray(out)


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a, order=order)


def _function(name, f):
    def fn(*args, **kwargs):
        where = f"cupy.{name}"
        return _wrap(f(*_unwrap(args, where), **_unwrap(kwargs, where)))
    fn.__name__ = name
    return fn


def __getattr__(name):
    """Any other cupy.X: NumPy's X, taking and returning device arrays (types and constants as is).
    Not the dunder names: NumPy's ``__path__`` would make this module a package to the import system,
    and ``import cupy._core`` would then load NumPy's ``_core`` a second time under that name."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module 'cupy' (tests/hostcupy.py) has no attribute {name!r}")
    attr = getattr(np, name)
    USED[f"cupy.{name}"] += 1
    if isinstance(attr, (types.FunctionType, types.BuiltinFunctionType, np.ufunc)) or (
            callable(attr) and not isinstance(attr, type)):
        return _function(name, attr)
    return attr


class _Lib:
    class stride_tricks:
        @staticmethod
        def as_strided(x, shape=None, strides=None):
            return ndarray(np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides))


lib = _Lib()


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(i):
        return {"name": b"hostcupy (no GPU)", "multiProcessorCount": 1}


class _Event:
    """cupy.cuda.Event on the host clock (timings of the emulated device mean nothing)."""

    def __init__(self, *a, **k):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    return (end.t - start.t) * 1e3


class _Generator:
    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        USED[f"cupy.random.Generator.{name}"] += 1
        return _function(f"random.{name}", getattr(self._g, name))


random = types.SimpleNamespace(default_rng=_Generator)


class _Device:
    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        pass


class _MemoryPool:
    def free_all_blocks(self):
        pass


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


#: device pointer handed out by ``ndarray.data`` -> the bytes of its (contiguous) array from there
_REACH = {}


def _gemm_strided_batched(ctype, t):
    """cuBLAS's <t>gemmStridedBatched as CuPy 14 wraps it (host pointers to alpha and beta, device
    pointers to the matrices), on host addresses: tests/cuda_emu.py's column-major reference does the
    work on buffers spanning what the arguments address, each checked to lie inside the array whose
    ``data.ptr`` it is. Integer arguments are checked as the Cython wrapper converts them (int: 32
    bits; long long: 64). alpha 1 and beta 0 only."""
    import operator

    def gemm(handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
             batch):
        import cuda_emu
        USED[f"cupy.cuda.cublas.{t}gemmStridedBatched"] += 1
        for name, v, bits in (("transa", transa, 32), ("transb", transb, 32), ("m", m, 32), ("n", n, 32),
                              ("k", k, 32), ("lda", lda, 32), ("strideA", stride_a, 64), ("ldb", ldb, 32),
                              ("strideB", stride_b, 64), ("ldc", ldc, 32), ("strideC", stride_c, 64),
                              ("batchCount", batch, 32)):
            if not -2 ** (bits - 1) <= operator.index(v) < 2 ** (bits - 1):    # TypeError for a float
                raise OverflowError(f"gemmStridedBatched: {name} = {v} does not fit a {bits}-bit integer")
        if (ctype.from_address(alpha).value, ctype.from_address(beta).value) != (1, 0):
            raise NotImplementedError("hostcupy's gemmStridedBatched: alpha 1 and beta 0 only")

        def buf(ptr, rows, cols, ld, stride):
            extent = (batch - 1) * stride + (cols - 1) * ld + rows
            if extent * ctypes.sizeof(ctype) > _REACH.get(ptr, 0):
                raise AssertionError(f"gemmStridedBatched reaches {extent} elements from a pointer to "
                                     f"{_REACH.get(ptr, 0) // ctypes.sizeof(ctype)} (or not a device array's)")
            return np.ctypeslib.as_array((ctype * extent).from_address(ptr))
        cuda_emu.gemm_strided_batched(
            transa, transb, m, n, k,
            buf(a, *((m, k) if transa == 0 else (k, m)), lda, stride_a), lda, stride_a,
            buf(b, *((k, n) if transb == 0 else (n, k)), ldb, stride_b), ldb, stride_b,
            buf(c, m, n, ldc, stride_c), ldc, stride_c, batch)
    return gemm


def _cublas():
    return types.SimpleNamespace(setMathMode=None, getVersion=lambda handle: 0, sgemmStridedBatched=_gemm_strided_batched(ctypes.c_float, "s"),
                                 dgemmStridedBatched=_gemm_strided_batched(ctypes.c_double, "d"))


cuda = types.SimpleNamespace(runtime=_Runtime(), Device=_Device, Event=_Event, get_elapsed_time=_elapsed_ms,
                             get_cublas_handle=lambda: 0, device=types.SimpleNamespace(get_cublas_handle=lambda: 0),
                             set_allocator=lambda allocator=None: None,      # no memory pool here to switch off
                             # the libraries scratchnet.backend.gpu_problem checks (no CUDA behind them here)
                             nvrtc=types.SimpleNamespace(getVersion=lambda: (0, 0)),
                             cublas=_cublas())
__version__ = "0.0-host"
_core = None        # CuPy's private helpers (gpu_problem's look at the CUDA headers): none here


def stand_in_for_cupy(monkeypatch):
    """``import cupy`` gives this module for the rest of a test, and ``from cupy.x import y`` fails as
    it would on this module alone: a real CuPy's submodules that an earlier test imported (cupy._core,
    ...) are hidden from sys.modules until the test ends, so code that reaches for CuPy's private
    switches (kernels/gpu.py's set_tf32) is told they are not there instead of getting the real
    CuPy's beside the stand-in's arrays."""
    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    for name in [n for n in sys.modules if n.startswith("cupy.")]:
        monkeypatch.delitem(sys.modules, name)


# --- RawModule on the emulated kernels (tests/emu_site: a rehearsal of the GPU scripts) -----------
def install_emulated_raw_module():
    """Give this module a ``RawModule`` whose kernels are tests/cuda_emu.py's (built once per source
    version under $TMPDIR), so that kernels/gpu.py's own CuPy backend runs on them."""
    import cuda_emu

    lib = cuda_emu.build()
    guards = cuda_emu.GuardedArrays(sys.modules[__name__])     # no guard bands: a no-op check
    launches = collections.Counter()

    class RawModule:
        def __init__(self, code=None, options=(), name_expressions=()):
            self.names = set(name_expressions)

        def get_function(self, name):
            if name not in self.names:
                raise KeyError(f"{name} was not among the name expressions {sorted(self.names)}")
            return cuda_emu.EmuKernel(lib, guards, name, launches)

    globals()["RawModule"] = RawModule


# --- CuPy's private TF32 switches (kernels/gpu.py's set_tf32), for the rehearsal ---------------------
TF32 = {}       # what set_tf32 last asked of them: "compute_type", "math_mode"


def install_tf32_switches():
    """Put stand-ins for ``cupy._core._routines_linalg`` and ``cupy_backends.cuda.libs.cublas`` in
    sys.modules: they record in TF32 what set_tf32 asks and change nothing (the emulator's GEMMs are
    NumPy's), so that a rehearsal's ``bench_gpu.py --tf32`` runs its whole path (tests/emu_site). The
    tests' stand_in_for_cupy hides ``cupy._core`` again, as it hides a real CuPy's: set_tf32 then fails
    at its first import, as on the stand-in alone."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7       # CuPy 14.2's values
    linalg.set_compute_type = lambda dtype, compute_type: TF32.update(compute_type=compute_type)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
    cublas.CUBLAS_DEFAULT_MATH = 0
    cublas.setMathMode = lambda handle, mode: TF32.update(math_mode=mode)
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    cuda_ = types.ModuleType("cupy_backends.cuda")
    cuda_.libs = libs
    top = types.ModuleType("cupy_backends")
    top.cuda = cuda_
    sys.modules.update({"cupy._core": core, "cupy._core._routines_linalg": linalg, "cupy_backends": top,
                        "cupy_backends.cuda": cuda_, "cupy_backends.cuda.libs": libs,
                        "cupy_backends.cuda.libs.cublas": cublas})


# --- helpers for the tests that compare with a real CuPy or leave the stand-in behind ---------------
def real_cupy_has(cupy, name: str) -> bool:
    """Whether ``name`` ("cupy.add.at", "cupy.cuda.Event", "ndarray.astype", ...) exists in ``cupy``
    (a real CuPy: names it knows but cannot load here, a CUDA library's, count as existing)."""
    head, *parts = name.split(".")
    obj = cupy.ndarray if head == "ndarray" else cupy
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return False
        except Exception:
            return True
    return True


def env_without_emulation() -> dict:
    """os.environ without the rehearsal's SCRATCHNET_EMULATE_GPU (tests/emu_site) or a chosen
    SCRATCHNET_DEVICE: for a subprocess that must meet the machine as it is."""
    import os
    return {k: v for k, v in os.environ.items() if k not in ("SCRATCHNET_EMULATE_GPU", "SCRATCHNET_DEVICE")}
