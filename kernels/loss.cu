// Softmax cross-entropy, loss and gradient in one pass over the scores.
// (compiled after common.cuh; twin of softmax_cross_entropy in layers/loss.py, same formulas)
//
//   z = s - max(s)      logp = z - log(sum exp z)      loss_n = -logp[label_n]
//   dscores[n, j] = (exp(logp[n, j]) - [j == label_n]) / N
//
// One block of XENT_THREADS threads per row (grid-stride over rows): a block-wide max, a
// block-wide sum, then every thread writes its share of the row. The mean over rows of
// loss_rows is the loss. A label outside [0, K) leaves its row's loss NaN (no out-of-range read).

#define XENT_THREADS 256

// the block's maximum / sum of v (blockDim.x a power of two <= XENT_THREADS); red: shared scratch
template <typename T>
__device__ T block_max(T v, T* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (t < half && red[t + half] > red[t]) red[t] = red[t + half];
        __syncthreads();
    }
    const T r = red[0];
    __syncthreads();                       // everyone has read red[0] before it is reused
    return r;
}

template <typename T>
__device__ T block_sum(T v, T* red) {
    const int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (t < half) red[t] += red[t + half];
        __syncthreads();
    }
    const T r = red[0];
    __syncthreads();
    return r;
}

// scores (N, K), labels (N,) int64 -> loss_rows (N,), dscores (N, K)
template <typename T>
__global__ void softmax_xent_fwd_bwd(const T* __restrict__ scores, const long long* __restrict__ labels,
                                     T* __restrict__ loss_rows, T* __restrict__ dscores,
                                     const int n, const int k) {
    __shared__ T red[XENT_THREADS];
    for (int row = blockIdx.x; row < n; row += gridDim.x) {
        const T* s = scores + (idx_t)row * k;
        T* d = dscores + (idx_t)row * k;
        const long long label = labels[row];

        T m = neg_inf<T>();
        for (int j = threadIdx.x; j < k; j += blockDim.x)
            if (s[j] > m) m = s[j];
        m = block_max(m, red);

        T z = T(0);
        for (int j = threadIdx.x; j < k; j += blockDim.x) z += exp(s[j] - m);
        const T log_z = log(block_sum(z, red));

        if (threadIdx.x == 0) loss_rows[row] = quiet_nan<T>();   // replaced below if label is in range
        __syncthreads();
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            const T logp = (s[j] - m) - log_z;
            const T p = exp(logp);
            if (j == label) {
                loss_rows[row] = -logp;
                d[j] = (p - T(1)) / T(n);
            } else {
                d[j] = p / T(n);
            }
        }
        __syncthreads();                   // not needed for red (block_sum ends with a barrier after its
                                           // last read); kept: one barrier a row, no hazard to reason about
    }
}
