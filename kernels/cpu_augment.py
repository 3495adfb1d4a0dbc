"""Numba kernel of the training loader: crop, flip, NHWC -> NCHW and normalise in one pass.

``scratchnet.io.loader.BatchLoader.make_batch`` turns B uint8 photos (B, H, W, 3) into the network's
float32 input (B, 3, H, W). Done in NumPy steps (reflect-pad, a fancy-indexed crop, a flip, a
transpose, a cast, the mean, the scale) it made about 4,000 images a second on one core, well below
what a GPU trains at on 64-pixel photos; this kernel reads each source pixel once and writes each
input value once. It runs in the loader's prefetch thread without the GIL (``nogil``) and on one
core (not ``parallel``: the training step's own parallel kernels may be running at the same time).
``bench/bench_loader.py`` times the two side by side.

The reference is ``Augment.crop_flip`` + the NumPy steps (``BatchLoader.make_batch_reference``);
tests/test_io_data.py checks that the two give the same bits.
"""
import numba as nb
import numpy as np


@nb.njit(nogil=True, cache=True)
def crop_flip_normalise(batch, oy, ox, flip, pad, mean, scale, x):
    """x[b, c, i, j] = (float32(P_b[oy_b + i, ox_b + j', c]) - mean[c, i, j]) * scale.

    batch (B, H, W, 3) uint8; P_b is photo b reflect-padded by ``pad`` pixels on each side (NumPy's
    mode "reflect", the edge pixel not repeated; needs pad < H and pad < W); oy, ox (B,) int64 window
    offsets in 0..2*pad; j' = W-1-j where flip[b], else j; mean (3, H, W) float32; scale float32.
    Writes x (B, 3, H, W) float32, an array the caller made (NumPy's, for its huge pages: see
    kernels/__init__.py).
    """
    n, h, w, ch = batch.shape
    rows = np.empty(h, np.int64)
    cols = np.empty(w, np.int64)
    for b in range(n):
        for i in range(h):                  # source row and column of each output row and column
            rows[i] = _reflect(i + oy[b] - pad, h)
        for j in range(w):
            cols[j] = _reflect((w - 1 - j if flip[b] else j) + ox[b] - pad, w)
        for c in range(ch):                 # writes in x's order
            for i in range(h):
                src = batch[b, rows[i]]     # (W, 3): the source row
                for j in range(w):
                    x[b, c, i, j] = (np.float32(src[cols[j], c]) - mean[c, i, j]) * scale


@nb.njit(inline="always")
def _reflect(k, n):
    """Index k of a row of n, reflected at both ends without repeating the edge (|k| < n)."""
    if k < 0:
        return -k
    if k >= n:
        return 2 * (n - 1) - k
    return k
