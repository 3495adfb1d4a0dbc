// im2col and col2im for convolution as one GEMM per batch (cuBLAS does the GEMM: cupy.matmul).
// (compiled after common.cuh; twin of cpu_im2col.py, same layout)
//
//   cols[(c*kh + i)*kw + j, (n*oh + p)*ow + q] = xpad[n, c, i + p*sh, j + q*sw]
//
// so y = W (O, C*kh*kw) @ cols (C*kh*kw, N*oh*ow) convolves the whole batch at once.
// xpad (N, C, hp, wp) is the already padded input.

// xpad -> cols; one thread per element of cols (rows written contiguously).
template <typename T>
__global__ void im2col(const T* __restrict__ xpad, T* __restrict__ cols, const idx_t total,
                       const int n, const int c, const int hp, const int wp, const int kh,
                       const int kw, const int sh, const int sw, const int oh, const int ow) {
    const idx_t np = (idx_t)n * oh * ow;                  // columns: one per (image, output pixel)
    GRID_STRIDE_LOOP(e, total) {
        // one 64-bit division, the rest in 32 bits (gpu.py checks n*oh*ow and c*kh*kw < 2**31):
        // 64-bit integer division is a long software sequence on the GPU
        const int row = (int)(e / np);
        int col = (int)(e - (idx_t)row * np);
        const int q = col % ow;
        col /= ow;
        const int p = col % oh;
        const int img = col / oh;
        const int j = row % kw;
        const int i = (row / kw) % kh;
        const int ch = row / (kh * kw);
        cols[e] = xpad[(((idx_t)img * c + ch) * hp + i + p * sh) * wp + j + q * sw];
    }
}

// cols -> dxpad (N, C, hp, wp); one thread per element of dxpad: the sum of every column entry
// that im2col copied from this element, offsets (i, j) in increasing order as in the CPU code.
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
        T acc = T(0);
        for (int i = 0; i < kh && i <= py; ++i) {             // offset i comes from output row (py - i) / sh
            if ((py - i) % sh) continue;
            const int p = (py - i) / sh;
            if (p >= oh) continue;
            for (int j = 0; j < kw && j <= px; ++j) {
                if ((px - j) % sw) continue;
                const int q = (px - j) / sw;
                if (q >= ow) continue;
                const idx_t row = ((idx_t)ch * kh + i) * kw + j;
                acc += cols[row * np + (img * oh + p) * ow + q];
            }
        }
        dxpad[e] = acc;
    }
}
