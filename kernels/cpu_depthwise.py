"""Numba CPU kernels for depthwise convolution (one input and one output channel per group).

    y[n, c, p, q] = sum_{i, j} W[c, 0, i, j] * xpad[n, c, p*sh + i, q*sw + j]

The array-code version in scratchnet/layers/conv.py (``_depthwise_forward``, the reference these
are tested against) makes kh*kw passes over the whole batch, each with a full-size temporary. Here
every (n, c) plane is one task whose output plane stays in cache while the kh*kw taps are added
row by row; the inner loop runs along a row, contiguous when the stride is 1, so it vectorises.
The taps are added in the same (i, j) order as the reference, so forward and the input gradient
match it exactly. Threads split:

    dw_fwd         the (n, c) planes of y
    dw_bwd_input   the (n, c) planes of dxpad; each thread scatters into its own plane: no races
    dw_bwd_weight  the channels c; each thread sums its channel over the batch: no races
"""
import numba as nb


@nb.njit(parallel=True, cache=True)
def dw_fwd(xpad, W, sh, sw, y):
    """xpad (N, C, Hp, Wp), W (C, 1, kh, kw) -> y (N, C, oh, ow), zeros on entry."""
    n, c, oh, ow = y.shape
    kh, kw = W.shape[2], W.shape[3]
    for plane in nb.prange(n * c):
        ni = plane // c
        ci = plane % c
        out = y[ni, ci]
        for i in range(kh):
            for j in range(kw):
                w = W[ci, 0, i, j]
                for p in range(oh):
                    orow = out[p]
                    xrow = xpad[ni, ci, p * sh + i]
                    if sw == 1:
                        for q in range(ow):
                            orow[q] += w * xrow[q + j]
                    else:
                        for q in range(ow):
                            orow[q] += w * xrow[q * sw + j]


@nb.njit(parallel=True, cache=True)
def dw_bwd_input(dy, W, sh, sw, dx):
    """dy (N, C, oh, ow), W (C, 1, kh, kw) -> dxpad (N, C, Hp, Wp), zeros on entry: each dy spread
    over its window."""
    n, c, oh, ow = dy.shape
    kh, kw = W.shape[2], W.shape[3]
    for plane in nb.prange(n * c):
        ni = plane // c
        ci = plane % c
        g = dy[ni, ci]
        for i in range(kh):
            for j in range(kw):
                w = W[ci, 0, i, j]
                for p in range(oh):
                    drow = dx[ni, ci, p * sh + i]
                    grow = g[p]
                    if sw == 1:
                        for q in range(ow):
                            drow[q + j] += w * grow[q]
                    else:
                        for q in range(ow):
                            drow[q * sw + j] += w * grow[q]


@nb.njit(parallel=True, cache=True)
def dw_bwd_weight(dy, xpad, sh, sw, dW):
    """dy (N, C, oh, ow), xpad (N, C, Hp, Wp) -> dW (C, 1, kh, kw) = sum over n, p, q of dy * window,
    written into the dW given."""
    n, c, oh, ow = dy.shape
    kh, kw = dW.shape[2], dW.shape[3]
    for ci in nb.prange(c):
        for i in range(kh):
            for j in range(kw):
                acc = dy.dtype.type(0)
                for ni in range(n):
                    for p in range(oh):
                        xrow = xpad[ni, ci, p * sh + i]
                        grow = dy[ni, ci, p]
                        for q in range(ow):
                            acc += grow[q] * xrow[q * sw + j]
                dW[ci, 0, i, j] = acc
