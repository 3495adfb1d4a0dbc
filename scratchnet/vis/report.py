"""``scratchnet demo``: one self-contained HTML page (index.html + PNGs, relative links) reproducing
the paper's figures for one or more networks:

  1. class models (figure 1: goose, ostrich, husky, dumbbell, cup, lemon, bell pepper, limousine);
  2. image-specific saliency maps of the top-1 class (figure 2), single-crop and 10-crop;
  3. gradient vs DeconvNet vs guided backpropagation: the three maps side by side, reconstructions of
     one neuron at three depths, the relative differences per layer, and the checks that the
     ``gradient`` reconstruction is the gradient (float64 central differences, and an independent
     backward pass written from the definitions);
  4. weakly supervised localisation: GraphCut boxes from the saliency maps (``scratchnet.localise``),
     with the ground-truth box for the ImageNet validation photos when ../shared is present.

Photos: scikit-image's sample photos (in its wheel: no download) and, when present, a few of
../shared/data/imagenet-val-dev. Progress goes to ``progress`` (stderr); ``demo`` returns a summary.
"""
from __future__ import annotations

import html
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..cli import dumps_strict
from ..io.classnames import normalise_name
from ..io.images import overlay, resize, save_png
from ..io.shared import shared_dir
from ..localise.boxes import resize_box
from ..tempfiles import atomic_write_text, folder_lock, publish, staged
from . import classmodel as cm
from .deconv import compare_rules, gradient_check, reconstruct, reference_check
from .display import class_names, on_net_device, prepare_image, prepare_pixels, resolve_class
from .saliency import map_image, saliency, ten_crop_saliency

#: the classes of the paper's figure 1
FIGURE1_CLASSES = ["goose", "ostrich", "Siberian husky", "dumbbell", "cup", "lemon", "bell pepper", "limousine"]

#: for a network trained here on Tiny-ImageNet: the figure-1 classes it has, then a few distinctive ones
OWN_DATA_CLASSES = FIGURE1_CLASSES + ["school bus", "banana", "jellyfish", "monarch", "pizza", "koala"]

#: scikit-image sample photos shipped in its wheel: (title, loader name)
SKIMAGE_PHOTOS = [("chelsea", "chelsea"), ("coffee", "coffee"), ("motorcycle", "stereo_motorcycle"),
                  ("rocket", "rocket"), ("astronaut", "astronaut")]

DEFAULT_MODELS = ["efficientnet_lite0", "squeezenet1_0"]


