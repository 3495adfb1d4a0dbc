"""Numba CPU kernels for im2col and col2im in the "one GEMM per batch" layout.

    cols[(c*kh + i)*kw + j, (n*oh + p)*ow + q] = xpad[n, c, i + p*sh, j + q*sw]

so a convolution of the whole batch is one GEMM, W (O, C*kh*kw) @ cols (C*kh*kw, N*oh*ow),
which stays efficient when oh*ow is small (13x13, 8x8, 4x4 maps).

im2col: threads split the rows (c, i, j); each row is written contiguously.
col2im: the inverse scatter with overlaps summed. Threads split the (n, c) planes of the output,
and each thread walks its plane's columns serially, so no two threads ever write the same element.
"""
import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def im2col(xpad, kh, kw, sh, sw, oh, ow):
    """xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*ow)."""
    n, c, hp, wp = xpad.shape
    p_ = oh * ow
    cols = np.empty((c * kh * kw, n * p_), dtype=xpad.dtype)
    for r in nb.prange(c * kh * kw):
        ci = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for ni in range(n):
            base = ni * p_
            for p in range(oh):
                src = xpad[ni, ci, i + p * sh]
                dst = base + p * ow
                for q in range(ow):
                    cols[r, dst + q] = src[j + q * sw]
    return cols


@nb.njit(parallel=True, cache=True)
def col2im(cols, n, c, hp, wp, kh, kw, sh, sw, oh, ow):
    """cols (C*kh*kw, N*oh*ow) -> dxpad (N, C, Hp, Wp), summing where receptive fields overlap."""
    p_ = oh * ow
    dx = np.zeros((n, c, hp, wp), dtype=cols.dtype)
    for plane in nb.prange(n * c):
        ni = plane // c
        ci = plane % c
        base = ni * p_
        for i in range(kh):
            for j in range(kw):
                r = (ci * kh + i) * kw + j
                for p in range(oh):
                    row = dx[ni, ci, i + p * sh]
                    src = base + p * ow
                    for q in range(ow):
                        row[j + q * sw] += cols[r, src + q]
    return dx
