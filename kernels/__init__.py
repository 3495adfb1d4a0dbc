"""Hand-written kernels, installed as ``scratchnet.kernels``.

The functions below are where the CPU and GPU paths part: NumPy arrays go to the Numba kernels
in ``cpu_*.py``, CuPy arrays to the CUDA C kernels (``*.cu``) loaded by ``gpu.py``. Layer code
calls these; three places ask which device they are on, because only one device has a kernel for
them: AvgPool2d and the loss (one fused CUDA kernel each; NumPy on the CPU), through ``on_gpu``,
and Conv2d's "wide" im2col (a Numba kernel, CPU only).

On both devices the caller makes a kernel's outputs and the kernel writes into them. On the CPU that
caller is NumPy, here (and the loader, for kernels/cpu_augment.py's batches), rather than Numba
inside the kernel, for speed: NumPy asks Linux for transparent huge pages for an array of 4 MiB or
more (madvise), Numba's allocator does not, and a fresh output is paid for page by page on first
touch. In 4 KiB pages that cost more than the kernel's own work: ReLU forward of SqueezeNet's conv1
output at batch 16 (76 MB) took 29.6 ms writing into an array from Numba's allocator and 6.4 ms into
one from NumPy's (``python bench/bench_alloc.py``). Kernels that add into their output (col2im, max-
pool backward, depthwise forward and input gradient) are handed zeros. ``SCRATCHNET_POISON=1`` fills
every other output with NaN (integer outputs with -1) before the kernel runs, on the CPU as on the
GPU, so that an element a kernel forgets to write cannot pass a test (tests/test_layers.py runs the
gradient-check grid that way). kernels/cpu_localise.py's small per-photo arrays are still made
inside Numba.
"""
from __future__ import annotations

import math
import operator
import os

import numpy as np

from . import cpu_augment, cpu_depthwise, cpu_im2col, cpu_lrn, cpu_pool, cpu_relu

_gpu_module = None


def _empty(shape, dtype):
    """A NumPy array for a kernel to fill: uninitialised, or NaN (-1 for integers) when SCRATCHNET_POISON=1."""
    dtype = np.dtype(dtype)
    if os.environ.get("SCRATCHNET_POISON") == "1":
        return np.full(shape, np.nan if dtype.kind == "f" else -1, dtype)
    return np.empty(shape, dtype)


def _gpu():
    global _gpu_module
    if _gpu_module is None:
        from . import gpu as _g
        _gpu_module = _g
    return _gpu_module


def _on_gpu(a) -> bool:
    return type(a).__module__.startswith("cupy")


def on_gpu(a) -> bool:
    """True for a CuPy array: the few layers with a GPU-only kernel (AvgPool2d, the loss) ask this."""
    return _on_gpu(a)


def relu_forward(x, upper=math.inf):
    """y = clip(x, 0, upper); any shape. upper=inf: ReLU, upper=6: ReLU6."""
    if _on_gpu(x):
        return _gpu().relu_forward(x, upper)
    x = np.ascontiguousarray(x)
    y = _empty(x.shape, x.dtype)
    cpu_relu.relu_fwd(x.reshape(-1), x.dtype.type(upper), y.reshape(-1))
    return y


def relu_backward(dy, y, rule_code: int, upper=math.inf):
    """dx from dy and the forward output y under rule 0 gradient / 1 deconvnet / 2 guided; one
    kernel per rule (relu_bwd_gradient, relu_bwd_deconvnet, relu_bwd_guided)."""
    rule_code = _rule_code(rule_code)
    if _on_gpu(dy):
        return _gpu().relu_backward(dy, y, rule_code, upper)
    dy = np.ascontiguousarray(dy)
    dx = _empty(dy.shape, dy.dtype)
    cpu_relu.RELU_BWD[rule_code](dy.reshape(-1), np.ascontiguousarray(y).reshape(-1), dy.dtype.type(upper),
                                 dx.reshape(-1))
    return dx


def _rule_code(code) -> int:
    """code as a plain int 0, 1 or 2 (an integer type: not a bool, a float or a string), else a ValueError."""
    if not isinstance(code, (bool, np.bool_)):
        try:
            if operator.index(code) in (0, 1, 2):
                return operator.index(code)
        except TypeError:
            pass
    raise ValueError(f"relu_backward: rule code must be 0 (gradient), 1 (deconvnet) or 2 (guided), got {code!r}")


