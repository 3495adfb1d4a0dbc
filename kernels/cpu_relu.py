"""Numba CPU kernels for ReLU / ReLU6, forward and backward, one backward kernel per rule.

The rule is an argument of ``scratchnet.kernels.relu_backward`` (0 gradient, 1 deconvnet, 2 guided),
which picks ``RELU_BWD[rule]``; it is never a global (Numba's ``cache=True`` would freeze a global
into the compiled code). Each rule has its own kernel so that a profile names the rule that ran and
the loop body has no branch and vectorises. Backward reads the forward *output* y:
x > 0  <=>  y > 0, and for ReLU6 0 < x < 6 <=> 0 < y < 6.

Every backward selects rather than multiplies: a blocked unit gives an exact 0 (dy * 0 would keep a
NaN). The three share one signature (dy, y, upper); the deconvnet rule does not read y.
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
def relu_bwd_gradient(dy, y, upper):
    """rule 0, the derivative: dx = dy * [0 < y < upper]; dy, y, dx of one shape."""
    g = dy.ravel()
    yy = y.ravel()
    dx = np.empty_like(g)
    zero = g.dtype.type(0)
    for i in nb.prange(g.size):
        dx[i] = g[i] if (yy[i] > 0) & (yy[i] < upper) else zero
    return dx.reshape(dy.shape)


@nb.njit(parallel=True, cache=True)
def relu_bwd_deconvnet(dy, y, upper):
    """rule 1, the DeconvNet: dx = dy * [dy > 0]; the forward signal (y, upper) is not read."""
    g = dy.ravel()
    dx = np.empty_like(g)
    zero = g.dtype.type(0)
    for i in nb.prange(g.size):
        dx[i] = g[i] if g[i] > 0 else zero
    return dx.reshape(dy.shape)


@nb.njit(parallel=True, cache=True)
def relu_bwd_guided(dy, y, upper):
    """rule 2, guided backpropagation: dx = dy * [0 < y < upper] * [dy > 0]."""
    g = dy.ravel()
    yy = y.ravel()
    dx = np.empty_like(g)
    zero = g.dtype.type(0)
    for i in nb.prange(g.size):
        dx[i] = g[i] if (yy[i] > 0) & (yy[i] < upper) & (g[i] > 0) else zero
    return dx.reshape(dy.shape)


#: the backward kernel of each rule code
RELU_BWD = (relu_bwd_gradient, relu_bwd_deconvnet, relu_bwd_guided)
