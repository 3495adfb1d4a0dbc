"""Pooling: max (with switches), average, global average. Forward and backward side by side.

Shapes: x (N, C, H, W) -> y (N, C, oh, ow).
    floor mode: oh = (H + pt + pb - kh) // sh + 1
    ceil mode : oh = ceil((H + pt + pb - kh) / sh) + 1, minus one if the last window would start
                in the bottom padding (Caffe and PyTorch agree on this rule).

Max pooling records the *switches*: for each output, the flat index of the winning input in its
H*W plane. Backward sends each output gradient to its switch; this is also exactly what the
DeconvNet does at a pooling layer, so the rules differ only at ReLU.

Ties: the first maximum in row-major window order wins, on CPU and GPU alike. At a tie the max is
not differentiable: a central difference gives 1/2 to each tied input (raised by eps it wins,
lowered it leaves the max to the others) where backward gives everything to the first, so gradient
checks move their inputs off ties (gradcheck.make_input).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .base import Layer, ShapeError, check_input
from .conv import _pair, normalise_padding, pad_nchw, under_offset
from scratchnet import kernels


def pool_output_size(h, w, kernel, stride, pads, ceil_mode):
    """(oh, ow) of pooling an h x w input; pads (top, bottom, left, right). Ceil mode rounds the
    window count up but drops a last window that would start in the bottom/right padding."""
    (kh, kw), (sh, sw) = kernel, stride
    t, b, l, r = pads

    def one(n, k, s, p0, p1):
        span = n + p0 + p1 - k
        out = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= n + p0:
            out -= 1
        return out

    return one(h, kh, sh, t, b), one(w, kw, sw, l, r)


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, name=None):
        super().__init__(name)
        who = type(self).__name__
        self.kernel = _pair(kernel_size, who, "kernel_size")
        self.stride = _pair(stride if stride is not None else kernel_size, who, "stride")
        self.padding = normalise_padding(padding, who, allow_same=False)
        self.ceil_mode = bool(ceil_mode)
        self._cache = None

    def spec(self):
        return dict(kernel_size=list(self.kernel), stride=list(self.stride),
                    padding=list(self.padding), ceil_mode=self.ceil_mode)

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        oh, ow = pool_output_size(h, w, self.kernel, self.stride, self.padding, self.ceil_mode)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self.label()}: input {h}x{w} is smaller than the {self.kernel[0]}x{self.kernel[1]} "
                             f"pooling window")
        return (n, c, oh, ow)


class MaxPool2d(_Pool2d):
    """Max pooling; keeps the switches (int32, N x C x oh x ow) for backward."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, name)
        (t, b, l, r), (kh, kw) = self.padding, self.kernel
        if max(t, b) >= kh or max(l, r) >= kw:
            # a window could then lie wholly in the padding: a max over nothing (-inf, and a switch that
            # points at no input)
            raise ValueError(f"MaxPool2d: padding {self.padding} (top, bottom, left, right) must be smaller than "
                             f"the {kh}x{kw} window (at most {kh - 1} rows, {kw - 1} columns)")

    def forward(self, x, train=False):
        check_input(self, x, 4)
        _, _, oh, ow = self.output_shape(x.shape)
        y, self._cache = kernels.maxpool_forward(x, self.kernel, self.stride, self.padding, (oh, ow))
        self._in_hw = x.shape[2:]
        return self.kept_output(y)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        return kernels.maxpool_backward(dy, self._cache, self._in_hw, self.kernel, self.stride,
                                        self.padding)


