"""The emulated GPU: kernels/*.cu compiled with g++ against cuda_emu.h and launched from Python.

``build()`` compiles every kernel source (as CuPy would load it: ``gpu.kernel_source``) into
one shared library and returns it through ctypes. ``EmuBackend`` is then a backend for
``scratchnet.kernels.gpu.use_backend``: gpu.py allocates with its ``xp`` and launches its kernels.

Two flavours of array:
  * ``EmuBackend(lib)``: NumPy arrays (tests/test_gpu.py sends them down the GPU path itself);
  * ``EmuBackend(lib, hostcupy)``: tests/hostcupy.py's stand-in device arrays, so that the whole of
    scratchnet (trainer, CLI, visualisers) runs its ``--device gpu`` code with kernels from .cu files.
Every output buffer sits between guard bands checked after each launch. cuBLAS's strided-batched
GEMM (``gpu.weight_grad``) runs as ``gemm_strided_batched`` below: its documented column-major
definition in NumPy, every element it touches checked to lie inside its buffer.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scratchnet.kernels import gpu

HERE = Path(__file__).resolve().parent
#: kernels that call __syncthreads: the emulator runs their threads concurrently
SYNC_KERNELS = {"softmax_xent_fwd_bwd"}


#: kernels that exist only in the emulator, to show that its checks catch what they are for
SELFTEST_SOURCE = """
// every thread adds its elements into out[0]: right when threads run one at a time (here), a lost
// update on a GPU, where they run at once; the write-ownership check must fail it
template <typename T>
__global__ void emu_selftest_sum_race(const T* __restrict__ x, T* __restrict__ out, const idx_t n) {
    GRID_STRIDE_LOOP(e, n) { out[0] += x[e]; }
}
"""
SELFTEST_KERNELS = ["emu_selftest_sum_race<float>"]


def build():
    """The emulator as a loaded library, compiled once per text of its sources into a folder under the
    temporary directory named by that text's hash, and reused from there by later tests and processes
    (the test fixture, hostcupy's RawModule, the rehearsal's every process); built under temporary
    names, then renamed, so processes building at once do not clash. None when g++ is missing.
    Raises on a compile error."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    header = HERE / "cuda_emu.h"
    digest = hashlib.sha1(header.read_bytes()).hexdigest()          # a changed header is a new build
    lines = [f"// cuda_emu.h sha1 {digest}", "#include <cstdio>", f'#include "{header}"']
    lines += [gpu.kernel_source(f) for f in gpu.KERNELS]
    lines.append(SELFTEST_SOURCE)
    lines.append('extern "C" void emu_init() {')
    for e in [*(e for f in gpu.KERNELS for e in gpu.name_expressions(f)), *SELFTEST_KERNELS]:
        lines.append(f"    EMU_REGISTER({e}, {'true' if e.split('<')[0] in SYNC_KERNELS else 'false'});")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    folder = Path(tempfile.gettempdir()) / f"scratchnet_cuda_emu_{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    folder.mkdir(exist_ok=True)
    src, so = folder / "emu.cpp", folder / "libemu.so"
    if not src.exists():                   # the folder is named for the text; emu.cpp lands after the library
        tmp_src, tmp_so = folder / f"emu.{os.getpid()}.cpp", folder / f"libemu.{os.getpid()}.so"
        tmp_src.write_text(text)
        cmd = [gxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-shared", "-fPIC",
               "-pthread", "-o", str(tmp_so), str(tmp_src)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"building the kernel emulator failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        os.replace(tmp_so, so)              # the library first, then the text that says what it is
        os.replace(tmp_src, src)
    lib = ctypes.CDLL(str(so))
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [
        ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_longlong), ctypes.c_char_p, ctypes.c_int]
    lib.emu_set_reverse.argtypes = [ctypes.c_int]
    lib.emu_set_owner_check.argtypes = [ctypes.c_int]
    lib.emu_init()
    return lib


