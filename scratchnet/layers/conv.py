"""2-D convolution: im2col + one batched GEMM, forward and backward side by side.

Shapes: x (N, C, H, W); W (O, C // groups, kh, kw); b (O,); y (N, O, oh, ow).

    oh = (H + pad_top + pad_bottom - kh) // sh + 1        (likewise ow)

im2col lays every receptive field of the whole batch out as a column: cols (C*kh*kw, N*oh*ow),
so the convolution of the batch is ONE GEMM (it stays efficient for small 13x13 or 4x4 maps):

    y   = W.reshape(O, -1) @ cols             (O, N*oh*ow) rows, then copied to (N, O, oh, ow) with
                                               the bias added on the way (kernels.rows_to_nchw)

Backward is the same algebra transposed, again one GEMM each. With dy laid out as the rows of y,
(O, N*oh*ow) (kernels.nchw_to_rows), y = W @ cols gives

    dW    = dy @ cols.T                        (O, C/G*kh*kw), one GEMM per group G
                                               (kernels.weight_grad: on the CPU asked for as
                                               (cols @ dy.T).T, which OpenBLAS runs faster; on the GPU
                                               a small dW over a long N*oh*ow is summed in slices)
    dcols = W.T @ dy                           (C*kh*kw, N*oh*ow), then col2im adds the columns back
                                               onto the image (an input pixel in several windows
                                               gets the sum of their gradients).

col2im never races: the Numba kernel gives each thread whole (n, c) planes, and the array-code
reference adds one kernel offset (i, j) at a time. Grouped convolution splits C and O into
``groups`` blocks (a batched matmul over groups). Two special cases skip im2col entirely:
1x1 stride-1 convolution without padding (the image is already the column matrix: one GEMM per
image), and
depthwise convolution (one input and one output channel per group: kh*kw multiply-adds of
shifted views; on the CPU the Numba kernels of kernels/cpu_depthwise.py, tested against
``_depthwise_forward`` / ``_depthwise_backward`` below).

``conv2d_naive`` is the reference, straight from the definition: loops over (n, o, p, q), and for
each output the sum over (c, i, j) as one product of the receptive field and W[o].
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..checks import check_int, is_int
from .base import Layer, ShapeError, check_input
from scratchnet import kernels


# ---------------------------------------------------------------------------------------------
# padding and output size
# ---------------------------------------------------------------------------------------------
def _seq(v) -> tuple:
    """A tuple, list or 1-D array as a tuple of its items; () for anything else."""
    if isinstance(v, np.ndarray):
        return tuple(v.tolist()) if v.ndim == 1 else ()
    return tuple(v) if isinstance(v, (tuple, list)) else ()


def _pair(v, who="", what="size", low=1):
    """int | (h, w) -> (h, w), each an integer >= low, or a ValueError naming ``who`` and ``what``."""
    pair = (v, v) if is_int(v) else _seq(v)
    if len(pair) != 2 or not all(is_int(a) and a >= low for a in pair):
        raise ValueError(f"{who}: {what} must be an integer >= {low} or a pair of them, got {v!r}")
    return tuple(int(a) for a in pair)


def normalise_padding(padding, who="padding", allow_same=True):
    """int | (ph, pw) | (top, bottom, left, right) | "same" (where allowed) -> 4-tuple of integers >= 0,
    or "same"; else a ValueError naming ``who`` and what it takes."""
    same = isinstance(padding, str) and padding.lower() == "same"
    if same and allow_same:
        return "same"
    pads = (padding,) * 4 if is_int(padding) else _seq(padding)
    if len(pads) == 2:
        pads = (pads[0], pads[0], pads[1], pads[1])
    if len(pads) != 4 or not all(is_int(p) and p >= 0 for p in pads):
        takes = "an integer >= 0, (ph, pw) or (top, bottom, left, right)" + (" or 'same'" if allow_same else "")
        raise ValueError(f"{who}: padding must be {takes}, got {padding!r}"
                         + ("" if allow_same or not same else " (pooling takes explicit padding)"))
    return tuple(int(p) for p in pads)


def same_padding(h, w, kernel, stride):
    """TensorFlow 'SAME': output ceil(H / s); the odd pixel of padding goes to the bottom/right."""
    (kh, kw), (sh, sw) = kernel, stride
    ph = max((math.ceil(h / sh) - 1) * sh + kh - h, 0)
    pw = max((math.ceil(w / sw) - 1) * sw + kw - w, 0)
    return (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)


def conv_output_size(h, w, kernel, stride, pads):
    """(oh, ow) of a convolution of an h x w input; pads (top, bottom, left, right)."""
    (kh, kw), (sh, sw) = kernel, stride
    oh = (h + pads[0] + pads[1] - kh) // sh + 1
    ow = (w + pads[2] + pads[3] - kw) // sw + 1
    return oh, ow


def pad_nchw(x, pads, value=0.0):
    """Zero-pad (or pad with ``value``) the spatial dims of an NCHW array by (top, bottom, left, right)."""
    if not any(pads):
        return x
    xp = get_array_module(x)
    t, b, l, r = pads
    return xp.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), mode="constant", constant_values=value)


# ---------------------------------------------------------------------------------------------
# im2col / col2im: the kernels (scratchnet.kernels) and their array-code references
# ---------------------------------------------------------------------------------------------
def im2col_reference(xpad, kernel, stride, out_hw):
    """Array-code im2col with stride tricks: xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*ow),
    row (c*kh + i)*kw + j, column (n*oh + p)*ow + q — the layout of ``kernels.im2col``."""
    xp = get_array_module(xpad)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    n, c = xpad.shape[:2]
    xpad = xp.ascontiguousarray(xpad)
    s = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, shape=(c, kh, kw, n, oh, ow), strides=(s[1], s[2], s[3], s[0], s[2] * sh, s[3] * sw))
    return view.reshape(c * kh * kw, n * oh * ow)


def under_offset(i, j, stride, out_hw):
    """The index, into a padded input (..., Hp, Wp), of the pixel each output (p, q) sees at kernel offset
    (i, j): xpad[..., p*sh + i, q*sw + j] for all p < oh, q < ow, as a strided view (oh, ow)."""
    (sh, sw), (oh, ow) = stride, out_hw
    return (Ellipsis, slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def col2im_reference(cols, padded_shape, kernel, stride, out_hw):
    """Inverse scatter of im2col in array code: one strided add per kernel offset (i, j); within one
    add the targets are distinct, so no atomics are needed on any backend."""
    xp = get_array_module(cols)
    (kh, kw), (oh, ow) = kernel, out_hw
    n, c, hp, wp = padded_shape
    c6 = cols.reshape(c, kh, kw, n, oh, ow)
    dx = xp.zeros((n, c, hp, wp), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[under_offset(i, j, stride, out_hw)] += c6[:, i, j].transpose(1, 0, 2, 3)
    return dx


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------
class Conv2d(Layer):
    """Convolution with stride, zero padding (int, (ph, pw), (t, b, l, r) or TF "same"), groups, bias.

    x (N, C, H, W) -> y (N, O, oh, ow);  W (O, C // groups, kh, kw);  b (O,), all zero until
    ``init_params(rng)`` or a load. Keeps for backward: the im2col columns (what dW needs) and the padded
    input shape; on the special paths the padded input (depthwise) or the input itself (1x1, stride 1,
    no padding). The columns are kept even when backward will not ask for dW (saliency): forward cannot
    know, and recomputing them costs a second im2col per layer per step, while keeping them costs
    memory only, kh*kw/(sh*sw) times the input's (12x at the paper network's conv1).

    ``im2col_mode``: "auto" (default), "plain" or "wide". Stride-1 convolutions on the CPU can use
    "wide" columns (kernels/cpu_im2col.py: one contiguous copy per image and kernel offset, the output
    computed on the padded width and cropped); "auto" takes them where the extra GEMM columns cost less
    than the copies saved (see ``_wide_pays``). Both give the same result to float rounding (tests).
    """

    im2col_mode = "auto"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, name=None, dtype=np.float32):
        super().__init__(name)
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            check_int("Conv2d", what, v, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel, self.stride = _pair(kernel_size, "Conv2d", "kernel_size"), _pair(stride, "Conv2d", "stride")
        self.padding = normalise_padding(padding, "Conv2d")
        self.has_bias = bool(bias)
        kh, kw = self.kernel
        self.params["W"] = np.zeros((out_channels, in_channels // groups, kh, kw), dtype)
        if bias:
            self.params["b"] = np.zeros((out_channels,), dtype)
        self._cache = None

    # -- helpers -------------------------------------------------------------------------
    @property
    def depthwise(self):
        return self.groups == self.in_channels == self.out_channels and self.groups > 1

    def pads_for(self, h, w):
        return same_padding(h, w, self.kernel, self.stride) if self.padding == "same" else self.padding

    def spec(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel), stride=list(self.stride),
                    padding=self.padding if self.padding == "same" else list(self.padding),
                    groups=self.groups, bias=self.has_bias)

    def init_params(self, rng, scheme="he", std=None):
        """He (sqrt(2 / fan_in)) or Gaussian(std) weights, zero bias."""
        W = self.params["W"]
        fan_in = W[0].size
        s = std if scheme == "gaussian" else math.sqrt(2.0 / fan_in)
        self.params["W"] = (rng.standard_normal(W.shape) * s).astype(W.dtype)
        if self.has_bias:
            self.params["b"] = np.zeros_like(self.params["b"])

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        if c != self.in_channels:
            raise ShapeError(f"{self.label()}: expected {self.in_channels} input channels, got {c}")
        pads = self.pads_for(h, w)
        oh, ow = conv_output_size(h, w, self.kernel, self.stride, pads)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self.label()}: input {h}x{w} is too small for a {self.kernel[0]}x{self.kernel[1]} "
                             f"kernel with padding {pads} (output would be {oh}x{ow})")
        return (n, self.out_channels, oh, ow)

    # -- forward / backward --------------------------------------------------------------
    def forward(self, x, train=False):
        check_input(self, x, 4, self.in_channels, self.params["W"])
        xp = get_array_module(x)
        n, c, h, w = x.shape
        _, o, oh, ow = self.output_shape(x.shape)
        pads = self.pads_for(h, w)
        W, g = self.params["W"], self.groups
        b = self.params["b"] if self.has_bias else None
        if self.depthwise and W.shape[1] == 1:
            xpad = pad_nchw(x, pads)
            y = kernels.depthwise_forward(xpad, W, self.stride, (oh, ow))
            self._cache = ("depthwise", xpad, pads)
        elif self.pointwise and not any(pads):
            # 1x1 stride 1: the image already is the column matrix, one GEMM per image, no copies
            x3 = x.reshape(n, g, c // g, h * w)
            y = xp.matmul(W.reshape(g, o // g, c // g), x3)                   # (N, G, O/G, HW)
            self._cache = ("pointwise", x3, None)
        else:
            xpad = pad_nchw(x, pads)
            if self._use_wide(x, pads, o, ow):
                cols = kernels.im2col_wide(xpad, self.kernel, oh)             # (K, N*oh*Wp): Wr = Wp
                self._cache = ("wide", cols, xpad.shape, pads)
            else:
                cols = kernels.im2col(xpad, self.kernel, self.stride, (oh, ow))  # (K, N*oh*ow): Wr = ow
                self._cache = ("gemm", cols, xpad.shape, pads)
            k, cw = cols.shape                                                # (no -1 in reshapes: N may be 0)
            rows = _grouped_matmul(W.reshape(g, o // g, -1), cols.reshape(g, k // g, cw))  # (G, O/G, N*oh*Wr)
            # to (N, O, oh, ow) with the bias added, one pass (the wide layout's junk columns dropped)
            return self.kept_output(kernels.rows_to_nchw(rows.reshape(o, cw), n, (oh, ow), b))
        y = y.reshape(n, o, oh, ow)
        if b is not None:
            y += b.reshape(1, o, 1, 1)
        return self.kept_output(y)

    def _use_wide(self, x, pads, o, ow):
        # the wide columns are a CPU kernel: asked as the kernels' dispatch asks (tests/test_gpu.py's
        # emulated device sends NumPy arrays to the GPU kernels; it ran the wide path before)
        if self.stride != (1, 1) or self.im2col_mode == "plain" or kernels.on_gpu(x):
            return False
        return self.im2col_mode == "wide" or _wide_pays(x.shape[3] + pads[2] + pads[3], ow, o // self.groups)

    @property
    def pointwise(self):
        return self.kernel == (1, 1) and self.stride == (1, 1)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        kind = self._cache[0]
        xp = get_array_module(dy)
        n, o, oh, ow = dy.shape
        W, g = self.params["W"], self.groups
        Wg = W.reshape(g, o // g, -1)                                          # (G, O/G, K/G)
        if param_grads and self.has_bias:
            self.grads["b"] = dy.sum(axis=(0, 2, 3))
        if kind == "depthwise":
            _, xpad, pads = self._cache
            dW, dxpad = kernels.depthwise_backward(dy, xpad, W, self.stride, param_grads, input_grad)
            if param_grads:
                self.grads["W"] = dW
            return _unpad(dxpad, pads) if input_grad else None
        if kind == "pointwise":
            _, x3, _ = self._cache                                            # (N, G, C/G, HW)
            dy4 = dy.reshape(n, g, o // g, oh * ow)
            if param_grads:
                self.grads["W"] = xp.matmul(dy4, x3.transpose(0, 1, 3, 2)).sum(axis=0).reshape(W.shape)
            if not input_grad:
                return None
            return xp.matmul(Wg.transpose(0, 2, 1), dy4).reshape(n, self.in_channels, oh, ow)
        _, cols, padded_shape, pads = self._cache
        k = cols.shape[0]                                                      # C*kh*kw (reshapes name it: N may be 0)
        wr = padded_shape[3] if kind == "wide" else ow                         # a row's width: Wp wide, ow plain
        # dy laid out as the rows of y (the wide layout's junk columns get 0); dW = dy @ cols.T, one GEMM a group
        dy2 = kernels.nchw_to_rows(dy, wr).reshape(g, o // g, n * oh * wr)
        if param_grads:
            dW = (kernels.weight_grad(dy2[0], cols) if g == 1
                  else _grouped_matmul(dy2, cols.reshape(g, k // g, n * oh * wr), trans_b=True))
            self.grads["W"] = dW.reshape(W.shape)
        if not input_grad:
            return None
        dcols = _grouped_matmul(Wg, dy2, trans_a=True).reshape(k, n * oh * wr)  # W.T @ dy, (K, N*oh*Wr)
        if kind == "wide":
            dxpad = kernels.col2im_wide(dcols, padded_shape, self.kernel, oh)
        else:
            dxpad = kernels.col2im(dcols, padded_shape, self.kernel, self.stride, (oh, ow))
        return _unpad(dxpad, pads)


def _wide_pays(wp, ow, out_per_group):
    """Whether "wide" columns beat plain im2col for a stride-1 layer: they add (Wp - ow) / ow more GEMM
    columns, which costs in proportion to the output channels, and save a copy that does not depend on
    them. Measured with bench/bench_im2col.py on the 2-core dev machine ((Wp/ow - 1) * O/G "extra output
    channels" -> wide/plain time of a training step): 2.3 -> 0.81, 16 -> 0.86-0.94, 19 -> 0.92,
    32 -> 1.06-1.13, 39 -> 1.01-1.08, 64 -> 1.13. Wide up to 24."""
    return (wp - ow) / ow * out_per_group <= 24


def _grouped_matmul(a, b, trans_a=False, trans_b=False):
    """Per-group GEMM of (G, m, k) and (G, k, n) stacks, with optional transposes.

    With one group this is a plain 2-D GEMM, where BLAS applies the transpose itself; a transposed
    3-D operand can make the array library copy it first (the whole im2col buffer, for dW)."""
    xp = get_array_module(a)
    if a.shape[0] == 1:
        a2, b2 = a[0], b[0]
        return xp.matmul(a2.T if trans_a else a2, b2.T if trans_b else b2)[None]
    return xp.matmul(a.transpose(0, 2, 1) if trans_a else a, b.transpose(0, 2, 1) if trans_b else b)


def _unpad(xpad, pads):
    """(N, C, Hp, Wp) -> the (N, C, H, W) view inside pads (top, bottom, left, right): pad_nchw undone."""
    t, b, l, r = pads
    h, w = xpad.shape[2], xpad.shape[3]
    return xpad[:, :, t:h - b, l:w - r]


def _depthwise_forward(xpad, W, stride, out_hw):
    """y[n, c] = sum_ij W[c, 0, i, j] * xpad[n, c, i::sh, j::sw]  (kh*kw shifted multiply-adds)."""
    xp = get_array_module(xpad)
    oh, ow = out_hw
    n, c = xpad.shape[:2]
    kh, kw = W.shape[2:]
    y = xp.zeros((n, c, oh, ow), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            y += W[:, 0, i, j].reshape(1, c, 1, 1) * xpad[under_offset(i, j, stride, out_hw)]
    return y


def _depthwise_backward(dy, xpad, W, stride, param_grads, input_grad):
    """dy (N, C, oh, ow), xpad (N, C, Hp, Wp), W (C, 1, kh, kw) -> (dW or None, dxpad or None):

        dW[c, 0, i, j]                    = sum over n, p, q of dy[n, c, p, q] * xpad[n, c, p*sh + i, q*sw + j]
        dxpad[n, c, p*sh + i, q*sw + j]  += W[c, 0, i, j] * dy[n, c, p, q]

    (the reference twin of kernels/cpu_depthwise.py, offset by offset)."""
    xp = get_array_module(dy)
    n, c, oh, ow = dy.shape
    kh, kw = W.shape[2:]
    dW = xp.zeros_like(W) if param_grads else None
    dxpad = xp.zeros_like(xpad) if input_grad else None
    for i in range(kh):
        for j in range(kw):
            sl = under_offset(i, j, stride, (oh, ow))
            if param_grads:
                dW[:, 0, i, j] = (dy * xpad[sl]).sum(axis=(0, 2, 3))
            if input_grad:
                dxpad[sl] += W[:, 0, i, j].reshape(1, c, 1, 1) * dy
    return dW, dxpad


# ---------------------------------------------------------------------------------------------
# naive reference (for tests): loops straight from the definition
# ---------------------------------------------------------------------------------------------
def conv2d_naive(x, W, b, stride=(1, 1), pads=(0, 0, 0, 0), groups=1):
    """y[n, o, p, q] = b[o] + sum_{c in group(o), i, j} W[o, c, i, j] * xpad[n, c, p*sh + i, q*sw + j]."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    sh, sw = stride
    xpad = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    oh = (xpad.shape[2] - kh) // sh + 1
    ow = (xpad.shape[3] - kw) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for ni in range(n):
        for oi in range(o):
            g = oi // og
            for p in range(oh):
                for q in range(ow):
                    patch = xpad[ni, g * cg:(g + 1) * cg, p * sh:p * sh + kh, q * sw:q * sw + kw]
                    y[ni, oi, p, q] = (patch * W[oi]).sum() + (b[oi] if b is not None else 0)
    return y
