"""Command-line tools for classifiers: classify photos, measure top-1/top-5 on a data set, describe a network.

    scratchnet classify IMAGE... --model NAME_OR_PATH [--topk 5]
    scratchnet evaluate classification --model NAME_OR_PATH --data DIR [--limit N] [--batch-size B]
    scratchnet info --model NAME_OR_PATH

``--model`` is a registered name (squeezenet1_0, efficientnet_lite0) or a network saved by scratchnet.
Each prints one JSON object as the last line of stdout; progress goes to stderr.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from ..backend import to_numpy
from ..cli import emit_json, offset_limit
from ..io.classnames import normalise_name
from ..progress import Progress
from ..vis.display import network_wnids

MODE_HELP = ("how a photo becomes the network input: 'crop' resizes the shorter side to the network's "
             "preprocess['resize'] and takes the centre crop (the standard evaluation); 'stretch' resizes "
             "to the input size ignoring the aspect ratio")


def register(sub, ev_sub):
    from ..cli import PHOTOS_HELP, add_device_arg, add_model_arg, nonnegative_int, positive_int

    p = sub.add_parser("classify", help="top-k classes of photos (softmax probabilities and raw scores)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help=PHOTOS_HELP)
    add_model_arg(p, "efficientnet_lite0")      # as saliency, classmodel and demo: its weights come with pip
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to list (default 5)")
    p.add_argument("--mode", choices=["crop", "stretch"], default="crop", help=MODE_HELP)
    add_device_arg(p)
    p.set_defaults(func=cmd_classify)

    p = ev_sub.add_parser("classification", help="top-1 / top-5 accuracy on a labelled image folder")
    add_model_arg(p)
    p.add_argument("--data", required=True,
                   help="imagenet-val-dev (images/ + boxes.csv), Tiny-ImageNet (its root = its val split, or "
                        "its train/ or val/ folder) or an ImageFolder (<root>/<class wnid or name>/<image>)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--offset", type=nonnegative_int, default=0,
                   help="skip the first K images (default 0), as evaluate localisation / segmentation do")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--mode", choices=["crop", "stretch"], default="crop", help=MODE_HELP)
    p.add_argument("--flip", action="store_true",
                   help="average the scores of each input and its mirror image (default: the single view)")
    add_device_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="layers, output shapes, parameter counts and GFLOP of a network")
    add_model_arg(p, "efficientnet_lite0")
    p.add_argument("--size", type=positive_int, default=None, help="input side in pixels (default: the network's)")
    add_device_arg(p)
    p.set_defaults(func=cmd_info)


def _load(args):
    from . import load
    return load(args.model, device=args.device)     # (resolved by scratchnet.cli.main)


def softmax(s):
    """Row-wise softmax of scores (N, K), computed stably."""
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _class_name(net, k):
    return net.class_names[k] if net.class_names else f"class {k}"


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------
def cmd_classify(args):
    from ..io.images import load_image
    from .preprocess import prepare
    net = _load(args)
    k = min(args.topk, net.num_classes)
    results = []
    for path in args.images:
        x = prepare(net, [load_image(path, upright=True)], mode=args.mode)
        scores = to_numpy(net.forward(x))[0].astype(np.float64)
        probs = softmax(scores[None])[0]
        top = np.argsort(-scores)[:k]
        print(f"{path}:")
        for r, c in enumerate(top, 1):
            print(f"  {r}. {_class_name(net, c):<30} p={probs[c]:.4f}  score={scores[c]:.3f}  (class {c})")
        results.append(dict(image=str(path), top=[dict(rank=r, index=int(c), name=_class_name(net, c),
                                                       prob=float(probs[c]), score=float(scores[c]))
                                                  for r, c in enumerate(top, 1)]))
    emit_json(dict(command="classify", model=str(args.model), results=results))
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate classification
# ---------------------------------------------------------------------------------------------
def label_map(net, dataset):
    """For each data-set class, the network's class index (or -1 when the network has no such class).

    Classes are matched by WordNet id when both sides know them, else by name (case, '_' and spaces
    ignored). Returns (map (C,) int64, how: 'wnid' | 'name' | 'identity')."""
    c = dataset.num_classes
    net_wnids = network_wnids(net)
    if net_wnids and any(dataset.class_wnids):
        index = {w: i for i, w in enumerate(net_wnids)}
        return np.array([index.get(w, -1) if w else -1 for w in dataset.class_wnids], np.int64), "wnid"
    if net.class_names:
        index = {normalise_name(n): i for i, n in enumerate(net.class_names)}
        return np.array([index.get(normalise_name(n), -1) for n in dataset.class_names], np.int64), "name"
    if c == net.num_classes:
        return np.arange(c, dtype=np.int64), "identity"
    raise ValueError(f"cannot match the data set's {c} classes to the network's {net.num_classes}: the network "
                     f"records neither class wnids nor class names")


def matched_images(net, ds, who="evaluate", where="this data set", quiet=False):
    """The images of ``ds`` whose class the network has: (indices, targets, how), targets (N,) being each
    image's class in the network's outputs (-1 where it has none) and how the classes were matched.
    Raises when no image is left; says on stderr (unless quiet) which classes are left out."""
    mapping, how = label_map(net, ds)
    targets = mapping[ds.labels]
    keep = np.flatnonzero(targets >= 0)
    if len(keep) == 0:
        shown = ", ".join(f"{w or '-'} {n!r}" for w, n in list(zip(ds.class_wnids, ds.class_names))[:3])
        raise ValueError(f"none of the data set's {ds.num_classes} classes ({shown}, ...) is one of the network's "
                         f"{net.num_classes} classes (matched by {how}); is this the right model for {where}?")
    unmatched_classes = int((mapping < 0).sum())
    if unmatched_classes and not quiet:
        missing = [ds.class_names[i] for i in np.flatnonzero(mapping < 0)[:5]]
        print(f"{who}: {unmatched_classes} of the data set's {ds.num_classes} classes are not among the "
              f"network's classes (matched by {how}; e.g. {missing}); their {len(ds) - len(keep)} images "
              f"are left out", file=sys.stderr)
    return keep, targets, how


def cmd_evaluate(args):
    from ..io.datasets import open_dataset
    from ..io.images import ImageReadError, load_image
    from .preprocess import prepare
    net = _load(args)
    ds = open_dataset(args.data, root_split="val")      # a Tiny-ImageNet root: its held-out split
    keep, targets, how = matched_images(net, ds, "evaluate", str(args.data))
    chosen = offset_limit(len(keep), args, "images")            # of the matched images
    idx = keep[chosen.start:chosen.stop]

    progress = Progress()                   # redrawn on a terminal, a line every 30 s in a log
    t0 = time.time()
    top1 = top5 = done = skipped = 0
    with_top5 = net.num_classes > 5         # with 5 classes or fewer every image is in the top 5

    def accuracy():
        return f"top-1 {100 * top1 / done:.1f}%" + (f", top-5 {100 * top5 / done:.1f}%" if with_top5 else "")

    for lo in range(0, len(idx), args.batch_size):
        imgs, ys = [], []
        for i in idx[lo:lo + args.batch_size]:
            try:
                imgs.append(load_image(ds.paths[i]))
                ys.append(targets[i])
            except ImageReadError as e:
                skipped += 1
                print(f"\nevaluate: skipping unreadable file: {e}", file=sys.stderr)
        if not imgs:
            continue
        x = prepare(net, imgs, mode=args.mode)
        scores = to_numpy(net.forward(x))
        if args.flip:                                   # the mirror image's scores, averaged in
            scores = (scores + to_numpy(net.forward(x[..., ::-1].copy()))) / 2
        ys = np.asarray(ys)
        top = np.argsort(-scores, axis=1)[:, :5]
        top1 += int((top[:, 0] == ys).sum())
        top5 += int((top == ys[:, None]).any(axis=1).sum())
        done += len(ys)
        progress.update(f"evaluate: {done}/{len(idx)} images, {accuracy()}, {time.time() - t0:.1f} s")
    if done == 0:
        progress.done(f"evaluate: 0/{len(idx)} images, {time.time() - t0:.1f} s")
        raise ValueError(f"no readable images among the {len(idx)} selected in {args.data}")
    progress.done(f"evaluate: {done}/{len(idx)} images, {accuracy()}, {time.time() - t0:.1f} s")
    result = dict(command="evaluate classification", model=str(args.model), data=str(args.data), offset=args.offset,
                  mode=args.mode,
                  flip=args.flip, images=done, top1=top1 / done, top5=top5 / done if with_top5 else None,
                  seconds=round(time.time() - t0, 2),
                  matched_by=how, unmatched_images=len(ds) - len(keep), skipped_unreadable=skipped)
    emit_json(result)
    return 0


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def describe(net, input_shape=None):
    """One row per leaf layer: dict(path, type, out_shape, params, gflop) for a single image.

    GFLOP counts 2 x multiply-adds of convolutions and linear layers (per image)."""
    from ..layers import Concat, Conv2d, Linear, Residual, Sequential
    rows = []

    def walk(layer, path, shape):
        if isinstance(layer, Sequential):
            for name, child in layer.layers:
                shape = walk(child, f"{path}.{name}" if path else name, shape)
            return shape
        if isinstance(layer, (Concat, Residual)):
            for name, child in layer.children():
                walk(child, f"{path}.{name}", shape)
            return layer.output_shape(shape)
        out = layer.output_shape(shape)
        params = int(sum(np.prod(p.shape) for p in layer.params.values()))
        flop = 0
        if isinstance(layer, Conv2d):
            flop = 2 * layer.params["W"][0].size * int(np.prod(out[1:]))
        elif isinstance(layer, Linear):
            flop = 2 * layer.in_features * layer.out_features
        rows.append(dict(path=path, type=type(layer).__name__, out_shape=list(out[1:]), params=params,
                         gflop=flop / 1e9))
        return out

    walk(net, "", (1,) + tuple(input_shape or net.input_shape))
    return rows


def cmd_info(args):
    net = _load(args)
    shape = net.input_shape if args.size is None else (net.input_shape[0], args.size, args.size)
    rows = describe(net, shape)
    print(f"{net.name or args.model}: input {shape}, {net.num_classes} classes")
    tw = max([len("type")] + [len(r["type"]) for r in rows]) + 2      # LocalResponseNorm: 17 letters
    print(f"{'layer':<40}{'type':<{tw}}{'output':<20}{'params':>10}{'GFLOP':>9}")
    for r in rows:
        print(f"{r['path']:<40}{r['type']:<{tw}}{str(tuple(r['out_shape'])):<20}{r['params']:>10}{r['gflop']:>9.4f}")
    params, gflop = sum(r["params"] for r in rows), sum(r["gflop"] for r in rows)
    print(f"{'total':<{60 + tw}}{params:>10}{gflop:>9.3f}")
    top = [name for name, _ in net.layers]
    if len(top) < len(rows):            # blocks: their inner layers are listed above, the blocks here
        print(f"top-level layers (deconv --layer, compare-rules --layers): {', '.join(top)}")
    emit_json(dict(command="info", model=str(args.model), input_shape=list(shape),
                   num_classes=net.num_classes, params=params, gflop=gflop,
                   preprocess=net.preprocess, layers=rows, top_level_layers=top))
    return 0
