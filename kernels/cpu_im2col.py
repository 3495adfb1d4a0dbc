"""Numba CPU kernels for im2col and col2im in the "one GEMM per batch" layout.

    cols[(c*kh + i)*kw + j, (n*oh + p)*ow + q] = xpad[n, c, i + p*sh, j + q*sw]

so a convolution of the whole batch is one GEMM, W (O, C*kh*kw) @ cols (C*kh*kw, N*oh*ow),
which stays efficient when oh*ow is small (13x13, 8x8, 4x4 maps).

im2col: threads split the rows (c, i, j); each row is written contiguously.
col2im: the inverse scatter with overlaps summed. Threads split the (n, c) planes of the output,
and each thread walks its plane's columns serially, so no two threads ever write the same element.
"""
import numba as nb


@nb.njit(parallel=True, cache=True)
def im2col(xpad, kh, kw, sh, sw, oh, ow, cols):
    """xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*ow), written into the cols given."""
    n, c, hp, wp = xpad.shape
    p_ = oh * ow
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


@nb.njit(parallel=True, cache=True)
def col2im(cols, kh, kw, sh, sw, oh, ow, dx):
    """cols (C*kh*kw, N*oh*ow) -> dxpad (N, C, Hp, Wp), zeros on entry, summing where receptive
    fields overlap."""
    n, c = dx.shape[0], dx.shape[1]
    p_ = oh * ow
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


# ---------------------------------------------------------------------------------------------
# "wide" columns for stride 1: whole rows of the padded image instead of ow-long pieces
# ---------------------------------------------------------------------------------------------
# With stride 1 the kernel offset (i, j) of the output pixel (p, q) reads xpad[c, i + p, j + q], i.e.
# the flat padded plane at (i*Wp + j) + (p*Wp + q). Computing the output on the padded width Wp
# (columns q >= ow are junk, cropped afterwards) turns each (row r, image n) piece of the column matrix
# into ONE contiguous copy of oh*Wp values, instead of oh copies of ow values:
#
#     cols[(c*kh + i)*kw + j, n*oh*Wp + t] = xflat[n, c, i*Wp + j + t],   t < oh*Wp
#
# The copy runs kw-1 values past the plane for the last offsets; those land in junk columns and are 0.
# The GEMM gets Wp/ow more columns (1.04 at 55x55 with pad 1, 1.25 at 8x8), so layers.conv picks it
# only where the copy saved is worth more than the extra GEMM work.

@nb.njit(parallel=True, cache=True)
def im2col_wide(xpad, kh, kw, oh, cols):
    """xpad (N, C, Hp, Wp) -> cols (C*kh*kw, N*oh*Wp) for a stride-1 convolution (see above), written
    into the cols given."""
    n, c, hp, wp = xpad.shape
    length = oh * wp
    plane = hp * wp
    x3 = xpad.reshape((n, c, plane))
    for r in nb.prange(c * kh * kw):
        ci = r // (kh * kw)
        start = ((r // kw) % kh) * wp + r % kw
        m = min(length, plane - start)
        for ni in range(n):
            d = ni * length
            cols[r, d:d + m] = x3[ni, ci, start:start + m]
            cols[r, d + m:d + length] = 0


@nb.njit(parallel=True, cache=True)
def col2im_wide(cols, kh, kw, oh, wp, dx):
    """cols (C*kh*kw, N*oh*Wp) -> dxpad as (N, C, Hp*Wp), zeros on entry: the inverse of im2col_wide,
    overlaps summed.

    Threads own whole (n, c) planes; each adds its kh*kw contiguous pieces serially (no races).
    Junk columns of cols must be 0 (they are: the output gradient is 0 there)."""
    n, c, plane = dx.shape
    length = oh * wp
    for pl in nb.prange(n * c):
        ni = pl // c
        ci = pl % c
        d = ni * length
        for i in range(kh):
            for j in range(kw):
                r = (ci * kh + i) * kw + j
                start = i * wp + j
                m = min(length, plane - start)
                dx[ni, ci, start:start + m] += cols[r, d:d + m]


# ---------------------------------------------------------------------------------------------
# the GEMM's rows <-> NCHW: the copies on either side of the convolution's GEMMs
# ---------------------------------------------------------------------------------------------
# W @ cols leaves the output as rows (O, N*oh*Wr): channel-major, Wr = ow (or the padded width Wp of
# the wide layout, whose columns q >= ow are junk). The forward copies them to (N, O, oh, ow) and adds
# the bias, here in one pass over the output instead of NumPy's two (a transposing copy, then +=);
# the backward lays dy out as rows again, zeros in the junk columns. Threads take (image, channel)
# planes; each plane is oh contiguous runs of ow values on both sides.

@nb.njit(parallel=True, cache=True)
def rows_to_nchw(rows, bias, has_bias, y):
    """rows (O, N, oh, Wr) -> y (N, O, oh, ow), ow <= Wr (columns q >= ow dropped), plus bias[o] where
    has_bias (bias (O,); ignored otherwise), written into the y given."""
    o, n, oh, _ = rows.shape
    ow = y.shape[3]
    for t in nb.prange(n * o):
        ni = t // o
        oi = t % o
        for p in range(oh):
            src = rows[oi, ni, p]
            dst = y[ni, oi, p]
            if has_bias:
                b = bias[oi]
                for q in range(ow):
                    dst[q] = src[q] + b
            else:
                for q in range(ow):
                    dst[q] = src[q]


@nb.njit(parallel=True, cache=True)
def nchw_to_rows(dy, rows):
    """dy (N, O, oh, ow) -> rows (O, N, oh, Wr), Wr >= ow, zeros in columns q >= ow; written into the
    rows given."""
    n, o, oh, ow = dy.shape
    wr = rows.shape[3]
    for t in nb.prange(o * n):
        oi = t // n
        ni = t % n
        for p in range(oh):
            src = dy[ni, oi, p]
            dst = rows[oi, ni, p]
            for q in range(ow):
                dst[q] = src[q]
            for q in range(ow, wr):
                dst[q] = 0
