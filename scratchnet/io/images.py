"""Reading, resizing and writing images; a colour map for saliency heat maps.

Every image here is a NumPy array in height-width-channel order:
    RGB image : (H, W, 3) uint8
    grey map  : (H, W)    float or uint8
PIL does the decoding and the resampling; the colour map is plain NumPy.
"""
from __future__ import annotations

import contextlib
import errno
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..tempfiles import atomic_write


class ImageReadError(ValueError):
    """An image file that is missing or that PIL cannot decode; the message names the file."""


def load_image(path, upright: bool = False) -> np.ndarray:
    """Read an image file as RGB.  Returns (H, W, 3) uint8.

    Greyscale, palette, CMYK, 16-bit and float (mode F: [0, 1], or [0, 255] when a value is above 1)
    images are converted to RGB, rounded to the nearest level; an alpha channel is composited onto white.  A missing or undecodable file raises ImageReadError naming the file.

    upright=True turns the pixels as the file's EXIF Orientation tag says: a phone's portrait photo,
    stored sideways with a tag 6, comes out (H, W) as photo viewers show it, and so do the maps and boxes
    made from it. The default reads the pixels as stored, as ImageNet tools do: a data set's boxes and
    masks are drawn on the stored pixels (but a TIFF comes turned by its tag either way: Pillow turns it
    as it loads it). The commands that take a user's photos (classify, saliency,
    deconv, compare-rules, localise, demo --photos) read them upright; data sets are read as stored.
    """
    path = Path(path)
    try:
        with _pil_warnings_named(path if upright else None), Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            if upright:
                im = _upright(im)
            return np.asarray(_to_rgb(im), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):     # the system's limits, not the file:
            raise                                                      # never "skip it as unreadable"
        raise ImageReadError(f"cannot read image {path}: PIL says {type(e).__name__}: {e}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {path}: PIL says {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def _pil_warnings_named(path):
    """Pillow's warnings about a damaged EXIF block ("Tag data larger than file. Skipping tag 270") name
    no file: for a user's photo (``path``, read in the main thread) they are caught and warned again,
    once each, after the photo's path, so that a command reading many photos says which. Otherwise
    (path None: a data set's photos, which would repeat the line for each; or another thread, since
    warnings.catch_warnings is process-wide) they pass as Pillow gives them."""
    if path is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    said = set()                        # (the filters are the caller's again from here)
    for w in caught:
        text = str(w.message).strip()
        if w.filename.startswith(_PIL_DIRS):
            if text not in said:
                said.add(text)
                warnings.warn(f"{path}: {text}", UserWarning, stacklevel=4)
        else:                           # not Pillow's: as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


_PIL_DIRS = tuple({str(Path(Image.__file__).parent), str(Path(Image.__file__).resolve().parent)})


def _upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag (2-8) says; as stored without one, or when the EXIF
    block cannot be read (the pixels are still good). Pillow 9.0 and 9.1 fail on every TIFF here with an
    AttributeError; Pillow turns a TIFF by its tag as it loads it anyway."""
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16/32-bit greyscale: scale the full range down to 8 bits before converting
        a = np.asarray(im, dtype=np.float64)
        return _grey_to_rgb(a, 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0)
    if im.mode == "F":
        # 32-bit float greyscale (a TIFF, say): values in [0, 1] if none is above 1, else in [0, 255];
        # PIL's own convert would truncate a [0, 1] image to black. NaN counts as 0.
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return _grey_to_rgb(a, 1.0 if a.size and a.max() <= 1.0 else 255.0)
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _grey_to_rgb(a: np.ndarray, top: float) -> Image.Image:
    """Grey levels a (H, W) float64 on [0, top] -> an RGB image, each rounded to the nearest 8-bit level."""
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")


def _pil(img: np.ndarray) -> Image.Image:
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"expected a uint8 image of shape (H, W) or (H, W, 3|4), got {img.dtype} {img.shape}")
    return Image.fromarray(np.ascontiguousarray(img))


def resize(img: np.ndarray, size) -> np.ndarray:
    """Resize to size = (h, w) with PIL's bilinear filter (antialiased when shrinking).

    img: (H, W, 3) or (H, W) uint8 -> (h, w, 3) or (h, w) uint8;
    a float array (H, W) or (H, W, C) is resized channel by channel and stays float32.
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive (h, w), got {size}")
    img = np.asarray(img)
    if img.shape[:2] == (h, w):
        return img.copy()
    if img.dtype == np.uint8:
        return np.asarray(_pil(img).resize((w, h), Image.BILINEAR))
    if img.dtype.kind != "f" or img.ndim not in (2, 3):
        raise ValueError(f"resize: expected uint8 or float (H, W[, C]), got {img.dtype} {img.shape}")
    chans = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32), "F")
                               .resize((w, h), Image.BILINEAR)) for c in range(chans.shape[2])], axis=-1)
    return out[..., 0] if img.ndim == 2 else out