def maxpool_forward(x, kernel, stride, pads, out_hw):
    """x (N,C,H,W) -> (y (N,C,oh,ow), switches int32 (N,C,oh,ow), flat index in the H*W plane).

    kernel, stride: (kh, kw), (sh, sw); pads (top, bottom, left, right); out_hw (oh, ow)."""
    if _on_gpu(x):
        return _gpu().maxpool_forward(x, kernel, stride, pads, out_hw)
    (kh, kw), (sh, sw) = kernel, stride
    shape = (*x.shape[:2], *out_hw)
    y, switches = _empty(shape, x.dtype), _empty(shape, np.int32)
    cpu_pool.maxpool_fwd(np.ascontiguousarray(x), kh, kw, sh, sw, pads[0], pads[2], y, switches)
    return y, switches


def maxpool_backward(dy, switches, in_hw, kernel=None, stride=None, pads=None):
    """dy, switches (N,C,oh,ow) -> dx (N,C,H,W): each gradient routed to its switch.

    The GPU kernel is a gather over the windows holding each input, so it needs the geometry
    (kernel, stride, pads as in maxpool_forward); the CPU scatter does not use it."""
    if _on_gpu(dy):
        return _gpu().maxpool_backward(dy, switches, in_hw, kernel, stride, pads)
    n, c = dy.shape[:2]
    dx = np.zeros((n, c, in_hw[0] * in_hw[1]), dy.dtype)
    cpu_pool.maxpool_bwd(np.ascontiguousarray(dy), switches, dx)
    return dx.reshape(n, c, *in_hw)


def _check_lrn_size(size):
    # backward sums over the channels whose window holds c; that is window(c) itself only when the
    # window is symmetric, i.e. size is odd (LocalResponseNorm refuses even sizes too)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN kernels: size must be a positive odd number, got {size}")


def lrn_forward(x, size, alpha, beta, k):
    """Cross-channel LRN: x (N,C,H,W) -> (y, s) with s = k + alpha * window sum of x**2; size odd."""
    _check_lrn_size(size)
    if _on_gpu(x):
        return _gpu().lrn_forward(x, size, alpha, beta, k)
    t = x.dtype.type
    x = np.ascontiguousarray(x)
    y, s = _empty(x.shape, x.dtype), _empty(x.shape, x.dtype)
    cpu_lrn.lrn_fwd(*_planes(x), size, t(alpha), t(beta), t(k), *_planes(y, s))
    return y, s


def lrn_backward(dy, x, y, s, size, alpha, beta):
    """dx of LRN from dy and the forward's x, y, s (all N,C,H,W); size odd (see _check_lrn_size)."""
    _check_lrn_size(size)
    if _on_gpu(dy):
        return _gpu().lrn_backward(dy, x, y, s, size, alpha, beta)
    t = dy.dtype.type
    dy = np.ascontiguousarray(dy)
    dx = _empty(dy.shape, dy.dtype)
    cpu_lrn.lrn_bwd(*_planes(dy, x, y, s), size, t(alpha), t(beta), *_planes(dx))
    return dx


def _planes(*arrays):
    """(N, C, H, W) arrays as contiguous (N, C, H*W) ones (views where they are contiguous already)."""
    return [np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], a.shape[2] * a.shape[3]) for a in arrays]


def im2col(xpad, kernel, stride, out_hw):
    """xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*ow): the whole batch as one GEMM operand."""
    if _on_gpu(xpad):
        return _gpu().im2col(xpad, kernel, stride, out_hw)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    n, c = xpad.shape[:2]
    cols = _empty((c * kh * kw, n * oh * ow), xpad.dtype)
    cpu_im2col.im2col(np.ascontiguousarray(xpad), kh, kw, sh, sw, oh, ow, cols)
    return cols


def col2im(cols, padded_shape, kernel, stride, out_hw):
    """cols (C*kh*kw, N*oh*ow) -> (N, C, Hp, Wp), overlapping contributions summed (no races)."""
    if _on_gpu(cols):
        return _gpu().col2im(cols, padded_shape, kernel, stride, out_hw)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    dxpad = np.zeros(padded_shape, cols.dtype)
    cpu_im2col.col2im(np.ascontiguousarray(cols), kh, kw, sh, sw, oh, ow, dxpad)
    return dxpad


