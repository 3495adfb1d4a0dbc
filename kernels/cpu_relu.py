"""Numba CPU kernels for ReLU / ReLU6, forward and backward, one backward kernel per rule.

The rule is an argument of ``scratchnet.kernels.relu_backward`` (0 gradient, 1 deconvnet, 2 guided),
which picks ``RELU_BWD[rule]``; it is never a global (Numba's ``cache=True`` would freeze a global
into the compiled code). Each rule has its own kernel so that a profile names the rule that ran and
the loop body has no branch and vectorises. Backward reads the forward *output* y:
x > 0  <=>  y > 0, and for ReLU6 0 < x < 6 <=> 0 < y < 6.

Every backward selects rather than multiplies: a blocked unit gives an exact 0 (dy * 0 would keep a
NaN). The three share one signature (dy, y, upper, dx); the deconvnet rule does not read y.

Every kernel here writes into arrays its caller made (kernels/__init__.py: see there why), flat
views of the tensors, so one loop serves any shape.
"""
import numba as nb


@nb.njit(parallel=True, cache=True)
def relu_fwd(x, upper, y):
    """y = min(max(x, 0), upper), written into y; x, y flat, upper = inf for plain ReLU (NaN propagates)."""
    zero = x.dtype.type(0)
    for i in nb.prange(x.size):
        y[i] = min(max(x[i], zero), upper)


@nb.njit(parallel=True, cache=True)
def relu_bwd_gradient(dy, y, upper, dx):
    """rule 0, the derivative: dx = dy * [0 < y < upper]; dy, y, dx flat, of one size."""
    zero = dy.dtype.type(0)
    for i in nb.prange(dy.size):
        dx[i] = dy[i] if (y[i] > 0) & (y[i] < upper) else zero


@nb.njit(parallel=True, cache=True)
def relu_bwd_deconvnet(dy, y, upper, dx):
    """rule 1, the DeconvNet: dx = dy * [dy > 0]; the forward signal (y, upper) is not read."""
    zero = dy.dtype.type(0)
    for i in nb.prange(dy.size):
        dx[i] = dy[i] if dy[i] > 0 else zero


@nb.njit(parallel=True, cache=True)
def relu_bwd_guided(dy, y, upper, dx):
    """rule 2, guided backpropagation: dx = dy * [0 < y < upper] * [dy > 0]."""
    zero = dy.dtype.type(0)
    for i in nb.prange(dy.size):
        dx[i] = dy[i] if (y[i] > 0) & (y[i] < upper) & (dy[i] > 0) else zero


#: the backward kernel of each rule code
RELU_BWD = (relu_bwd_gradient, relu_bwd_deconvnet, relu_bwd_guided)
