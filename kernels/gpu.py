"""The GPU half of ``scratchnet.kernels``: CUDA C kernels (``kernels/*.cu``) launched through CuPy.

``kernels/__init__.py`` sends CuPy arrays here and NumPy arrays to the Numba twins (``cpu_*.py``);
each function below has the signature and the semantics of its CPU twin. Every ``.cu`` file is one
``cupy.RawModule``, compiled by NVRTC the first time one of its kernels is needed (CuPy keeps the
binary in its on-disk cache, ``~/.cupy/kernel_cache``), with the source text of ``common.cuh``
prepended and a float and a double instantiation of each template asked for by name
(``name_expressions=["relu_fwd<float>", "relu_fwd<double>", ...]``).

    file     kernels (the names a profiler shows)                       CPU twin
    relu.cu  relu_fwd, relu_bwd_gradient, relu_bwd_deconvnet,          cpu_relu.py
             relu_bwd_guided (one kernel per rule)
    pool.cu  maxpool_fwd, maxpool_bwd_gather,                           cpu_pool.py,
             avgpool_fwd, avgpool_bwd_gather                            AvgPool2d (layers/pool.py)
    lrn.cu   lrn_fwd, lrn_bwd                                           cpu_lrn.py
    conv.cu  im2col, col2im_gather, rows_to_nchw (the GEMM's output to   cpu_im2col.py
             NCHW, bias added), nchw_to_rows (the GEMMs are cuBLAS:
             cupy.matmul, and weight_grad's strided-batched GEMM)
    loss.cu  softmax_xent_fwd_bwd                                       layers/loss.py
    sgd.cu   sgd_momentum_update                                        train/sgd.py

Backward kernels gather (each thread sums what reaches the element it owns): no atomics, and the
same inputs give the same bits on every run.

Switches for debugging and speed:
  * ``SCRATCHNET_POISON=1`` fills every output with NaN (integer outputs with -1) before the kernel
    runs, so an element a kernel forgets to write cannot pass a comparison with the CPU.
  * ``set_tf32(True)``, or ``SCRATCHNET_TF32=1`` in the environment: float32 GEMMs on the tensor
    cores in TF32 (about 1e-3 relative error instead of 1e-6). Off by default; a call of set_tf32
    overrides the environment. (CuPy's own ``CUPY_TF32=1`` reaches only 2-D matmuls; the
    convolutions' batched matmuls and weight_grad's strided-batched GEMM need set_tf32.)

CuPy compiles every kernel with ``-ftz=true``: float32 denormals count as zero in the kernels (a
ReLU passes a positive denormal as 0, a max-pool window ranks it as 0), where the CPU keeps them.
Results differ only for values below 1.2e-38; float64 has no such flush.

Arguments reach the kernels as NumPy scalars of the exact C type (``np.int32`` for ``int``,
``np.int64`` for ``idx_t``, the array's dtype for ``T``): CuPy passes Python ints and floats with a
type of its own choosing, which a kernel would misread.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: threads per block of every launch (softmax_xent_fwd_bwd's reduction assumes a power of two <= 256)
THREADS = 256
assert THREADS <= 256 and THREADS & (THREADS - 1) == 0, "loss.cu's red[XENT_THREADS = 256] and its halving reduction"
#: the most blocks one launch asks for; kernels use grid-stride loops, so any count is correct
MAX_BLOCKS = 65536
#: NVRTC options of every module (tests/test_cuda_compile.py compiles with the same ones)
NVRTC_OPTIONS = ("-std=c++17",)

#: source file -> the kernel templates it defines
KERNELS = {
    "relu.cu": ("relu_fwd", "relu_bwd_gradient", "relu_bwd_deconvnet", "relu_bwd_guided"),
    "pool.cu": ("maxpool_fwd", "maxpool_bwd_gather", "avgpool_fwd", "avgpool_bwd_gather"),
    "lrn.cu": ("lrn_fwd", "lrn_bwd"),
    "conv.cu": ("im2col", "col2im_gather", "rows_to_nchw", "nchw_to_rows"),
    "loss.cu": ("softmax_xent_fwd_bwd",),
    "sgd.cu": ("sgd_momentum_update",),
}
#: element types every template is instantiated for
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

_FILE_OF = {name: f for f, names in KERNELS.items() for name in names}


def kernel_source(filename: str) -> str:
    """The text NVRTC compiles for one .cu file: common.cuh, then the file."""
    common = (HERE / "common.cuh").read_text()
    return f"{common}\n#line 1 \"{filename}\"\n{(HERE / filename).read_text()}"


def name_expressions(filename: str) -> list[str]:
    """The template instantiations asked of NVRTC for one file, e.g. ['relu_fwd<float>', ...]."""
    return [f"{k}<{t}>" for k in KERNELS[filename] for t in C_TYPES.values()]


# ---------------------------------------------------------------------------------------------
# the backend: CuPy, or (in tests) a host emulator of the same kernels
# ---------------------------------------------------------------------------------------------
class CupyBackend:
    """Arrays from CuPy, kernels from NVRTC via ``cupy.RawModule``, compiled on first use."""

    def __init__(self):
        import cupy
        self.xp = cupy
        self._modules = {}
        self._kernels = {}
        if _tf32_choice is None and os.environ.get("SCRATCHNET_TF32") == "1":
            set_tf32(True)

    def kernel(self, name: str, dtype):
        """The compiled kernel ``name<T>`` for T = dtype; call it as k(grid, block, args)."""
        key = (name, dtype)
        k = self._kernels.get(key)
        if k is None:
            filename = _FILE_OF[name]
            mod = self._modules.get(filename)
            if mod is None:
                mod = self._modules[filename] = self.xp.RawModule(
                    code=kernel_source(filename), options=NVRTC_OPTIONS,
                    name_expressions=name_expressions(filename))
            k = self._kernels[key] = mod.get_function(f"{name}<{C_TYPES[dtype]}>")
        return k

    def gemm_strided_batched(self, transa, transb, m, n, k, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c,
                             batch):
        """cuBLAS's C_i = op(A_i) op(B_i) for i < batch (alpha 1, beta 0), column-major as cuBLAS has it:
        A_i starts stride_a elements after A_{i-1} (likewise B, C); a, b, c are contiguous arrays of one
        float dtype whose first elements are A_0, B_0, C_0. op is the transpose where trans* is 1."""
        cublas = self.xp.cuda.cublas
        gemm = cublas.sgemmStridedBatched if c.dtype == np.float32 else cublas.dgemmStridedBatched
        one, zero = np.ones(1, c.dtype), np.zeros(1, c.dtype)     # host scalars (CuPy's handle: host pointer mode)
        gemm(self.xp.cuda.get_cublas_handle(), transa, transb, m, n, k, one.ctypes.data,
             a.data.ptr, lda, stride_a, b.data.ptr, ldb, stride_b, zero.ctypes.data, c.data.ptr, ldc, stride_c, batch)


_backend = None


def backend():
    """The backend in use (CuPy unless a test installed another with ``use_backend``)."""
    global _backend
    if _backend is None:
        _backend = CupyBackend()
    return _backend


def use_backend(b):
    """Install backend ``b`` (an object with ``xp``, ``kernel(name, dtype)`` and ``gemm_strided_batched``, as
    CupyBackend); returns the previous one."""
    global _backend
    old, _backend = _backend, b
    return old


_tf32_choice = None     # set_tf32's last argument, applied or not (None: never called, $SCRATCHNET_TF32 decides)


def tf32_enabled() -> bool:
    """Whether float32 GEMMs may run in TF32: set_tf32's last choice, else $SCRATCHNET_TF32 == "1"."""
    return _tf32_choice if _tf32_choice is not None else os.environ.get("SCRATCHNET_TF32") == "1"


