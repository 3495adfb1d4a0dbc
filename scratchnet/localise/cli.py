"""Subcommands of weakly supervised localisation (paper section 3.2):

    scratchnet localise IMAGE... --model NAME [--class C] [--out DIR] [--ten-crop] [--pairwise W]
    scratchnet evaluate localisation --model NAME --data ../shared/data/imagenet-val-dev [--limit N] ...
    scratchnet evaluate localisation --model runs/RUN/model.npz --data ../shared/data/tiny-imagenet-200
    scratchnet evaluate segmentation --model NAME --data ../shared/data/oxford-pets-dev [--limit N] ...

Progress goes to stderr; the last line of stdout is one JSON object with the results.

Saliency maps are cached (one .npz per photo under --cache, default $SCRATCHNET_CACHE or ./cache, in
localise/<model>-<fingerprint>-<single|tencrop>-<rule>/<data folder>-<path hash>/), so that a second run
with other segmentation settings does not run the network again. The fingerprint is a digest of the
network's layers, preprocessing and weights: a network changed under the same name or file gets fresh
maps, never stale ones (see MapCache for what is not covered).  --no-cache turns the cache off, and so
does --batch-size above 1 for single-view maps (a map computed in a batch depends on its neighbours).

What `evaluate localisation` computes per photo.  The network sees the 227x227 photo stretched to its
input size (EfficientNet: 224x224), or the paper's 10 crops (--ten-crop); its top-5 classes are the
five guesses.  A guess of the wrong class is wrong whatever its box (ILSVRC criterion), so the only box
that can make an image right is the one of the true class: by default the saliency map is computed for
the true class only (one backward pass per photo, also when the true class is not among the five
guesses, which gives GT-known localisation on every photo).  --all-maps computes the map of each of the
five guesses as well (the full pipeline of the paper, five times the backward passes); the errors are
the same by construction.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import numerics
from ..tempfiles import atomic_write, atomic_write_text, clean_once, cut_name

CACHE_VERSION = 2      # 2: single-view maps one photo a pass (they were 8 at a time); one number for
                       # every folder, so 10-crop maps (unchanged) are recomputed too
DEFAULT_MODEL = "squeezenet1_0"


def register(sub, ev_sub):
    from ..cli import PHOTOS_HELP, add_device_arg, add_model_arg

    p = sub.add_parser("localise", help="weakly supervised localisation of the top-1 (or a given) class "
                                        "in photos: saliency -> graph cut -> box (paper section 3.2)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help=PHOTOS_HELP)
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--class", dest="cls", default=None,
                   help="class to localise: index, wnid or name (default: each photo's top-1)")
    p.add_argument("--out", default="localise-out", help="output folder (default %(default)s)")
    _segment_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_localise)

    p = ev_sub.add_parser("localisation", help="ILSVRC top-1/top-5/GT-known localisation error of graph cut "
                                               "and of the whole-image, centre-box and saliency-threshold "
                                               "baselines on photos with boxes (imagenet-val-dev, Tiny-ImageNet)")
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="photos with boxes: an imagenet-val-dev folder (images/ and "
                   "boxes.csv), or Tiny-ImageNet (its root = its val split, or its val/ or train/ folder)")
    _subset_args(p)
    _segment_args(p)
    p.add_argument("--centre-fraction", type=unit_fraction, default=None,
                   help="side of the centred box as a fraction of the image's (default: the best on "
                        "these photos, reported as chosen on them)")
    p.add_argument("--threshold-fraction", type=unit_fraction, default=None,
                   help="saliency-threshold baseline: box of the largest component of map >= F * max "
                        "(default: the best F on these photos, reported as chosen on them)")
    p.add_argument("--all-maps", action="store_true",
                   help="compute the map of every one of the five guesses, not only of the true class "
                        "(5x the backward passes; same errors)")
    p.add_argument("--details", default=None, metavar="FILE",
                   help="write one JSON line per photo (guesses, boxes, verdicts) to FILE")
    _cache_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_evaluate_localisation)

    p = ev_sub.add_parser("segmentation", help="mean mask IoU against Oxford-IIIT Pet trimaps of graph-cut "
                                               "masks seeded by the top-1 class's saliency, and of the "
                                               "thresholded-saliency and whole-image baselines")
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="oxford-pets-dev folder (images/ and trimaps/)")
    _subset_args(p)
    _segment_args(p)
    p.add_argument("--threshold-fraction", type=unit_fraction, default=None,
                   help="thresholded-saliency mask: map >= F * max (default: the best F on these photos, "
                        "reported as chosen on them)")
    _cache_args(p)
    add_device_arg(p)
    p.set_defaults(func=cmd_evaluate_segmentation)


def _segment_args(p):
    from .graphcut import DEFAULT_PAIRWISE_WEIGHT
    p.add_argument("--ten-crop", action="store_true",
                   help="average the saliency maps of the paper's 10 crops (4 corners + centre, mirrored)")
    p.add_argument("--rule", default="gradient", choices=["gradient", "deconvnet", "guided"],
                   help="ReLU backward rule of the map (default: gradient, the paper's saliency)")
    p.add_argument("--pairwise", type=nonnegative_number, default=None, metavar="W",
                   help="graph-cut pairwise weight gamma (default: tuned per kind of map, "
                        f"{_tuned('pairwise_weight')}; localise.segment's own default is "
                        f"{DEFAULT_PAIRWISE_WEIGHT:g})")
    p.add_argument("--fg-quantile", type=float, default=None,
                   help=f"foreground seeds: saliency above this quantile (default {_tuned('fg_quantile')})")
    p.add_argument("--bg-quantile", type=float, default=None,
                   help=f"background seeds: saliency below this quantile (default {_tuned('bg_quantile')})")


def _tuned(key):
    from .network import TUNED_SEGMENT
    t = TUNED_SEGMENT
    return (f"{t['single'][key]:g} single view, {t['ten_crop'][key]:g} 10-crop, {t['guided'][key]:g} "
            f"single-view --rule guided")


def _subset_args(p):
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N photos (sorted by name)")
    p.add_argument("--offset", type=nonnegative_int, default=0, help="skip the first K photos (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="photos per forward pass of single-view maps (default 1: each photo's maps then depend "
                        "on that photo alone, as the map cache assumes; a larger batch, quicker on a GPU, "
                        "changes a map with its batch neighbours through rounding, and is not cached; "
                        "10-crop maps are one photo a batch whatever this says)")


def _cache_args(p):
    p.add_argument("--cache", default=os.environ.get("SCRATCHNET_CACHE", "cache"),
                   help="folder of the saliency-map cache (default $SCRATCHNET_CACHE or ./cache)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached maps")


def segment_kwargs(args) -> dict:
    """The graph-cut settings: the tuned ones for the kind of map, overridden by the command line."""
    from .network import tuned_segment_kwargs
    return tuned_segment_kwargs(args.ten_crop, args.rule, pairwise_weight=args.pairwise,
                                fg_quantile=args.fg_quantile, bg_quantile=args.bg_quantile)


# --------------------------------------------------------------------------------------------- helpers

def _say(msg):
    print(msg, file=sys.stderr, flush=True)


from ..cli import (dumps_strict, emit_json as _emit, nonnegative_int, nonnegative_number,  # noqa: E402
                   offset_limit, positive_int, unit_fraction)


def _load_net(args):
    from ..models import load
    _say(f"loading {args.model}")
    return load(args.model, device=args.device)


class MapCache:
    """Saliency maps of one (network, view, rule, data set), one .npz per photo:
    scores (K,) float32, classes (k,) int64, maps (k, H, W) float32.

    The folder is named for the model (its name, or a saved network's file stem) and the network's
    fingerprint (Network.fingerprint: layers, preprocessing, weights), so that maps of a network that
    has changed since, under the same name or file, are never read back; for what else decides a map's
    last bits (backend.numerics: the device, and on the CPU OpenBLAS's kernels and thread count), so
    that a run under other BLAS kernels computes its own maps rather than repeating an earlier run's
    results (the kernels move a map by rounding, and a GraphCut box or a small share of them with it);
    and for the data set's folder (its name and a hash of its resolved path, so that two folders of one
    name keep apart). Within it a photo is found by its file name (x.JPEG and x.png are two photos; a
    segmentation's pet by its name) and checked by its size, not its content: a photo replaced by
    another of the same size needs --no-cache or a fresh --cache. CACHE_VERSION covers changes to the
    saliency code itself. Single-view maps computed batch_size > 1 photos a pass are not cached (they
    depend on their batch neighbours): the cache is then off, said once on stderr."""

    def __init__(self, root, net, model, ten_crop, rule, data, enabled=True, batch_size=1):
        self.folder = None                  # None: the cache is off (neither read nor written)
        if enabled and batch_size > 1 and not ten_crop:
            _say(f"--batch-size {batch_size}: maps depend on their batch neighbours, so the map cache is off")
            enabled = False
        if not enabled:                     # and the network is not fingerprinted for nothing
            return
        label = Path(model).stem if Path(model).is_file() else str(model)
        key = (f"{label}-{net.fingerprint()[:12]}-{'tencrop' if ten_crop else 'single'}-{rule}-"
               f"{numerics(net.device() or 'cpu')}")
        data = Path(data).resolve()
        where = hashlib.sha1(os.fsencode(str(data))).hexdigest()[:8]      # a folder name not in UTF-8 too
        self.folder = Path(root) / "localise" / key / f"{data.name}-{where}"
        clean_once(self.folder)             # maps whose write a killed run left half done

    def get(self, stem, shape, need):
        """The cached entry of photo `stem` (its key: the file name) when it holds maps of every class in
        `need`, else None."""
        if self.folder is None:
            return None
        f = self.folder / _entry_name(stem)
        if not f.exists():
            return None
        try:
            with np.load(f) as z:
                if int(z["version"]) != CACHE_VERSION or tuple(z["maps"].shape[1:]) != tuple(shape):
                    return None
                entry = {"scores": z["scores"], "classes": [int(c) for c in z["classes"]], "maps": z["maps"]}
        except (OSError, KeyError, ValueError):
            return None                                       # unreadable: recompute
        return entry if set(need) <= set(entry["classes"]) else None

    def put(self, stem, entry):
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = dict(version=CACHE_VERSION, scores=entry["scores"].astype(np.float32),
                      classes=np.asarray(entry["classes"], np.int64), maps=entry["maps"].astype(np.float32))
        atomic_write(self.folder / _entry_name(stem), lambda fh: np.savez(fh, **arrays), suffix=".tmp.npz")


def _entry_name(key: str) -> str:
    """A photo's cache file: KEY.npz, or for a key too long for that within 255 bytes its first 200
    bytes and a hash of the whole (a 252-byte photo name stopped the evaluation)."""
    raw = os.fsencode(key)
    if len(raw) <= 255 - len(".npz"):
        return f"{key}.npz"
    return f"{cut_name(key, 200)}-{hashlib.sha1(raw).hexdigest()[:12]}.npz"


def _maps_for(net, cache, items, top, batch_size, rule, ten_crop, what):
    """Saliency entries for items = [(cache key: the file name, read, extra classes)], through the cache, with
    progress. ``read()`` decodes the photo: (image, anything the caller wants back), or None to leave the photo
    out (unreadable, said by ``read``). About 8 photos are read at a time, and let go once the caller has
    taken them: yields (index, image, anything, entry) in order, so a run over 50,000 photos holds a few.

    MapCache is off for single-view maps with batch_size > 1 (10-crop maps are one photo a batch anyway): a
    map computed in a batch differs from the same photo's map computed alone, in the last bits and, where
    a value sits near a ReLU kink or a max-pooling tie, by more, so a cache filled by a batched run would
    make a later run's results depend on how the earlier one was batched."""
    from .network import network_saliency
    t_net, done = 0.0, 0
    step = batch_size * max(1, -(-8 // batch_size))   # photos between progress lines: a whole number
                                                      # of batches, about 8 photos
    for s in range(0, len(items), step):
        chunk = []                                      # (index, key, image, anything, extra) of the readable
        for k, (key, read, extra) in enumerate(items[s:s + step], s):
            got = read()
            if got is not None:
                chunk.append((k, key, *got, extra))
        entries, todo = [], []
        for i, (_, key, img, _, extra) in enumerate(chunk):
            e = cache.get(key, img.shape[:2], extra)
            if e is not None and top:                                   # also the maps of the top guesses
                best = [int(c) for c in np.argsort(-e["scores"], kind="stable")[:top]]
                e = e if set(best) <= set(e["classes"]) else None
            entries.append(e)
            if e is None:
                todo.append(i)
        if todo:
            t0 = time.perf_counter()
            fresh = network_saliency(net, [chunk[i][2] for i in todo], top=top,
                                     extra=[chunk[i][4] for i in todo], rule=rule, ten_crop=ten_crop,
                                     batch_size=batch_size)
            t_net += time.perf_counter() - t0
            for i, e in zip(todo, fresh):
                cache.put(chunk[i][1], e)
                entries[i] = e
            done += len(todo)
        n = min(s + step, len(items))
        _say(f"[{n}/{len(items)}] {what}: {len(todo)} computed, {len(chunk) - len(todo)} from the cache"
             + (f" ({t_net / done:.2f} s per photo computed)" if done else ""))
        for (k, _, img, extra_back, _), e in zip(chunk, entries):
            yield k, img, extra_back, e


# --------------------------------------------------------------------------------------------- localise

def cmd_localise(args):
    from ..io.images import load_image, overlay, save_png
    from .network import draw_result, localise_image
    net = _load_net(args)
    kw = segment_kwargs(args)
    out = Path(args.out)
    results = []
    from ..cli import unique_stems
    paths = list(map(Path, args.images))
    if args.cls is not None:            # a bad class, like a bad photo, before any work
        from ..vis.display import resolve_class
        resolve_class(net, args.cls)
    for path in paths:                  # each read once now (and let go): a bad last photo stops no work
        load_image(path, upright=True)
    for path, stem in zip(paths, unique_stems(paths)):                # a/x.jpg, b/x.jpg: x, x_2
        img = load_image(path, upright=True)       # as viewers show it: the box is in those pixels
        _say(f"localising in {path} ({img.shape[1]}x{img.shape[0]})")
        r = localise_image(net, img, args.cls, rule=args.rule, ten_crop=args.ten_crop, **kw)
        out.mkdir(parents=True, exist_ok=True)  # after a result: a bad photo or class leaves no empty folder
        files = {"overlay": out / f"{stem}_localised.png", "mask": out / f"{stem}_mask.png",
                 "saliency": out / f"{stem}_saliency.png", "json": out / f"{stem}.json"}
        save_png(files["overlay"], draw_result(img, r["component"], r["box"]))   # the object and its box
        save_png(files["mask"], r["mask"])                                        # the whole graph-cut mask
        top = max(float(np.percentile(r["saliency"], 99.5)), 1e-30)
        save_png(files["saliency"], overlay(img, np.minimum(r["saliency"], top), 0.6))
        res = {"image": str(path), "size": [img.shape[1], img.shape[0]], "box": list(r["box"]),
               "box_format": "x0,y0,x1,y1 inclusive, image pixels", "class": r["class"],
               "class_name": r["class_name"], "score": r["score"],
               "top5": [{"class": c, "name": n, "score": s} for c, n, s in r["top5"]],
               "mask_fraction": float(r["mask"].mean()), "fallback": r["fallback"],
               "ten_crop": args.ten_crop, "rule": args.rule, "segment": kw,
               "files": {k: str(v) for k, v in files.items()}}
        atomic_write_text(files["json"], dumps_strict(res, indent=1) + "\n")
        _say(f"  {r['class_name']} (class {r['class']}, score {r['score']:.2f}): box {r['box']}"
             + (f"  [whole image: {r['fallback']}]" if r["fallback"] else ""))
        results.append(res)
    _emit({"command": "localise", "model": args.model, "out": str(out), "results": results})


# --------------------------------------------------------------------------------------------- evaluate

def boxes_dataset(path):
    """A data set with boxes: imagenet-val-dev, or Tiny-ImageNet (its root means its val split; its val/ or
    train/ folder that split)."""
    from ..io.datasets import open_dataset
    p = Path(path)
    ds = open_dataset(p, root_split="val")
    if ds.boxes is None:
        raise ValueError(f"{p} has no boxes: localisation is scored on imagenet-val-dev (images/ + boxes.csv) "
                         f"or on Tiny-ImageNet (val/val_annotations.txt, train/<wnid>/<wnid>_boxes.txt)")
    return ds


def localisation_error(net, ds, indices, targets, *, model_key, cache_root, cache=True, ten_crop=False,
                       rule="gradient", segment_kw=None, batch_size=1, all_maps=False, centre_fraction=None,
                       threshold_fraction=None, details=False):
    """Top-1/top-5/GT-known localisation errors of GraphCut and the baselines on photos ``indices`` of ``ds``
    (a data set with boxes), ``targets[i]`` being photo i's class in the network's outputs.
    Returns (result dict of localise.evaluate.evaluate, with details a LocSummary per photo scored, else []);
    ``result['per_image']`` with details. The photos are decoded, mapped and judged a few at a time (see _maps_for)."""
    from ..io.images import ImageReadError, load_image
    from .evaluate import NoRecordsError, evaluate
    from .network import tuned_segment_kwargs
    if net.num_classes < 5:
        raise ValueError(f"localisation error scores the network's five guesses (ILSVRC top-5); "
                         f"{model_key} has {net.num_classes} classes: expected at least 5")
    if net.num_classes == 5:
        _say(f"note: {model_key} has 5 classes, so its five guesses hold every class: the top-5 errors are the "
             f"GT-known ones")
    kw = dict(segment_kw) if segment_kw is not None else tuned_segment_kwargs(ten_crop, rule)
    maps = MapCache(cache_root, net, model_key, ten_crop, rule, ds.root or "data", cache, batch_size)

    # the cache's key is the file name: x.JPEG and x.png are two photos (the stem shared one entry)
    items = [(ds.paths[i].name, _skipping(lambda p=ds.paths[i]: (load_image(p), None), ImageReadError),
              [int(targets[i])]) for i in indices]
    _say(f"{len(items)} photos; maps: {'all five guesses and ' if all_maps else ''}the true class, "
         f"{'10-crop' if ten_crop else 'single view'}, rule {rule}; graph cut {kw}")
    kept, light, t_net = 0, [], 0.0

    def records():                      # made as evaluate asks for them: a few photos and maps held at a time
        nonlocal kept, t_net
        it = _maps_for(net, maps, items, 5 if all_maps else 0, batch_size, rule, ten_crop, "saliency")
        while True:
            t0 = time.perf_counter()
            got = next(it, None)
            t_net += time.perf_counter() - t0
            if got is None:
                return
            k, img, _, entry = got
            i = indices[k]
            kept += 1
            r = _record(ds, i, ds.paths[i].stem, img, int(targets[i]), entry)
            if details:                 # what the details file adds; nothing per photo otherwise
                light.append(LocSummary(r.gt_label, r.gt_boxes, r.top5))
            yield r
    t_all = time.perf_counter()
    try:
        res = evaluate(records(), centre_fraction=centre_fraction, threshold_fraction=threshold_fraction,
                       segment_kwargs=kw, details=details)
    except NoRecordsError:
        raise ValueError(f"no readable photos among the {len(indices)} selected in {ds.root or 'the data'}") \
            from None
    res["seconds"] = {"network": round(t_net, 1),    # the maps (and the photos' decoding)
                      "segmentation_and_scoring": round(time.perf_counter() - t_all - t_net, 1)}
    res["skipped_unreadable"] = len(indices) - kept
    return res, light


def _skipping(read, error, skipped=None):
    """A read for _maps_for: ``read()``, or None when it raises ``error`` (an unreadable file: said,
    and appended to ``skipped``)."""
    def skipping_read():
        try:
            return read()
        except error as e:
            _say(f"skipping unreadable file: {e}")
            if skipped is not None:
                skipped.append(str(e))
            return None
    return skipping_read


def _image_and_trimap(pet):
    return pet.image, pet.trimap


@dataclass
class LocSummary:
    """What the per-photo details file adds to evaluate's verdicts (a LocRecord without its image and maps)."""
    gt_label: int
    gt_boxes: list
    top5: list


def cmd_evaluate_localisation(args):
    from ..models.cli import matched_images
    from ..vis.display import class_names
    ds = boxes_dataset(args.data)
    net = _load_net(args)
    keep, targets, _ = matched_images(net, ds, "evaluate localisation", str(args.data))
    idx = [int(keep[i]) for i in offset_limit(len(keep), args)]
    kw = segment_kwargs(args)
    res, records = localisation_error(
        net, ds, idx, targets, model_key=args.model, cache_root=args.cache, cache=not args.no_cache,
        ten_crop=args.ten_crop, rule=args.rule, segment_kw=kw, batch_size=args.batch_size, all_maps=args.all_maps,
        centre_fraction=args.centre_fraction, threshold_fraction=args.threshold_fraction, details=bool(args.details))
    per_image = res.pop("per_image", None)
    if args.details:
        _write_details(args.details, per_image, records, class_names(net))
    for m, r in res["methods"].items():
        _say(f"  {m:20s} top-1 loc {r['top1_loc_error']:.3f}  top-5 loc {r['top5_loc_error']:.3f}  "
             f"GT-known {r['gt_known_loc_error']:.3f}")
    res.update({"command": "evaluate localisation", "model": args.model, "data": str(args.data),
                "offset": args.offset, "batch_size": args.batch_size, "ten_crop": args.ten_crop, "rule": args.rule,
                "all_maps": args.all_maps, "segment": kw})
    _emit(res)


def _record(ds, i, stem, img, gt, entry):
    from .evaluate import LocRecord
    H, W = img.shape[:2]
    scores, classes, maps = entry["scores"], entry["classes"], entry["maps"]
    top5 = [int(c) for c in np.argsort(-scores, kind="stable")[:5]]
    sal = np.zeros((5, H, W), np.float32)     # rows of guesses without a map stay zero; they are never
    for j, c in enumerate(top5):              # read: a wrong-class guess is wrong whatever its box
        if c in classes:
            sal[j] = maps[classes.index(c)]
    true_map = None if gt in top5 else maps[classes.index(gt)]
    boxes = [tuple(round(float(v), 2) for v in b) for b in ds.boxes[i]]
    return LocRecord(img, gt, boxes, top5, sal, true_map, stem)


def _write_details(path, per_image, records, names):
    lines = []
    for p, r in zip(per_image, records):
        p = dict(p, gt_label=r.gt_label, gt_name=names[r.gt_label], gt_boxes=r.gt_boxes,
                 top5=r.top5, top5_names=[names[c] for c in r.top5])
        lines.append(dumps_strict(p) + "\n")
    atomic_write_text(path, "".join(lines))
    _say(f"wrote per-photo details to {path}")


def cmd_evaluate_segmentation(args):
    from .boxes import largest_component
    from .evaluate import THRESHOLD_FRACTIONS, PetReadError, mask_iou_trimap, oxford_pet_names, read_pet
    from .graphcut import segment
    every = oxford_pet_names(args.data)
    chosen = [every[i] for i in offset_limit(len(every), args)]       # only those are decoded
    unreadable, readable = [], []
    for name in chosen:                 # the headers first: a pair that cannot be opened is skipped (said), one
        try:                            # whose trimap does not fit its photo stops the command, before any work
            read_pet(args.data, name, decode=False)
            readable.append(name)
        except PetReadError as e:
            _say(f"skipping unreadable file: {e}")
            unreadable.append(name)
    if not readable:
        raise ValueError(f"no readable photo with its trimap among the {len(chosen)} selected in {args.data}")
    net = _load_net(args)
    kw = segment_kwargs(args)
    cache = MapCache(args.cache, net, args.model, args.ten_crop, args.rule, args.data, not args.no_cache,
                     args.batch_size)
    # decoded a few at a time as the maps are made (see _maps_for), not all first
    items = [(name, _skipping(lambda n=name: _image_and_trimap(read_pet(args.data, n)), PetReadError, unreadable),
              []) for name in readable]
    fracs = [float(f) for f in THRESHOLD_FRACTIONS] if args.threshold_fraction is None \
        else [float(args.threshold_fraction)]
    iou = {"graphcut": [], "graphcut_component": [], "whole_image": []}
    thr, thr_comp = [], []                      # per pet: the IoU at each fraction
    classes, fallbacks = [], 0
    t0 = time.perf_counter()
    for _, image, trimap, entry in _maps_for(net, cache, items, 1, args.batch_size, args.rule, args.ten_crop,
                                             "saliency"):
        smap = entry["maps"][0]
        classes.append(int(entry["classes"][0]))
        seg = segment(image, smap, **kw)
        fallbacks += int(not seg.ok)
        iou["graphcut"].append(mask_iou_trimap(seg.mask, trimap))
        iou["graphcut_component"].append(mask_iou_trimap(seg.component, trimap))
        iou["whole_image"].append(mask_iou_trimap(np.ones_like(seg.mask), trimap))
        top = float(smap.max())
        masks = [smap >= f * top if top > 0 else np.ones(smap.shape, bool) for f in fracs]
        thr.append([mask_iou_trimap(m, trimap) for m in masks])
        thr_comp.append([mask_iou_trimap(largest_component(m), trimap) for m in masks])
    if not thr:
        raise ValueError(f"no readable photo with its trimap among the {len(chosen)} selected in {args.data}")
    thr, thr_comp = np.array(thr), np.array(thr_comp)
    best, best_c = int(thr.mean(0).argmax()), int(thr_comp.mean(0).argmax())
    chosen = args.threshold_fraction is None
    names = net.class_names or []
    common = np.bincount(classes, minlength=net.num_classes).argsort()[::-1][:5]
    res = {"command": "evaluate segmentation", "model": args.model, "data": str(args.data), "images": len(thr),
           "offset": args.offset, "batch_size": args.batch_size, "ten_crop": args.ten_crop, "rule": args.rule,
           "segment": kw,
           "methods": {
               "graphcut": {"mean_iou": float(np.mean(iou["graphcut"])),
                            "mean_iou_largest_component": float(np.mean(iou["graphcut_component"])),
                            "fallbacks": fallbacks},
               "saliency_threshold": {"mean_iou": float(thr[:, best].mean()), "fraction": fracs[best],
                                      "mean_iou_largest_component": float(thr_comp[:, best_c].mean()),
                                      "fraction_largest_component": fracs[best_c],
                                      "fraction_chosen_on_these_images": chosen},
               "whole_image": {"mean_iou": float(np.mean(iou["whole_image"]))}},
           "top1_classes": {(names[c] if c < len(names) else str(c)): int(np.sum(np.asarray(classes) == c))
                            for c in common if np.any(np.asarray(classes) == c)},
           "seconds": round(time.perf_counter() - t0, 1), "skipped_unreadable": len(unreadable)}
    for m, r in res["methods"].items():
        _say(f"  {m:20s} mean IoU {r['mean_iou']:.3f}")
    _emit(res)
