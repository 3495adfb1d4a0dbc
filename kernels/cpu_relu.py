"""Numba CPU kernels for ReLU / ReLU6, forward and backward with the rule as an argument.

The rule is an integer argument (0 gradient, 1 deconvnet, 2 guided), never a global: Numba's
``cache=True`` freezes globals into the compiled code. Backward reads the forward *output* y,
which the next layer holds anyway: x > 0  <=>  y > 0, and for ReLU6 0 < x < 6 <=> 0 < y < 6.
Each rule has its own loop so that the loop body has no branch and vectorises.
"""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def relu_fwd(x, upper):
    """y = min(max(x, 0), upper); x any shape, upper = inf for plain ReLU (NaN propagates)."""
    flat = x.ravel()
    y = np.empty_like(flat)
    zero = flat.dtype.type(0)
    for i in nb.prange(flat.size):
        y[i] = min(max(flat[i], zero), upper)
    return y.reshape(x.shape)


@nb.njit(parallel=True, cache=True)
def relu_bwd(dy, y, rule, upper):
    """dx for one of the three rules.

    rule 0 gradient : dx = dy * [0 < y < upper]           (the derivative)
    rule 1 deconvnet: dx = dy * [dy > 0]                  (ignores the forward signal)
    rule 2 guided   : dx = dy * [0 < y < upper] * [dy > 0]

    The code selects rather than multiplies: a blocked unit gives an exact 0 (dy * 0 would keep a NaN).
    """
    g = dy.ravel()
    yy = y.ravel()
    dx = np.empty_like(g)
    zero = g.dtype.type(0)
    if rule == 0:
        for i in nb.prange(g.size):
            dx[i] = g[i] if (yy[i] > 0) & (yy[i] < upper) else zero
    elif rule == 1:
        for i in nb.prange(g.size):
            dx[i] = g[i] if g[i] > 0 else zero
    else:
        for i in nb.prange(g.size):
            dx[i] = g[i] if (yy[i] > 0) & (yy[i] < upper) & (g[i] > 0) else zero
    return dx.reshape(dy.shape)