def weight_grad(dy2, cols):
    """dW = dy2 @ cols.T: dy2 (O, L), cols (K, L) -> (O, K), a convolution's weight gradient summed over
    L = N*oh*ow columns. On the GPU a long sum with a small result is cut into slices, one
    strided-batched GEMM (gpu.weight_grad). On the CPU one BLAS GEMM, asked for as (cols @ dy2.T).T:
    the same products summed in the same order (the same bits), which OpenBLAS ran faster. `python
    bench/bench_weight_grad.py` (2 cores, OpenBLAS SkylakeX kernels): 0.62-0.85x the time of dy2 @
    cols.T for the 64-pixel network's layers at batch 128 and for conv1 at 224 px on an idle machine
    (1.00-1.08x for conv2-5 at 224 px, batch 8, whose sums are short: under a millisecond each), and
    mostly 0.2-0.8x with other work on the cores."""
    if _on_gpu(dy2):
        return _gpu().weight_grad(dy2, cols)
    return np.ascontiguousarray(np.matmul(cols, dy2.T).T)


def rows_to_nchw(rows, n, out_hw, bias=None):
    """A convolution's GEMM output, rows (O, N*oh*Wr), -> y (N, O, oh, ow) plus bias (O,) when given: the
    copy to NCHW and the bias add in one pass. Wr >= ow is the rows' length over N*oh: ow, or the
    padded width of the wide layout, whose columns q >= ow are dropped."""
    if _on_gpu(rows):
        return _gpu().rows_to_nchw(rows, n, out_hw, bias)
    o, wr, oh, ow = _rows_geometry("rows_to_nchw", rows, n, out_hw, bias)
    y = _empty((n, o, oh, ow), rows.dtype)
    b = np.empty(0, rows.dtype) if bias is None else np.ascontiguousarray(bias, dtype=rows.dtype)
    cpu_im2col.rows_to_nchw(np.ascontiguousarray(rows).reshape(o, n, oh, wr), b, bias is not None, y)
    return y


def nchw_to_rows(dy, row_width=None):
    """dy (N, O, oh, ow) -> rows (O, N*oh*Wr), the layout of the GEMM's output, for the backward's GEMMs;
    Wr = row_width (default ow) >= ow, zeros in the columns q >= ow."""
    if _on_gpu(dy):
        return _gpu().nchw_to_rows(dy, row_width)
    if dy.ndim != 4:
        raise ValueError(f"nchw_to_rows: expected an (N, C, H, W) array, got shape {tuple(dy.shape)}")
    n, o, oh, ow = dy.shape
    wr = _row_width(ow, row_width)
    rows = _empty((o, n, oh, wr), dy.dtype)
    cpu_im2col.nchw_to_rows(np.ascontiguousarray(dy), rows)
    return rows.reshape(o, n * oh * wr)


def _row_width(ow, row_width):
    """nchw_to_rows's Wr: row_width (default ow), or a ValueError when it cannot hold ow columns."""
    wr = ow if row_width is None else int(row_width)
    if wr < ow:
        raise ValueError(f"nchw_to_rows: rows of width {wr} cannot hold {ow} output columns")
    return wr


def _rows_geometry(who, rows, n, out_hw, bias):
    """(O, Wr, oh, ow) of rows (O, N*oh*Wr) for an (N, O, oh, ow) output, or a ValueError saying what
    does not fit."""
    oh, ow = (int(v) for v in out_hw)
    wr = rows.shape[1] // (n * oh) if rows.ndim == 2 and n * oh > 0 else ow     # an empty batch: rows (O, 0)
    if rows.ndim != 2 or rows.shape[1] != n * oh * wr or wr < ow:
        raise ValueError(f"{who}: expected rows (O, N*oh*Wr) with N={n}, oh={oh} and Wr >= ow={ow}, "
                         f"got shape {tuple(rows.shape)}")
    o = rows.shape[0]
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"{who}: expected a bias of shape ({o},), got {tuple(bias.shape)}")
    return o, wr, oh, ow


def im2col_wide(xpad, kernel, out_h):
    """Stride 1 only, CPU only: xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*Wp), each piece one copy of
    oh*Wp values (the output is computed on the padded width; columns q >= ow are junk)."""
    (kh, kw) = kernel
    n, c, _, wp = xpad.shape
    cols = _empty((c * kh * kw, n * out_h * wp), xpad.dtype)
    cpu_im2col.im2col_wide(np.ascontiguousarray(xpad), kh, kw, out_h, cols)
    return cols


