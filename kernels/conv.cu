// im2col and col2im for convolution as one GEMM per batch (cuBLAS does the GEMM: cupy.matmul).
// (compiled after common.cuh; twin of cpu_im2col.py, same layout)
//
//   cols[(c*kh + i)*kw + j, (n*oh + p)*ow + q] = xpad[n, c, i + p*sh, j + q*sw]
//
// so y = W (O, C*kh*kw) @ cols (C*kh*kw, N*oh*ow) convolves the whole batch at once.
// xpad (N, C, hp, wp) is the already padded input.

// xpad -> cols; one thread per (channel, column): its kh*kw rows, walked with pointer steps.
// The index arithmetic (one 64-bit and two 32-bit divisions) is paid once per kh*kw elements;
// consecutive threads take consecutive columns, so a warp's writes to a row are one contiguous run
// (two, for a warp that straddles the end of a channel).
template <typename T>
__global__ void im2col(const T* __restrict__ xpad, T* __restrict__ cols, const idx_t total,
                       const int n, const int c, const int hp, const int wp, const int kh,
                       const int kw, const int sh, const int sw, const int oh, const int ow) {
    const idx_t np = (idx_t)n * oh * ow;                  // columns: one per (image, output pixel)
    GRID_STRIDE_LOOP(t, total) {                          // total = c * np
        // 64-bit integer division is a long software sequence on the GPU: one, the rest in 32 bits
        // (gpu.py checks n*oh*ow < 2**31; row offsets are 64-bit)
        const int ch = (int)(t / np);
        const int col = (int)(t - (idx_t)ch * np);
        const int q = col % ow;
        const int pq = col / ow;
        const int p = pq % oh;
        const int img = pq / oh;
        const T* src = xpad + (((idx_t)img * c + ch) * hp + p * sh) * wp + q * sw;
        T* dst = cols + (idx_t)ch * kh * kw * np + col;    // row (ch*kh + i)*kw + j, this column
        for (int i = 0; i < kh; ++i, src += wp) {
            for (int j = 0; j < kw; ++j, dst += np) {
                *dst = src[j];
            }
        }
    }
}

// cols -> dxpad (N, C, hp, wp); one thread per element of dxpad: the sum of every column entry
// that im2col copied from this element. Only the windows that cover the element are visited:
// output rows p = first_window(py) .. min(py / sh, oh - 1), offset i = py - p*sh (and the same for
// columns), taken with p falling so that the offsets (i, j) rise, the CPU code's order of summation.
template <typename T>
__global__ void col2im_gather(const T* __restrict__ cols, T* __restrict__ dxpad, const idx_t total,
                              const int n, const int c, const int hp, const int wp, const int kh,
                              const int kw, const int sh, const int sw, const int oh, const int ow) {
    const idx_t np = (idx_t)n * oh * ow;
    GRID_STRIDE_LOOP(e, total) {
        const int plane = (int)(e / ((idx_t)hp * wp));       // (image, channel); one 64-bit division
        const int pix = (int)(e - (idx_t)plane * hp * wp);
        const int px = pix % wp, py = pix / wp;
        const int ch = plane % c;
        const idx_t img = plane / c;
        const int p_lo = first_window(py, kh, sh), p_hi = min(py / sh, oh - 1);
        const int q_lo = first_window(px, kw, sw), q_hi = min(px / sw, ow - 1);
        const T* base = cols + (idx_t)ch * kh * kw * np + img * oh * ow;
        T acc = T(0);
        for (int p = p_hi; p >= p_lo; --p) {
            const int i = py - p * sh;
            for (int q = q_hi; q >= q_lo; --q) {
                const int j = px - q * sw;
                acc += base[(idx_t)(i * kw + j) * np + p * ow + q];
            }
        }
        dxpad[e] = acc;
    }
}

// The GEMM's rows <-> NCHW (twins of cpu_im2col.py's, same layouts). W @ cols leaves a convolution's
// output channel-major, rows (O, N, oh, wr) with wr >= ow (on the GPU wr == ow: the wide layout is
// CPU-only); the forward wants y (N, O, oh, ow) plus the bias, the backward dy as rows again.

// rows -> y (N, O, oh, ow), + bias[channel] where has_bias (bias is then O long; otherwise any valid
// pointer, never read): the copy and the bias add in one pass. One thread per element of y, so the
// writes of a warp are contiguous, and so are its reads along a row.
template <typename T>
__global__ void rows_to_nchw(const T* __restrict__ rows, const T* __restrict__ bias, T* __restrict__ y,
                             const idx_t total, const int n, const int o, const int oh, const int ow,
                             const int wr, const int has_bias) {
    const int hw = oh * ow;                               // gpu.py checks oh*ow and n*o < 2**31
    GRID_STRIDE_LOOP(e, total) {                          // total = n * o * oh * ow
        const int plane = (int)(e / hw);                  // (image, channel); one 64-bit division
        const int pix = (int)(e - (idx_t)plane * hw);
        const int ch = plane % o, img = plane / o;
        const int p = pix / ow, q = pix - p * ow;
        const T v = rows[(((idx_t)ch * n + img) * oh + p) * wr + q];
        y[e] = has_bias ? v + bias[ch] : v;
    }
}

// dy (N, O, oh, ow) -> rows (O, N, oh, wr), zeros in the columns q >= ow. One thread per element of
// rows (the output it owns).
template <typename T>
__global__ void nchw_to_rows(const T* __restrict__ dy, T* __restrict__ rows, const idx_t total, const int n,
                             const int o, const int oh, const int ow, const int wr) {
    const int hw = oh * wr;                               // gpu.py checks oh*wr and o*n < 2**31
    GRID_STRIDE_LOOP(e, total) {                          // total = o * n * oh * wr
        const int plane = (int)(e / hw);                  // (channel, image); one 64-bit division
        const int pix = (int)(e - (idx_t)plane * hw);
        const int img = plane % n, ch = plane / n;
        const int p = pix / wr, q = pix - p * wr;
        rows[e] = q < ow ? dy[(((idx_t)img * o + ch) * oh + p) * ow + q] : T(0);
    }
}
