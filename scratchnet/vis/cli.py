"""Subcommands of the paper's visualisations: saliency, classmodel, deconv, compare-rules, demo.

saliency, classmodel and deconv write PNGs and .npy arrays into --out, demo an HTML report;
compare-rules only prints. Each reports progress on stderr and prints one JSON object describing what
it computed as the last line of stdout.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..tempfiles import atomic_write, atomic_write_text

RULES = ["gradient", "deconvnet", "guided"]
DEFAULT_MODEL = "efficientnet_lite0"


def _save_npy(path, array):
    """np.save, written atomically (a killed command leaves no half file; see scratchnet.tempfiles)."""
    atomic_write(path, lambda fh: np.save(fh, array), suffix=".tmp.npy")


def register(sub, ev_sub):
    from ..cli import (PHOTO_HELP, PHOTOS_HELP, add_device_arg, add_model_arg, nonnegative_int, nonnegative_number,
                       positive_int, positive_number)
    from . import classmodel as cm

    p = sub.add_parser("saliency", help="image-specific class saliency maps (paper section 3)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help=PHOTOS_HELP)
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--class", dest="cls", default=None,
                   help="target class: index, wnid or name (default: each image's top-1)")
    p.add_argument("--rule", default="gradient", choices=RULES + ["all"], help="ReLU backward rule")
    p.add_argument("--ten-crop", action="store_true", help="average the maps of 10 crops (4 corners + centre, flipped)")
    p.add_argument("--resize", type=positive_int, default=None, metavar="SIDE",
                   help="--ten-crop: the photo's shorter side before cropping (default: the network's "
                        "preprocess resize, else 8/7 of its input size)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="photos per pass, and per group whose files are written before the next is read "
                        "(default 16; 1 makes each map depend on its photo alone, not also on its batch "
                        "neighbours through rounding); --ten-crop passes one photo's ten crops at a time")
    p.add_argument("--out", default="saliency-out", help="output folder (default %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser("classmodel", help="class model visualisation by gradient ascent (paper section 2)")
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--class", dest="cls", nargs="+", required=True, metavar="C",
                   help="classes: indices, wnids or names (quote names with spaces)")
    d = cm.DEFAULTS
    p.add_argument("--steps", type=nonnegative_int, default=d["steps"],
                   help="gradient-ascent steps (default %(default)s; 0 writes the start image)")
    p.add_argument("--lr", type=positive_number,
                   help=f"--optimiser normalised: grey levels (rms) per step (default {d['lr']}); --optimiser plain: "
                        "the factor of the gradient, which depends on the network's scale (no default: give it)")
    p.add_argument("--lam", type=nonnegative_number,
                   help=f"L2 weight, per grey level squared (default {d['lam']}; --regularised: "
                        f"{cm.REGULARISED['lam']})")
    p.add_argument("--optimiser", default=d["optimiser"], choices=["normalised", "plain"],
                   help="'plain': x += lr * gradient, the textbook ascent; 'normalised': each step scaled to "
                        "an rms of at most lr grey levels, shortened for a class whose objective fell (see "
                        "--fixed-step) (default %(default)s)")
    p.add_argument("--momentum", type=nonnegative_number, default=d["momentum"],
                   help="momentum of the ascent (default %(default)s)")
    p.add_argument("--fixed-step", action="store_true",
                   help="normalised steps of exactly --lr grey levels (default: each class's step shortens when "
                        "its objective falls and grows back up to --lr; see --step-factors)")
    p.add_argument("--step-factors", type=float, nargs=2, metavar=("DOWN", "UP"),
                   help="step control: each class's step is multiplied by DOWN (0 < DOWN < 1) after a step that "
                        f"lowered its objective, else by UP (>= 1) up to --lr (default {cm.STEP_DOWN} "
                        f"{cm.STEP_UP}; bench/classmodel_steps.py compares pairs)")
    p.add_argument("--jitter", type=nonnegative_int, help="opt-in: random roll of up to J pixels each step "
                                                          f"(--regularised: {cm.REGULARISED['jitter']})")
    p.add_argument("--blur-every", type=nonnegative_int, help="opt-in: Gaussian blur every K steps "
                                                              f"(--regularised: {cm.REGULARISED['blur_every']})")
    p.add_argument("--blur-sigma", type=positive_number,
                   help=f"with --blur-every: the blur's sigma in pixels (default {cm.REGULARISERS_OFF['blur_sigma']})")
    p.add_argument("--clip-pct", type=nonnegative_number, default=0.0,
                   help="opt-in: zero pixels below this norm percentile")
    p.add_argument("--clamp", action="store_true", help="opt-in: keep pixels within 0..255 grey levels")
    p.add_argument("--regularised", action="store_true",
                   help=f"the demo's regularised settings {cm.REGULARISED} where those options are not given")
    p.add_argument("--start-noise", type=nonnegative_number, default=0.0, metavar="GREY",
                   help="opt-in: start from Gaussian noise of GREY grey levels (rms) instead of the paper's "
                        "zero image (for a network whose gradient there is exactly 0)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --jitter's rolls and --start-noise "
                                                       "(default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="classes per pass (default %(default)s): a pass holds every layer's activations for its "
                        "batch (some 70 MB a class for SqueezeNet); a class model made beside other classes "
                        "differs from one made alone by rounding")
    p.add_argument("--out", default="classmodel-out", help="output folder (default %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=cmd_classmodel)

    p = sub.add_parser("deconv", help="reconstruct the image from one neuron of a layer (paper section 4)")
    p.add_argument("image", metavar="IMAGE", help=PHOTO_HELP)
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--layer", required=True, help="top-level layer name: a name in `scratchnet info` before "
                                                   "any dot (fire2 for fire2.squeeze1x1)")
    p.add_argument("--rule", default="all", choices=RULES + ["all"],
                   help="ReLU backward rule of the reconstruction (default %(default)s: one image per rule)")
    p.add_argument("--neuron", type=_neuron, default="max",
                   help="'max' (strongest activation), a channel index, or c,i,j")
    p.add_argument("--mode", default="neuron", choices=["neuron", "map"],
                   help="seed one neuron (1) or its whole feature map (its activations)")
    p.add_argument("--out", default="deconv-out", help="output folder (default %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=cmd_deconv)

    p = sub.add_parser("compare-rules", help="gradient vs DeconvNet vs guided, layer by layer, and the gradient check")
    # optional here, checked in cmd_compare_rules: --layers may take it
    p.add_argument("image", metavar="IMAGE", nargs="?", help=PHOTO_HELP)
    add_model_arg(p, DEFAULT_MODEL)
    p.add_argument("--layers", nargs="+", default=None, help="top-level layers, as --layer of deconv (default: every "
                                                             "layer with a 4-D output)")
    p.add_argument("--neuron", type=_neuron, default="max",
                   help="'max' (strongest activation), a channel index, or c,i,j")
    p.add_argument("--check-layer", default=None,
                   help="layer for the float64 numerical gradient check (default: the middle one)")
    p.add_argument("--check-pixels", type=positive_int, default=8)
    add_device_arg(p)
    p.set_defaults(func=cmd_compare_rules)

    p = sub.add_parser("demo", help="write an HTML report reproducing the paper's figures")
    p.add_argument("--model", nargs="+", default=None,
                   help="network names or .npz paths (default: efficientnet_lite0, and squeezenet1_0 "
                        "when its weights are found)")
    p.add_argument("--out", default="scratchnet-demo", help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer steps, classes and photos (for CI)")
    p.add_argument("--photos", nargs="+", default=None,
                   help="photos to use instead of the built-in ones (turned upright as their EXIF tag says)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="classes for the class models (default: the paper's figure 1 classes)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"class-model ascent steps (default {cm.DEFAULTS['steps']}, 10 with --quick)")
    p.add_argument("--loc-photos", type=positive_int, default=None,
                   help="a network trained here on Tiny-ImageNet: val photos for its localisation error "
                        "(default 2000, 50 with --quick)")
    add_device_arg(p)
    p.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------------------------------
def _say(msg):
    print(msg, file=sys.stderr, flush=True)


from ..cli import dumps_strict, emit_json as _emit, unique_stems  # noqa: E402


def _load(args):
    from ..models import load
    _say(f"loading {args.model}")
    return load(args.model, device=args.device)


def _read(path):
    from ..io.images import load_image
    return load_image(path, upright=True)     # a user's photo: as viewers show it (EXIF orientation)


def _neuron(s):
    """argparse type of --neuron: 'max', a channel index, or c,i,j."""
    if s == "max":
        return "max"
    try:
        parts = [int(v) for v in str(s).split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 'max', a channel index or c,i,j, got {s!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def cmd_saliency(args):
    from ..backend import to_numpy
    from ..io.images import save_png
    from . import saliency as sal
    from .display import class_names, prepare_image, resolve_class
    if args.resize is not None and not args.ten_crop:
        raise ValueError("--resize sets the photo's size before the ten crops: it needs --ten-crop (a single "
                         "view is the network's own preprocessing)")
    net = _load(args)
    if args.resize is not None and args.resize < max(net.input_shape[1:]):     # before --out is made
        raise ValueError(f"--resize must be at least {max(net.input_shape[1:])}, the side of the network's "
                         f"input (the ten crops are cut from the resized photo), got {args.resize}")
    names = class_names(net)
    target = None if args.cls is None else resolve_class(net, args.cls)
    rules = RULES if args.rule == "all" else [args.rule]
    paths = [Path(p) for p in args.images]
    for p in paths:                         # each decoded once now (and let go), as localise does: a bad
        _read(p)                            # photo, even the last, is found before any work
    stems = unique_stems(paths)             # a/x.jpg and b/x.jpg: x and x_2, not one overwritten
    out = Path(args.out)
    # --batch-size photos at a time (one with --ten-crop: its ten crops are the batch), each photo's
    # files written before the next are read: the memory does not grow with the number of photos, and
    # a run stopped half-way keeps what it made. A single view's batches are those of one call with
    # every photo, so the maps have the same bits.
    step = 1 if args.ten_crop else args.batch_size
    found = {}                              # (rule, photo) -> its JSON record
    for lo in range(0, len(paths), step):
        photos = [(p, _read(p)) for p in paths[lo:lo + step]]
        out.mkdir(parents=True, exist_ok=True)      # once the first photos are read
        for ri, rule in enumerate(rules):
            if args.ten_crop:
                items = []
                for (path, img), name in zip(photos, stems[lo:]):
                    _say(f"10-crop saliency ({rule}) of {path}")
                    r = sal.ten_crop_saliency(net, img, target, rule, args.resize)
                    items.append((path, name, r.pixels, r.map, r.class_index, r.score))
            else:
                fitted = [prepare_image(net, img) for _, img in photos]
                x = np.concatenate([to_numpy(f[0]) for f in fitted])
                _say(f"saliency ({rule}) of images {lo + 1}-{lo + len(x)} of {len(paths)}")
                r = sal.saliency(net, x, target, rule, args.batch_size)
                items = [(path, name, pix, r.maps[i], int(r.classes[i]), float(r.scores[i]))
                         for i, ((path, _), name, (_, pix)) in enumerate(zip(photos, stems[lo:], fitted))]
            for j, (path, name, pix, smap, c, score) in enumerate(items):
                stem = f"{name}_{rule}"
                if not np.any(smap):            # a blank PNG would look like a bug in the drawing
                    _say(f"warning: the {rule} map of {path} is zero everywhere: no signal of class {names[c]!r} "
                         f"reaches the image under this rule (some ReLU on the way back lets none through)")
                files = sal.save_saliency(out, stem, pix, smap)
                if ri == 0:
                    save_png(out / f"{name}_input.png", pix)
                _save_npy(out / f"{stem}_map.npy", np.asarray(smap, np.float32))
                found[ri, lo + j] = dict(image=str(path), rule=rule, ten_crop=args.ten_crop, class_index=c,
                                         class_name=names[c], score=score, map_png=files["map"],
                                         overlay_png=files["overlay"], map_npy=str(out / f"{stem}_map.npy"),
                                         map_shape=list(np.shape(smap)))
    results = [found[k] for k in sorted(found)]     # rule by rule, photos in order
    _emit(dict(command="saliency", model=args.model, out=str(out), results=results))


def cmd_classmodel(args):
    from ..io.images import save_png
    from . import classmodel as cm
    from .display import class_names, resolve_class
    net = _load(args)
    names = class_names(net)
    idx = [resolve_class(net, c) for c in args.cls]
    twice = sorted({names[c] for c in idx if idx.count(c) > 1})
    if twice:                     # one PNG per class: a second copy would overwrite the first
        raise ValueError(f"--class names the same class more than once: {', '.join(twice)}")
    if args.optimiser == "plain" and args.lr is None:
        raise ValueError("--optimiser plain steps by --lr times the gradient, whose size depends on the network: "
                         "give --lr (the default 'normalised' optimiser steps in grey levels instead)")
    if args.optimiser == "plain" and args.fixed_step:
        raise ValueError("--fixed-step fixes the 'normalised' optimiser's step length; --optimiser plain has none")
    # given options, else --regularised's settings, else the defaults
    fallback = dict(cm.DEFAULTS, **cm.REGULARISERS_OFF)
    if args.regularised:
        fallback.update(cm.REGULARISED)
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else fallback[k]
              for k in ("lr", "lam", "jitter", "blur_every", "blur_sigma")}
    settings = dict(steps=args.steps, optimiser=args.optimiser, momentum=args.momentum, **chosen,
                    clip_pct=args.clip_pct, clamp=args.clamp, seed=args.seed, start_noise=args.start_noise,
                    step_control=not args.fixed_step, step_factors=args.step_factors or (cm.STEP_DOWN, cm.STEP_UP))
    if args.step_factors and not (settings["step_control"] and cm.step_control_applies(
            settings["optimiser"], settings["jitter"], settings["blur_every"], settings["clip_pct"])):
        off = [name for name, on in (("--fixed-step", args.fixed_step), ("--optimiser plain", args.optimiser == "plain"),
                                     ("--regularised", args.regularised), ("--jitter", args.jitter),
                                     ("--blur-every", args.blur_every), ("--clip-pct", args.clip_pct)) if on]
        raise ValueError(f"--step-factors sets step control's factors, but {', '.join(off)} turns step control off "
                         "(it runs only for normalised steps without regularisers): give one or the other")
    _say(f"class models for {[names[i] for i in idx]}")
    r = cm.class_model(net, idx, progress=sys.stderr, progress_every=max(1, args.steps // 10),
                       batch_size=args.batch_size, **settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = []
    for k, c in enumerate(idx):
        safe = "".join(ch if ch.isalnum() else "_" for ch in names[c])
        pngs.append(str(save_png(out / f"classmodel_{c}_{safe}.png", r.images[k])))
    _save_npy(out / "classmodels_input_space.npy", r.x)
    hist = dict(classes=idx, scores=r.scores.tolist(), objective=r.objective.tolist(), settings=r.settings)
    atomic_write_text(out / "history.json", dumps_strict(hist))
    _emit(dict(command="classmodel", model=args.model, out=str(out), classes=idx, class_names=[names[c] for c in idx],
               initial_scores=r.scores[0].tolist(), final_scores=r.scores[-1].tolist(),
               final_objective=r.objective[-1].tolist(), pngs=pngs, history=str(out / "history.json"),
               settings=r.settings))


def cmd_deconv(args):
    from ..io.images import save_png
    from .deconv import reconstruct
    from .display import prepare_image
    from .report import signed_image
    from .saliency import map_image
    net = _load(args)
    x, pix = prepare_image(net, _read(args.image))
    recs = []
    for rule in (RULES if args.rule == "all" else [args.rule]):
        _say(f"reconstruction from {args.layer} ({rule})")
        recs.append((rule, reconstruct(net, x, args.layer, rule, args.neuron, args.mode)))
    out = Path(args.out)                    # made once all is computed: a bad --layer leaves no empty folder
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    save_png(out / f"{stem}_input.png", pix)
    results = []
    for rule, r in recs:
        g = r.images[0]
        base = out / f"{stem}_{r.layer}_{rule}"
        save_png(f"{base}.png", signed_image(g, net))
        save_png(f"{base}_map.png", map_image(np.abs(g).max(axis=0)))
        _save_npy(f"{base}.npy", g)
        results.append(dict(rule=rule, layer=r.layer, neuron=list(r.neurons[0]), activation=float(r.activations[0]),
                            png=f"{base}.png", map_png=f"{base}_map.png", npy=f"{base}.npy",
                            norm=float(np.linalg.norm(g))))
    _emit(dict(command="deconv", model=args.model, image=args.image, mode=args.mode, results=results))


def cmd_compare_rules(args):
    from .deconv import compare_rules, gradient_check, reference_check
    from .display import prepare_image
    from .report import _layers_4d
    if args.image is None:
        hint = (f" ({args.layers[-1]!r} was taken as a layer: --layers takes every word after it, so put IMAGE "
                "before --layers or end the list with --)" if args.layers else "")
        raise ValueError(f"IMAGE is missing: the photo to compare the rules on{hint}")
    net = _load(args)
    x, _ = prepare_image(net, _read(args.image))
    if args.check_pixels > x[0].size:                  # before the comparison, not after it
        raise ValueError(f"--check-pixels: expected at most the image's {x[0].size} entries "
                         f"({'x'.join(map(str, x.shape[1:]))}), got {args.check_pixels}")
    layers = args.layers or _layers_4d(net)
    _say(f"comparing the three rules at {len(layers)} layers")
    table = compare_rules(net, x, layers, args.neuron)
    _say("a/b: ||a - b|| / ||b|| of the two reconstructions of the input (0: the same; inf: b is zero)")
    _say(f"{'layer':24s} {'ReLUs':>5s} {'deconv/grad':>12s} {'guided/grad':>12s} {'guided/deconv':>14s}")
    for t in table:
        zero = [r for r, v in t["norms"].items() if v == 0]
        _say(f"{t['layer']:24s} {t['relus']:5d} {t['deconvnet_vs_gradient']:12.3g} "
             f"{t['guided_vs_gradient']:12.3g} {t['guided_vs_deconvnet']:14.3g}"
             + (f"  ({' and '.join(zero)} zero everywhere)" if zero else ""))
    check_layer = args.check_layer or layers[len(layers) // 2]
    _say(f"float64 central differences at {args.check_pixels} pixels, layer {check_layer} (two float64 "
         f"passes a pixel)")
    t0 = said = time.perf_counter()

    def progress(done, total):                  # a line every 30 s: a large --check-pixels takes long
        nonlocal said
        now = time.perf_counter()
        if now - said >= 30 and done < total:
            said = now
            _say(f"  {done}/{total} pixels, about {(now - t0) / done * (total - done):.0f} s to go")
    chk = gradient_check(net, x, check_layer, args.neuron, args.check_pixels, progress=progress)
    left_out = f" ({chk['kinks']} of {len(chk['pixels'])} pixels left out: their +-eps passes straddle a ReLU kink " \
               "or a pooling switch)" if chk["kinks"] else ""
    if chk["informative"]:
        _say(f"gradient reconstruction vs numerical gradient: max error {chk['max_error_rel_to_max_grad']:.2e} "
             f"of the largest entry{left_out}")
    else:
        _say("gradient reconstruction vs numerical gradient: nothing to compare: the gradient is zero throughout, "
             f"or every checked pixel sits at a kink{left_out}; try another image, --neuron or --check-layer")
    try:
        ref = reference_check(net, x, check_layer, args.neuron)
        _say(f"engine vs the independent backward pass (max error / max entry): {ref}")
    except NotImplementedError as e:
        ref = {"skipped": str(e)}
    _emit(dict(command="compare-rules", model=args.model, image=args.image, layers=table, gradient_check=chk,
               reference_check=ref))


def cmd_demo(args):
    from .report import demo
    s = demo(args.model, args.out, args.quick, args.photos, args.classes, device=args.device, steps=args.steps,
             progress=sys.stderr, loc_photos=args.loc_photos)
    _say(f"wrote {s['index']} ({s['images']} images, {s['seconds']:.0f} s)")
    _emit(dict(command="demo", index=s["index"], images=s["images"], seconds=s["seconds"],
               models={k: dict(saliency=v["saliency"], rules=dict(layers=v["rules"]["layers"],
                                                                   gradient_check=v["rules"]["gradient_check"]
                                                                   ["max_error_rel_to_max_grad"],
                                                                   reference_check=v["rules"]["reference_check"]),
                               class_models=[dict(variant=c["variant"], final_scores=c["final_scores"])
                                             for c in v["class_models"]])
                       for k, v in s["models"].items()}))