def _plain(caption_html: str) -> str:
    """A caption's text without its markup and entities: an image's alt text (escaped once more there,
    its <b> showed as text and its &amp; twice escaped)."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", caption_html)).split())    # <br>: a space


def _say(progress, msg):
    if progress is not None:
        print(msg, file=progress, flush=True)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def sample_photos(n=None, shared_n=4):
    """[(title, (H, W, 3) uint8, info dict)]: scikit-image photos, then imagenet-val-dev photos (with their
    label and boxes) when ../shared is present. ``n`` limits the scikit-image ones."""
    from skimage import data
    out = []
    for title, fn in SKIMAGE_PHOTOS[:n]:
        img = getattr(data, fn)()
        img = img[0] if isinstance(img, tuple) else img
        out.append((title, np.ascontiguousarray(img[..., :3]).astype(np.uint8), {"source": f"skimage.data.{fn}"}))
    val = shared_dir() / "data" / "imagenet-val-dev"
    if shared_n and (val / "boxes.csv").exists():
        from ..io.datasets import imagenet_val_dev
        from ..io.images import load_image
        ds = imagenet_val_dev(val)
        for i in np.linspace(0, len(ds) - 1, shared_n).astype(int):
            out.append((ds.paths[i].stem, load_image(ds.paths[i]),
                        {"source": "imagenet-val-dev", "label": int(ds.labels[i]), "boxes": ds.boxes[i].tolist()}))
    return out


def own_data_photos(net, classes, per_class=1):
    """Validation photos (with boxes, labels in the network's classes) of a network trained here on
    Tiny-ImageNet: ``per_class`` of each class in ``classes``; None when this is not such a network or
    ../shared/data/tiny-imagenet-200 is absent."""
    root = shared_dir() / "data" / "tiny-imagenet-200"
    if net.mean_image is None or not (root / "wnids.txt").is_file():
        return None
    from ..io.images import load_image
    from ..localise.cli import boxes_dataset
    from ..models.cli import matched_images
    ds = boxes_dataset(root)
    try:
        keep, targets, _ = matched_images(net, ds, quiet=True)
    except ValueError:
        return None                                           # trained on other classes
    out = []
    for c in classes:
        for i in [int(i) for i in keep if targets[i] == c][:per_class]:
            out.append((ds.paths[i].stem, load_image(ds.paths[i]),
                        {"source": "tiny-imagenet-val", "label": int(c), "boxes": ds.boxes[i].tolist()}))
    return out or None


def _fit(net, img, info):
    """Photo -> (x (1, C, h, w), pixels (h, w, 3), gt boxes in pixel coordinates or None).

    imagenet-val-dev photos are already stretched to 227x227, Tiny-ImageNet ones are 64x64: resized to
    the input size, not cropped."""
    h, w = net.input_shape[1:]
    if info.get("source") in ("imagenet-val-dev", "tiny-imagenet-val"):
        H, W = img.shape[:2]
        pix = resize(img, (h, w))
        boxes = [list(resize_box(b, w / W, h / H)) for b in info["boxes"]]
        return prepare_pixels(net, pix), pix, boxes
    x, pix = prepare_image(net, img)
    return x, pix, None


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------
def signed_image(g, net=None, pct=99.5):
    """A reconstruction or gradient g (C, H, W) -> (H, W, 3) uint8: grey is 0, brighter / darker
    colours are positive / negative (symmetric stretch at the ``pct`` percentile of |g|).
    With ``net``, channels are put in RGB order."""
    g = to_numpy(g).astype(np.float32)
    if net is not None and str(net.preprocess.get("channel_order", "RGB")).upper() == "BGR":
        g = g[::-1]
    top = max(float(np.percentile(np.abs(g), pct)), 1e-30)
    return (np.clip(0.5 + 0.5 * g / top, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def draw_box(img, box, colour, width=2):
    """A copy of img (H, W, 3) uint8 with an (x0, y0, x1, y1) inclusive box outline."""
    out = img.copy()
    H, W = out.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    x0, x1, y0, y1 = max(0, x0), min(W - 1, x1), max(0, y0), min(H - 1, y1)
    c = np.asarray(colour, np.uint8)
    out[y0:y0 + width, x0:x1 + 1] = c
    out[max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = c
    out[y0:y1 + 1, x0:x0 + width] = c
    out[y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = c
    return out


def _upscale(img, min_side=160):
    """Nearest-neighbour enlargement of small images (tiny networks) so the page stays readable."""
    k = max(1, int(np.ceil(min_side / max(1, min(img.shape[:2])))))
    return np.repeat(np.repeat(img, k, 0), k, 1) if k > 1 else img


class Page:
    """Collects HTML fragments and writes PNGs next to index.html (relative links only)."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        self.images: list[str] = []

    def png(self, rel, img) -> str:
        save_png(self.out / rel, _upscale(np.asarray(img)))
        self.images.append(rel)
        return rel

    def add(self, s):
        self.parts.append(s)

    def figure(self, items, cls="row"):
        """items: [(rel path, caption)] as one row of captioned images."""
        cells = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(_plain(c))}">'
                        f"<figcaption>{c}</figcaption></figure>" for p, c in items)
        self.add(f'<div class="{cls}">{cells}</div>')

    def table(self, header, rows):
        h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        self.add(f"<table><tr>{h}</tr>{body}</table>")

    def write(self, title):
        css = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}"
               ".row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;text-align:center}"
               "figure img{height:180px;image-rendering:auto}figcaption{font-size:12px;max-width:220px}"
               "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
               "code,pre{background:#f4f4f4}")
        doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
               f"<style>{css}</style></head><body>{''.join(self.parts)}</body></html>")
        atomic_write_text(self.out / "index.html", doc)
        return self.out / "index.html"


