"""Numba CPU kernels of the localisation (scratchnet.localise): GMM colour densities and
connected-component labelling.

The GMM kernels take a fitted mixture in whitened form, one triple per component k:
  L_inv (K, 3, 3)  the inverse of the Cholesky factor of Sigma_k (lower triangular),
  offset (K, 3)    L_inv mu_k,
  const (K,)       log pi_k - 1/2 log |2 pi Sigma_k|,
so that log pi_k + log N(x | mu_k, Sigma_k) = const_k - 1/2 ||L_inv x - offset_k||^2.
`gmm.py` computes that form (`_whitening`) and keeps the NumPy twin the tests compare with.
"""
import numba as nb
import numpy as np


@nb.njit(inline="always")
def _log_densities_into(X, lo, logp, L_inv, offset, const):
    """logp[k, j] = log pi_k + log N(X[lo + j] | k) for the logp.shape[1] pixels from lo on.
    Component-outer loops so that the pixel loop writes contiguous memory (X is read with stride 3)."""
    half = X.dtype.type(0.5)
    for k in range(logp.shape[0]):
        a00 = L_inv[k, 0, 0]
        a10, a11 = L_inv[k, 1, 0], L_inv[k, 1, 1]
        a20, a21, a22 = L_inv[k, 2, 0], L_inv[k, 2, 1], L_inv[k, 2, 2]
        o0, o1, o2 = offset[k, 0], offset[k, 1], offset[k, 2]
        for j in range(logp.shape[1]):
            x0, x1, x2 = X[lo + j, 0], X[lo + j, 1], X[lo + j, 2]
            y0 = a00 * x0 - o0
            y1 = a10 * x0 + a11 * x1 - o1
            y2 = a20 * x0 + a21 * x1 + a22 * x2 - o2
            logp[k, j] = const[k] - half * (y0 * y0 + y1 * y1 + y2 * y2)


@nb.njit(inline="always")
def _logsumexp_into(logp, out, lo):
    """out[lo + j] = log sum_k exp(logp[k, j]), shifted by the maximum over k (no overflow)."""
    m = logp.shape[1]
    top = logp[0].copy()
    for k in range(1, logp.shape[0]):
        for j in range(m):
            top[j] = max(top[j], logp[k, j])
    total = np.zeros(m, dtype=logp.dtype)
    for k in range(logp.shape[0]):
        for j in range(m):
            total[j] += np.exp(logp[k, j] - top[j])
    for j in range(m):
        out[lo + j] = top[j] + np.log(total[j])


@nb.njit(cache=True)
def gmm_log_densities_rgb(X, L_inv, offset, const):
    """X (n, 3) -> (log pi_k + log N(x_i | k) as (K, n), log p(x_i) as (n,)): what EM's E-step needs."""
    n = X.shape[0]
    logp = np.empty((len(const), n), dtype=X.dtype)
    _log_densities_into(X, 0, logp, L_inv, offset, const)
    log_px = np.empty(n, dtype=X.dtype)
    _logsumexp_into(logp, log_px, 0)
    return logp, log_px


BLOCK = 512     # pixels per task of gmm_log_likelihood_rgb: its (K, BLOCK) scratch stays in L1


@nb.njit(parallel=True, cache=True)
def gmm_log_likelihood_rgb(X, L_inv, offset, const):
    """X (n, 3) -> log p(x_i) (n,) only: the unaries of a graph cut, for every pixel of an image.

    Threads take blocks of BLOCK pixels, each computed as gmm_log_densities_rgb computes all n
    (the same operations in the same order: equal results) on a (K, BLOCK) scratch instead of a
    (K, n) array."""
    n = X.shape[0]
    out = np.empty(n, dtype=X.dtype)
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        logp = np.empty((len(const), min(BLOCK, n - lo)), dtype=X.dtype)
        _log_densities_into(X, lo, logp, L_inv, offset, const)
        _logsumexp_into(logp, out, lo)
    return out


@nb.njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:                    # path compression
        parent[i], i = root, parent[i]
    return root


@nb.njit(cache=True)
def _union(parent, a, b):
    ra, rb = _find(parent, a), _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@nb.njit(cache=True)
def label_components(mask, diagonal):
    """mask (H, W) bool -> labels (H, W) int32: 0 = background, 1, 2, ... the connected regions
    numbered in raster order of their first pixel; diagonal: 8-connectivity, else 4.

    Pass 1: union every True pixel with its already-visited True neighbours (left, up, and with
    8-connectivity up-left, up-right).  Pass 2: number the roots 1, 2, ... in raster order."""
    H, W = mask.shape
    parent = np.arange(H * W)
    for y in range(H):
        for x in range(W):
            if not mask[y, x]:
                continue
            i = y * W + x
            if x > 0 and mask[y, x - 1]:
                _union(parent, i, i - 1)
            if y > 0:
                if mask[y - 1, x]:
                    _union(parent, i, i - W)
                if diagonal:
                    if x > 0 and mask[y - 1, x - 1]:
                        _union(parent, i, i - W - 1)
                    if x < W - 1 and mask[y - 1, x + 1]:
                        _union(parent, i, i - W + 1)
    labels = np.zeros((H, W), dtype=np.int32)
    root_label = np.zeros(H * W, dtype=np.int32)
    count = 0
    for y in range(H):
        for x in range(W):
            if mask[y, x]:
                r = _find(parent, y * W + x)
                if root_label[r] == 0:
                    count += 1
                    root_label[r] = count
                labels[y, x] = root_label[r]
    return labels
