"""Central-difference gradient checking in float64 (used by the test grid)."""
from __future__ import annotations

import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """d f / d x by central differences; f() reads x (modified in place) and returns a float."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12))


def check_layer(layer, x, train=False, reset=None):
    """Compare a layer's backward (dx and every parameter gradient) with central differences of
    L = sum(forward(x) * dy) for a fixed random dy. ``reset`` restores randomness (dropout) before
    each forward so every evaluation sees the same mask. Returns {name: relative error}; an analytic
    gradient that is all zero fails at once (it would match any numerical zero and prove nothing)."""
    reset = reset or (lambda: None)
    rng = np.random.default_rng(1)
    reset()
    y = layer.forward(x, train)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, "gradient", True, True)

    def loss():
        reset()
        return float((layer.forward(x, train) * dy).sum())

    analytic = {"x": dx}
    analytic.update({name: lay.grads[key] for name, lay, key in layer.named_params()})
    zero = [name for name, g in analytic.items() if not np.any(g)]
    assert not zero, f"all-zero analytic gradient of {zero}: the check would prove nothing"
    errs = {"x": rel_error(dx, numerical_grad(loss, x))}
    for name, lay, key in layer.named_params():
        errs[name] = rel_error(analytic[name], numerical_grad(loss, lay.params[key]))
    return errs