# ---------------------------------------------------------------------------------------------
# the sections
# ---------------------------------------------------------------------------------------------
def class_model_settings(quick, steps=None):
    """Settings used by the demo: classmodel.DEFAULTS, 10 steps when quick, or ``steps``."""
    s = dict(cm.DEFAULTS)
    if quick:
        s["steps"] = 10
    if steps:
        s["steps"] = int(steps)
    return s


def default_classes(net, n):
    """n classes to show: the paper's figure-1 classes (and for other class lists, a few distinctive
    Tiny-ImageNet ones) that the network has, then its first classes."""
    names = class_names(net)
    key = {normalise_name(x): i for i, x in enumerate(names)}
    idx = []
    for c in (FIGURE1_CLASSES if len(names) == 1000 else OWN_DATA_CLASSES):
        if normalise_name(c) in key and key[normalise_name(c)] not in idx:
            idx.append(key[normalise_name(c)])
    idx += [i for i in range(len(names)) if i not in idx]
    return idx[:n]


def section_class_models(page, net, tag, quick, progress, classes=None, regularised=True, steps=None):
    names = class_names(net)
    idx = ([resolve_class(net, c) for c in classes] if classes is not None
           else default_classes(net, 3 if quick else 8))
    page.add("<h3>Class models (figure 1)</h3>")
    variants = [("paper", class_model_settings(quick, steps))]
    if regularised and not quick:
        variants.append(("regularised", dict(class_model_settings(quick, steps), **cm.REGULARISED)))
    summary = []
    for vname, settings in variants:
        _say(progress, f"[{tag}] class models ({vname}) for {len(idx)} classes, {settings['steps']} steps")
        t0 = time.time()
        r = cm.class_model(net, idx, progress=progress, progress_every=max(1, settings["steps"] // 5), **settings)
        items = []
        for k, c in enumerate(idx):
            rel = page.png(f"{tag}/classmodel_{vname}_{c}.png", r.images[k])
            items.append((rel, f"{html.escape(names[c])}<br>S<sub>c</sub> {r.scores[0, k]:.2f} &rarr; "
                               f"{r.scores[-1, k]:.2f}"))
        done = dict(settings, step_control=r.settings["step_control"], step_factors=r.settings["step_factors"])
        shown = ", ".join(f"{k}={v}" for k, v in done.items())
        page.add(f"<p><b>{vname}</b> ({shown}; {time.time() - t0:.0f} s)</p>")
        page.figure(items)
        summary.append(dict(variant=vname, classes=[int(c) for c in idx],
                            settings=done,
                            first_scores=r.scores[0].tolist(), final_scores=r.scores[-1].tolist(),
                            seconds=time.time() - t0))
    page.add("<p>Ascent from the zero image on the unnormalised class score with an L2 penalty in grey "
             "levels; the mean is added back and each image is stretched from its 1st to its 99th "
             "percentile. <i>paper</i>: the L2 term only; <i>regularised</i>: plus the opt-in jitter and "
             "blur (see <code>scratchnet.vis.classmodel</code>).</p>")
    return summary


def section_saliency(page, net, tag, photos, quick, progress):
    """Top-1 saliency for every photo (single crop and, unless quick, 10 crops); returns per-photo data."""
    names = class_names(net)
    page.add("<h3>Image-specific class saliency (figure 2)</h3>")
    fitted = [_fit(net, img, info) for _, img, info in photos]
    x = np.concatenate([to_numpy(f[0]) for f in fitted])
    _say(progress, f"[{tag}] saliency of {len(x)} photos")
    sal = saliency(net, x)
    scores = to_numpy(net.forward(on_net_device(net, x)))
    prob = np.exp(scores - scores.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    rows, out = [], []
    for i, ((title, img, info), (_, pix, gt)) in enumerate(zip(photos, fitted)):
        c = int(sal.classes[i])
        cap = f"{html.escape(title)}: <b>{html.escape(names[c])}</b> (p={prob[i, c]:.2f})"
        if "label" in info:
            cap += f"<br>truth: {html.escape(names[info['label']]) if info['label'] < len(names) else info['label']}"
        items = [(page.png(f"{tag}/photo_{i}.png", pix), cap),
                 (page.png(f"{tag}/saliency_{i}.png", map_image(sal.maps[i])), "saliency (gradient)"),
                 (page.png(f"{tag}/overlay_{i}.png", overlay(pix, np.minimum(sal.maps[i], np.percentile(
                     sal.maps[i], 99.5)), 0.6)), "overlay")]
        shot = dict(title=title, pixels=pix, map=sal.maps[i], cls=c, gt=gt, info=info,
                    loc_pixels=pix, loc_map=sal.maps[i], loc_gt=gt, loc_ten_crop=False)
        if not quick:       # the paper's 10-crop map of the whole photo; localisation uses it
            _say(progress, f"[{tag}] 10-crop saliency of {title}")
            tc = ten_crop_saliency(net, img, c)
            items.append((page.png(f"{tag}/saliency10_{i}.png", map_image(tc.map)), "10-crop map (whole photo)"))
            sy, sx = tc.pixels.shape[0] / img.shape[0], tc.pixels.shape[1] / img.shape[1]
            shot.update(loc_pixels=tc.pixels, loc_map=tc.map, loc_ten_crop=True,
                        loc_gt=[list(resize_box(b, sx, sy)) for b in info["boxes"]]
                        if "boxes" in info else None)
        page.figure(items)
        out.append(shot)
        rows.append(dict(photo=title, top1=names[c], prob=float(prob[i, c]), score=float(sal.scores[i]),
                         label=info.get("label")))
    page.add("<p>M = max over colour channels of |dS<sub>c</sub>/dI| for the top-1 class, one backward "
             "pass; shown from 0 to its 99.5th percentile. The 10-crop map averages the maps of the 4 "
             "corner crops, the centre crop and their flips of the photo resized to the network's "
             "resize side, each mapped back onto it.</p>")
    return out, rows


def section_rules(page, net, tag, shots, quick, progress):
    """The three backward rules: class-score maps, neuron reconstructions, relative differences, checks."""
    from ..layers import Rule
    page.add("<h3>Gradient, DeconvNet and guided backpropagation (section 4)</h3>")
    use = shots[:2] if quick else shots[:3]
    xs = np.concatenate([to_numpy(prepare_pixels(net, s["pixels"])) for s in use])
    cls = [s["cls"] for s in use]
    maps = {r.value: saliency(net, xs, cls, r).maps for r in Rule}
    for i, s in enumerate(use):
        page.figure([(f"{tag}/photo_{i}.png", html.escape(s["title"]))] +
                    [(page.png(f"{tag}/rule_{r}_{i}.png", map_image(maps[r][i])),
                      f"{r} map" + (" (identically zero)" if not maps[r][i].any() else ""))
                     for r in maps])
    # neuron reconstructions at three depths (a quarter, half way, the last 4-D layer)
    layers4 = _layers_4d(net)
    n4 = len(layers4)
    picks = list(dict.fromkeys([layers4[n4 // 4], layers4[n4 // 2], layers4[-1]]))
    x0 = xs[:1]
    items = []
    for name in picks:
        for r in Rule:
            rec = reconstruct(net, x0, name, r)
            items.append((page.png(f"{tag}/recon_{name}_{r.value}.png", signed_image(rec.images[0], net)),
                          f"{html.escape(name)} ch {rec.neurons[0][0]}, {r.value}"))
    page.add(f"<p>Reconstructions of the strongest neuron of three layers from "
             f"<i>{html.escape(use[0]['title'])}</i> (grey = 0):</p>")
    page.figure(items)
    _say(progress, f"[{tag}] comparing the rules layer by layer")
    table = compare_rules(net, x0, layers4 if not quick else picks)
    page.table(["layer", "ReLUs below", "neuron", "deconvnet vs gradient", "guided vs gradient",
                "guided vs deconvnet"],
               [[t["layer"], t["relus"], t["neuron"][0], f"{t['deconvnet_vs_gradient']:.3g}",
                 f"{t['guided_vs_gradient']:.3g}", f"{t['guided_vs_deconvnet']:.3g}"] for t in table])
    page.add("<p>Relative differences ||a &minus; b|| / ||b|| of the reconstructions of the strongest neuron "
             "(below a ReLU6's clip: a neuron at 6 has a zero gradient; inf: b is zero everywhere). The rules differ only at ReLU, so "
             "they agree exactly below the first ReLU. Note the class-score maps above: the DeconvNet rule "
             "ignores the forward pass at every ReLU, and in a deep network its map of a class score hardly "
             "depends on the image, or (SqueezeNet) is identically zero: every rectified signal dies at some "
             "ReLU on its way down, which the independent reference pass confirms; the gradient and guided "
             "maps do depend on the image.</p>")
    # the claim, checked two independent ways
    mid = picks[len(picks) // 2]
    _say(progress, f"[{tag}] checking that the gradient reconstruction is the gradient ({mid})")
    chk = gradient_check(net, x0, mid, n_pixels=4 if quick else 8)
    try:
        ref = reference_check(net, x0, mid)
    except NotImplementedError as e:
        ref = {"skipped": str(e)}
    page.add(f"<p>Is the <code>gradient</code> reconstruction the gradient? Layer <code>{html.escape(mid)}</code>, "
             f"neuron {chk['neuron']}: engine vs float64 central differences at {len(chk['pixels'])} pixels: "
             + (f"max error {chk['max_error_rel_to_max_grad']:.2e} of the largest gradient entry"
                if chk["informative"] else "nothing to compare (a zero gradient, or every pixel at a kink)")
             + (f" ({chk['kinks']} pixel{'s' if chk['kinks'] > 1 else ''} left out at a kink)" if chk["kinks"] else "")
             + ". "
             f"Engine vs an independent backward pass written from the definitions (hand-written "
             f"transposed convolutions, max-pool switches, ReLU masks; float64): "
             f"{html.escape(json.dumps(ref))} (max error relative to the largest entry, per rule).</p>")
    return dict(layers=table, gradient_check=chk, reference_check=ref)


def _layers_4d(net):
    shape, out = (1,) + tuple(net.input_shape), []
    for name, lay in net.layers:
        shape = lay.output_shape(shape)
        if len(shape) == 4:
            out.append(name)
    return out


def section_localisation(page, net, tag, shots, progress):
    """GraphCut boxes from the saliency maps (a hook: skipped when scratchnet.localise is missing)."""
    page.add("<h3>Weakly supervised localisation (section 3.2)</h3>")
    try:
        from ..localise import iou, segment
        from ..localise.network import MIN_IMAGE_SIDE, network_saliency, tuned_segment_kwargs
    except Exception as e:            # the localisation package is optional for the page
        page.add(f"<p>Skipped: scratchnet.localise is not available ({html.escape(str(e))}).</p>")
        return {"skipped": str(e)}

    def boxed(s, smap, kw, name, file):
        seg = segment(s["loc_pixels"], smap, **kw)
        img = draw_box(s["loc_pixels"], seg.box, (255, 40, 40))
        best = None
        for gt in s["loc_gt"] or []:
            img = draw_box(img, gt, (40, 255, 40))
            best = max(best or 0.0, iou(seg.box, [int(round(v)) for v in gt]))
        cap = f"{name}: box {list(map(int, seg.box))}"
        if best is not None:
            cap += f", IoU with truth {best:.2f}"
        if seg.fallback:
            cap += f" (fallback: {html.escape(seg.fallback)})"
        row = dict(box=[int(v) for v in seg.box], iou=best, fallback=seg.fallback)
        return seg, (page.png(file, img), cap), row

    items, rows = [], []
    for i, s in enumerate(shots):
        _say(progress, f"[{tag}] GraphCut on {s['title']}")
        paper = "10-crop gradient map" if s["loc_ten_crop"] else "gradient map"
        seg, item, row = boxed(s, s["loc_map"], tuned_segment_kwargs(s["loc_ten_crop"]),
                               f"{html.escape(s['title'])}, {paper}", f"{tag}/loc_{i}.png")
        mask = (np.stack([seg.component] * 3, -1) * 255).astype(np.uint8)
        items += [item, (page.png(f"{tag}/locmask_{i}.png", mask), "object")]
        # beyond the paper: the single-view guided-backprop map of the same class (README: it localises
        # better than the 10-crop gradient map with SqueezeNet)
        if min(s["loc_pixels"].shape[:2]) >= MIN_IMAGE_SIDE:
            guided = network_saliency(net, [s["loc_pixels"]], top=0, extra=[[s["cls"]]], rule="guided")[0]
            _, item_g, row_g = boxed(s, guided["maps"][0], tuned_segment_kwargs(False, "guided"),
                                     "guided-backprop map", f"{tag}/locguided_{i}.png")
            items.append(item_g)
        else:                             # network_saliency's limit for localisation photos
            row_g = {"skipped": f"photo smaller than {MIN_IMAGE_SIDE} pixels"}
        rows.append(dict(photo=s["title"], **row, guided=row_g))
    page.figure(items)
    page.add("<p>Red: the box of the largest connected component of the GraphCut segmentation seeded by "
             "the saliency map (the 10-crop map of the whole photo, or the single-crop map with --quick), "
             "with the graph-cut setting tuned for that kind of map; the third picture seeds it with the "
             "guided-backpropagation map instead (rule=\"guided\", one view; beyond the paper). Green: the "
             "ground-truth boxes (ImageNet validation photos).</p>")
    return rows


def section_localisation_error(page, net, tag, n, progress):
    """Localisation error on n Tiny-ImageNet val photos (spread over the set) for a network trained here."""
    from ..localise.cli import boxes_dataset, localisation_error
    from ..models.cli import matched_images
    ds = boxes_dataset(shared_dir() / "data" / "tiny-imagenet-200")
    keep, targets, _ = matched_images(net, ds, quiet=True)
    idx = [int(keep[i]) for i in np.unique(np.linspace(0, len(keep) - 1, min(n, len(keep))).astype(int))]
    _say(progress, f"[{tag}] localisation error on {len(idx)} Tiny-ImageNet val photos")
    res, _ = localisation_error(net, ds, idx, targets, model_key=tag, cache_root=".", cache=False)
    page.add(f"<h4>Localisation error on {res['images']} Tiny-ImageNet validation photos</h4>"
             f"<p>Classification error: top-1 {res['top1_cls_error']:.3f}, top-5 {res['top5_cls_error']:.3f}. "
             "A box is right when its class is among the guesses (top-1 / top-5) and it overlaps a true box "
             "with IoU &ge; 0.5; GT-known assumes the class is known. All 10,000: <code>scratchnet evaluate "
             "localisation --model MODEL.npz --data ../shared/data/tiny-imagenet-200</code>.</p>")
    page.table(["method", "top-1 loc error", "top-5 loc error", "GT-known loc error"],
               [[m, f"{r['top1_loc_error']:.3f}", f"{r['top5_loc_error']:.3f}", f"{r['gt_known_loc_error']:.3f}"]
                for m, r in res["methods"].items()])
    return res


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def available_models():
    """The default networks that can be loaded here (SqueezeNet needs its weights file in ../shared)."""
    out = ["efficientnet_lite0"]
    try:
        from ..io.squeezenet_file import find_squeezenet_weights
        find_squeezenet_weights()
        out.append("squeezenet1_0")
    except Exception:
        pass
    return out


def demo(models=None, out="scratchnet-demo", quick=False, photos=None, classes=None, device=None,
         steps=None, progress=sys.stderr, loc_photos=None) -> dict:
    """Write ``out/index.html`` and its PNGs; return a summary (also written to ``out/summary.json``).

    models: names or .npz paths (default: EfficientNet-Lite0, and SqueezeNet when its weights are found);
    photos: image paths (default: scikit-image samples + imagenet-val-dev when present); quick: fewer
    steps, classes and photos (for CI on a tiny network); steps: class-model ascent steps.
    A network trained here on Tiny-ImageNet (it has a mean image) is shown on Tiny-ImageNet val photos of
    its class-model classes, and its localisation error is measured on ``loc_photos`` val photos
    (default 2000, 50 when quick) when ../shared/data/tiny-imagenet-200 is present."""
    from ..io.images import load_image
    from ..models import load
    out = Path(out)
    models = list(models) if models else available_models()
    if photos:
        shots = [(Path(p).stem, load_image(p, upright=True), {"source": str(p)}) for p in photos]
    else:
        shots = sample_photos(n=2 if quick else None, shared_n=0 if quick else 4)
    page = Page(out)
    page.add("<h1>Deep Inside Convolutional Networks &mdash; reproduced with scratchnet</h1>"
             "<p>Simonyan, Vedaldi &amp; Zisserman (2013). Every picture below was computed by "
             f"<code>scratchnet demo{' --quick' if quick else ''}</code> with the engine's own "
             "forward and backward passes.</p>")
    summary = dict(out=str(out), quick=quick, models={})
    t_all = time.time()
    nets = []
    for name in models:                 # all of them first: a typo in the second is found before any work
        _say(progress, f"loading {name}")
        nets.append(load(name, device=device))
    # the pictures go to a hidden folder in ``out`` first, and replace the files of an earlier report
    # only once all are made: a run that fails half-way leaves the earlier report whole
    with staged(out, "report") as stage:
        page.out = stage
        for i, name in enumerate(models):
            t0 = time.time()
            net, nets[i] = nets[i], None    # each network (and what its passes keep) let go after its section
            tag = f"m{i}_{Path(str(name)).stem}"
            page.add(f"<h2>{html.escape(str(net.name or name))}</h2><p>input {net.input_shape}, "
                     f"{net.num_classes} classes, preprocessing "
                     f"<code>{html.escape(json.dumps(net.preprocess))}</code></p>")
            s = dict(name=str(name))
            s["class_models"] = section_class_models(page, net, tag, quick, progress, classes, steps=steps)
            own = None if photos else own_data_photos(net, s["class_models"][0]["classes"])
            shots_i, s["saliency"] = section_saliency(page, net, tag, own or shots, quick, progress)
            s["rules"] = section_rules(page, net, tag, shots_i, quick, progress)
            s["localisation"] = section_localisation(page, net, tag, shots_i, progress)
            if own and net.num_classes < 5:        # the ILSVRC measure scores five guesses
                page.add(f"<p>No localisation error: it scores the network's five best guesses, and this one has "
                         f"{net.num_classes} classes.</p>")
            elif own:
                s["localisation_error"] = section_localisation_error(
                    page, net, tag, loc_photos or (50 if quick else 2000), progress)
            s["seconds"] = time.time() - t0
            summary["models"][str(name)] = s
        summary["seconds"] = time.time() - t_all
        with folder_lock(out):          # a second demo into this folder publishes before or after, not amid
            publish(stage, out, page.images)
            page.out = out
            summary["index"] = str(page.write("scratchnet demo"))
            summary["images"] = len(page.images)
            atomic_write_text(out / "summary.json", dumps_strict(summary, indent=1))
    return summary
