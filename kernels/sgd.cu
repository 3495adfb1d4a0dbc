// Fused SGD step with momentum and weight decay, in place, one pass over w, g and v.
// (compiled after common.cuh; the formula of scratchnet/train/sgd.py, which documents it)
//
//   v <- momentum * v - lr * (g + wd * w)        (wd = 0 for biases: the caller decides)
//   w <- w + v

template <typename T>
__global__ void sgd_momentum_update(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ v,
                                    const T lr, const T momentum, const T wd, const idx_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const T vi = momentum * v[i] - lr * (g[i] + wd * w[i]);
        v[i] = vi;
        w[i] += vi;
    }
}
