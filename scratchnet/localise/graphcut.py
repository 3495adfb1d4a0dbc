"""Saliency-seeded graph-cut segmentation (Simonyan et al. 2013, section 3.2; GrabCut-style energy).

Given an image (H, W, 3) uint8 RGB and a saliency map (H, W):

  seeds      foreground = saliency > its fg_quantile (0.95: the 5% most salient pixels),
             background = saliency < its bg_quantile (0.30: the 30% least salient pixels).
             When ties make a strict comparison empty (e.g. a binary map) the comparison includes
             the quantile value; a pixel is never both.
  colour     one GMM per seed set (K = n_components full-covariance Gaussians, `gmm.fit`), on colours
  models     scaled to [0, 1].  K is reduced when a seed set has fewer than
             MIN_POINTS_PER_COMPONENT points per component.
  energy     E(l) = sum_i D_i(l_i) + sum_{i~j} [l_i != l_j] V_ij
               D_i(fg) = -log p_fg(z_i),  D_i(bg) = -log p_bg(z_i); seeds are hard constraints
               V_ij    = pairwise_weight * exp(-beta ||z_i - z_j||^2) / dist(i, j)
               beta    = 1 / (2 <||z_i - z_j||^2>), the mean over all neighbouring pairs of the image
             (contrast-sensitive Potts of Boykov & Jolly 2001 / GrabCut; dist = 1 or sqrt(2) on the
             8-neighbourhood).
  cut        exact minimum by max-flow (PyMaxflow's grid API; source = foreground).  A hard seed gets a
             terminal capacity 1 + max unary + sum of its pairwise weights, more than any labelling
             could save by flipping it.
  object     the largest 8-connected component of the foreground and its bounding box
             (`boxes.largest_component`, `boxes.mask_box`).

pairwise_weight (gamma) and the seed quantiles are the knobs to tune on real saliency maps
(`evaluate(records, pairwise_weight=..., segment_kwargs=dict(fg_quantile=...))`, the commands' --pairwise,
--fg-quantile and --bg-quantile; localise.network.TUNED_SEGMENT holds the values tuned for each
kind of map).  The default gamma 10 comes from a proxy: on 80 Oxford-IIIT pet photos with a
synthetic saliency blob on part of the pet, the mean mask IoU against the trimap was flat for gamma in
1..10 (0.65) and fell beyond (0.62 at 30, 0.59 at 50, GrabCut's value, which assumes a user box
rather than sparse seeds); a larger gamma also makes the max-flow slower.

Speed (227x227, CPU time per image, measured with other jobs sharing the 2 cores): seeds ~1 ms,
EM (two fits on <= 2,000 seed pixels each + the unaries of all pixels) ~10-15 ms, graph + max-flow
~25 ms (8-neighbourhood; ~10 ms with 4), components < 1 ms.  bench/bench_localise.py prints the
wall-clock split with OpenCV's grabCut timed beside it (ours about 0.3x its time in the same run).

iterations > 1 runs GrabCut-style re-estimation: the GMMs are re-fitted on the current foreground /
background and the cut repeated (the seeds stay hard).  The paper's single cut is the default.

Fallback.  A saliency map that holds NaN/inf, or that is constant (all-zero included), says nothing
about where the object is: `segment` then returns the whole image (mask all True, whole-image box)
with `fallback` set to the reason, instead of cutting.  Inputs of the wrong shape or dtype raise a
ValueError that names what was expected.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_int, check_number
from . import gmm as _gmm
from .boxes import largest_component, mask_box, whole_image_box

MIN_SIDE = 4                    # smallest image side accepted (pixels)
MIN_POINTS_PER_COMPONENT = 10   # seed pixels per GMM component, below which K is reduced
DEFAULT_PAIRWISE_WEIGHT = 10.0  # gamma; see the module docstring for how it was chosen
MAX_PAIRWISE_WEIGHT = 1e12      # the largest gamma accepted (finite in float32 sums)

# neighbour offsets (dy, dx) whose edges are added once each (symmetric): right, down, and diagonals
_OFFSETS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}


@dataclass
class Segmentation:
    """Result of `segment`.

    mask       (H, W) bool  graph-cut foreground
    component  (H, W) bool  its largest connected component (the object)
    box        (x0, y0, x1, y1) inclusive box around `component`
    fg_seeds, bg_seeds (H, W) bool  the hard-constrained seed pixels
    fallback   None after a real cut; otherwise why the whole image was returned
    n_components (K_fg, K_bg) used;  timings_ms: time per stage (seeds, em, cut, components)
    """
    mask: np.ndarray
    component: np.ndarray
    box: tuple
    fg_seeds: np.ndarray
    bg_seeds: np.ndarray
    fallback: str | None = None
    n_components: tuple = (0, 0)
    timings_ms: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.fallback is None


def segment(image: np.ndarray, saliency: np.ndarray, fg_quantile: float = 0.95,
            bg_quantile: float = 0.30, n_components: int = 5,
            pairwise_weight: float = DEFAULT_PAIRWISE_WEIGHT, neighbourhood: int = 8,
            iterations: int = 1, max_points: int = 2000, em_iter: int = 5,
            seed: int = 0) -> Segmentation:
    """Segment the object that the saliency map (H, W) points at in image (H, W, 3) uint8 RGB.

    pairwise_weight: gamma of the contrast-sensitive Potts term (larger = smoother, fewer pieces).
    neighbourhood: 4 or 8.  max_points: seed pixels per GMM fit (subsampled, seeded by `seed`);
    em_iter: EM iterations per fit at most (5: later iterations gain < 0.03 nats per pixel each
    on real photos and did not change the mask IoU on the pets proxy, for ~15% of the time).
    """
    _check_inputs(image, saliency, fg_quantile, bg_quantile, n_components, pairwise_weight,
                  neighbourhood, iterations, max_points, em_iter, seed)
    H, W = saliency.shape
    t0 = time.perf_counter()
    s = np.asarray(saliency)
    reason = _uninformative(s)
    if reason is None:
        fg_seeds, bg_seeds = seeds_from_saliency(s, fg_quantile, bg_quantile)
        if not fg_seeds.any() or not bg_seeds.any():       # unreachable for a non-constant map
            reason = "saliency gives no foreground or no background seeds"
    if reason is not None:
        full = np.ones((H, W), dtype=bool)
        none = np.zeros((H, W), dtype=bool)
        return Segmentation(full, full.copy(), whole_image_box(H, W), none, none.copy(), reason)

    z = image.astype(np.float32) / np.float32(255.0)        # (H, W, 3) in [0, 1]
    pixels = z.reshape(-1, 3)
    t1 = time.perf_counter()
    pairwise = pairwise_weights(z, pairwise_weight, neighbourhood)
    t2 = time.perf_counter()
    timings = {"seeds": 1e3 * (t1 - t0), "em": 0.0, "cut": 1e3 * (t2 - t1)}   # cut: graph + max-flow

    fg_region, bg_region = fg_seeds, bg_seeds
    for _ in range(iterations):
        t1 = time.perf_counter()
        fg_model, k_fg = _fit_colours(pixels[fg_region.ravel()], n_components, max_points, em_iter, seed)
        bg_model, k_bg = _fit_colours(pixels[bg_region.ravel()], n_components, max_points, em_iter,
                                      seed + 1)
        d_fg = -fg_model.log_likelihood(pixels).reshape(H, W)
        d_bg = -bg_model.log_likelihood(pixels).reshape(H, W)
        t2 = time.perf_counter()
        mask = min_cut(d_fg, d_bg, pairwise, fg_seeds, bg_seeds)
        t3 = time.perf_counter()
        timings["em"] += 1e3 * (t2 - t1)
        timings["cut"] += 1e3 * (t3 - t2)
        fg_region, bg_region = mask, ~mask
        if not bg_region.any():                             # cannot happen while bg seeds are hard
            break

    t3 = time.perf_counter()
    component = largest_component(mask, connectivity=8)
    box = mask_box(component)
    timings["components"] = 1e3 * (time.perf_counter() - t3)
    return Segmentation(mask, component, box, fg_seeds, bg_seeds, None, (k_fg, k_bg), timings)


def seeds_from_saliency(saliency: np.ndarray, fg_quantile: float = 0.95, bg_quantile: float = 0.30):
    """saliency (H, W) -> (fg_seeds, bg_seeds), two disjoint (H, W) bool masks (rules in the module doc)."""
    q_fg, q_bg = np.quantile(saliency, [fg_quantile, bg_quantile])
    fg = saliency > q_fg
    if not fg.any():
        fg = saliency >= q_fg
    bg = saliency < q_bg
    if not bg.any():
        bg = (saliency <= q_bg) & ~fg
    return fg, bg


def pairwise_weights(z: np.ndarray, gamma: float, neighbourhood: int = 8) -> list:
    """Contrast-sensitive Potts weights of image z (H, W, 3) float.

    Returns [(offset (dy, dx), weights (H, W) float32)] for each edge direction: weights[y, x] is the
    capacity of the edge between (y, x) and (y + dy, x + dx), 0 where that neighbour is outside.
    """
    H, W, C = z.shape
    planes = [np.ascontiguousarray(z[..., c], dtype=np.float32) for c in range(C)]  # channel-first
    sq = []
    for dy, dx in _OFFSETS[neighbourhood]:
        here, there = _inside(H, W, dy, dx)          # pixels (y, x), their neighbours (y+dy, x+dx)
        d2 = np.zeros((H - dy, W - abs(dx)), dtype=np.float32)
        for p in planes:
            diff = p[here] - p[there]
            d2 += diff * diff
        sq.append((here, d2))
    n_pairs = sum(d2.size for _, d2 in sq)
    mean_sq = sum(float(d2.sum(dtype=np.float64)) for _, d2 in sq) / max(n_pairs, 1)
    beta = np.float32(1.0 / (2.0 * mean_sq)) if mean_sq > 0 else np.float32(0.0)
    out = []
    for (dy, dx), (here, d2) in zip(_OFFSETS[neighbourhood], sq):
        w = np.zeros((H, W), dtype=np.float32)
        d2 *= -beta
        np.exp(d2, out=w[here])
        w[here] *= np.float32(gamma / np.hypot(dy, dx))
        out.append(((dy, dx), w))
    return out


def min_cut(d_fg: np.ndarray, d_bg: np.ndarray, pairwise: list, fg_seeds: np.ndarray,
            bg_seeds: np.ndarray) -> np.ndarray:
    """Minimise the energy by max-flow; returns the foreground mask (H, W) bool.

    d_fg, d_bg (H, W): unary costs of labelling a pixel foreground / background.
    pairwise: the output of `pairwise_weights`.  Seeds are hard constraints.
    """
    H, W = d_fg.shape
    base = np.minimum(d_fg, d_bg)                            # shift so that capacities are >= 0
    source_cap = (d_bg - base).astype(np.float64)          # paid when the pixel ends up background
    sink_cap = (d_fg - base).astype(np.float64)            # paid when it ends up foreground
    around = np.zeros((H, W), dtype=np.float64)              # sum of pairwise weights at each pixel
    for (dy, dx), w in pairwise:
        here, there = _inside(H, W, dy, dx)
        around += w                                          # the edge's weight counts at both ends
        around[there] += w[here]
    hard = 1.0 + max(source_cap.max(), sink_cap.max()) + around
    source_cap[fg_seeds], sink_cap[fg_seeds] = hard[fg_seeds], 0.0
    source_cap[bg_seeds], sink_cap[bg_seeds] = 0.0, hard[bg_seeds]

    try:                   # here, not at the top: every CLI command imports this module, and training or
        import maxflow     # saliency on a machine without PyMaxflow (a bare GPU image) must still run
    except ImportError as e:
        raise ImportError("GraphCut needs PyMaxflow (`pip install PyMaxflow`), which is not installed") from e
    g = maxflow.Graph[float](H * W, len(pairwise) * H * W)
    nodes = g.add_grid_nodes((H, W))
    for (dy, dx), w in pairwise:
        structure = np.zeros((3, 3))
        structure[1 + dy, 1 + dx] = 1.0
        g.add_grid_edges(nodes, weights=w, structure=structure, symmetric=True)
    g.add_grid_tedges(nodes, source_cap, sink_cap)
    g.maxflow()
    return ~g.get_grid_segments(nodes)                       # True = sink side = background


# --------------------------------------------------------------------------------------------- helpers

def _inside(H, W, dy, dx):
    """(pixels, their neighbours): the slices of an (H, W) grid whose pixel (y, x) has its neighbour
    (y + dy, x + dx) inside the grid (dy >= 0), and the slices of those neighbours."""
    here = (slice(0, H - dy), slice(max(0, -dx), W - max(0, dx)))
    there = (slice(dy, H), slice(max(0, dx), W + min(0, dx)))
    return here, there


def _fit_colours(colours: np.ndarray, n_components: int, max_points: int, em_iter: int, seed: int):
    k = max(1, min(n_components, len(colours) // MIN_POINTS_PER_COMPONENT))
    model = _gmm.fit(colours, k, max_points=max_points, max_iter=em_iter, seed=seed)
    return model, model.n_components


def _uninformative(s: np.ndarray) -> str | None:
    if not np.all(np.isfinite(s)):
        return "saliency holds NaN or inf"
    lo, hi = s.min(), s.max()
    if hi == lo:
        return "saliency is all zero" if hi == 0 else "saliency is constant"
    return None


def _check_inputs(image, saliency, fg_quantile, bg_quantile, n_components, pairwise_weight,
                  neighbourhood, iterations, max_points, em_iter, seed):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        got = (f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"segment: expected image (H, W, 3) uint8 RGB, got {got}")
    H, W, _ = image.shape
    if H < MIN_SIDE or W < MIN_SIDE:
        raise ValueError(f"segment: expected an image at least {MIN_SIDE}x{MIN_SIDE} pixels, got {H}x{W}")
    if not isinstance(saliency, np.ndarray) or saliency.ndim != 2:
        got = f"shape {saliency.shape}" if isinstance(saliency, np.ndarray) else type(saliency).__name__
        raise ValueError(f"segment: expected saliency (H, W) = ({H}, {W}) matching the image, got {got}")
    if saliency.shape != (H, W):
        raise ValueError(f"segment: expected saliency (H, W) = ({H}, {W}) matching the image, "
                         f"got shape {saliency.shape}")
    if saliency.dtype == np.bool_ or not (np.issubdtype(saliency.dtype, np.floating)
                                          or np.issubdtype(saliency.dtype, np.integer)):
        raise ValueError(f"segment: expected a real-valued saliency map (float), got dtype {saliency.dtype}")
    _check_params(fg_quantile, bg_quantile, n_components, pairwise_weight, neighbourhood, iterations,
                  max_points, em_iter, seed)


def check_segment_params(**settings):
    """segment's keyword settings checked on their own, those not given taking segment's defaults (the
    commands check them before computing any map): a ValueError that names the setting and what it
    must be, or a TypeError for a name segment does not take."""
    defaults = {k: p.default for k, p in inspect.signature(segment).parameters.items()
                if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise TypeError(f"segment takes no setting {', '.join(unknown)}; its settings are {', '.join(defaults)}")
    _check_params(**dict(defaults, **settings))


def _check_params(fg_quantile, bg_quantile, n_components, pairwise_weight, neighbourhood, iterations, max_points,
                  em_iter, seed):
    if not 0 < bg_quantile < fg_quantile < 1:
        raise ValueError("segment: expected 0 < bg_quantile < fg_quantile < 1, "
                         f"got bg_quantile={bg_quantile}, fg_quantile={fg_quantile}")
    for name, v, low in (("n_components", n_components, 1), ("iterations", iterations, 1),
                         ("max_points", max_points, 1), ("em_iter", em_iter, 0), ("seed", seed, 0)):
        check_int("segment", name, v, low)
    # finite and bounded: an infinite weight (or one that overflows float32) makes every edge's capacity
    # infinite, and max-flow then never ends (on a 64x64 test image, 1e6 to 1e20 all gave the same cut)
    check_number("segment", "pairwise_weight", pairwise_weight, low=0, high=MAX_PAIRWISE_WEIGHT)
    if neighbourhood not in _OFFSETS:
        raise ValueError(f"segment: expected neighbourhood 4 or 8, got {neighbourhood}")
