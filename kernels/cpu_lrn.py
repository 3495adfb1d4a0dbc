"""Numba CPU kernels for cross-channel local response normalisation (Krizhevsky's form).

    s[c] = k + alpha * sum_{c' = c - size//2 .. c + (size-1)//2} x[c']**2,   y[c] = x[c] * s[c]**-beta
    dx[c] = dy[c] * s[c]**-beta - 2 alpha beta x[c] * sum_{c' in window(c)} dy[c'] y[c'] / s[c']

``size`` is odd (the wrappers in kernels/__init__.py check it): the window is then symmetric, so the
channels c' whose window holds c, over which the backward sum really runs, are window(c) itself.

The channel window is a running sum (add the channel entering, drop the one leaving), so the cost
is independent of ``size``. Threads split (image, block of pixels); each owns its outputs, and the
inner loops run over contiguous pixel rows so they vectorise.
beta = 0.75 (the usual value) avoids pow(): s**-0.75 = q * sqrt(q) with q = 1/sqrt(s).
"""
import math

import numba as nb
import numpy as np

_BLOCK = 1024      # pixels a job: enough to vectorise the inner loops, few enough to keep the
                   # channel rows being summed in cache, and many jobs for the threads even at N = 1


@nb.njit(parallel=True, fastmath=True, cache=True)
def lrn_fwd(x, size, alpha, beta, k, y, s):
    """x (N, C, H*W) -> y, s (N, C, H*W), written into the y and s given."""
    n, c, hw = x.shape
    lo, hi = size // 2, (size - 1) // 2
    nblk = (hw + _BLOCK - 1) // _BLOCK
    for job in nb.prange(n * nblk):
        i = job // nblk
        p0 = (job % nblk) * _BLOCK
        p1 = min(p0 + _BLOCK, hw)
        m = p1 - p0
        acc = np.zeros(m, dtype=x.dtype)
        for cc in range(min(hi, c)):
            row = x[i, cc, p0:p1]
            for p in range(m):
                acc[p] += row[p] * row[p]
        for ci in range(c):
            a = ci + hi
            if a < c:
                row = x[i, a, p0:p1]
                for p in range(m):
                    acc[p] += row[p] * row[p]
            r = ci - lo - 1
            if r >= 0:
                row = x[i, r, p0:p1]
                for p in range(m):
                    acc[p] -= row[p] * row[p]
            xr, sr, yr = x[i, ci, p0:p1], s[i, ci, p0:p1], y[i, ci, p0:p1]
            for p in range(m):
                sr[p] = k + alpha * max(acc[p], 0)        # the running sum can round below 0
            if beta == 0.75:       # separate loops: a branch inside would stop vectorisation
                for p in range(m):
                    q = 1 / math.sqrt(sr[p])
                    yr[p] = xr[p] * q * math.sqrt(q)
            else:
                for p in range(m):
                    yr[p] = xr[p] * sr[p] ** -beta


@nb.njit(parallel=True, fastmath=True, cache=True)
def lrn_bwd(dy, x, y, s, size, alpha, beta, dx):
    """dy, x, y, s (N, C, H*W) -> dx (N, C, H*W), written into the dx given."""
    n, c, hw = x.shape
    lo, hi = size // 2, (size - 1) // 2
    coef = 2 * alpha * beta
    nblk = (hw + _BLOCK - 1) // _BLOCK
    for job in nb.prange(n * nblk):
        i = job // nblk
        p0 = (job % nblk) * _BLOCK
        p1 = min(p0 + _BLOCK, hw)
        m = p1 - p0
        acc = np.zeros(m, dtype=x.dtype)
        for cc in range(min(hi, c)):
            g, yy, ss = dy[i, cc, p0:p1], y[i, cc, p0:p1], s[i, cc, p0:p1]
            for p in range(m):
                acc[p] += g[p] * yy[p] / ss[p]
        for ci in range(c):
            a = ci + hi
            if a < c:
                g, yy, ss = dy[i, a, p0:p1], y[i, a, p0:p1], s[i, a, p0:p1]
                for p in range(m):
                    acc[p] += g[p] * yy[p] / ss[p]
            r = ci - lo - 1
            if r >= 0:
                g, yy, ss = dy[i, r, p0:p1], y[i, r, p0:p1], s[i, r, p0:p1]
                for p in range(m):
                    acc[p] -= g[p] * yy[p] / ss[p]
            g, xr, ss, out = dy[i, ci, p0:p1], x[i, ci, p0:p1], s[i, ci, p0:p1], dx[i, ci, p0:p1]
            if beta == 0.75:
                for p in range(m):
                    q = 1 / math.sqrt(ss[p])
                    out[p] = g[p] * q * math.sqrt(q) - coef * xr[p] * acc[p]
            else:
                for p in range(m):
                    out[p] = g[p] * ss[p] ** -beta - coef * xr[p] * acc[p]
