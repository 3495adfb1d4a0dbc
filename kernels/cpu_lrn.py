"""Numba CPU kernels for cross-channel local response normalisation (Krizhevsky's form).

    s[c] = k + alpha * sum_{c' = c - size//2 .. c + (size-1)//2} x[c']**2,   y[c] = x[c] * s[c]**-beta
    dx[c] = dy[c] * s[c]**-beta - 2 alpha beta x[c] * sum_{c' in window(c)} dy[c'] y[c'] / s[c']

``size`` is odd (the wrappers in kernels/__init__.py check it): the window is then symmetric, so the
channels c' whose window holds c, over which the backward sum really runs, are window(c) itself.

Each channel's window is summed afresh (size terms; a running sum, adding the channel entering and
dropping the one leaving, cancels catastrophically once a large channel has left: 16% off in float32
for one channel at 3e5 among channels at 30), in float64, so squares of float32 values past 1.8e19 do
not overflow. Threads split (image, block of pixels); each owns its outputs, and the inner loops run
over contiguous pixel rows so they vectorise.
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
        acc = np.empty(m, dtype=np.float64)
        for ci in range(c):
            acc[:] = 0
            for cc in range(max(ci - lo, 0), min(ci + hi + 1, c)):
                row = x[i, cc, p0:p1]
                for p in range(m):
                    v = np.float64(row[p])
                    acc[p] += v * v
            xr, sr, yr = x[i, ci, p0:p1], s[i, ci, p0:p1], y[i, ci, p0:p1]
            for p in range(m):
                sr[p] = k + alpha * acc[p]
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
        t = np.empty((c, m), dtype=np.float64)                       # each channel's dy y / s, once
        for cc in range(c):
            g, yy, ss = dy[i, cc, p0:p1], y[i, cc, p0:p1], s[i, cc, p0:p1]
            for p in range(m):
                t[cc, p] = np.float64(g[p]) * yy[p] / ss[p]
        acc = np.empty(m, dtype=np.float64)
        for ci in range(c):
            acc[:] = 0
            for cc in range(max(ci - lo, 0), min(ci + hi + 1, c)):     # symmetric window: window(ci)
                for p in range(m):
                    acc[p] += t[cc, p]
            g, xr, ss, out = dy[i, ci, p0:p1], x[i, ci, p0:p1], s[i, ci, p0:p1], dx[i, ci, p0:p1]
            if beta == 0.75:
                for p in range(m):
                    q = 1 / math.sqrt(ss[p])
                    out[p] = g[p] * q * math.sqrt(q) - coef * xr[p] * acc[p]
            else:
                for p in range(m):
                    out[p] = g[p] * ss[p] ** -beta - coef * xr[p] * acc[p]
