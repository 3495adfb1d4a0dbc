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
def lrn_fwd(x, size, alpha, beta, k):
    """x (N, C, H, W) -> (y, s) both (N, C, H, W)."""
    n, c, h, w = x.shape
    hw = h * w
    xf = x.reshape(n, c, hw)
    y = np.empty_like(xf)
    s = np.empty_like(xf)
    lo, hi = size // 2, (size - 1) // 2
    nblk = (hw + _BLOCK - 1) // _BLOCK
    for job in nb.prange(n * nblk):
        i = job // nblk
        p0 = (job % nblk) * _BLOCK
        p1 = min(p0 + _BLOCK, hw)
        m = p1 - p0
        acc = np.zeros(m, dtype=x.dtype)
        for cc in range(min(hi, c)):
            row = xf[i, cc, p0:p1]
            for p in range(m):
                acc[p] += row[p] * row[p]
        for ci in range(c):
            a = ci + hi
            if a < c:
                row = xf[i, a, p0:p1]
                for p in range(m):
                    acc[p] += row[p] * row[p]
            r = ci - lo - 1
            if r >= 0:
                row = xf[i, r, p0:p1]
                for p in range(m):
                    acc[p] -= row[p] * row[p]
            xr, sr, yr = xf[i, ci, p0:p1], s[i, ci, p0:p1], y[i, ci, p0:p1]
            for p in range(m):
                sr[p] = k + alpha * max(acc[p], 0)        # the running sum can round below 0
            if beta == 0.75:       # separate loops: a branch inside would stop vectorisation
                for p in range(m):
                    q = 1 / math.sqrt(sr[p])
                    yr[p] = xr[p] * q * math.sqrt(q)
            else:
                for p in range(m):
                    yr[p] = xr[p] * sr[p] ** -beta
    return y.reshape(x.shape), s.reshape(x.shape)


@nb.njit(parallel=True, fastmath=True, cache=True)
def lrn_bwd(dy, x, y, s, size, alpha, beta):
    """dy, x, y, s (N, C, H, W) -> dx (N, C, H, W)."""
    n, c, h, w = x.shape
    hw = h * w
    dyf, xf, yf, sf = dy.reshape(n, c, hw), x.reshape(n, c, hw), y.reshape(n, c, hw), s.reshape(n, c, hw)
    dx = np.empty_like(dyf)
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
            g, yy, ss = dyf[i, cc, p0:p1], yf[i, cc, p0:p1], sf[i, cc, p0:p1]
            for p in range(m):
                acc[p] += g[p] * yy[p] / ss[p]
        for ci in range(c):
            a = ci + hi
            if a < c:
                g, yy, ss = dyf[i, a, p0:p1], yf[i, a, p0:p1], sf[i, a, p0:p1]
                for p in range(m):
                    acc[p] += g[p] * yy[p] / ss[p]
            r = ci - lo - 1
            if r >= 0:
                g, yy, ss = dyf[i, r, p0:p1], yf[i, r, p0:p1], sf[i, r, p0:p1]
                for p in range(m):
                    acc[p] -= g[p] * yy[p] / ss[p]
            g, xr, ss, out = dyf[i, ci, p0:p1], xf[i, ci, p0:p1], sf[i, ci, p0:p1], dx[i, ci, p0:p1]
            if beta == 0.75:
                for p in range(m):
                    q = 1 / math.sqrt(ss[p])
                    out[p] = g[p] * q * math.sqrt(q) - coef * xr[p] * acc[p]
            else:
                for p in range(m):
                    out[p] = g[p] * ss[p] ** -beta - coef * xr[p] * acc[p]
    return dx.reshape(x.shape)
