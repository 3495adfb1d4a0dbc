"""Softmax cross-entropy on unnormalised class scores.

    p = softmax(s) computed as exp(s - max s) / sum exp(s - max s)   (no overflow)
    loss = mean_n -log p[n, y_n]
    dloss/ds = (p - onehot(y)) / N

scores (N, K) float; labels (N,) integers in [0, K).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import device_of, get_array_module, to_device
from scratchnet import kernels


def log_softmax(scores):
    """scores (N, K) -> log softmax (N, K), the row maximum subtracted first so exp cannot overflow."""
    xp = get_array_module(scores)
    z = scores - scores.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


def softmax_cross_entropy(scores, labels):
    """Return (mean loss as a Python float, d(loss)/d(scores) (N, K))."""
    labels = _checked_inputs(scores, labels)
    xp = get_array_module(scores)
    n, k = scores.shape
    if kernels.on_gpu(scores):
        # one fused CUDA kernel (kernels/loss.cu), same formulas. A label outside [0, K) leaves its row's
        # loss NaN, so the labels are looked at only then: each look is a wait for the GPU.
        loss, d = kernels.softmax_xent(scores, labels)
        if math.isnan(loss):
            _check_labels(labels, k)
        return loss, d
    _check_labels(labels, k)
    logp = log_softmax(scores)
    rows = xp.arange(n)
    loss = -logp[rows, labels].mean()
    d = xp.exp(logp)
    d[rows, labels] -= 1
    return float(loss), d / n


def _checked_inputs(scores, labels):
    """Refuse scores that are not a float32/float64 (N, K) array with N >= 1, or labels that are not N
    integers; return the labels as an array on the scores' device. (Whether each label is in [0, K) is
    _check_labels', which on the GPU runs only when the loss says so.)"""
    dtype = getattr(scores, "dtype", None)
    if dtype not in (np.float32, np.float64):         # the GPU kernel has these two; so has the CPU
        got = f"dtype {dtype}" if dtype is not None else type(scores).__name__
        raise ValueError(f"softmax_cross_entropy: expected float32 or float64 scores (an array), got {got}")
    if scores.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: expected scores of shape (N, K), got {tuple(scores.shape)}")
    labels = to_device(labels, device_of(scores))           # an array where the scores are (labels are small)
    n = scores.shape[0]
    if n == 0:
        raise ValueError("softmax_cross_entropy: an empty batch (N = 0) has no mean loss: expected N >= 1")
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy: expected integer labels of shape ({n},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    return labels


def _check_labels(labels, k):
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"softmax_cross_entropy: labels must be class indices in [0, {k}), "
                         f"got values in [{lo}, {hi}]")


def softmax_cross_entropy_naive(scores, labels):
    """(loss, dscores) from the definitions, one row at a time, in float64 (for tests):
    p[k] = exp(s[k]) / sum_j exp(s[j]) (shifted by m = max s: the same p), loss = mean -log p[y]
    = mean (log sum_j exp(s[j] - m) - (s[y] - m)), dscores[n, k] = (p[k] - [k == y_n]) / N.
    scores (N, K), labels (N,)."""
    n, k = scores.shape
    d = np.zeros((n, k))
    total = 0.0
    for i in range(n):
        m = max(float(v) for v in scores[i])
        e = [math.exp(float(v) - m) for v in scores[i]]
        z = math.fsum(e)
        total += math.log(z) - (float(scores[i, int(labels[i])]) - m)
        for j in range(k):
            d[i, j] = (e[j] / z - (j == int(labels[i]))) / n
    return total / n, d
