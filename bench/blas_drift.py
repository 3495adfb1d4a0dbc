"""How far OpenBLAS's kernels and thread count move saliency maps: one network, the same photos, each
setting in a fresh process (OpenBLAS reads its settings when it loads).

    python bench/blas_drift.py [--model squeezenet1_0] [--shared-photos 4]
                               [--settings default OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell]

A setting is ``default`` (the environment as it is) or VAR=VALUE pairs joined by commas. Photos:
scikit-image's five samples (in its wheel) and, where ../shared (or $SCRATCHNET_SHARED) is there, that
many imagenet-val-dev photos. Maps: the top-5 classes' single-view gradient maps, one photo a pass, as
localisation computes and caches them (scratchnet.localise.network.network_saliency).

For each setting it prints ``backend.numerics('cpu')`` (the part of the map cache's key that names
the BLAS), the share of map elements that differ from the first setting's maps, each map's largest
difference over its largest value (the median and the worst map), and on how many photos the top-5
classes are the same. The last line is one JSON object. This is why the map cache keeps settings
apart (README, "Reproducibility").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def child(model: str, shared_photos: int, out: str) -> None:
    """Compute the maps in this (fresh) process; save them to ``out`` (.npz); print the BLAS as JSON."""
    import scratchnet  # noqa: F401  before NumPy, as the commands do
    import numpy as np
    from scratchnet.backend import numerics
    from scratchnet.localise.network import network_saliency
    from scratchnet.models import load
    from scratchnet.vis.report import sample_photos
    net = load(model)
    photos = sample_photos(shared_n=shared_photos)
    entries = network_saliency(net, [img for _, img, _ in photos], top=5)
    arrays = {}
    for i, e in enumerate(entries):
        arrays[f"maps{i}"], arrays[f"classes{i}"] = e["maps"], np.asarray(e["classes"])
    np.savez(out, **arrays)
    print(json.dumps(dict(numerics=numerics("cpu"), photos=[t for t, _, _ in photos])))


def parse_setting(text: str) -> dict:
    if text == "default":
        return {}
    pairs = [p.split("=", 1) for p in text.split(",")]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected 'default' or VAR=VALUE[,VAR=VALUE...], got {text!r}")
    return dict(pairs)


def main(argv=None):
    import numpy as np
    from scratchnet.cli import nonnegative_int
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet1_0", help="a built-in name or a saved .npz (default squeezenet1_0)")
    ap.add_argument("--shared-photos", type=nonnegative_int, default=4,
                    help="imagenet-val-dev photos beside scikit-image's five, where ../shared is there (default 4)")
    ap.add_argument("--settings", nargs="+", default=["default", "OPENBLAS_NUM_THREADS=1", "OPENBLAS_CORETYPE=Haswell"],
                    help="environments to compare, the first the reference (default: default, one thread, Haswell)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.model, args.shared_photos, args.child)
    try:
        settings = [(s, parse_setting(s)) for s in args.settings]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, env) in enumerate(settings):
            out = Path(tmp) / f"{k}.npz"
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--shared-photos",
                                   str(args.shared_photos), "--child", str(out)],
                                  env={**os.environ, **env}, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"blas_drift: the run under {label!r} failed:\n{done.stderr.strip()}")
            said = json.loads(done.stdout.strip().splitlines()[-1])
            with np.load(out) as z:
                got = {name: z[name] for name in z.files}
            n = len(said["photos"])
            if first is None:
                first = got
                print(f"{args.model}, {n} photos ({', '.join(said['photos'])}), top-5 gradient maps each")
                print("  changed: share of map elements not equal to the first setting's; a map's difference:"
                      " its largest |difference| over its largest |value| (median and worst map)")
                print(f"  {'setting':<30} {'BLAS':<26} {'changed':>9} {'median map':>12} {'worst map':>12} "
                      f"{'same top-5':>10}")
            same = sum(np.array_equal(first[f"classes{i}"], got[f"classes{i}"]) for i in range(n))
            comparable = []                 # (reference map, this map) of each class both have, photo by photo
            for i in range(n):
                mine = {int(c): j for j, c in enumerate(got[f"classes{i}"])}
                comparable += [(first[f"maps{i}"][j], got[f"maps{i}"][mine[int(c)]])
                               for j, c in enumerate(first[f"classes{i}"]) if int(c) in mine]
            changed = (sum(int((a != b).sum()) for a, b in comparable) / max(1, sum(a.size for a, _ in comparable)))
            rel = [float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-30)) for a, b in comparable] or [0.0]
            print(f"  {label:<30} {said['numerics']:<26} {changed:>9.1%} {np.median(rel):>12.2e} {max(rel):>12.2e} "
                  f"{same:>7}/{n}", flush=True)
            rows.append(dict(setting=label, numerics=said["numerics"], changed=round(changed, 4),
                             median_rel_diff=float(np.median(rel)), max_rel_diff=max(rel), same_top5=same, photos=n))
    print(json.dumps(dict(bench="blas_drift", model=args.model, rows=rows)))


if __name__ == "__main__":
    main()
