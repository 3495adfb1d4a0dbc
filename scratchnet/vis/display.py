"""Between photos and the network's input space, in both directions, for the visualisers.

A network's input x (N, C, H, W) float32 is made from RGB pixels p (N, H, W, 3) in grey levels 0..255:

    x = (p[..., order] - mean) * scale            per-channel mean (imported networks), or
    x = (p - mean_image) * scale                  per-pixel mean image (networks trained here)

as described by ``net.preprocess`` (e.g. {"channel_order": "BGR", "mean": [104, 117, 123],
"scale": 1.0}) and ``net.mean_image`` (C, H, W) in the network's channel order; see
``scratchnet.models.preprocess``, which does the forward direction. ``to_pixels`` is its exact inverse
*without clipping*, so a class model or a reconstruction, which can lie far outside the photo range,
can be shown by a per-image ``stretch``.
"""
from __future__ import annotations

import numpy as np

from ..backend import is_gpu_array, to_numpy


def on_net_device(net, a):
    """``a`` moved to where the network's parameters live (NumPy or CuPy); as is without parameters."""
    from ..backend import to_device
    device = net.device()
    return a if device is None else to_device(a, device)


def prepare_pixels(net, images):
    """RGB images already at the network's input size -> x (N, C, H, W) float32 on the network's device.

    images: (H, W, 3) or (N, H, W, 3) uint8 (``scratchnet.models.preprocess.prepare_pixels``)."""
    from ..models.preprocess import prepare_pixels as prep
    a = np.asarray(images)
    want = tuple(net.input_shape[1:])
    if a.ndim in (3, 4) and a.shape[-3:-1] != want:
        raise ValueError(f"images are {a.shape[-3]}x{a.shape[-2]}, the network takes {want[0]}x{want[1]} "
                         f"(resize or crop first, e.g. with prepare_image)")
    return prep(net, a)


def to_pixels(net, x) -> np.ndarray:
    """The inverse of ``prepare_pixels`` *without clipping or rounding*:
    x (N, C, H, W) -> RGB (N, H, W, 3) float32 grey levels (the mean added back).

    Class models and reconstructions lie far outside the photo range; ``stretch`` shows them."""
    from ..models.preprocess import _channel_order, _offset_and_divisor
    x = to_numpy(x).astype(np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected network inputs (N, 3, H, W), got shape {x.shape}")
    mean, div = _offset_and_divisor(net, x.shape[2:])
    p = (x * div + mean).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(p[..., ::-1] if _channel_order(net) == "BGR" else p)


def prepare_image(net, img) -> tuple[np.ndarray, np.ndarray]:
    """One photo (H, W, 3) uint8 -> (x (1, C, h, w), the RGB pixels (h, w, 3) uint8 the network sees).

    The network's own preprocessing: shorter side to ``net.preprocess["resize"]``, central crop."""
    from ..models.preprocess import fit_image
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB photo (H, W, 3) uint8, got {img.dtype} {img.shape}")
    h, w = net.input_shape[1:]
    if h != w:
        raise ValueError(f"prepare_image handles square network inputs, this one is {h}x{w}")
    pix = np.ascontiguousarray(fit_image(img, h, net.preprocess.get("resize"), "crop"))
    return prepare_pixels(net, pix), pix


def stretch(img, lo_pct=0.5, hi_pct=99.5) -> np.ndarray:
    """Per-image percentile stretch for display: (H, W, 3) or (N, H, W, 3) float -> uint8.

    Each image is mapped linearly so its lo_pct percentile (over all pixels and channels together,
    which keeps the colour balance) becomes 0 and its hi_pct percentile 255, then clipped."""
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        return stretch(a[None], lo_pct, hi_pct)[0]
    lo = np.percentile(a.reshape(len(a), -1), lo_pct, axis=1).reshape(-1, 1, 1, 1)
    hi = np.percentile(a.reshape(len(a), -1), hi_pct, axis=1).reshape(-1, 1, 1, 1)
    t = (a - lo) / np.maximum(hi - lo, 1e-12)
    return (np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)


def class_names(net) -> list[str]:
    """The network's class names, or the ImageNet-1k names for a 1000-class network, or 'class i'."""
    if net.class_names:
        return list(net.class_names)
    k = net.num_classes
    if k == 1000:
        from ..io.classnames import imagenet_class_names
        return imagenet_class_names()
    return [f"class {i}" for i in range(k)]


def network_wnids(net):
    """The network's class wnids (list of K) when known: ``net.class_wnids`` (saved with the network) or
    an older file's ``net.arch["class_wnids"]``, if one a class; the ImageNet-1k order for a 1000-class
    network named with the ImageNet class names; else None."""
    wnids = getattr(net, "class_wnids", None) or (getattr(net, "arch", None) or {}).get("class_wnids")
    if wnids and len(wnids) == net.num_classes:
        return list(wnids)
    from ..io.classnames import imagenet_class_names, imagenet_wnids
    if net.num_classes == 1000 and (net.class_names is None or list(net.class_names) == imagenet_class_names()):
        return imagenet_wnids()
    return None


def resolve_class(net, key) -> int:
    """A class given as an index, a wnid or a name -> its index in the network's outputs."""
    from ..io.classnames import class_index, imagenet_wnids
    if is_gpu_array(key):                 # e.g. a device argmax: the index, not a class named by its repr
        key = to_numpy(key)
    if isinstance(key, np.ndarray) and key.ndim == 0:
        key = key.item()                  # np.array(3) is the index 3, not a class named "3"
    names = class_names(net)
    wnids = network_wnids(net) or (imagenet_wnids() if len(names) == 1000 else None)
    try:
        return class_index(key, names, wnids)
    except (KeyError, IndexError) as e:
        raise ValueError(str(e.args[0]) if e.args else str(e)) from None


def resolve_classes(net, classes) -> np.ndarray:
    """Classes given as an index, a wnid or a name, or a list / array of them (any shape) -> int64
    indices of that shape, each checked against the network's classes (floats and bools refused:
    3.7 is not a class); device arrays (a device argmax) are taken to the host."""
    if is_gpu_array(classes):
        classes = to_numpy(classes)
    a = np.asarray(classes)
    if a.size == 0:                       # np.asarray([]) is float64: an empty list is not a float
        return np.zeros(a.shape, np.int64)
    if a.dtype.kind in "iu":
        k = net.num_classes
        if a.min() < 0 or a.max() >= k:
            raise ValueError(f"class index out of range: the network has {k} classes, expected indices "
                             f"0..{k - 1}, got {a.tolist()}")
        return a.astype(np.int64)
    if a.dtype.kind in "fcb":
        raise ValueError(f"classes must be integer indices, wnids or class names, got {a.dtype} "
                         f"values {a.tolist()}")
    flat = [resolve_class(net, c) for c in np.asarray(classes, dtype=object).reshape(-1)]
    return np.array(flat, dtype=np.int64).reshape(a.shape)
