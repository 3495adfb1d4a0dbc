"""Fully connected layer, flatten and dropout.

Linear: x (N, I) -> y (N, O) = x @ W.T + b;  W (O, I), b (O,)
    dW = dy.T @ x,  db = sum_n dy,  dx = dy @ W
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..checks import check_int
from .base import Layer, ShapeError, check_input


class Linear(Layer):
    """y = x @ W.T + b.  x (N, in_features), W (out_features, in_features), b (out_features,), all zero
    until ``init_params(rng)`` or a load. Keeps x for dW."""

    def __init__(self, in_features, out_features, bias=True, name=None, dtype=np.float32):
        super().__init__(name)
        self._x = None           # forward's input, for dW
        self.in_features = check_int("Linear", "in_features", in_features, 1)
        self.out_features = check_int("Linear", "out_features", out_features, 1)
        self.has_bias = bool(bias)
        self.params["W"] = np.zeros((out_features, in_features), dtype)
        if bias:
            self.params["b"] = np.zeros((out_features,), dtype)

    def spec(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.has_bias)

    def init_params(self, rng, scheme="he", std=None):
        """He (sqrt(2 / in_features)) or Gaussian(std) weights, zero bias."""
        W = self.params["W"]
        s = std if scheme == "gaussian" else math.sqrt(2.0 / self.in_features)
        self.params["W"] = (rng.standard_normal(W.shape) * s).astype(W.dtype)
        if self.has_bias:
            self.params["b"] = np.zeros_like(self.params["b"])

    def output_shape(self, in_shape):
        if len(in_shape) != 2 or in_shape[1] != self.in_features:
            raise ShapeError(f"{self.label()}: expected input (N, {self.in_features}), got {tuple(in_shape)}"
                             + (" — the image size does not match the one the network was built for"
                                if len(in_shape) == 2 else ""))
        return (in_shape[0], self.out_features)

    def forward(self, x, train=False):
        check_input(self, x, 2, params=self.params["W"])
        self.output_shape(x.shape)
        self._x = x
        y = x @ self.params["W"].T
        if self.has_bias:
            y += self.params["b"]
        return self.kept_output(y)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        x = self._x
        if param_grads:
            self.grads["W"] = dy.T @ x
            if self.has_bias:
                self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"] if input_grad else None


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W)."""

    _shape = None        # forward's input shape

    def output_shape(self, in_shape):
        return (in_shape[0], int(np.prod(in_shape[1:])))

    def forward(self, x, train=False):
        check_input(self, x)
        self._shape = x.shape
        return self.kept_output(x.reshape(self.output_shape(x.shape)))   # not (N, -1): N may be 0

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        return dy.reshape(self._shape) if input_grad else None


class Dropout(Layer):
    """Inverted dropout: in training y = x * m / (1 - p), m ~ Bernoulli(1 - p); identity at test time.

    The mask comes from the layer's own seeded NumPy generator (moved to the array's device), so a
    run is reproducible and a checkpoint can save and restore ``rng.bit_generator.state``."""

    def __init__(self, p=0.5, seed=0, name=None):
        super().__init__(name)
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.seed = float(p), int(seed)
        self.rng = np.random.default_rng(seed)
        self._mask = None

    def spec(self):
        return dict(p=self.p, seed=self.seed)

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, x, train=False):
        check_input(self, x)
        if not train or self.p == 0:
            self._mask = None
            return self.kept_output(x)
        xp = get_array_module(x)
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p      # on the host: seeded, portable
        mask = xp.asarray(keep).astype(x.dtype)       # one byte a value crosses to a GPU, not four
        mask /= x.dtype.type(1 - self.p)
        self._mask = mask
        return self.kept_output(x * self._mask)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        return dy if self._mask is None else dy * self._mask


# ---------------------------------------------------------------------------------------------
# naive reference (for tests)
# ---------------------------------------------------------------------------------------------
def linear_naive(x, W, b=None):
    """y[n, o] = b[o] + sum_i W[o, i] * x[n, i], one output at a time.  x (N, I), W (O, I), b (O,)."""
    n, o = x.shape[0], W.shape[0]
    y = np.zeros((n, o), dtype=np.result_type(x, W))
    for ni in range(n):
        for oi in range(o):
            y[ni, oi] = sum(W[oi, i] * x[ni, i] for i in range(W.shape[1])) + (b[oi] if b is not None else 0)
    return y