def set_tf32(enabled: bool):
    """Let float32 GEMMs (cupy.matmul, 2-D and batched) use TF32 tensor cores, or forbid it; for the
    whole process, and over $SCRATCHNET_TF32 (read when the CuPy backend is made, after a call here)."""
    global _tf32_choice
    _tf32_choice = bool(enabled)        # the caller's choice stands over the environment, even if it fails below
    import cupy
    try:                                   # CuPy's private switches (the public one is CUPY_TF32 at import)
        from cupy._core import _routines_linalg as linalg
        from cupy_backends.cuda.libs import cublas
        linalg.set_compute_type, linalg.COMPUTE_TYPE_TF32, cublas.setMathMode  # noqa: B018
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"set_tf32: CuPy {cupy.__version__} lacks the switches this uses ({e}); "
                           f"set CUPY_TF32=1 (or 0) in the environment before importing CuPy instead") from e
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
    # batched matmul calls cuBLAS with a legacy compute type, which follows the handle's math mode;
    # CUBLAS_TF32_TENSOR_OP_MATH is 3 in cublas_api.h (CuPy 14.2's cublas module does not name it)
    mode = getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3) if enabled else getattr(cublas, "CUBLAS_DEFAULT_MATH", 0)
    cublas.setMathMode(cupy.cuda.device.get_cublas_handle(), mode)


