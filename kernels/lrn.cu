// Cross-channel local response normalisation (Krizhevsky's form), forward and backward.
// (compiled after common.cuh; twin of cpu_lrn.py, same formulas and the same window sums)
//
//   s[c]  = k + alpha * sum_{c' = c - size/2 .. c + (size-1)/2} x[c']**2        y[c] = x[c] * s[c]**-beta
//   dx[c] = dy[c] * s[c]**-beta - 2 alpha beta x[c] * sum_{c' in window(c)} dy[c'] y[c'] / s[c']
//
// size is odd (kernels/__init__.py checks it), so the window is symmetric and the channels whose
// window holds c, over which the backward sum really runs, are window(c) itself.
//
// One thread per (image, pixel) walks the channels, summing each channel's window afresh in double
// (size terms: a running sum, adding the channel entering and dropping the one leaving, cancels
// catastrophically once a large channel has left; double keeps float squares past 1.8e19 finite).
// Neighbouring threads handle neighbouring pixels: every load of a channel row is coalesced, and
// the size - 1 loads a channel shares with the previous one come from cache.
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
        for (int ci = 0; ci < c; ++ci) {
            double acc = 0.0;
            for (int cc = max(ci - lo, 0); cc < min(ci + hi + 1, c); ++cc) {
                const double v = x[base + (idx_t)cc * hw];
                acc += v * v;
            }
            const idx_t at = base + (idx_t)ci * hw;
            const T si = T(k + alpha * acc);
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
        for (int ci = 0; ci < c; ++ci) {
            double acc = 0.0;                          // symmetric window: the channels whose window holds ci
            for (int cc = max(ci - lo, 0); cc < min(ci + hi + 1, c); ++cc) {
                const idx_t at = base + (idx_t)cc * hw;
                acc += (double)dy[at] * y[at] / s[at];
            }
            const idx_t at = base + (idx_t)ci * hw;
            dx[at] = dy[at] * pow_neg_beta(s[at], beta) - coef * x[at] * T(acc);
        }
    }
}
