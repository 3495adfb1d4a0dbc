"""Numba CPU kernels for max pooling with switches.

Forward records, for every output, the flat index (within its H*W input plane) of the
winning input: the "switch" of Zeiler & Fergus. Backward routes each output gradient to its
switch. Windows overlap (3x3 stride 2), so two outputs can route to the same input; each
(n, c) plane is handled by one thread, serially, so there are no races between threads.
Padding counts as -inf (never wins). NaN never wins either (``v > best`` is false for it): a window
of NaNs gives -inf, its switch at the window's first element inside the input. (Network inputs are
checked finite; a NaN reaches a pooling layer from an overflow or from NaN parameters.)
"""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def maxpool_fwd(x, kh, kw, sh, sw, pt, pl, y, switches):
    """x (N, C, H, W) -> y (N, C, oh, ow), switches (N, C, oh, ow) int32 (flat index into H*W),
    written into the y and switches given."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for nc in nb.prange(n * c):
        i = nc // c
        j = nc % c
        for oy in range(oh):
            y0 = oy * sh - pt
            ya = max(y0, 0)
            yb = min(y0 + kh, h)
            for ox in range(ow):
                x0 = ox * sw - pl
                xa = max(x0, 0)
                xb = min(x0 + kw, w)
                best = -np.inf
                arg = ya * w + xa
                for yy in range(ya, yb):
                    for xx in range(xa, xb):
                        v = x[i, j, yy, xx]
                        if v > best:
                            best = v
                            arg = yy * w + xx
                y[i, j, oy, ox] = best
                switches[i, j, oy, ox] = arg


@nb.njit(parallel=True, cache=True)
def maxpool_bwd(dy, switches, dx):
    """dy, switches (N, C, oh, ow) -> dx (N, C, H*W), zeros on entry: each dy is added at its switch
    (sums where windows overlap)."""
    n, c, oh, ow = dy.shape
    for nc in nb.prange(n * c):
        i = nc // c
        j = nc % c
        for oy in range(oh):
            for ox in range(ow):
                dx[i, j, switches[i, j, oy, ox]] += dy[i, j, oy, ox]
