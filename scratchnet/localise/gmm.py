"""Gaussian mixture models fitted by EM, in NumPy: the colour models of GrabCut.

A GMM with K full-covariance components over d-dimensional points (d = 3 for RGB):

    p(x) = sum_k  pi_k N(x | mu_k, Sigma_k)

Fitting (`fit`):
  1. k-means++ seeding with a seeded RNG, then a few Lloyd (k-means) steps -> hard assignment;
     the first M-step turns that assignment into (pi, mu, Sigma).  Same seed -> same model.
  2. EM.  E-step: responsibilities r_ik = pi_k N(x_i|k) / p(x_i), by log-sum-exp.
          M-step: N_k = sum_i r_ik, pi_k = N_k / n, mu_k = sum_i r_ik x_i / N_k,
                  Sigma_k = S_k / N_k + (b / N_k) I,   b = reg_variance * n / K,
                  with S_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T.

Covariance regularisation.  A component of average size (N_k = n / K) gets reg_variance added to its
diagonal, a smaller one more.  This keeps Sigma positive definite even for a flat-coloured seed region
(S_k = 0), and it is the exact MAP M-step under the covariance prior log p(Sigma) = -b/2 tr(Sigma^-1)
(b fixed during a fit), so EM never decreases the penalised objective
    mean log-likelihood - b / (2 n) sum_k tr(Sigma_k^-1)            (`objective_history`)
(Dempster, Laird & Rubin's argument holds for MAP-EM; EM stops when this objective gains < tol).
With reg_variance = 0 the M-step is the plain maximum-likelihood one and the recorded mean
log-likelihood (`log_likelihood_history`) itself never decreases; with a prior it may dip by a hair
(~1e-6 nats) while the prior pulls the covariances.  Both facts are tested.

Log-densities use the Cholesky factor Sigma = L L^T:
    log N(x|mu, Sigma) = -d/2 log(2 pi) - sum_j log L_jj - 1/2 ||L^-1 (x - mu)||^2.

Speed.  EM runs on at most `max_points` points (a seeded random subsample, 2,000 by default): a
five-component colour model is well determined by a few thousand pixels, and the E-step cost is
O(n K d^2) per iteration.  Evaluating the fitted model on a whole image is one pass (`log_likelihood`),
in float32 by default (plenty for unaries of a graph cut).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..kernels import cpu_localise

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class GMM:
    """A fitted mixture.  weights (K,), means (K, d), covariances (K, d, d).

    log_likelihood_history / objective_history: one value per EM iteration (see the module docstring).
    """
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    log_likelihood_history: list = field(default_factory=list)
    objective_history: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def component_log_densities(self, X: np.ndarray, dtype=np.float32) -> np.ndarray:
        """log pi_k + log N(x_i | mu_k, Sigma_k) for X (n, d) -> (n, K)."""
        X = _check_points(X, self.means.shape[1])
        return _weighted_log_densities(X.astype(dtype, copy=False), self.weights, self.means,
                                       self.covariances)[0].T

    def log_likelihood(self, X: np.ndarray, dtype=np.float32) -> np.ndarray:
        """log p(x_i) for X (n, d) -> (n,), by log-sum-exp over the components."""
        X = _check_points(X, self.means.shape[1])
        return _weighted_log_densities(X.astype(dtype, copy=False), self.weights, self.means,
                                       self.covariances, only_total=True)


def fit(X: np.ndarray, n_components: int = 5, *, max_iter: int = 10, tol: float = 1e-3,
        reg_variance: float = 1e-4, max_points: int = 2000, kmeans_iter: int = 3,
        seed: int = 0) -> GMM:
    """Fit a K-component full-covariance GMM to X (n, d) by EM; returns a `GMM`.

    max_points: EM runs on a seeded random subsample of at most this many rows of X.
    max_iter, tol: at most max_iter EM iterations; stop early when the objective (mean
    log-likelihood + log prior / n) gains less than tol (nats per point) in one iteration.
    reg_variance: the covariance prior (module docstring), in the squared units of X
    (1e-4 = a standard deviation of 0.01, about 2.5 grey levels for colours scaled to [0, 1]);
    0 gives plain maximum likelihood, which fails with a ValueError on degenerate (flat) data.
    Fewer than K components come back when k-means leaves clusters empty (e.g. fewer than K
    distinct colours).
    """
    X = _check_points(X)
    n, d = X.shape
    if n == 0:
        raise ValueError("fit: expected at least one point in X (n, d), got n = 0")
    if n_components < 1:
        raise ValueError(f"fit: expected n_components >= 1, got {n_components}")
    if not reg_variance >= 0:
        raise ValueError(f"fit: expected reg_variance >= 0, got {reg_variance}")
    rng = np.random.default_rng(seed)
    if n > max_points:
        X = X[rng.choice(n, size=max_points, replace=False)]
    X = X.astype(np.float64)
    n = len(X)
    K = int(min(n_components, n))

    labels = _kmeans(X, K, kmeans_iter, rng)
    labels = np.unique(labels, return_inverse=True)[1]                   # drop empty clusters
    K = int(labels.max()) + 1
    resp = np.zeros((n, K))
    resp[np.arange(n), labels] = 1.0
    XX = (X[:, :, None] * X[:, None, :]).reshape(n, d * d)                # (n, d*d) outer products
    b = reg_variance * n / K                                              # prior strength
    weights, means, covs = _m_step(X, XX, resp, b)

    ll_hist, obj_hist = [], []
    converged = False
    for it in range(max_iter):
        logp, log_px = _weighted_log_densities(X, weights, means, covs)  # (K, n), (n,)
        ll = float(log_px.mean())
        ll_hist.append(ll)
        obj_hist.append(ll + _log_prior(covs, b) / n)
        if it > 0 and obj_hist[-1] - obj_hist[-2] < tol:
            converged = True
            break
        resp = np.exp(logp - log_px).T                                   # (n, K)
        weights, means, covs = _m_step(X, XX, resp, b)
    _whitening(weights, means, covs)    # the model returned can be used: refused here, not at its first use
    return GMM(weights, means, covs, ll_hist, obj_hist, n_iter=len(ll_hist), converged=converged)


# --------------------------------------------------------------------------------------------- helpers

def _check_points(X, d: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or (d is not None and X.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(f"expected points of shape {want}, got shape {X.shape}")
    if X.dtype == np.bool_ or not (np.issubdtype(X.dtype, np.floating)
                                   or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"expected real-valued points, got dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        raise ValueError("expected finite points; X contains NaN or inf")
    return X


def _kmeans(X: np.ndarray, K: int, n_iter: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding then n_iter Lloyd steps.  X (n, d) -> labels (n,) in [0, K)."""
    n = len(X)
    centres = np.empty((K, X.shape[1]))
    centres[0] = X[rng.integers(n)]
    d2 = ((X - centres[0]) ** 2).sum(1)
    for k in range(1, K):                      # next centre drawn with probability ~ squared distance
        cum = np.cumsum(d2)
        i = np.searchsorted(cum, rng.random() * cum[-1], side="right") if cum[-1] > 0 \
            else rng.integers(n)
        centres[k] = X[min(i, n - 1)]
        d2 = np.minimum(d2, ((X - centres[k]) ** 2).sum(1))
    sq = (X ** 2).sum(1)[:, None]
    for _ in range(max(n_iter, 1)):
        dist = sq - 2 * X @ centres.T + (centres ** 2).sum(1)            # (n, K)
        labels = dist.argmin(1)
        onehot = labels[:, None] == np.arange(K)                          # (n, K)
        counts = onehot.sum(0)
        sums = onehot.T.astype(X.dtype) @ X
        filled = counts > 0                    # an empty cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    return labels


