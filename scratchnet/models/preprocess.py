"""From photos (uint8 RGB) to network input and back.

Each network carries ``net.preprocess``, a dict saved with it, that says how its input was made:

    resize        shorter side resized to this before the crop (None/absent: no resize)
    crop          side of the square centre crop (default: the network's input size)
    channel_order "RGB" or "BGR" (Caffe models such as SqueezeNet take BGR)
    mean          per-channel mean, in the network's channel order, subtracted from 0..255 pixels
    mean_image    true: subtract ``net.mean_image`` (C, H, W), the per-pixel training mean (networks
                  trained here), in the network's channel order
    std           optional per-channel divisor (network channel order), after the mean
    scale         multiplier applied last

    x = (pixels[channel_order] - mean) / std * scale          pixels (H, W, 3) uint8 -> x (3, H, W)

For example SqueezeNet: {"resize": 256, "crop": 227, "channel_order": "BGR", "mean": [104, 117, 123],
"scale": 1.0}; EfficientNet-Lite0: {"resize": 256, "crop": 224, "channel_order": "RGB",
"mean": [127, 127, 127], "scale": 1/128}.

    prepare(net, images)         photos of any size -> x (N, C, H, W) float32: resize the shorter side,
                                 centre crop (mode="crop"), or stretch to the crop size (mode="stretch")
    prepare_pixels(net, images)  photos already at the network's size: normalisation only
    fit_image(img, size, ...)    one photo to the network's size (resize and crop, or stretch), uint8
    to_display(net, x)           the inverse of the normalisation: x (N, C, H, W) -> (N, H, W, 3) uint8 RGB,
                                 for showing network-space images such as class models

The arrays come back on the device of the network's parameters (NumPy on the CPU, CuPy on the GPU).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_device, to_numpy
from ..checks import check_int
from ..io.images import centre_crop, resize, resize_shorter, resize_shorter_centre_crop

MODES = ("crop", "stretch", "pixels")


def _net_xp(net):
    for _, layer, key in net.named_params():
        return get_array_module(layer.params[key])
    return np


def _device_of(net):
    return "gpu" if _net_xp(net) is not np else "cpu"


def _as_list(images):
    """A list of (H, W, 3) uint8 arrays from an (N, H, W, 3) array, one (H, W, 3) array or a list."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    images = list(images)               # an (N, H, W, 3) array: its N images
    if not images:
        raise ValueError("prepare: no images given")
    return images


def _check_image(img, i):
    img = to_numpy(img)                 # a NumPy array; a photo on the device comes to the host
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image {i}: expected an RGB image (H, W, 3) uint8 (as from scratchnet.io.images.load_image), "
                         f"got {img.dtype} array of shape {img.shape}")
    return img