@contextmanager
def switched_on(lib, switch: str):
    """The emulator's ``emu_set_<switch>`` (``reverse``: blocks and threads run in reverse order;
    ``owner_check``: a launch fails when two threads change one output element) on inside the block."""
    setter = getattr(lib, f"emu_set_{switch}")
    setter(1)
    try:
        yield
    finally:
        setter(0)


class GuardedArrays:
    """The array module ``xp`` (NumPy, or hostcupy), except that every output buffer (empty / full)
    sits between guard bands that are checked after each launch: a kernel writing past its output
    fails the test."""

    GUARD = 64

    def __init__(self, xp=np):
        self.base_xp = xp
        self.pending = []

    def __getattr__(self, name):
        return getattr(self.base_xp, name)

    def full(self, shape, fill_value, dtype=None):
        dtype = np.dtype(dtype if dtype is not None else np.float64)
        size = int(np.prod(shape))
        sentinel = dtype.type(-7777)
        base = np.full(size + 2 * self.GUARD, sentinel, dtype=dtype)
        base[self.GUARD:self.GUARD + size] = fill_value
        self.pending.append((base, size, sentinel))
        out = base[self.GUARD:self.GUARD + size].reshape(shape)
        return out if self.base_xp is np else self.base_xp.ndarray(out)

    def empty(self, shape, dtype=np.float64):
        return self.full(shape, -7777, dtype)

    def check_guards(self, kernel):
        pending, self.pending = self.pending, []
        for base, size, sentinel in pending:
            g = self.GUARD
            if not (np.all(base[:g] == sentinel) and np.all(base[g + size:] == sentinel)):
                raise AssertionError(f"{kernel} wrote outside its output buffer")


class EmuKernel:
    def __init__(self, lib, xp, expr, launches):
        self.lib, self.xp, self.expr, self.launches = lib, xp, expr, launches

    def __call__(self, grid, block, args):
        self.launches[self.expr.split("<")[0]] += 1
        codes, holders, nbytes = [], [], []
        device_type = getattr(self.xp.base_xp, "ndarray", None) if self.xp.base_xp is not np else None
        for i, a in enumerate(args):
            if device_type is not None:
                if isinstance(a, np.ndarray):
                    raise AssertionError(f"{self.expr}: argument {i} is a NumPy array; the kernels take "
                                         f"device arrays (CuPy would refuse it)")
                if isinstance(a, device_type):
                    a = a._a
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise AssertionError(f"{self.expr}: argument {i} is not C-contiguous")
                codes.append(f"p:{a.dtype.kind}{a.dtype.itemsize}")
                holders.append(ctypes.c_void_p(a.ctypes.data))
                nbytes.append(a.nbytes)
            elif isinstance(a, np.generic):
                codes.append(f"s:{a.dtype.kind}{a.dtype.itemsize}")
                holders.append(ctypes.create_string_buffer(a.tobytes(), a.dtype.itemsize))
                nbytes.append(0)
            else:
                raise TypeError(f"{self.expr}: argument {i} is a Python {type(a).__name__}; pass a NumPy "
                                f"scalar of the kernel's C type (CuPy would guess one)")
        n = len(args)
        vals = (ctypes.c_void_p * n)(*[ctypes.addressof(h) for h in holders])
        code_arr = (ctypes.c_char_p * n)(*[c.encode() for c in codes])
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        err = ctypes.create_string_buffer(512)
        if self.lib.emu_launch(self.expr.encode(), *g, *b, n, code_arr, vals, (ctypes.c_longlong * n)(*nbytes),
                               err, 512):
            raise RuntimeError(err.value.decode())
        self.xp.check_guards(self.expr)