def _m_step(X, XX, resp, b):
    """resp (n, K) -> weights (K,), means (K, d), covariances (K, d, d): the MAP update
    Sigma_k = S_k / N_k + (b / N_k) I, with S_k from the second moments XX (n, d*d)."""
    n, d = X.shape
    Nk = np.maximum(resp.sum(0), 1e-10)                                   # (K,)
    weights = Nk / Nk.sum()
    means = (resp.T @ X) / Nk[:, None]                                    # (K, d)
    second = (resp.T @ XX).reshape(-1, d, d) / Nk[:, None, None]          # E[x x^T] per component
    covs = second - means[:, :, None] * means[:, None, :] + (b / Nk)[:, None, None] * np.eye(d)
    return weights, means, covs


def _log_prior(covs, b) -> float:
    """sum_k -b/2 tr(Sigma_k^-1): the covariance prior the M-step is the exact maximiser with."""
    return float(-0.5 * b * np.trace(np.linalg.inv(covs), axis1=1, axis2=2).sum())


def _whitening(weights, means, covs):
    """Per component: L^-1 (K, d, d), L^-1 mu (K, d) and c = log pi - 1/2 log|2 pi Sigma| (K,)."""
    try:
        L = np.linalg.cholesky(covs)                                      # (K, d, d), lower
    except np.linalg.LinAlgError:
        raise ValueError("GMM: a covariance matrix is not positive definite (a component sits on "
                         "flat or collinear points); fit with reg_variance > 0, and data of moderate size: "
                         "the covariance is formed as E[x x^T] - mu mu^T, whose rounding at values of 1e6 "
                         "outweighs the default reg_variance (scale the data, say to [0, 1], as segment does)"
                         ) from None
    L_inv = np.linalg.inv(L)
    offset = np.einsum("kij,kj->ki", L_inv, means)
    d = means.shape[1]
    const = np.log(weights) - np.log(np.diagonal(L, axis1=1, axis2=2)).sum(1) - 0.5 * d * LOG_2PI
    return L_inv, offset, const


def _weighted_log_densities(X, weights, means, covs, only_total=False):
    """X (n, d) -> (log pi_k + log N(x | mu_k, Sigma_k) as (K, n), log p(x) as (n,)), or only log p(x)
    when only_total (the graph cut's unaries: nothing (K, n) is kept).

    Through Cholesky factors: y_k = L_k^-1 (x - mu_k) and log N = c_k - ||y_k||^2 / 2, then the
    log-sum-exp over k.  Colours (d = 3) go through the Numba kernels of kernels/cpu_localise.py;
    other d through their plain NumPy twin `_weighted_log_densities_numpy` (the reference in the tests).
    """
    if X.shape[1] != 3:
        logp = _weighted_log_densities_numpy(X, weights, means, covs).astype(X.dtype)
        return _logsumexp(logp) if only_total else (logp, _logsumexp(logp))
    L_inv, offset, const = (a.astype(X.dtype) for a in _whitening(weights, means, covs))
    kernel = cpu_localise.gmm_log_likelihood_rgb if only_total else cpu_localise.gmm_log_densities_rgb
    return kernel(np.ascontiguousarray(X), L_inv, offset, const)


def _weighted_log_densities_numpy(X, weights, means, covs) -> np.ndarray:
    """The same as `_weighted_log_densities` in NumPy, X (n, d) -> (K, n); the reference in tests."""
    L_inv, offset, const = _whitening(weights, means, covs)
    diff = X[None, :, :] - means[:, None, :]                              # (K, n, d)
    y = np.einsum("kij,knj->kni", L_inv, diff)                            # whitened
    return const[:, None] - 0.5 * (y ** 2).sum(2)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum_k exp(a_k) over the first axis of a (K, n) -> (n,), without overflow."""
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))
