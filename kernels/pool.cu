// Max pooling with switches and average pooling, forward and backward.
// (compiled after common.cuh; twins of cpu_pool.py and of AvgPool2d in layers/pool.py)
//
// Geometry, shared by all four kernels: input planes h x w, window kh x kw, stride sh x sw,
// padding pt (top) and pl (left); output planes oh x ow. Output (oy, ox) covers the padded
// rows oy*sh .. oy*sh + kh - 1, i.e. input rows oy*sh - pt .. (likewise columns).
//
// Backward kernels are gathers: one thread per input element walks the few outputs whose window
// contains it (first_window .. p / s along each axis) and sums their contributions in the same
// order as the CPU code, so there are no atomics and the sums match the CPU bit for bit.

// x (NC, h, w) -> y, switches (NC, oh, ow); one thread per output.
// Padding never wins (best starts at -inf), nor does NaN (v > best is false: a window of NaNs gives
// -inf, its switch at the window's first element inside the input, as on the CPU); the first
// maximum in row-major order wins ties;
// the switch is the flat index yy*w + xx of the winner in its h*w input plane.
template <typename T>
__global__ void maxpool_fwd(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ switches,
                            const idx_t total, const int h, const int w, const int kh, const int kw,
                            const int sh, const int sw, const int pt, const int pl,
                            const int oh, const int ow) {
    GRID_STRIDE_LOOP(i, total) {
        const idx_t nc = i / ((idx_t)oh * ow);                 // one 64-bit division, then 32-bit
        const int r = (int)(i - nc * oh * ow), ox = r % ow, oy = r / ow;
        const T* plane = x + nc * h * w;
        const int y0 = oy * sh - pt, x0 = ox * sw - pl;
        const int ya = max(y0, 0), yb = min(y0 + kh, h);
        const int xa = max(x0, 0), xb = min(x0 + kw, w);
        T best = neg_inf<T>();
        int arg = ya * w + xa;
        for (int yy = ya; yy < yb; ++yy) {
            for (int xx = xa; xx < xb; ++xx) {
                const T v = plane[yy * w + xx];
                if (v > best) {
                    best = v;
                    arg = yy * w + xx;
                }
            }
        }
        y[i] = best;
        switches[i] = arg;
    }
}

// dy, switches (NC, oh, ow) -> dx (NC, h, w); one thread per input element: the sum of dy over
// the outputs whose window contains this element and whose switch points at it.
template <typename T>
__global__ void maxpool_bwd_gather(const T* __restrict__ dy, const int* __restrict__ switches,
                                   T* __restrict__ dx, const idx_t total, const int h, const int w,
                                   const int kh, const int kw, const int sh, const int sw,
                                   const int pt, const int pl, const int oh, const int ow) {
    GRID_STRIDE_LOOP(i, total) {
        const idx_t nc = i / ((idx_t)h * w);                   // one 64-bit division, then 32-bit
        const int r = (int)(i - nc * h * w), ix = r % w, iy = r / w;
        const idx_t base = nc * oh * ow;                       // this plane's first output
        const int me = iy * w + ix;
        const int py = iy + pt, px = ix + pl;
        const int oy1 = min(py / sh, oh - 1), ox1 = min(px / sw, ow - 1);
        T acc = T(0);
        for (int oy = first_window(py, kh, sh); oy <= oy1; ++oy) {
            for (int ox = first_window(px, kw, sw); ox <= ox1; ++ox) {
                const idx_t o = base + oy * ow + ox;
                if (switches[o] == me) acc += dy[o];
            }
        }
        dx[i] = acc;
    }
}

// Average pooling, padding counted as zeros (count_include_pad); in ceil mode a window that runs
// past the padded border is clipped there and divided by the clipped size:
//   div(oy, ox) = (min(oy*sh + kh, h + pt + pb) - oy*sh) * (min(ox*sw + kw, w + pl + pr) - ox*sw)
template <typename T>
__device__ __forceinline__ T avgpool_div(int oy, int ox, int h, int w, int kh, int kw, int sh, int sw,
                                         int pt, int pb, int pl, int pr) {
    const int ys = oy * sh, xs = ox * sw;
    return T((min(ys + kh, h + pt + pb) - ys) * (min(xs + kw, w + pl + pr) - xs));
}

// x (NC, h, w) -> y (NC, oh, ow); one thread per output. Sums in the CPU's order (window rows,
// then columns), then divides.
template <typename T>
__global__ void avgpool_fwd(const T* __restrict__ x, T* __restrict__ y, const idx_t total,
                            const int h, const int w, const int kh, const int kw, const int sh,
                            const int sw, const int pt, const int pb, const int pl, const int pr,
                            const int oh, const int ow) {
    GRID_STRIDE_LOOP(i, total) {
        const idx_t nc = i / ((idx_t)oh * ow);
        const int r = (int)(i - nc * oh * ow), ox = r % ow, oy = r / ow;
        const T* plane = x + nc * h * w;
        const int y0 = oy * sh - pt, x0 = ox * sw - pl;
        T acc = T(0);
        for (int a = max(y0, 0); a < min(y0 + kh, h); ++a)
            for (int b = max(x0, 0); b < min(x0 + kw, w); ++b)
                acc += plane[a * w + b];
        y[i] = acc / avgpool_div<T>(oy, ox, h, w, kh, kw, sh, sw, pt, pb, pl, pr);
    }
}

// dy (NC, oh, ow) -> dx (NC, h, w); one thread per input element: the sum of dy / div over the
// windows containing it, window offsets (a, b) in increasing order as in the CPU code.
template <typename T>
__global__ void avgpool_bwd_gather(const T* __restrict__ dy, T* __restrict__ dx, const idx_t total,
                                   const int h, const int w, const int kh, const int kw,
                                   const int sh, const int sw, const int pt, const int pb,
                                   const int pl, const int pr, const int oh, const int ow) {
    GRID_STRIDE_LOOP(i, total) {
        const idx_t nc = i / ((idx_t)h * w);
        const int r = (int)(i - nc * h * w), ix = r % w, iy = r / w;
        const T* g = dy + nc * oh * ow;
        const int py = iy + pt, px = ix + pl;
        T acc = T(0);
        for (int a = 0; a < kh && a <= py; ++a) {          // window row offset a: oy = (py - a) / sh
            if ((py - a) % sh) continue;
            const int oy = (py - a) / sh;
            if (oy >= oh) continue;
            for (int b = 0; b < kw && b <= px; ++b) {
                if ((px - b) % sw) continue;
                const int ox = (px - b) / sw;
                if (ox >= ow) continue;
                acc += g[oy * ow + ox] / avgpool_div<T>(oy, ox, h, w, kh, kw, sh, sw, pt, pb, pl, pr);
            }
        }
        dx[i] = acc;
    }
}
