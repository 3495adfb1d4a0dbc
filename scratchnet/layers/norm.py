"""Local response normalisation across channels, and inference-time batch normalisation.

LRN, Krizhevsky et al. (2012), section 3.3:

    s[c]  = k + alpha * sum_{c' in window(c)} x[c']**2      window: `size` channels centred on c
    y[c]  = x[c] / s[c]**beta

(Krizhevsky's alpha multiplies the sum directly; Caffe and PyTorch's nn.LocalResponseNorm divide
alpha by `size` — pass alpha/size to reproduce their models.) Backward, with the window symmetric so c' in window(c) <=> c in window(c'):

    dx[c] = dy[c] * s[c]**-beta  -  2 * alpha * beta * x[c] * sum_{c' in window(c)} dy[c'] x[c'] s[c']**(-beta-1)

Shapes: x, y (N, C, H, W). Forward keeps x, y and s (y saves recomputing x * s**-beta).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..checks import check_int, is_int
from .base import Layer, check_input
from scratchnet import kernels


def _channel_window_sum(a, size):
    """sum over channels c-size//2 .. c+(size-1)//2 (clipped at the ends), one shifted slice at a time
    (size terms a channel: a cumulative sum's differences cancel catastrophically after a large channel).
    a (N, C, H, W)."""
    xp = get_array_module(a)
    lo, hi = size // 2, (size - 1) // 2
    c = a.shape[1]
    out = xp.zeros_like(a)
    for d in range(-lo, hi + 1):                    # out[:, ci] += a[:, ci + d] where 0 <= ci + d < c
        out[:, max(0, -d):min(c, c - d)] += a[:, max(0, d):min(c, c + d)]
    return out


class LocalResponseNorm(Layer):
    """Cross-channel LRN (size, alpha, beta, k) in Krizhevsky's form; see the module docstring."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
        super().__init__(name)
        if not is_int(size) or size < 1 or size % 2 == 0:
            raise ValueError(f"LocalResponseNorm: size must be a positive odd integer, got {size!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._cache = None

    def spec(self):
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, x, train=False):
        check_input(self, x, 4)
        y, s = kernels.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self._cache = (x, y, s)
        return self.kept_output(y)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        x, y, s = self._cache
        return kernels.lrn_backward(dy, x, y, s, self.size, self.alpha, self.beta)


def lrn_reference(x, size, alpha, beta, k):
    """Vectorised array-code LRN (any backend): returns (y, s); the kernels are tested against it."""
    s = k + alpha * _channel_window_sum(x * x, size)
    return x * s ** (-beta), s


def _lrn_scale_naive(x, size, alpha, k):
    """s of the module docstring by a loop over channels (for tests): s[c] = k + alpha * window sum."""
    c = x.shape[1]
    s = np.empty_like(x)
    for ci in range(c):
        a, b = max(0, ci - size // 2), min(c, ci + (size - 1) // 2 + 1)
        s[:, ci] = k + alpha * (x[:, a:b] ** 2).sum(axis=1)
    return s


def lrn_naive(x, size, alpha, beta, k):
    """Loop over channels, straight from the definition (for tests)."""
    return x / _lrn_scale_naive(x, size, alpha, k) ** beta


def lrn_backward_naive(dy, x, size, alpha, beta, k):
    """dx of LRN by a loop over channels, straight from the module docstring's formula (for tests)."""
    c = x.shape[1]
    lo, hi = size // 2, (size - 1) // 2
    s = _lrn_scale_naive(x, size, alpha, k)
    t = dy * x * s ** (-beta - 1)                # each channel's term, summed over the windows holding c
    dx = dy * s ** -beta
    for ci in range(c):
        # c' whose window holds ci: c' - lo <= ci <= c' + hi, i.e. ci - hi <= c' <= ci + lo
        dx[:, ci] -= 2 * alpha * beta * x[:, ci] * t[:, max(0, ci - hi):min(c, ci + lo + 1)].sum(axis=1)
    return dx


class BatchNorm2d(Layer):
    """Inference-time batch normalisation: y = gamma * (x - mean) / sqrt(var + eps) + beta per channel.

    x, y (N, C, H, W); gamma, beta, mean, var (C,). Used to check that folding BN into the preceding
    convolution (``fold_batchnorm``) changes nothing; imported networks carry the folded form.
    Running statistics are fixed (no training-mode statistics).
    """

    def __init__(self, channels, eps=1e-5, name=None):
        super().__init__(name)
        self.channels, self.eps = check_int("BatchNorm2d", "channels", channels, 1), float(eps)
        self.params.update(gamma=np.ones(channels, np.float32), beta=np.zeros(channels, np.float32))
        self.stats = dict(mean=np.zeros(channels, np.float32), var=np.ones(channels, np.float32))
        self._centred = None         # x - mean, kept only for dgamma

    def spec(self):
        return dict(channels=self.channels, eps=self.eps)

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def _scale(self, xp):
        return self.params["gamma"] / xp.sqrt(xp.asarray(self.stats["var"]) + self.eps)

    def forward(self, x, train=False):
        check_input(self, x, 4, self.channels, self.params["gamma"])
        xp = get_array_module(x)
        a = self._scale(xp)
        self._centred = (x - xp.asarray(self.stats["mean"]).reshape(1, -1, 1, 1))
        return self.kept_output(a.reshape(1, -1, 1, 1) * self._centred + self.params["beta"].reshape(1, -1, 1, 1))

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        centred = self._centred
        xp = get_array_module(dy)
        a = self._scale(xp)
        if param_grads:
            inv = 1 / xp.sqrt(xp.asarray(self.stats["var"]) + self.eps)
            # y = gamma * x_hat + beta with x_hat = (x - mean) * inv: dy/dgamma = x_hat, so
            # dL/dgamma = sum over N, H, W of dL/dy * x_hat
            self.grads["gamma"] = (dy * centred).sum(axis=(0, 2, 3)) * inv
            self.grads["beta"] = dy.sum(axis=(0, 2, 3))
        return dy * a.reshape(1, -1, 1, 1) if input_grad else None


def batchnorm_naive(x, gamma, beta, mean, var, eps):
    """y[:, c] = gamma[c] * (x[:, c] - mean[c]) / sqrt(var[c] + eps) + beta[c], channel by channel
    (for tests).  x (N, C, H, W); gamma, beta, mean, var (C,)."""
    y = np.empty(x.shape, dtype=np.result_type(x, gamma))
    for c in range(x.shape[1]):
        y[:, c] = gamma[c] * (x[:, c] - mean[c]) / math.sqrt(var[c] + eps) + beta[c]
    return y


def fold_batchnorm(W, b, gamma, beta, mean, var, eps):
    """Fold y = gamma (conv(x) + b - mean) / sqrt(var + eps) + beta into conv weights.

    W (O, C/g, kh, kw), b (O,) or None; the others (O,). Returns (W', b') with
    W' = W * a[:, None, None, None], b' = (b - mean) * a + beta, a = gamma / sqrt(var + eps)."""
    a = gamma / np.sqrt(var + eps)
    b = np.zeros_like(mean) if b is None else b
    return (W * a[:, None, None, None]).astype(W.dtype), ((b - mean) * a + beta).astype(W.dtype)
