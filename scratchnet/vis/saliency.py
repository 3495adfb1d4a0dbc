"""Image-specific class saliency (Simonyan et al. 2013, section 3.1).

The class score S_c is, near an image I0, roughly linear: S_c(I) ~ w^T I + b with

    w = dS_c / dI  at I0                      (N, C, H, W): one backward pass, weights fixed
    M[i, j] = max_k |w[k, i, j]|              (N, H, W): the saliency map, k over the colour channels

Scores are the *unnormalised* class scores (before softmax), as in the paper. The same map under
``rule="deconvnet"`` or ``"guided"`` replaces w by the DeconvNet / guided-backprop reconstruction
(the rules differ only at ReLU; see ``scratchnet.layers.activation``).

``ten_crop_saliency`` is the paper's 10-crop variant: the map is computed for the 4 corner crops, the
centre crop and their horizontal flips, each mapped back onto the (resized) photo, and averaged.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import get_array_module, to_numpy
from ..layers import Rule
from ..checks import check_int
from .display import on_net_device, prepare_pixels, resolve_class, resolve_classes


def class_gradient(net, x, classes=None, rule="gradient"):
    """d S_c / d x for one target class per image.

    x (N, C, H, W) network input; classes: None (each image's top-1), one class for all, or one per
    image (N,); a class is an index, a wnid or a name. Returns (grad (N, C, H, W), classes (N,) int64,
    scores (N, K)).
    """
    rule = Rule.parse(rule)
    x = on_net_device(net, x)
    cls = None if classes is None else _per_image(resolve_classes(net, classes), _batch_size(x))
    xp = get_array_module(x)
    scores = net.forward(x)
    n = scores.shape[0]
    if cls is None:
        cls = to_numpy(scores.argmax(axis=1)).astype(np.int64)
    onehot = xp.zeros_like(scores)
    onehot[xp.arange(n), xp.asarray(cls)] = 1
    grad = net.backward(onehot, rule=rule, param_grads=False)
    return grad, cls, scores


def saliency_from_gradient(grad):
    """M = max over colour channels of |w|: (N, C, H, W) -> (N, H, W)."""
    if getattr(grad, "ndim", None) != 4:
        raise ValueError(f"saliency_from_gradient: expected image gradients (N, C, H, W), got "
                         f"{'shape ' + str(tuple(grad.shape)) if hasattr(grad, 'shape') else type(grad).__name__}")
    xp = get_array_module(grad)
    return xp.abs(grad).max(axis=1)


def _batch_size(x) -> int:
    """N of a network input x (N, C, H, W); a clear error for anything else (the network checks the rest)."""
    if not hasattr(x, "shape") or len(x.shape) != 4:
        got = f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected network input (N, C, H, W) as an array, got {got}")
    return int(x.shape[0])


def _per_image(cls, n) -> np.ndarray:
    """One class for all n images, or one each: -> (n,) int64."""
    if cls.ndim == 0 or cls.shape == (1,):
        return np.full(n, cls.reshape(-1)[0], dtype=np.int64)
    if cls.shape != (n,):
        raise ValueError(f"classes: expected one class for all images or one per image ({n}), got "
                         f"shape {cls.shape}")
    return cls


@dataclass
class Saliency:
    """maps (N, H, W), or (N, k, H, W) when k classes were asked per image; classes (N,) or (N, k);
    scores: the unnormalised score S_c of each (image, class); rule: the backward rule used."""
    maps: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    rule: str


def saliency(net, x, classes=None, rule="gradient", batch_size=16) -> Saliency:
    """Saliency maps of a batch of network inputs, batched over images and target classes.

    x (N, C, H, W); classes: None (top-1 of each image), an int, (N,) ints, or (N, k) ints (k maps
    per image). The (image, class) pairs are processed ``batch_size`` at a time; x may be on the host
    for a network on the GPU (each batch is moved there). The results are NumPy arrays.
    A map computed in a batch agrees with the same map computed alone (batch_size=1) to rounding, and
    by more where a value sits near a ReLU kink or a max-pooling tie: BLAS sums in another order.
    """
    n = _batch_size(x)
    xp = get_array_module(x)
    check_int("saliency", "batch_size", batch_size, 1)
    per_image = None if classes is None else resolve_classes(net, classes)
    if per_image is not None and per_image.ndim == 2:
        if per_image.shape[0] != n:
            raise ValueError(f"classes of shape (N, k) needs N = {n} rows, got {per_image.shape}")
        k = per_image.shape[1]
        if k == 0:
            raise ValueError("classes of shape (N, k) needs k >= 1 classes per image, got k = 0")
        img_idx, flat_cls = np.repeat(np.arange(n), k), per_image.reshape(-1)
    elif per_image is None or per_image.ndim <= 1:
        k = None
        img_idx = np.arange(n)
        flat_cls = None if per_image is None else _per_image(per_image, n)
    else:
        raise ValueError(f"classes must be None, a class, (N,) or (N, k), got shape {per_image.shape}")
    maps, cls_out, sc_out = [], [], []
    for s in range(0, len(img_idx), batch_size):
        idx = img_idx[s:s + batch_size]
        xb = x[xp.asarray(idx)] if k is not None else x[s:s + batch_size]
        cb = None if flat_cls is None else flat_cls[s:s + batch_size]
        grad, cls, scores = class_gradient(net, xb, cb, rule)
        maps.append(to_numpy(saliency_from_gradient(grad)))
        cls_out.append(cls)
        sc_out.append(to_numpy(scores)[np.arange(len(cls)), cls])
    maps, cls, sc = np.concatenate(maps), np.concatenate(cls_out), np.concatenate(sc_out)
    if k is not None:
        maps, cls, sc = maps.reshape(n, k, *maps.shape[1:]), cls.reshape(n, k), sc.reshape(n, k)
    return Saliency(maps, cls, sc, Rule.parse(rule).value)


# ---------------------------------------------------------------------------------------------
# the paper's 10-crop map
# ---------------------------------------------------------------------------------------------
def ten_crop_boxes(H, W, h, w):
    """(y0, x0) of the 4 corner crops and the centre crop of size (h, w) in an H x W image."""
    if h > H or w > W:
        raise ValueError(f"crop {h}x{w} does not fit in a {H}x{W} image")
    return [(0, 0), (0, W - w), (H - h, 0), (H - h, W - w), ((H - h) // 2, (W - w) // 2)]


def warn_if_crops_coincide(who, resized, crop):
    """A warning when the photo, resized to ``resized`` (H, W), is the crop size (h, w): the 5 crops are
    then one view, and the "10-crop" map averages it and its mirror (a square photo and a network whose
    preprocess ``resize`` is its input size, as for the networks ``scratchnet train`` makes)."""
    if tuple(resized) == tuple(crop):
        side = round(min(crop) * 8 / 7)
        warnings.warn(f"{who}: the photo resized to {resized[1]}x{resized[0]} is the network's input size, so "
                      f"the 5 crops coincide and the map averages one view and its mirror; a larger resize "
                      f"gives 10 different crops, e.g. {side}: net.preprocess['resize'] = {side}, "
                      f"ten_crop_saliency(..., resize={side}) or scratchnet saliency --resize {side}", stacklevel=3)


@dataclass
class TenCropSaliency:
    """map (H, W) on ``pixels`` (the photo resized so its shorter side is ``resize``); class_index;
    score: the class score averaged over the 10 crops; crop_maps (10, h, w) before mapping back."""
    map: np.ndarray
    pixels: np.ndarray
    class_index: int
    score: float
    crop_maps: np.ndarray


def ten_crop_saliency(net, img, class_index=None, rule="gradient", resize=None) -> TenCropSaliency:
    """The saliency map averaged over 10 crops (4 corners + centre, and their flips).

    img (H, W, 3) uint8 RGB. The photo is resized so that its shorter side is ``resize`` (default
    ``net.preprocess["resize"]``, else the input size x 8/7: 224 -> 256), the 10 crops of the network's input size
    are taken, their maps computed in one batch (class: given, or the top-1 of the mean of the 10 crops'
    scores), flipped maps flipped back, and each pixel's map averaged over the crops that cover it.
    """
    from ..io.images import LARGE_RESIZE, resize_shorter, shorter_side_size
    if resize is not None:
        check_int("ten_crop_saliency", "resize (the shorter side in pixels)", resize, 1)
    if class_index is not None and np.ndim(class_index) != 0:
        raise ValueError(f"ten_crop_saliency: class_index must be one class, got {class_index!r}")
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB photo (H, W, 3) uint8, got {img.dtype} {img.shape}")
    h, w = net.input_shape[1:]
    if resize is not None and resize < max(h, w):
        raise ValueError(f"ten_crop_saliency: resize must be at least {max(h, w)}, the side of the network's "
                         f"{h}x{w} input (the crops are cut from the resized photo), got {resize}")
    side = resize or int(net.preprocess.get("resize") or round(max(h, w) * 8 / 7))
    side = max(int(side), h, w)
    rh, rw = shorter_side_size(*img.shape[:2], side)
    if rh * rw > LARGE_RESIZE:                       # the map covers every pixel of the resized photo
        raise ValueError(f"ten_crop_saliency: a {img.shape[1]}x{img.shape[0]} photo is too elongated for the 10-crop "
                         f"map: with its shorter side at {side} pixels it would be {max(rh, rw)} long; the "
                         "single-view map works for any shape")
    warn_if_crops_coincide("ten_crop_saliency", (rh, rw), (h, w))
    pix = resize_shorter(img, side)
    H, W = pix.shape[:2]
    boxes = ten_crop_boxes(H, W, h, w)
    crops = [pix[y:y + h, x:x + w] for y, x in boxes]
    crops += [c[:, ::-1] for c in crops]
    x = prepare_pixels(net, np.stack(crops))
    x = on_net_device(net, x)
    if class_index is None:
        class_index = int(to_numpy(net.forward(x)).mean(axis=0).argmax())
    else:
        class_index = resolve_class(net, class_index)
    grad, _, scores = class_gradient(net, x, class_index, rule)
    cm = to_numpy(saliency_from_gradient(grad))
    acc, cnt = np.zeros((H, W), np.float64), np.zeros((H, W), np.float64)
    for i, (y, x0) in enumerate(boxes + boxes):
        m = cm[i] if i < 5 else cm[i][:, ::-1]
        acc[y:y + h, x0:x0 + w] += m
        cnt[y:y + h, x0:x0 + w] += 1
    smap = (acc / np.maximum(cnt, 1)).astype(np.float32)
    score = float(to_numpy(scores)[:, class_index].mean())
    return TenCropSaliency(smap, pix, int(class_index), score, cm)


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------
def map_image(smap, pct=99.5) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 heat map, scaled from 0 to the map's ``pct`` percentile
    (a few very large gradients would otherwise leave the rest of the map black)."""
    from ..io.images import heatmap
    m = np.asarray(smap, np.float64)
    if not np.isfinite(m).all():
        raise ValueError(f"map_image: the map holds {int((~np.isfinite(m)).sum())} NaN or infinite values of "
                         f"{m.size}; a saliency map is finite (was the network's input finite?)")
    return heatmap(m, vmin=0.0, vmax=max(float(np.percentile(m, pct)), 1e-30))


def save_saliency(out_dir, stem, pixels, smap, alpha=0.6) -> dict:
    """Write ``<stem>_map.png`` (heat map) and ``<stem>_overlay.png`` (heat map over the photo).

    pixels (H, W, 3) uint8: the photo the map belongs to; smap (H, W). Returns {"map": path, "overlay": path}."""
    from ..io.images import overlay, save_png
    out_dir = Path(out_dir)
    m = np.asarray(smap, np.float32)
    top = max(float(np.percentile(m, 99.5)), 1e-30)
    return {"map": str(save_png(out_dir / f"{stem}_map.png", map_image(m))),
            "overlay": str(save_png(out_dir / f"{stem}_overlay.png", overlay(pixels, np.minimum(m, top), alpha)))}
