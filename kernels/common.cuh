// Helpers shared by every kernels/*.cu file.
//
// gpu.py prepends this text to each .cu source before CuPy compiles it with NVRTC (one
// RawModule per .cu file), so the .cu files do not #include it: the source CuPy hashes for its
// kernel cache is then the whole text, and an edit here recompiles every module.
// No standard headers: NVRTC has none; the CUDA built-ins (sqrt, pow, exp, log, min, max,
// __int_as_float, ...) are all that is used.
//
// Conventions of every kernel:
//   * C-contiguous arrays, NCHW activations; flat indices are 64-bit (idx_t): an im2col buffer can
//     pass 2**31 elements (the paper network's conv1 at 224 px does from batch 1,230 on).
//   * grid-stride loops (GRID_STRIDE_LOOP), so any grid size is correct; gpu.py launches
//     blocks of 256 threads.
//   * each thread owns the outputs it writes (gathers, no atomics), so results do not depend on
//     thread scheduling: the same inputs give the same bits, run after run. (In softmax_xent_fwd_bwd,
//     whose block works on one row and synchronises, the owner of a loss entry is the block: thread 0
//     writes NaN, and the label's thread replaces it after a barrier.)
//   * templates over the element type T (float, double); gpu.py asks NVRTC for both.

#ifndef SCRATCHNET_COMMON_CUH
#define SCRATCHNET_COMMON_CUH

typedef long long idx_t;

#define GRID_STRIDE_LOOP(i, n)                                                   \
    for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);        \
         i += (idx_t)blockDim.x * gridDim.x)

// -infinity of T (no INFINITY macro without math.h)
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() {
    return __int_as_float((int)0xff800000u);
}
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}

// quiet NaN of T (marks a result that could not be computed, e.g. a label out of range)
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() {
    return __int_as_float(0x7fc00000);
}
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}

// first window (stride s, size k) that covers padded coordinate p: the smallest o >= 0 with
// o*s + k > p. Windows o with o*s <= p < o*s + k are first_window(p, k, s) .. p / s.
__device__ __forceinline__ int first_window(int p, int k, int s) {
    const int lo = p - k + 1;
    return lo <= 0 ? 0 : (lo + s - 1) / s;
}

#endif  // SCRATCHNET_COMMON_CUH
