"""Boxes, connected components and the ILSVRC localisation criterion.

A box is (x0, y0, x1, y1) in *inclusive* pixel coordinates, x along the width, y along the height:
the whole of an H x W image is (0, 0, W - 1, H - 1) and a single pixel is (x, y, x, y).  Its width
is x1 - x0 + 1 (the ILSVRC devkit convention; float boxes, as in imagenet-val-dev/boxes.csv, use the
same +1).

ILSVRC criterion: a guess (class c, box b) is right for an image with true class g and ground-truth
boxes B iff c == g and IoU(b, B_j) >= 0.5 for some j.  Top-k localisation error counts an image as
wrong when none of its k guesses is right.

Connected components use 8-connectivity by default (a pixel touches its diagonal neighbours), matching
the 8-neighbourhood of the graph cut; `connectivity=4` is available.  Labelling is union-find
compiled with Numba: two passes over the raster (union with the earlier neighbours, then numbering),
with path compression, so close to linear in H W.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_int, check_number, is_int
from ..kernels import cpu_localise


# --------------------------------------------------------------------------------------------- boxes

def _check_box(box, name="box") -> tuple:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (x0, y0, x1, y1), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{name}: expected finite coordinates (x0, y0, x1, y1), got {box!r}")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{name}: expected x0 <= x1 and y0 <= y1 (inclusive coordinates), got {box!r}")
    return x0, y0, x1, y1


def box_area(box) -> float:
    """Pixels covered by an inclusive box."""
    x0, y0, x1, y1 = _check_box(box)
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def iou(a, b) -> float:
    """Intersection over union of two inclusive boxes (x0, y0, x1, y1); 0 when they do not overlap."""
    ax0, ay0, ax1, ay1 = _check_box(a, "first box")
    bx0, by0, bx1, by1 = _check_box(b, "second box")
    iw = min(ax1, bx1) - max(ax0, bx0) + 1
    ih = min(ay1, by1) - max(ay0, by0) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax1 - ax0 + 1) * (ay1 - ay0 + 1) + (bx1 - bx0 + 1) * (by1 - by0 + 1) - inter
    return float(inter / union)


def is_correct(pred_label: int, pred_box, gt_label: int, gt_boxes, iou_threshold: float = 0.5) -> bool:
    """The ILSVRC criterion for one guess: right class and IoU >= 0.5 with some ground-truth box.
    Labels are class indices (integers); iou_threshold is a fraction in (0, 1]."""
    for name, label in (("pred_label", pred_label), ("gt_label", gt_label)):
        if not is_int(label):
            raise ValueError(f"is_correct: {name} must be a class index (an integer), got {label!r}")
    check_number("is_correct", "iou_threshold", iou_threshold, low=0, high=1, low_open=True)
    if int(pred_label) != int(gt_label):
        return False
    return any(iou(pred_box, g) >= iou_threshold for g in gt_boxes)


def localisation_error(guesses, gt_label: int, gt_boxes, iou_threshold: float = 0.5) -> int:
    """1 when none of the (label, box) guesses is right (ILSVRC top-k with k = len(guesses)), else 0."""
    return int(not any(is_correct(c, b, gt_label, gt_boxes, iou_threshold) for c, b in guesses))


def resize_box(box, sx: float, sy: float) -> tuple:
    """An inclusive box on an image resized by sx along the width and sy along the height: pixel x covers
    [x, x + 1), so x0 -> x0 * sx and x1 -> (x1 + 1) * sx - 1 (floats; the whole image stays the whole image)."""
    x0, y0, x1, y1 = _check_box(box)
    sx = check_number("resize_box", "sx", sx, low=0, low_open=True)
    sy = check_number("resize_box", "sy", sy, low=0, low_open=True)
    return (x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1)


def whole_image_box(h: int, w: int) -> tuple:
    """(0, 0, w - 1, h - 1)."""
    check_int("whole_image_box", "h", h, 1)
    check_int("whole_image_box", "w", w, 1)
    return (0, 0, int(w) - 1, int(h) - 1)


def centre_box(h: int, w: int, frac: float) -> tuple:
    """The centred box whose sides are `frac` of the image's sides (area frac**2), 0 < frac <= 1."""
    check_number("centre_box", "frac", frac, low=0, high=1, low_open=True)
    check_int("centre_box", "h (image height)", h, 1)
    check_int("centre_box", "w (image width)", w, 1)
    bw, bh = max(1, round(frac * w)), max(1, round(frac * h))
    x0, y0 = (w - bw) // 2, (h - bh) // 2
    return (x0, y0, x0 + bw - 1, y0 + bh - 1)


def mask_box(mask: np.ndarray):
    """Tight inclusive box (x0, y0, x1, y1) around the True pixels of mask (H, W); None when empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_box: expected a mask (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def saliency_threshold_box(saliency: np.ndarray, frac: float, connectivity: int = 8) -> tuple:
    """Box around the largest connected component of saliency >= frac * max(saliency).

    saliency (H, W), non-negative.  A map whose maximum is not positive, or that holds NaN/inf,
    has no salient region: the whole-image box is returned.
    """
    s = np.asarray(saliency)
    if s.ndim != 2:
        raise ValueError(f"saliency_threshold_box: expected a saliency map (H, W), got shape {s.shape}")
    if not 0 < frac <= 1:
        raise ValueError(f"saliency_threshold_box: expected 0 < frac <= 1, got {frac}")
    top = s.max() if s.size else 0
    if not np.all(np.isfinite(s)) or not top > 0:
        return whole_image_box(*s.shape)
    return mask_box(largest_component(s >= frac * top, connectivity))


# --------------------------------------------------------------------------------------------- components

def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected True regions of mask (H, W) -> (labels (H, W) int32, count).

    Background is 0, components are 1..count in raster order of their first pixel.
    connectivity: 8 (diagonal neighbours touch) or 4.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"connected_components: expected a mask (H, W), got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connected_components: connectivity must be 4 or 8, got {connectivity}")
    labels = cpu_localise.label_components(np.ascontiguousarray(mask, dtype=np.bool_), connectivity == 8)
    return labels, int(labels.max()) if labels.size else 0


def largest_component(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """mask (H, W) bool -> the largest connected True region only (ties: the first in raster order)."""
    labels, count = connected_components(mask, connectivity)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == sizes.argmax()