def shorter_side_size(H: int, W: int, size: int) -> tuple:
    """(h, w): an H x W image resized, aspect ratio kept, so that its shorter side is ``size``."""
    return (size, max(1, round(W * size / H))) if H <= W else (max(1, round(H * size / W)), size)


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so that the shorter side is `size`.  (H, W, ...) -> (h, w, ...)."""
    return resize(img, shorter_side_size(*img.shape[:2], size))


#: the most pixels an intermediate resize may have before resize_shorter_centre_crop takes the central
#: window straight from the source: a 1 x 8000 strip, its shorter side taken to 256, would be 256 x
#: 2,048,000 pixels (5 GB of memory) to keep 224 x 224 of them
LARGE_RESIZE = 1 << 23


def resize_shorter_centre_crop(img: np.ndarray, shorter: int, crop: int) -> np.ndarray:
    """centre_crop(resize_shorter(img, shorter), crop) for uint8 photos, without the whole resized
    image when it would pass LARGE_RESIZE pixels: then PIL resamples only the source region (a float
    box) that maps onto the crop. Photos of ordinary shapes take the first path, bit for bit; the box
    path gives the same pixels or ones a grey level apart (PIL's rounding). (H, W, 3) -> (crop, crop, 3)."""
    H, W = img.shape[:2]
    h, w = shorter_side_size(H, W, shorter)
    if h * w <= LARGE_RESIZE or crop > min(h, w) or img.dtype != np.uint8:
        return centre_crop(resize_shorter(img, shorter), crop)
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    sy, sx = H / h, W / w
    box = (x0 * sx, y0 * sy, (x0 + crop) * sx, (y0 + crop) * sy)
    return np.asarray(_pil(img).resize((crop, crop), Image.BILINEAR, box=box))


def centre_crop(img: np.ndarray, size) -> np.ndarray:
    """The central (h, w) window; size is an int (square) or (h, w).  (H, W, ...) -> (h, w, ...)."""
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    H, W = img.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"centre_crop: crop size must be positive, got {h}x{w}")
    if h > H or w > W:
        raise ValueError(f"centre_crop: crop {h}x{w} is larger than the image {H}x{W}")
    y0, x0 = (H - h) // 2, (W - w) // 2
    return img[y0:y0 + h, x0:x0 + w]


def to_uint8(array) -> np.ndarray:
    """uint8 stays; bool becomes 0/255; a float array in [0, 1] is scaled to 0..255 (clipped)."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "f":
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"expected uint8, bool, or float in [0, 1], got {a.dtype}")


def save_png(path, array) -> Path:
    """Write (H, W) or (H, W, 3|4) as a PNG; uint8, bool, or float in [0, 1].  Creates parent folders;
    written atomically (scratchnet.tempfiles).
    Floats outside [0, 1] are clipped: scale a raw saliency map or class-model image first (e.g.
    ``scratchnet.vis.display.stretch``, or ``m / m.max()``), or it saves as black and white."""
    path = Path(path)
    a = to_uint8(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    _pil(a)  # validates the shape
    img = Image.fromarray(np.ascontiguousarray(a))
    atomic_write(path, lambda fh: img.save(fh, format="PNG"), suffix=".tmp.png")    # never half a picture
    return path


# 'inferno' (black - purple - orange - pale yellow) sampled at 10 evenly spaced stops;
# perceptually ordered and readable in greyscale.  Linear interpolation between the stops.
_INFERNO = np.array([
    [0x00, 0x00, 0x04], [0x1B, 0x0C, 0x42], [0x4B, 0x0C, 0x6B], [0x78, 0x1C, 0x6D], [0xA5, 0x2C, 0x60],
    [0xCF, 0x44, 0x46], [0xED, 0x69, 0x25], [0xFB, 0x9A, 0x06], [0xF7, 0xD0, 0x3C], [0xFC, 0xFF, 0xA4],
], dtype=np.float64)


def heatmap(map2d, vmin=None, vmax=None) -> np.ndarray:
    """Colour a map with 'inferno'.  map2d: (H, W) any real dtype -> (H, W, 3) uint8.

    Values are scaled linearly from [vmin, vmax] (default: the map's min and max) to [0, 1];
    a constant map comes out as the darkest colour.
    """
    m = np.asarray(map2d, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"heatmap: expected a 2-D map (H, W), got shape {m.shape}")
    lo = np.nanmin(m) if vmin is None else float(vmin)
    hi = np.nanmax(m) if vmax is None else float(vmax)
    t = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
    t = np.nan_to_num(t) * (len(_INFERNO) - 1)
    i = np.minimum(t.astype(np.int64), len(_INFERNO) - 2)     # left stop
    f = (t - i)[..., None]                                     # position between stops
    rgb = _INFERNO[i] * (1.0 - f) + _INFERNO[i + 1] * f
    return (rgb + 0.5).astype(np.uint8)


def overlay(img: np.ndarray, map2d, alpha: float = 0.5) -> np.ndarray:
    """Blend heatmap(map2d) over an image: (1 - alpha) * img + alpha * colours.

    img: (H, W, 3) uint8; map2d: (h, w), resized bilinearly to (H, W) when the sizes differ.
    Returns (H, W, 3) uint8.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"overlay: expected an (H, W, 3) image, got shape {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    m = np.asarray(map2d, dtype=np.float32)
    if m.shape != img.shape[:2]:
        m = resize(m, img.shape[:2])
    colours = heatmap(m).astype(np.float32)
    out = (1.0 - alpha) * to_uint8(img).astype(np.float32) + alpha * colours
    return (out + 0.5).astype(np.uint8)
