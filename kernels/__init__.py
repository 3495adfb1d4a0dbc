"""Hand-written kernels, installed as ``scratchnet.kernels``.

The functions below are the only place where the CPU and GPU paths part: NumPy arrays go
to the Numba kernels in ``cpu_*.py``, CuPy arrays to the CUDA C kernels (``*.cu``) loaded by
``gpu.py``. Layer code calls these and never asks which device it is on.
"""
from __future__ import annotations

import math

import numpy as np

from . import cpu_im2col, cpu_lrn, cpu_pool, cpu_relu

_gpu_module = None


def _gpu():
    global _gpu_module
    if _gpu_module is None:
        from . import gpu as _g
        _gpu_module = _g
    return _gpu_module


def _on_gpu(a) -> bool:
    return type(a).__module__.startswith("cupy")


def relu_forward(x, upper=math.inf):
    """y = clip(x, 0, upper); any shape. upper=inf: ReLU, upper=6: ReLU6."""
    if _on_gpu(x):
        return _gpu().relu_forward(x, upper)
    return cpu_relu.relu_fwd(np.ascontiguousarray(x), x.dtype.type(upper))


def relu_backward(dy, y, rule_code: int, upper=math.inf):
    """dx from dy and the forward output y under rule 0 gradient / 1 deconvnet / 2 guided."""
    if _on_gpu(dy):
        return _gpu().relu_backward(dy, y, rule_code, upper)
    return cpu_relu.relu_bwd(np.ascontiguousarray(dy), np.ascontiguousarray(y), int(rule_code),
                             dy.dtype.type(upper))


def maxpool_forward(x, kernel, stride, pads, out_hw):
    """x (N,C,H,W) -> (y (N,C,oh,ow), switches int32 (N,C,oh,ow), flat index in the H*W plane).

    kernel, stride: (kh, kw), (sh, sw); pads (top, bottom, left, right); out_hw (oh, ow)."""
    if _on_gpu(x):
        return _gpu().maxpool_forward(x, kernel, stride, pads, out_hw)
    (kh, kw), (sh, sw) = kernel, stride
    return cpu_pool.maxpool_fwd(np.ascontiguousarray(x), kh, kw, sh, sw, pads[0], pads[2], *out_hw)


def maxpool_backward(dy, switches, in_hw):
    """dy, switches (N,C,oh,ow) -> dx (N,C,H,W): each gradient routed to its switch."""
    if _on_gpu(dy):
        return _gpu().maxpool_backward(dy, switches, in_hw)
    return cpu_pool.maxpool_bwd(np.ascontiguousarray(dy), switches, *in_hw)


def lrn_forward(x, size, alpha, beta, k):
    """Cross-channel LRN: x (N,C,H,W) -> (y, s) with s = k + alpha * window sum of x**2."""
    if _on_gpu(x):
        return _gpu().lrn_forward(x, size, alpha, beta, k)
    t = x.dtype.type
    return cpu_lrn.lrn_fwd(np.ascontiguousarray(x), size, t(alpha), t(beta), t(k))


def lrn_backward(dy, x, y, s, size, alpha, beta):
    """dx of LRN from dy and the forward's x, y, s (all N,C,H,W)."""
    if _on_gpu(dy):
        return _gpu().lrn_backward(dy, x, y, s, size, alpha, beta)
    t = dy.dtype.type
    return cpu_lrn.lrn_bwd(np.ascontiguousarray(dy), x, y, s, size, t(alpha), t(beta))


def im2col(xpad, kernel, stride, out_hw):
    """xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*ow): the whole batch as one GEMM operand."""
    if _on_gpu(xpad):
        return _gpu().im2col(xpad, kernel, stride, out_hw)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    return cpu_im2col.im2col(np.ascontiguousarray(xpad), kh, kw, sh, sw, oh, ow)


def col2im(cols, padded_shape, kernel, stride, out_hw):
    """cols (C*kh*kw, N*oh*ow) -> (N, C, Hp, Wp), overlapping contributions summed (no races)."""
    if _on_gpu(cols):
        return _gpu().col2im(cols, padded_shape, kernel, stride, out_hw)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    return cpu_im2col.col2im(np.ascontiguousarray(cols), *padded_shape, kh, kw, sh, sw, oh, ow)