class EmuBackend:
    """gpu.py's backend interface over the g++-built kernels; arrays from ``xp`` (NumPy or hostcupy)."""

    def __init__(self, lib, xp=np):
        self.lib, self.xp = lib, GuardedArrays(xp)
        self.launches = Counter()           # kernel name -> launches, for tests that check a path ran

    def kernel(self, name, dtype):
        return EmuKernel(self.lib, self.xp, f"{name}<{gpu.C_TYPES[np.dtype(dtype)]}>", self.launches)

    def gemm_strided_batched(self, transa, transb, m, n, k, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c,
                             batch):
        """gpu.CupyBackend's cuBLAS call, run by ``gemm_strided_batched`` on the arrays' buffers."""
        bufs = []
        for name, x in (("a", a), ("b", b), ("c", c)):
            x = getattr(x, "_a", x)             # a hostcupy array's NumPy buffer
            if not (isinstance(x, np.ndarray) and x.flags.c_contiguous and x.dtype == getattr(c, "dtype")):
                raise AssertionError(f"gemm_strided_batched: {name} must be a contiguous {c.dtype} array")
            bufs.append(x.reshape(-1))
        self.launches["cublas_gemm_strided_batched"] += 1
        gemm_strided_batched(transa, transb, m, n, k, bufs[0], lda, stride_a, bufs[1], ldb, stride_b,
                             bufs[2], ldc, stride_c, batch)
        self.xp.check_guards("cublas gemm_strided_batched")


def gemm_strided_batched(transa, transb, m, n, k, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c, batch):
    """cublas<t>gemmStridedBatched with alpha 1 and beta 0, on flat (1-D) host buffers a, b, c, from its
    documented column-major definition: for i < batch,

        C_i = op(A_i) @ op(B_i)        op(A_i) m x k, op(B_i) k x n, C_i m x n

    where X_i is the column-major matrix starting stride_x elements after X_{i-1}, element (r, q) at
    x[i*stride_x + r + q*ldx], and op transposes it when trans_x is 1 (A_i is then stored k x m). An
    element outside its buffer, a leading dimension shorter than a column, or results that overlap
    (cuBLAS's CUBLAS_STATUS_INVALID_VALUE, or memory a GPU would read or write wrongly) raise."""
    if transa not in (0, 1) or transb not in (0, 1):
        raise AssertionError(f"gemm_strided_batched: trans must be 0 (CUBLAS_OP_N) or 1 (CUBLAS_OP_T), "
                             f"got {transa}, {transb}")
    for name, buf in (("A", a), ("B", b), ("C", c)):
        if buf.ndim != 1:
            raise AssertionError(f"gemm_strided_batched: {name} must be a flat buffer, got shape {buf.shape}")
    shape_a = (m, k) if transa == 0 else (k, m)
    shape_b = (k, n) if transb == 0 else (n, k)
    for name, (rows, _), ld in (("A", shape_a, lda), ("B", shape_b, ldb), ("C", (m, n), ldc)):
        if ld < max(1, rows):
            raise AssertionError(f"gemm_strided_batched: ld{name.lower()} {ld} < {rows} rows")
    if batch > 1 and stride_c < ldc * (n - 1) + m:
        raise AssertionError(f"gemm_strided_batched: results overlap (stride_c {stride_c}, ldc {ldc}, {m}x{n})")

    def matrix(buf, offset, rows, cols, ld, name):
        last = offset + (rows - 1) + (cols - 1) * ld
        if offset < 0 or last >= buf.size:
            raise AssertionError(f"gemm_strided_batched: {name} reaches elements {offset}..{last} of a buffer "
                                 f"of {buf.size}")
        item = buf.itemsize
        return np.lib.stride_tricks.as_strided(buf[offset:], shape=(rows, cols), strides=(item, ld * item))

    for i in range(batch):
        A = matrix(a, i * stride_a, *shape_a, lda, f"A_{i}")
        B = matrix(b, i * stride_b, *shape_b, ldb, f"B_{i}")
        C = matrix(c, i * stride_c, m, n, ldc, f"C_{i}")
        C[...] = (A if transa == 0 else A.T) @ (B if transb == 0 else B.T)