# ---------------------------------------------------------------------------------------------
# helpers: checked inputs, poisoned outputs, typed scalars, launches
# ---------------------------------------------------------------------------------------------
def _float_array(a, what):
    if a.dtype not in C_TYPES:
        raise TypeError(f"{what}: the GPU kernels take float32 or float64 arrays, got {a.dtype}")
    return backend().xp.ascontiguousarray(a)


def _like(a, ref, what, name):
    """``a`` as a contiguous array; it must have ref's shape and dtype."""
    if tuple(a.shape) != tuple(ref.shape) or a.dtype != ref.dtype:
        raise ValueError(f"{what}: expected {name} of shape {tuple(ref.shape)} and dtype {ref.dtype}, "
                         f"got {tuple(a.shape)} {a.dtype}")
    return backend().xp.ascontiguousarray(a)


def _nchw(a, what):
    if a.ndim != 4:
        raise ValueError(f"{what}: expected an (N, C, H, W) array, got shape {tuple(a.shape)}")
    return a


def _out(shape, dtype):
    """An output buffer; NaN-filled (or -1 for integers) when SCRATCHNET_POISON=1."""
    xp = backend().xp
    dtype = np.dtype(dtype)
    if os.environ.get("SCRATCHNET_POISON") == "1":
        return xp.full(shape, np.nan if dtype.kind == "f" else -1, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def _i32(v):
    v = int(v)
    if not -2 ** 31 <= v < 2 ** 31:
        raise OverflowError(f"value {v} does not fit the kernels' 32-bit int arguments")
    return np.int32(v)


def _i64(v):
    return np.int64(int(v))


def _launch(name, dtype, work, args, threads=THREADS):
    """Run kernel ``name<dtype>`` over ``work`` items (grid-stride), blocks of ``threads``."""
    if work <= 0:
        return
    blocks = min((work + threads - 1) // threads, MAX_BLOCKS)
    backend().kernel(name, np.dtype(dtype))((blocks,), (threads,), args)


# ---------------------------------------------------------------------------------------------
# ReLU / ReLU6
# ---------------------------------------------------------------------------------------------
def relu_forward(x, upper):
    """y = clip(x, 0, upper), any shape (NaN propagates)."""
    x = _float_array(x, "relu_forward")
    y = _out(x.shape, x.dtype)
    _launch("relu_fwd", x.dtype, x.size, (x, y, x.dtype.type(upper), _i64(x.size)))
    return y


#: the backward kernel of each rule code
RELU_BWD = ("relu_bwd_gradient", "relu_bwd_deconvnet", "relu_bwd_guided")


def relu_backward(dy, y, rule_code, upper):
    """dx under rule 0 gradient / 1 deconvnet / 2 guided (an int, checked by kernels.relu_backward),
    from dy and the forward output y."""
    dy = _float_array(dy, "relu_backward")
    y = _like(y, dy, "relu_backward", "the forward output y")
    dx = _out(dy.shape, dy.dtype)
    _launch(RELU_BWD[rule_code], dy.dtype, dy.size, (dy, y, dx, dy.dtype.type(upper), _i64(dy.size)))
    return dx


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def maxpool_forward(x, kernel, stride, pads, out_hw):
    """x (N,C,H,W) -> (y (N,C,oh,ow), switches int32 (N,C,oh,ow), flat index in the H*W plane)."""
    x = _nchw(_float_array(x, "maxpool_forward"), "maxpool_forward")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    y = _out((n, c, oh, ow), x.dtype)
    switches = _out((n, c, oh, ow), np.int32)
    _launch("maxpool_fwd", x.dtype, y.size,
            (x, y, switches, _i64(y.size), *map(_i32, (h, w, kh, kw, sh, sw, pads[0], pads[2], oh, ow))))
    return y, switches


def maxpool_backward(dy, switches, in_hw, kernel=None, stride=None, pads=None):
    """dy, switches (N,C,oh,ow) -> dx (N,C,H,W): each gradient routed to its switch.

    A gather: each input element sums dy over the windows that contain it and chose it, so the
    pooling geometry (kernel, stride, pads) is needed here, unlike on the CPU."""
    if kernel is None or stride is None or pads is None:
        raise TypeError("maxpool_backward on the GPU needs the pooling geometry: pass kernel, stride "
                        "and pads (the gather walks the windows that contain each input element)")
    dy = _nchw(_float_array(dy, "maxpool_backward"), "maxpool_backward")
    if tuple(switches.shape) != tuple(dy.shape) or switches.dtype != np.int32:
        raise ValueError(f"maxpool_backward: expected int32 switches of shape {tuple(dy.shape)}, "
                         f"got {switches.dtype} {tuple(switches.shape)}")
    switches = backend().xp.ascontiguousarray(switches)
    n, c, oh, ow = dy.shape
    h, w = in_hw
    (kh, kw), (sh, sw) = kernel, stride
    dx = _out((n, c, h, w), dy.dtype)
    _launch("maxpool_bwd_gather", dy.dtype, dx.size,
            (dy, switches, dx, _i64(dx.size), *map(_i32, (h, w, kh, kw, sh, sw, pads[0], pads[2], oh, ow))))
    return dx


def avgpool_forward(x, kernel, stride, pads, out_hw):
    """x (N,C,H,W) -> y (N,C,oh,ow); padding counts as zeros, windows clipped at the padded border."""
    x = _nchw(_float_array(x, "avgpool_forward"), "avgpool_forward")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    y = _out((n, c, oh, ow), x.dtype)
    _launch("avgpool_fwd", x.dtype, y.size,
            (x, y, _i64(y.size), *map(_i32, (h, w, kh, kw, sh, sw, *pads, oh, ow))))
    return y


def avgpool_backward(dy, in_hw, kernel, stride, pads):
    """dy (N,C,oh,ow) -> dx (N,C,H,W): each input gets dy / window size from every window holding it."""
    dy = _nchw(_float_array(dy, "avgpool_backward"), "avgpool_backward")
    n, c, oh, ow = dy.shape
    h, w = in_hw
    (kh, kw), (sh, sw) = kernel, stride
    dx = _out((n, c, h, w), dy.dtype)
    _launch("avgpool_bwd_gather", dy.dtype, dx.size,
            (dy, dx, _i64(dx.size), *map(_i32, (h, w, kh, kw, sh, sw, *pads, oh, ow))))
    return dx


# ---------------------------------------------------------------------------------------------
# local response normalisation
# ---------------------------------------------------------------------------------------------
def lrn_forward(x, size, alpha, beta, k):
    """x (N,C,H,W) -> (y, s) with s = k + alpha * window sum of x**2, y = x * s**-beta."""
    x = _nchw(_float_array(x, "lrn_forward"), "lrn_forward")
    n, c, h, w = x.shape
    t = x.dtype.type
    y, s = _out(x.shape, x.dtype), _out(x.shape, x.dtype)
    _launch("lrn_fwd", x.dtype, n * h * w,
            (x, y, s, _i64(n * h * w), _i32(c), _i32(h * w), _i32(size), t(alpha), t(beta), t(k)))
    return y, s


def lrn_backward(dy, x, y, s, size, alpha, beta):
    """dx of LRN from dy and the forward's x, y, s (all N,C,H,W)."""
    dy = _nchw(_float_array(dy, "lrn_backward"), "lrn_backward")
    x, y, s = (_like(a, dy, "lrn_backward", nm) for a, nm in ((x, "x"), (y, "y"), (s, "s")))
    n, c, h, w = dy.shape
    t = dy.dtype.type
    dx = _out(dy.shape, dy.dtype)
    _launch("lrn_bwd", dy.dtype, n * h * w,
            (dy, x, y, s, dx, _i64(n * h * w), _i32(c), _i32(h * w), _i32(size), t(alpha), t(beta)))
    return dx


# ---------------------------------------------------------------------------------------------
# convolution: im2col / col2im, and the weight gradient's GEMM (the others are cupy.matmul: cuBLAS)
# ---------------------------------------------------------------------------------------------
def _check_fit(who, padded_hw, kernel, stride, out_hw):
    """A ValueError when out_hw windows of ``kernel`` at ``stride`` reach past the padded input: the
    kernels would read (im2col) or sum (col2im) outside it."""
    (hp, wp), (kh, kw), (sh, sw), (oh, ow) = padded_hw, kernel, stride, out_hw
    if (oh - 1) * sh + kh > hp or (ow - 1) * sw + kw > wp:
        raise ValueError(f"{who}: {oh}x{ow} outputs of a {kh}x{kw} window, stride {sh}x{sw}, "
                         f"do not fit a {hp}x{wp} padded input")


def im2col(xpad, kernel, stride, out_hw):
    """xpad (N,C,Hp,Wp) -> cols (C*kh*kw, N*oh*ow); cols[(c*kh+i)*kw+j, (n*oh+p)*ow+q] = xpad[n,c,i+p*sh,j+q*sw]."""
    xpad = _nchw(_float_array(xpad, "im2col"), "im2col")
    n, c, hp, wp = xpad.shape
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    _check_fit("im2col", (hp, wp), kernel, stride, out_hw)
    _i32(n * oh * ow)                              # the kernel's column arithmetic is 32-bit
    cols = _out((c * kh * kw, n * oh * ow), xpad.dtype)
    work = c * n * oh * ow                         # one thread per (channel, column): kh*kw rows each
    _launch("im2col", xpad.dtype, work,
            (xpad, cols, _i64(work), *map(_i32, (n, c, hp, wp, kh, kw, sh, sw, oh, ow))))
    return cols


def col2im(cols, padded_shape, kernel, stride, out_hw):
    """cols (C*kh*kw, N*oh*ow) -> dxpad (N,C,Hp,Wp), every column entry summed back where it came from."""
    cols = _float_array(cols, "col2im")
    n, c, hp, wp = (int(v) for v in padded_shape)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    if tuple(cols.shape) != (c * kh * kw, n * oh * ow):
        raise ValueError(f"col2im: expected cols of shape {(c * kh * kw, n * oh * ow)} for {padded_shape}, "
                         f"got {tuple(cols.shape)}")
    _check_fit("col2im", (hp, wp), kernel, stride, out_hw)
    _i32(n * c), _i32(hp * wp), _i32(n * oh * ow)  # the kernel's plane, pixel and column arithmetic is 32-bit
    dxpad = _out((n, c, hp, wp), cols.dtype)
    _launch("col2im_gather", cols.dtype, dxpad.size,
            (cols, dxpad, _i64(dxpad.size), *map(_i32, (n, c, hp, wp, kh, kw, sh, sw, oh, ow))))
    return dxpad


def rows_to_nchw(rows, n, out_hw, bias=None):
    """rows (O, N*oh*Wr) -> y (N, O, oh, ow), + bias (O,) when given, in one pass (Wr >= ow; columns
    q >= ow dropped)."""
    from . import _rows_geometry
    rows = _float_array(rows, "rows_to_nchw")
    o, wr, oh, ow = _rows_geometry("rows_to_nchw", rows, n, out_hw, bias)
    if bias is not None:
        bias = backend().xp.ascontiguousarray(bias, dtype=rows.dtype)
    _i32(n * o), _i32(oh * ow)                     # the kernel's plane and pixel arithmetic is 32-bit
    y = _out((n, o, oh, ow), rows.dtype)
    _launch("rows_to_nchw", rows.dtype, y.size,
            (rows, rows if bias is None else bias, y, _i64(y.size), *map(_i32, (n, o, oh, ow, wr)),
             np.int32(bias is not None)))       # without a bias, rows stands in for the pointer (never read)
    return y


def nchw_to_rows(dy, row_width=None):
    """dy (N, O, oh, ow) -> rows (O, N*oh*Wr), Wr = row_width (default ow) >= ow, zeros in columns q >= ow."""
    from . import _row_width
    dy = _nchw(_float_array(dy, "nchw_to_rows"), "nchw_to_rows")
    n, o, oh, ow = dy.shape
    wr = _row_width(ow, row_width)
    _i32(o * n), _i32(oh * wr)
    rows = _out((o, n * oh * wr), dy.dtype)
    _launch("nchw_to_rows", dy.dtype, rows.size, (dy, rows, _i64(rows.size), *map(_i32, (n, o, oh, ow, wr))))
    return rows


#: dW's split rule (``dw_split``): cuBLAS's output tile edge assumed, the most tiles a result may have
#: to be split (0: never split), the thread blocks aimed at, the shortest reduction worth splitting, the
#: shortest slice. Guesses, not yet measured on a GPU: bench/bench_gpu.py prints dW's time at other S.
DW_TILE, DW_MAX_TILES, DW_BLOCKS, DW_MIN_L, DW_MIN_SLICE = 128, 8, 256, 2 ** 16, 8192
#: weight_grad's slices are a multiple of this many columns long (128 bytes of float32) where they can be
SLICE_ALIGN = 32


def dw_split(o, k, l):
    """How many slices ``weight_grad`` cuts the reduction of an (O, L) @ (L, K) product into: 1 (one GEMM)
    unless the O x K result is at most DW_MAX_TILES cuBLAS tiles and L is at least DW_MIN_L long; then
    enough slices for about DW_BLOCKS thread blocks, none shorter than DW_MIN_SLICE. The paper's conv1
    at batch 256 and 224 px (O=64, K=147, L=3,041,536: 2 tiles) gets 128 slices; its conv2-conv5 (26
    tiles and more) and every Linear layer get 1."""
    tiles = max(1, -(-o // DW_TILE) * -(-k // DW_TILE))
    if tiles > DW_MAX_TILES or l < DW_MIN_L:
        return 1
    return max(1, min(DW_BLOCKS // tiles, l // DW_MIN_SLICE))


def weight_grad(dy2, cols, split=None):
    """dW = dy2 @ cols.T for dy2 (O, L) and cols (K, L) -> (O, K): a convolution's weight gradient,
    L = N*oh*ow summed over.

    One GEMM with a small result and a long sum (conv1: 64 x 147 outputs, each a sum over 3 million
    columns) gives the GPU a few thread blocks, each walking all of L, unless cuBLAS splits the sum
    itself. So where ``dw_split`` says so (or ``split`` > 1 asks), the sum is cut into S slices of
    ls columns, L // S rounded down to a multiple of SLICE_ALIGN (so every slice starts 128-byte
    aligned, as cuBLAS's vectorised kernels want, when L // S allows): ONE strided-batched cuBLAS GEMM
    computes the S partial (O, K) products, reading every slice where it lies (the leading dimension of
    both operands stays L: no copy), and their sum over S is dW; the last L - S * ls columns, if any,
    add one small GEMM. Deterministic: S and ls depend only on the shapes. (CuPy's batched matmul would
    copy the strided slices first: the whole im2col buffer.) TF32 follows set_tf32, as for the
    convolutions' batched matmuls (CUPY_TF32 alone does not reach it)."""
    xp = backend().xp
    if dy2.ndim != 2 or cols.ndim != 2 or dy2.shape[1] != cols.shape[1] or dy2.dtype != cols.dtype:
        raise ValueError(f"weight_grad: expected dy2 (O, L) and cols (K, L) of one dtype, got "
                         f"{tuple(dy2.shape)} {dy2.dtype} and {tuple(cols.shape)} {cols.dtype}")
    (o, l), k = dy2.shape, cols.shape[0]
    s = dw_split(o, k, l) if split is None else int(split)
    if s <= 1 or l < s:
        return xp.matmul(dy2, cols.T)
    dy2, cols = _float_array(dy2, "weight_grad"), _float_array(cols, "weight_grad")
    ls = l // s if l // s < SLICE_ALIGN else l // s // SLICE_ALIGN * SLICE_ALIGN
    part = _out((s, o, k), dy2.dtype)
    # cuBLAS is column-major: the row-major (O, K) result is a column-major (K, O) matrix, = op(A) op(B)
    # with A = a slice of cols seen column-major as (ls, K), leading dimension L, transposed (op T),
    # and B = the same slice of dy2 seen column-major as (ls, O), leading dimension L, as it is (op N)
    backend().gemm_strided_batched(1, 0, *map(_i32, (k, o, ls)), cols, _i32(l), ls, dy2, _i32(l), ls,
                                   part, _i32(k), o * k, _i32(s))
    dW = part.sum(axis=0)
    if s * ls < l:
        dW += xp.matmul(dy2[:, s * ls:], cols[:, s * ls:].T)
    return dW


# ---------------------------------------------------------------------------------------------
# loss and optimiser
# ---------------------------------------------------------------------------------------------
def softmax_xent(scores, labels):
    """(mean softmax cross-entropy as a Python float, d loss / d scores (N, K)); labels (N,) in [0, K).

    A label outside [0, K) gives a NaN loss (then layers/loss.py looks at the labels and says which).
    The loss comes back as a Python float: one wait for the GPU."""
    scores = _float_array(scores, "softmax_xent")
    if scores.ndim != 2:
        raise ValueError(f"softmax_xent: expected scores of shape (N, K), got {tuple(scores.shape)}")
    n, k = scores.shape
    xp = backend().xp
    labels = xp.ascontiguousarray(xp.asarray(labels).astype(np.int64))
    if tuple(labels.shape) != (n,):
        raise ValueError(f"softmax_xent: expected labels of shape ({n},), got {tuple(labels.shape)}")
    loss_rows = _out((n,), scores.dtype)
    d = _out((n, k), scores.dtype)
    _launch("softmax_xent_fwd_bwd", scores.dtype, n * THREADS,     # one block per row
            (scores, labels, loss_rows, d, _i32(n), _i32(k)))
    return float(loss_rows.mean()), d


def sgd_update(w, g, v, lr, momentum, weight_decay):
    """In place: v <- momentum * v - lr * (g + weight_decay * w);  w <- w + v  (one fused pass)."""
    if w.dtype not in C_TYPES:
        raise TypeError(f"sgd_update: the GPU kernels take float32 or float64 arrays, got {w.dtype}")
    for a, name in ((w, "the parameter w"), (v, "the velocity v")):
        if not a.flags.c_contiguous:
            raise ValueError(f"sgd_update: {name} must be C-contiguous (it is updated in place)")
    g = _like(g, w, "sgd_update", "the gradient g")
    v = _like(v, w, "sgd_update", "the velocity v")
    t = w.dtype.type
    _launch("sgd_momentum_update", w.dtype, w.size,
            (w, g, v, t(lr), t(momentum), t(weight_decay), _i64(w.size)))
    return w
