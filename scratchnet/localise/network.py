"""The network side of weakly supervised localisation (Simonyan et al. 2013, section 3.2).

From a photo to a box, for any `Network` (SqueezeNet, EfficientNet-Lite0, a network trained here):

    from scratchnet.localise.network import localise_image
    r = localise_image(net, image)               # image (H, W, 3) uint8 RGB, any size
    r["box"], r["mask"], r["class_name"]         # box (x0, y0, x1, y1), inclusive, in the photo's pixels

The steps:

  1. network input  the whole photo *stretched* to the network's input size (aspect ratio not kept,
                    so that every pixel of the photo is seen and the map covers all of it; the
                    imagenet-val-dev photos were made this way), or with ten_crop=True stretched to
                    R x R (R = net.preprocess["resize"], 256) and cut into the paper's 10 crops
                    (4 corners + centre, and their mirror images)
  2. classes        the unnormalised scores S (one forward pass; 10-crop: the mean over the crops),
                    the top-5 classes by score
  3. saliency       for each class asked for, one backward pass of the one-hot dS_c, and
                    M = max over colour channels of |dS_c / dI|  (`vis.saliency.saliency_from_gradient`);
                    10-crop: each crop's map put back where the crop was (mirrored ones mirrored back)
                    and averaged over the crops that cover a pixel
  4. back to photo  M resized bilinearly from the network's grid to the photo's (H, W)
  5. segmentation   `localise.segment(image, M)`: colour models from the seeds, graph cut, the largest
                    connected component and its box

One forward pass serves every class asked for: the maps of k classes cost one forward and k backward
passes, each backward reusing what the forward kept (`network_saliency` takes one photo a pass by
default, or `batch_size` photos).

Fallback.  When the map says nothing (constant, e.g. all zero: SqueezeNet's class score passes a ReLU,
so a class whose score map is zero everywhere has a zero gradient), `segment` returns the whole image
and the result's "fallback" names the reason; nothing is raised.  A class index outside the network's
outputs, an unknown class name, or a photo smaller than MIN_IMAGE_SIDE raise a ValueError that says so.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..checks import check_int
from ..io.images import resize
from ..layers import Rule
from ..vis.display import class_names, prepare_pixels, resolve_class, resolve_classes
from ..vis.saliency import saliency_from_gradient, ten_crop_boxes, warn_if_crops_coincide
from ..models.preprocess import _as_list, _check_image as _check_rgb  # one check of photo arrays
from .graphcut import check_segment_params, segment

MIN_IMAGE_SIDE = 16   # pixels; smaller photos give the colour models too few seed pixels to fit

#: graph-cut settings used when none are given, per kind of map, chosen on the first 150
#: imagenet-val-dev photos by top-5 localisation error (bench/tune_localise.py): single view with
#: EfficientNet-Lite0 (weight 3 ties weight 2 as the best mean of it and SqueezeNet), 10-crop with
#: SqueezeNet. A single view's map is speckled: seeds from its top 20% (not the paper's 5%) and a
#: moderate smoothness weight; much above 3 the cut breaks the object into pieces and the largest
#: gives too small a box. The 10-crop average is smoother and takes the smoothness term at full
#: strength, with the paper's seed quantiles. (The single-view weight was re-tuned when the map
#: cache became keyed by the network's fingerprint: the earlier 0.25 had been chosen on stale maps.)
#: "guided": single-view maps of guided backpropagation (rule="guided", beyond the paper), chosen by
#: the sum of both networks' errors (weights 10 and 30 tied; 10 cuts faster). (All three were chosen
#: on maps computed 8 photos a batch, before CACHE_VERSION 2 made them one photo a pass; the figures
#: were re-measured on the new maps, the settings not re-tuned.) Those maps are sparse
#: and sharp: the top 10% seeds the object and the smoothness term can be strong.
TUNED_SEGMENT = {"single": {"pairwise_weight": 3.0, "fg_quantile": 0.80, "bg_quantile": 0.30},
                 "ten_crop": {"pairwise_weight": 30.0, "fg_quantile": 0.95, "bg_quantile": 0.30},
                 "guided": {"pairwise_weight": 10.0, "fg_quantile": 0.90, "bg_quantile": 0.30}}


def tuned_kind(ten_crop: bool, rule="gradient") -> str:
    """The TUNED_SEGMENT key for maps of this view and ReLU rule (10-crop maps of any rule: "ten_crop";
    single-view deconvnet maps, untuned, take the gradient's "single")."""
    if ten_crop:
        return "ten_crop"
    return "guided" if Rule.parse(rule) is Rule.GUIDED else "single"


def tuned_segment_kwargs(ten_crop: bool, rule="gradient", **overrides) -> dict:
    """The `segment` keyword arguments for maps of this kind: TUNED_SEGMENT, updated by overrides
    (checked here, so that a bad setting is refused before any map is computed)."""
    kw = dict(TUNED_SEGMENT[tuned_kind(ten_crop, rule)])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    check_segment_params(**kw)
    return kw


# --------------------------------------------------------------------------------------------- saliency

def network_saliency(net, images, top=5, extra=None, rule="gradient", ten_crop=False,
                     batch_size=1) -> list[dict]:
    """Class scores and saliency maps of photos, the maps on each photo's own pixel grid.

    images     : a list of (H_i, W_i, 3) uint8 RGB photos (sizes may differ), or one (N, H, W, 3) array
    top        : maps for the `top` highest-scoring classes of each photo (0: none)
    extra      : None, or per photo a list of further classes (ints) whose maps are wanted too
                 (e.g. the true class, for GT-known localisation); classes already in the top are
                 not repeated
    rule       : backward rule through ReLU ("gradient" is the paper's saliency)
    ten_crop   : the paper's 10-crop average instead of one stretched view
    batch_size : photos per forward pass of the single view. With 1 (the default) a photo's maps are a
                 function of the photo alone. In a larger batch BLAS sums each photo's products in
                 another order, so its maps change in the last bits with its batch neighbours, and by
                 more where a value sits near a ReLU kink or a max-pooling tie (one photo's map moved
                 by 5% of its maximum at some pixels, and graph-cut boxes changed, between batches of
                 8 and 7); batches pay on a GPU; on the CPU one photo a pass was 0-20% slower than
                 8 (SqueezeNet, single view). 10-crop maps are one photo a batch.

    Returns per photo {"scores": (K,) float32 (10-crop: the mean over crops), "classes": list of ints
    (the top first, best first, then the extra ones), "maps": (len(classes), H_i, W_i) float32}.
    """
    rule = Rule.parse(rule)
    images = [_check_image(im, i) for i, im in enumerate(_as_list(images))]
    k_out = net.num_classes
    extra = [[] for _ in images] if extra is None else [resolve_classes(net, e).reshape(-1).tolist()
                                                        for e in extra]
    if len(extra) != len(images):
        raise ValueError(f"network_saliency: expected one list of extra classes per photo "
                         f"({len(images)}), got {len(extra)}")
    if not 0 <= check_int("network_saliency", "top", top, 0) <= k_out:
        raise ValueError(f"network_saliency: expected 0 <= top <= {k_out} classes, got {top}")
    check_int("network_saliency", "batch_size", batch_size, 1)
    if ten_crop:
        return [_ten_crop_one(net, im, int(top), e, rule) for im, e in zip(images, extra)]
    out = []
    for s in range(0, len(images), batch_size):
        out += _stretched_batch(net, images[s:s + batch_size], int(top), extra[s:s + batch_size], rule)
    return out


def _stretched_batch(net, images, top, extra, rule):
    """One forward pass for the batch, then one backward pass per class slot (j-th class of every photo)."""
    h, w = net.input_shape[1:]
    x = prepare_pixels(net, np.stack([resize(im, (h, w)) for im in images]))
    scores = net.forward(x)
    scores_np = to_numpy(scores).astype(np.float32)
    classes = [_classes_for(row, top, e) for row, e in zip(scores_np, extra)]
    slots = max(len(c) for c in classes)
    maps = [np.zeros((len(c), h, w), np.float32) for c in classes]
    for j in range(slots):
        onehot = np.zeros_like(scores_np)
        for i, c in enumerate(classes):
            if j < len(c):
                onehot[i, c[j]] = 1.0
        grad = net.backward(_like(onehot, scores), rule=rule, param_grads=False)
        m = to_numpy(saliency_from_gradient(grad)).astype(np.float32)
        for i, c in enumerate(classes):
            if j < len(c):
                maps[i][j] = m[i]
    return [{"scores": row, "classes": c, "maps": _to_grid(mp, im.shape[:2])}
            for row, c, mp, im in zip(scores_np, classes, maps, images)]


def _ten_crop_one(net, image, top, extra, rule):
    """The paper's 10 crops of one photo in one batch; maps averaged back onto the photo."""
    h, w = net.input_shape[1:]
    side = int(net.preprocess.get("resize") or round(max(h, w) * 8 / 7))
    R = max(side, h, w)
    warn_if_crops_coincide("10-crop localisation maps", (R, R), (h, w))
    pix = resize(image, (R, R))
    boxes = ten_crop_boxes(R, R, h, w)
    crops = [pix[y:y + h, x:x + w] for y, x in boxes]
    crops += [c[:, ::-1] for c in crops]
    scores = net.forward(prepare_pixels(net, np.stack(crops)))
    scores_np = to_numpy(scores).astype(np.float32)
    mean = scores_np.mean(axis=0)
    classes = _classes_for(mean, top, extra)
    maps = np.zeros((len(classes), R, R), np.float32)
    cnt = np.zeros((R, R), np.float32)
    for y, x in boxes + boxes:
        cnt[y:y + h, x:x + w] += 1
    for j, c in enumerate(classes):
        onehot = np.zeros_like(scores_np)
        onehot[:, c] = 1.0
        grad = net.backward(_like(onehot, scores), rule=rule, param_grads=False)
        cm = to_numpy(saliency_from_gradient(grad))                      # (10, h, w)
        for i, (y, x) in enumerate(boxes + boxes):
            maps[j, y:y + h, x:x + w] += cm[i] if i < 5 else cm[i][:, ::-1]
        maps[j] /= np.maximum(cnt, 1)
    return {"scores": mean, "classes": classes, "maps": _to_grid(maps, image.shape[:2])}


def _classes_for(scores_row, top, extra):
    classes = [int(c) for c in np.argsort(-scores_row, kind="stable")[:top]]
    for c in extra:                                   # then the extra ones, each once
        if int(c) not in classes:
            classes.append(int(c))
    return classes


def _to_grid(maps, hw):
    """(k, h, w) maps -> (k, H, W) float32, bilinear."""
    if maps.shape[1:] == tuple(hw):
        return maps.astype(np.float32)
    return np.stack([resize(np.ascontiguousarray(m, np.float32), hw) for m in maps]) if len(maps) \
        else np.zeros((0, *hw), np.float32)


def _like(a, ref):
    """NumPy array a moved to the device of ref (a NumPy or CuPy array)."""
    from ..backend import get_array_module
    xp = get_array_module(ref)
    return a if xp is np else xp.asarray(a)


# --------------------------------------------------------------------------------------------- one photo

def localise_image(net, image_uint8, cls=None, rule="gradient", ten_crop=False, **segment_kwargs) -> dict:
    """Find the object of class `cls` (default: the top-1 class) in one photo.

    image_uint8 : (H, W, 3) uint8 RGB, H, W >= MIN_IMAGE_SIDE
    cls         : None (top-1), a class index, or a wnid / class name (`vis.display.resolve_class`)
    segment_kwargs go to `localise.segment` (pairwise_weight, fg_quantile, bg_quantile, ...); those not
    given come from TUNED_SEGMENT for the kind of map (single view, 10-crop, or guided single view).

    Returns {"mask": (H, W) bool graph-cut foreground, "component": its largest connected part,
    "box": (x0, y0, x1, y1) inclusive box of the component in the photo's pixels, "class": int,
    "class_name": str, "score": the unnormalised score S_c, "saliency": (H, W) float32 map,
    "top5": [(class, name, score), ...], "fallback": None, or why the whole image was returned}.
    """
    image = _check_image(image_uint8, 0)
    kw = tuned_segment_kwargs(ten_crop, rule, **segment_kwargs)         # checked before any work
    names = class_names(net)
    if cls is None:
        top, extra = 1, None
    else:
        c = resolve_class(net, cls)
        top, extra = 0, [[c]]
    r = network_saliency(net, [image], top=top, extra=extra, rule=rule, ten_crop=ten_crop)[0]
    c, smap = r["classes"][0], r["maps"][0]
    seg = segment(image, smap, **kw)
    top5 = [int(i) for i in np.argsort(-r["scores"], kind="stable")[:5]]
    return {"mask": seg.mask, "component": seg.component, "box": tuple(int(v) for v in seg.box),
            "class": int(c), "class_name": names[c], "score": float(r["scores"][c]), "saliency": smap,
            "top5": [(i, names[i], float(r["scores"][i])) for i in top5], "fallback": seg.fallback}


def draw_result(image, mask, box, colour=(0, 255, 80), alpha=0.45, thickness=None) -> np.ndarray:
    """The photo with the mask tinted and the box drawn: (H, W, 3) uint8 -> (H, W, 3) uint8.

    mask (H, W) bool (None: no tint); box (x0, y0, x1, y1) inclusive; thickness defaults to ~1/150
    of the longer side (at least 2 pixels)."""
    out = np.asarray(image, np.float32).copy()
    H, W = out.shape[:2]
    col = np.asarray(colour, np.float32)
    if mask is not None:
        m = np.asarray(mask, bool)
        out[m] = (1 - alpha) * out[m] + alpha * col
    if box is not None:
        t = thickness or max(2, round(max(H, W) / 150))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = max(0, min(x0, W - 1)), max(0, min(x1, W - 1))
        y0, y1 = max(0, min(y0, H - 1)), max(0, min(y1, H - 1))
        edge = (255, 40, 40)
        out[y0:min(y0 + t, y1 + 1), x0:x1 + 1] = edge
        out[max(y1 - t + 1, y0):y1 + 1, x0:x1 + 1] = edge
        out[y0:y1 + 1, x0:min(x0 + t, x1 + 1)] = edge
        out[y0:y1 + 1, max(x1 - t + 1, x0):x1 + 1] = edge
    return (out + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------- checks

def _check_image(img, i):
    """An (H, W, 3) uint8 photo large enough to localise in."""
    img = _check_rgb(img, i)
    if min(img.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"photo {i}: too small for localisation: {img.shape[1]}x{img.shape[0]} pixels, "
                         f"expected at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    return img