def col2im_wide(cols, padded_shape, kernel, out_h):
    """Inverse of im2col_wide: cols (C*kh*kw, N*oh*Wp), junk columns 0 -> (N, C, Hp, Wp), overlaps summed."""
    (kh, kw) = kernel
    n, c, hp, wp = padded_shape
    dxpad = np.zeros((n, c, hp * wp), cols.dtype)
    cpu_im2col.col2im_wide(np.ascontiguousarray(cols), kh, kw, out_h, wp, dxpad)
    return dxpad.reshape(padded_shape)


def depthwise_forward(xpad, W, stride, out_hw):
    """Depthwise convolution xpad (N, C, Hp, Wp), W (C, 1, kh, kw) -> y (N, C, oh, ow).

    Numba kernel on the CPU; on the GPU, the array code of layers.conv._depthwise_forward."""
    if _on_gpu(xpad):
        from scratchnet.layers.conv import _depthwise_forward
        return _depthwise_forward(xpad, W, stride, out_hw)
    (sh, sw), (oh, ow) = stride, out_hw
    y = np.zeros((*xpad.shape[:2], oh, ow), xpad.dtype)
    cpu_depthwise.dw_fwd(np.ascontiguousarray(xpad), np.ascontiguousarray(W), sh, sw, y)
    return y


def depthwise_backward(dy, xpad, W, stride, param_grads, input_grad):
    """(dW (C, 1, kh, kw) or None, dxpad (N, C, Hp, Wp) or None) of depthwise_forward, from dy (N, C, oh, ow)."""
    if _on_gpu(dy):
        from scratchnet.layers.conv import _depthwise_backward
        return _depthwise_backward(dy, xpad, W, stride, param_grads, input_grad)
    sh, sw = stride
    dy = np.ascontiguousarray(dy)
    dW = dxpad = None
    if param_grads:
        dW = _empty(W.shape, dy.dtype)                # each element written once, not added into
        cpu_depthwise.dw_bwd_weight(dy, np.ascontiguousarray(xpad), sh, sw, dW)
    if input_grad:
        dxpad = np.zeros(xpad.shape, dy.dtype)
        cpu_depthwise.dw_bwd_input(dy, np.ascontiguousarray(W), sh, sw, dxpad)
    return dW, dxpad


def avgpool_forward(x, kernel, stride, pads, out_hw):
    """GPU only (CuPy x): average pooling as AvgPool2d computes it; the CPU path is that layer's array code."""
    if not _on_gpu(x):
        raise TypeError("kernels.avgpool_forward takes CuPy arrays; on the CPU, AvgPool2d's array code runs")
    return _gpu().avgpool_forward(x, kernel, stride, pads, out_hw)


def avgpool_backward(dy, in_hw, kernel, stride, pads):
    """GPU only (CuPy dy): the gradient of avgpool_forward, as a gather."""
    if not _on_gpu(dy):
        raise TypeError("kernels.avgpool_backward takes CuPy arrays; on the CPU, AvgPool2d's array code runs")
    return _gpu().avgpool_backward(dy, in_hw, kernel, stride, pads)


def softmax_xent(scores, labels):
    """(mean softmax cross-entropy, d loss / d scores (N, K)) for scores (N, K), labels (N,) in [0, K).

    One fused kernel on the GPU; on the CPU, the array code of layers.loss.softmax_cross_entropy."""
    if _on_gpu(scores):
        return _gpu().softmax_xent(scores, labels)
    from scratchnet.layers.loss import softmax_cross_entropy
    return softmax_cross_entropy(scores, labels)


def sgd_update(w, g, v, lr, momentum, weight_decay):
    """In place: v <- momentum * v - lr * (g + weight_decay * w);  w <- w + v  (scratchnet.train.sgd's step).

    One fused kernel on the GPU; on the CPU, the same NumPy operations as SGD.step, in its order."""
    if _on_gpu(w):
        return _gpu().sgd_update(w, g, v, lr, momentum, weight_decay)
    update = g + weight_decay * w if weight_decay else g
    v *= momentum
    v -= lr * update
    w += v
    return w
