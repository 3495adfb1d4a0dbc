// Cross-channel local response normalisation (Krizhevsky's form), forward and backward.
// (compiled after common.cuh; twin of cpu_lrn.py, same formulas and the same running sums)
//
//   s[c]  = k + alpha * sum_{c' = c - size/2 .. c + (size-1)/2} x[c']**2        y[c] = x[c] * s[c]**-beta
//   dx[c] = dy[c] * s[c]**-beta - 2 alpha beta x[c] * sum_{c' in window(c)} dy[c'] y[c'] / s[c']
//
// size is odd (kernels/__init__.py checks it), so the window is symmetric and the channels whose
// window holds c, over which the backward sum really runs, are window(c) itself.
//
// One thread per (image, pixel) walks the channels with a running window sum (add the channel
// entering, drop the one leaving), so the cost does not grow with `size`. Neighbouring threads
// handle neighbouring pixels: every load of a channel row is coalesced.
// beta = 0.75 avoids pow(): s**-0.75 = q * sqrt(q) with q = 1 / sqrt(s).

template <typename T>
__device__ __forceinline__ T pow_neg_beta(T s, T beta) {
    if (beta == T(0.75)) {
        const T q = T(1) / sqrt(s);
        return q * sqrt(q);
    }
    return pow(s, -beta);
}

// x (N, C, HW) -> y, s (N, C, HW)
template <typename T>
__global__ void lrn_fwd(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ s,
                        const idx_t total /* N * HW */, const int c, const int hw, const int size,
                        const T alpha, const T beta, const T k) {
    const int lo = size / 2, hi = (size - 1) / 2;
    GRID_STRIDE_LOOP(t, total) {
        const idx_t base = (t / hw) * c * hw + t % hw;      // (image, channel 0, pixel)
        T acc = T(0);
        for (int cc = 0; cc < min(hi, c); ++cc) {
            const T v = x[base + (idx_t)cc * hw];
            acc += v * v;
        }
        for (int ci = 0; ci < c; ++ci) {
            const int a = ci + hi, r = ci - lo - 1;
            if (a < c) {
                const T v = x[base + (idx_t)a * hw];
                acc += v * v;
            }
            if (r >= 0) {
                const T v = x[base + (idx_t)r * hw];
                acc -= v * v;
            }
            const idx_t at = base + (idx_t)ci * hw;
            const T si = k + alpha * (acc > T(0) ? acc : T(0));   // the running sum can round below 0
            s[at] = si;
            y[at] = x[at] * pow_neg_beta(si, beta);
        }
    }
}

// dy, x, y, s (N, C, HW) -> dx (N, C, HW)
template <typename T>
__global__ void lrn_bwd(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                        const T* __restrict__ s, T* __restrict__ dx, const idx_t total, const int c,
                        const int hw, const int size, const T alpha, const T beta) {
    const int lo = size / 2, hi = (size - 1) / 2;
    const T coef = T(2) * alpha * beta;
    GRID_STRIDE_LOOP(t, total) {
        const idx_t base = (t / hw) * c * hw + t % hw;
        T acc = T(0);
        for (int cc = 0; cc < min(hi, c); ++cc) {
            const idx_t at = base + (idx_t)cc * hw;
            acc += dy[at] * y[at] / s[at];
        }
        for (int ci = 0; ci < c; ++ci) {
            const int a = ci + hi, r = ci - lo - 1;
            if (a < c) {
                const idx_t at = base + (idx_t)a * hw;
                acc += dy[at] * y[at] / s[at];
            }
            if (r >= 0) {
                const idx_t at = base + (idx_t)r * hw;
                acc -= dy[at] * y[at] / s[at];
            }
            const idx_t at = base + (idx_t)ci * hw;
            dx[at] = dy[at] * pow_neg_beta(s[at], beta) - coef * x[at] * acc;
        }
    }
}