def _channel_order(net):
    order = str(net.preprocess.get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise ValueError(f"{net.name}: preprocess channel_order must be 'RGB' or 'BGR', got {order!r}")
    return order


def _offset_and_divisor(net, hw):
    """mean (C, H, W) or (C, 1, 1) and the divisor std/scale (C, 1, 1), float32, network channel order."""
    p = net.preprocess
    c = net.input_shape[0]
    if p.get("mean_image"):
        if net.mean_image is None:
            raise ValueError(f"{net.name}: preprocess says mean_image, but the network has no mean image")
        mean = np.asarray(to_numpy(net.mean_image), dtype=np.float32)
        if mean.shape[1:] != tuple(hw):
            # a mean image of another size (e.g. a 64 px mean for a 56 px crop): resize it to the input
            mean = resize(np.ascontiguousarray(mean.transpose(1, 2, 0)), hw).transpose(2, 0, 1)
    else:
        mean = np.asarray(p.get("mean", [0.0] * c), dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(p.get("std", [1.0] * c), dtype=np.float32).reshape(c, 1, 1)
    scale = float(p.get("scale", 1.0))
    return mean, std / np.float32(scale)


def prepare_pixels(net, images):
    """Images already at the network's input size -> x (N, C, H, W) float32: normalisation only.

    images: (H, W, 3) uint8, (N, H, W, 3) uint8 or a list of (H, W, 3) uint8, RGB, all one size."""
    imgs = [_check_image(im, i) for i, im in enumerate(_as_list(images))]
    sizes = {im.shape for im in imgs}
    if len(sizes) != 1:
        raise ValueError(f"prepare_pixels: images differ in size {sorted(sizes)}; use prepare() to resize them")
    batch = np.stack(imgs).astype(np.float32)                        # (N, H, W, 3) RGB
    if _channel_order(net) == "BGR":
        batch = batch[..., ::-1]
    x = batch.transpose(0, 3, 1, 2)                                  # (N, 3, H, W)
    mean, div = _offset_and_divisor(net, x.shape[2:])
    x = np.ascontiguousarray((x - mean) / div, dtype=np.float32)
    return to_device(x, _device_of(net))


def fit_image(img, size, resize_to=None, mode="crop"):
    """One photo (H, W, 3) uint8 -> (size, size, 3) uint8.

    crop   : shorter side to ``resize_to`` (when given), then the central size x size window
             (an image smaller than the crop is first enlarged so its shorter side is ``size``)
    stretch: resized to size x size, aspect ratio not kept
    pixels : must already be size x size
    """
    if mode == "pixels":
        if img.shape[:2] != (size, size):
            raise ValueError(f"expected a {size}x{size} image (mode 'pixels'), got {img.shape[1]}x{img.shape[0]}")
        return img
    if mode == "stretch":
        return resize(img, (size, size))
    if mode != "crop":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if resize_to and int(resize_to) >= size:             # the usual case: one resize, then the crop
        return resize_shorter_centre_crop(img, int(resize_to), size)
    if resize_to:
        img = resize_shorter(img, int(resize_to))
    if min(img.shape[:2]) < size:
        return resize_shorter_centre_crop(img, size, size)
    return centre_crop(img, size)


def prepare(net, images, mode="crop", resize_to="default", crop=None):
    """Photos of any size -> x (N, C, H, W) float32 for ``net`` (see the module docstring).

    images   : (H, W, 3) uint8, (N, H, W, 3) uint8 or a list of (H, W, 3) uint8 arrays, RGB
    mode     : "crop" (resize shorter side + centre crop), "stretch" (resize to crop x crop) or
               "pixels" (already crop x crop)
    resize_to, crop: override ``net.preprocess["resize"]`` / ``["crop"]``; the crop defaults to the input
               size, which it is for every built-in and trained network
    """
    for name, v in (("crop", crop), ("resize_to", None if resize_to == "default" else resize_to)):
        if v is not None:
            check_int("prepare", f"{name} (pixels)", v, 1)
    size = int(crop or net.preprocess.get("crop") or net.input_shape[1])
    if resize_to == "default":
        resize_to = net.preprocess.get("resize")
    imgs = [fit_image(_check_image(im, i), size, resize_to, mode) for i, im in enumerate(_as_list(images))]
    return prepare_pixels(net, imgs)


def to_display(net, x):
    """Network input x (N, C, H, W) or (C, H, W) (NumPy or CuPy) -> (N, H, W, 3) uint8 RGB, clipped to 0..255.

    The exact inverse of ``prepare_pixels`` up to rounding; for class models and other images made in
    the network's input space (values beyond the photo range are clipped)."""
    x = np.asarray(to_numpy(x), dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != net.input_shape[0]:
        raise ValueError(f"to_display: expected x of shape (N, {net.input_shape[0]}, H, W), got {x.shape}")
    mean, div = _offset_and_divisor(net, x.shape[2:])
    pix = (x * div + mean).transpose(0, 2, 3, 1)                     # (N, H, W, 3), network channel order
    if _channel_order(net) == "BGR":
        pix = pix[..., ::-1]
    return np.clip(np.rint(pix), 0, 255).astype(np.uint8)