class AvgPool2d(_Pool2d):
    """Average pooling; padding counts as zeros in the average (count_include_pad, Caffe's choice)
    except beyond the padded border in ceil mode, where the window is clipped."""

    def forward(self, x, train=False):
        check_input(self, x, 4)
        xp = get_array_module(x)
        n, c, h, w = x.shape
        _, _, oh, ow = self.output_shape(x.shape)
        if kernels.on_gpu(x):       # one CUDA kernel each way (kernels/pool.cu), same sums as below
            self._cache = ("gpu", x.shape[2:])
            return self.kept_output(kernels.avgpool_forward(x, self.kernel, self.stride, self.padding, (oh, ow)))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        t, b, l, r = self.padding
        # extra bottom/right zeros so ceil-mode windows fit; they are excluded from the divisor
        hp = max(h + t + b, (oh - 1) * sh + kh)
        wp = max(w + l + r, (ow - 1) * sw + kw)
        xpad = pad_nchw(x, (t, hp - h - t, l, wp - w - l))
        y = xp.zeros((n, c, oh, ow), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                y += xpad[under_offset(i, j, self.stride, (oh, ow))]
        div = self._divisor(h, w, oh, ow, xp, x.dtype)
        self._cache = ("cpu", x.shape, (t, hp - h - t, l, wp - w - l), div)
        return self.kept_output(y / div)

    def _divisor(self, h, w, oh, ow, xp, dtype):
        """(oh, ow): each window's size inside the padded input (padding counts, the extra ceil-mode
        zeros past it do not), PyTorch's count_include_pad=True."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        t, b, l, r = self.padding
        ys = np.arange(oh) * sh
        xs = np.arange(ow) * sw
        ch = np.minimum(ys + kh, h + t + b) - ys
        cw = np.minimum(xs + kw, w + l + r) - xs
        return xp.asarray((ch[:, None] * cw[None, :]).astype(dtype))

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        if self._cache[0] == "gpu":
            return kernels.avgpool_backward(dy, self._cache[1], self.kernel, self.stride, self.padding)
        xp = get_array_module(dy)
        _, (n, c, h, w), pads, div = self._cache
        kh, kw = self.kernel
        oh, ow = dy.shape[2:]
        g = dy / div
        dxpad = xp.zeros((n, c, h + pads[0] + pads[1], w + pads[2] + pads[3]), dtype=dy.dtype)
        for i in range(kh):
            for j in range(kw):
                dxpad[under_offset(i, j, self.stride, (oh, ow))] += g
        return dxpad[:, :, pads[0]:pads[0] + h, pads[2]:pads[2] + w]


class GlobalAvgPool(Layer):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    _shape = None        # forward's input shape

    def output_shape(self, in_shape):
        if len(in_shape) != 4 or min(in_shape[2:]) < 1:
            raise ShapeError(f"{self.label()}: expected an input (N, C, H, W) of at least 1x1 pixels, got "
                             f"{tuple(in_shape)}")
        return tuple(in_shape[:2])

    def forward(self, x, train=False):
        check_input(self, x, 4)
        self.output_shape(x.shape)                  # the mean of 0 pixels would be NaN
        self._shape = x.shape
        return self.kept_output(x.mean(axis=(2, 3)))

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        xp = get_array_module(dy)
        n, c, h, w = self._shape
        return xp.broadcast_to((dy / (h * w))[:, :, None, None], self._shape).copy()


# ---------------------------------------------------------------------------------------------
# references for tests
# ---------------------------------------------------------------------------------------------
def maxpool_reference(x, kernel, stride, pads, ceil_mode):
    """NumPy max pooling from the definition; returns (y, switches) like the kernels (first max wins)."""
    n, c, h, w = x.shape
    oh, ow = pool_output_size(h, w, kernel, stride, pads, ceil_mode)
    (kh, kw), (sh, sw) = kernel, stride
    y = np.empty((n, c, oh, ow), x.dtype)
    s = np.empty((n, c, oh, ow), np.int32)
    for p in range(oh):
        for q in range(ow):
            y0, x0 = p * sh - pads[0], q * sw - pads[2]
            ya, yb, xa, xb = max(y0, 0), min(y0 + kh, h), max(x0, 0), min(x0 + kw, w)
            win = x[:, :, ya:yb, xa:xb].reshape(n, c, -1)
            k = win.argmax(axis=2)
            y[:, :, p, q] = np.take_along_axis(win, k[..., None], 2)[..., 0]
            s[:, :, p, q] = (ya + k // (xb - xa)) * w + xa + k % (xb - xa)
    return y, s


def maxpool_numpy(x, kernel, stride, out_hw):
    """Vectorised NumPy max pooling without padding (the 'NumPy version' the Numba kernel is benchmarked
    against): x (N, C, H, W) -> (y, k) both (N, C, oh, ow), k the argmax's index within the kh*kw
    window (not the H*W-plane switch the kernels return)."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    s = x.strides
    v = np.lib.stride_tricks.as_strided(x, (x.shape[0], x.shape[1], oh, ow, kh, kw),
                                        (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]))
    v = v.reshape(x.shape[0], x.shape[1], oh, ow, kh * kw)
    return v.max(axis=4), v.argmax(axis=4)


def global_avgpool_naive(x):
    """y[n, c] = sum over (i, j) of x[n, c, i, j] / (H W), pixel by pixel (for tests).  x (N, C, H, W)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c), dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            y += x[:, :, i, j]
    return y / (h * w)


def avgpool_naive(x, kernel, stride, pads, ceil_mode):
    """Average pooling from its definition, one window at a time (for tests): the window's sum over
    the input and the zero padding, divided by its size clipped to the padded border (ceil-mode
    windows that run past the bottom/right padding count only what lies within it)."""
    n, c, h, w = x.shape
    oh, ow = pool_output_size(h, w, kernel, stride, pads, ceil_mode)
    (kh, kw), (sh, sw) = kernel, stride
    t, b, l, r = pads
    y = np.zeros((n, c, oh, ow), x.dtype)
    for p in range(oh):
        for q in range(ow):
            y0, x0 = p * sh - t, q * sw - l                 # window corner in input coordinates
            y1, x1 = min(y0 + kh, h + b), min(x0 + kw, w + r)   # clipped to the padded border
            # the input rows/columns the window covers (none where it lies wholly in the padding: a
            # negative stop would wrap around)
            inside = x[:, :, max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)]
            y[:, :, p, q] = inside.sum(axis=(2, 3)) / ((y1 - y0) * (x1 - x0))
    return y

