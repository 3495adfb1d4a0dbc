// ReLU and ReLU6, forward and backward: one backward kernel per rule (picked by the rule argument).
// (compiled after common.cuh; twin of cpu_relu.py, same semantics bit for bit)
//
//   forward : y = min(max(x, 0), upper)          upper = +inf (ReLU) or 6 (ReLU6); NaN propagates
//   backward: rule 0 gradient : dx = dy * [0 < y < upper]
//             rule 1 deconvnet: dx = dy * [dy > 0]                  (y is not read)
//             rule 2 guided   : dx = dy * [0 < y < upper] * [dy > 0]
// Backward reads the forward *output* y: [x > 0] == [y > 0] and [0 < x < 6] == [0 < y < 6].
// A blocked unit gives an exact 0 (not dy * 0, which would keep a NaN).

template <typename T>
__global__ void relu_fwd(const T* __restrict__ x, T* __restrict__ y, const T upper, const idx_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const T v = x[i];
        const T pos = v > T(0) ? v : T(0);
        y[i] = (v != v) ? v : (upper < pos ? upper : pos);
    }
}

// One kernel per rule, so that a profile names the rule that ran; the three share one signature
// (relu_bwd_deconvnet does not read y) and gpu.py picks the kernel from the rule code.
template <typename T>
__global__ void relu_bwd_gradient(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                  const T upper, const idx_t n) {
    GRID_STRIDE_LOOP(i, n) {               // the derivative: the sign of the layer input
        const T v = y[i];
        dx[i] = (v > T(0) && v < upper) ? dy[i] : T(0);
    }
}

template <typename T>
__global__ void relu_bwd_deconvnet(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                   const T upper, const idx_t n) {
    GRID_STRIDE_LOOP(i, n) {               // the sign of the signal coming back
        const T g = dy[i];
        dx[i] = g > T(0) ? g : T(0);
    }
}

template <typename T>
__global__ void relu_bwd_guided(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                const T upper, const idx_t n) {
    GRID_STRIDE_LOOP(i, n) {               // both conditions
        const T g = dy[i], v = y[i];
        dx[i] = (v > T(0) && v < upper && g > T(0)) ? g : T(0);
    }
}
