"""Tune the graph-cut localisation on cached saliency maps (no network run): sweep the pairwise weight
and the seed quantiles, report the ILSVRC errors of each setting.

    python bench/tune_localise.py --model squeezenet1_0 --limit 150                 # single view
    python bench/tune_localise.py --model squeezenet1_0 --limit 150 --ten-crop
    python bench/tune_localise.py --model squeezenet1_0 --limit 150 --pairwise 1 3 10 --quantiles 0.95,0.3

The maps come from the cache that `scratchnet evaluate localisation --cache DIR` fills (run it first on
the same photos).  Tune on the first photos only (e.g. 150 of the 650) and report the rest.
Prints one line per setting, then one JSON object (all settings and the best by top-5 localisation
error, ties broken by GT-known error) as the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scratchnet.backend import resolve_device  # noqa: E402
from scratchnet.cli import add_device_arg, nonnegative_int, nonnegative_number, positive_int  # noqa: E402
from scratchnet.io.datasets import imagenet_val_dev  # noqa: E402
from scratchnet.io.images import load_image  # noqa: E402
from scratchnet.io.shared import shared_dir  # noqa: E402
from scratchnet.localise.cli import MapCache, _record  # noqa: E402
from scratchnet.localise.evaluate import choose_fractions, evaluate  # noqa: E402
from scratchnet.models import load  # noqa: E402

SHARED = shared_dir()       # $SCRATCHNET_SHARED, else ../shared


def quantile_pair(text: str) -> tuple:
    """argparse type of --quantiles: "fg,bg" with 0 < bg < fg < 1, as localise.segment takes them."""
    try:
        fg, bg = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fg,bg (two numbers, e.g. 0.95,0.3), got {text!r}") from None
    if not 0 < bg < fg < 1:
        raise argparse.ArgumentTypeError(f"expected 0 < bg < fg < 1, got fg {fg:g} and bg {bg:g}")
    return fg, bg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet1_0")
    ap.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-dev"))
    ap.add_argument("--cache", default=str(ROOT / "cache"))
    ap.add_argument("--limit", type=positive_int, default=150)
    ap.add_argument("--offset", type=nonnegative_int, default=0)
    ap.add_argument("--ten-crop", action="store_true")
    ap.add_argument("--rule", default="gradient", choices=["gradient", "deconvnet", "guided"])
    ap.add_argument("--pairwise", type=nonnegative_number, nargs="+", default=[0.5, 1, 2, 3, 5, 10, 20, 30, 50])
    ap.add_argument("--quantiles", type=quantile_pair, nargs="+", default=[(0.95, 0.3)],
                    help="fg,bg seed quantile pairs (default: the paper's 0.95,0.3)")
    add_device_arg(ap)      # the cached maps are those of this device (and, on the CPU, of these BLAS kernels)
    args = ap.parse_args(argv)

    try:            # a data folder, a model name or weights that are not there: one line, exit 2
        ds = imagenet_val_dev(args.data)
        args.device = resolve_device(args.device)
        cache = MapCache(args.cache, load(args.model, device=args.device), args.model, args.ten_crop, args.rule,
                         args.data)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    if args.offset >= len(ds):
        ap.error(f"--offset {args.offset} leaves no photos: the data set has {len(ds)}")
    records = []
    for i in range(args.offset, min(len(ds), args.offset + args.limit)):
        stem, gt = ds.paths[i].name, int(ds.labels[i])          # the map cache's key: the file name
        img = load_image(ds.paths[i])
        entry = cache.get(stem, img.shape[:2], [gt])
        if entry is None:
            sys.exit(f"tune_localise: no cached map for {stem} in {cache.folder}; run `scratchnet evaluate "
                     f"localisation --model {args.model} --data {args.data} --cache {args.cache}"
                     f"{' --ten-crop' if args.ten_crop else ''}{'' if args.rule == 'gradient' else ' --rule ' + args.rule}"
                     f" --limit {args.offset + args.limit} --device {args.device}` first, with the same "
                     f"OPENBLAS_CORETYPE and OPENBLAS_NUM_THREADS as this run (the cache keeps maps of other "
                     f"BLAS settings apart)")
        records.append(_record(ds, i, ds.paths[i].stem, img, gt, entry))

    base = evaluate(records, methods=("whole_image", "centre_box", "saliency_threshold"))
    fr = choose_fractions(records)
    print(f"{len(records)} photos, {args.model}, {'10-crop' if args.ten_crop else 'single view'}: "
          f"top-5 cls error {base['top5_cls_error']:.3f}")
    for m, r in base["methods"].items():
        print(f"  {m:20s} top-5 loc {r['top5_loc_error']:.3f}  GT-known {r['gt_known_loc_error']:.3f}"
              + (f"  (fraction {r['fraction']})" if "fraction" in r else ""))
    rows = []
    for fg, bg in args.quantiles:
        for w in args.pairwise:
            t = time.perf_counter()
            r = evaluate(records, methods=("graphcut",), pairwise_weight=w,
                         segment_kwargs={"fg_quantile": fg, "bg_quantile": bg})["methods"]["graphcut"]
            rows.append({"pairwise_weight": w, "fg_quantile": fg, "bg_quantile": bg,
                         "top1_loc_error": r["top1_loc_error"], "top5_loc_error": r["top5_loc_error"],
                         "gt_known_loc_error": r["gt_known_loc_error"], "fallbacks": r["fallbacks"]})
            print(f"  graphcut fg {fg:.2f} bg {bg:.2f} w {w:6g}: top-5 loc {r['top5_loc_error']:.3f}  "
                  f"GT-known {r['gt_known_loc_error']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    best = min(rows, key=lambda r: (r["top5_loc_error"], r["gt_known_loc_error"]))
    print(json.dumps({"model": args.model, "ten_crop": args.ten_crop, "images": len(records),
                      "offset": args.offset, "top5_cls_error": base["top5_cls_error"],
                      "baselines": base["methods"], "sweeps": fr["sweep"], "graphcut": rows, "best": best}))


if __name__ == "__main__":
    main()
