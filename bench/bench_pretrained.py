"""Speed of the imported ImageNet networks on the CPU, beside PyTorch running the same network.

    python bench/bench_pretrained.py [--models squeezenet1_0 efficientnet_lite0] [--batches 1 16]
                                     [--repeats 3] [--threads N] [--layers]

For each network and batch size: images per second of
    forward                     x -> scores
    forward + backward          scores -> d/d(image) (param_grads=False: what saliency maps need)
for scratchnet and, when ``torch`` is importable, for a PyTorch twin built by ``to_torch`` from the very
same weights (torch.set_num_threads set to the same thread count as Numba), each pass timed alternately
with ours: img/s from the medians, and the ratio ours / theirs in time as the median of the pairs'
ratios (above 1: we are slower). ``--layers`` adds a per-layer-type forward time table (conv 1x1,
conv kxk, depthwise, pooling, ...; one timed call per layer after a warm-up) for both engines at the
largest of --batches.
Prints a table, then one JSON object as the last line.

Thread settings matter on a small machine: NumPy's OpenBLAS starts its own threads beside Numba's
OpenMP threads, and on 2 cores the two pools fight (measured here: a 64x16 @ 16x3025 GEMM, 16 times,
took 380 ms with OpenBLAS's default threads and 1.3 ms with OPENBLAS_NUM_THREADS=1). The header and
the JSON line record OPENBLAS_NUM_THREADS and Numba's threading layer; compare runs with the same settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (alternating, blas_kernels, import_peer_then_scratchnet, median_ratio,  # noqa: E402
                    median_time, run_main)

import_peer_then_scratchnet()   # before NumPy: each engine's thread pools as suit it (see timing.py)

import numpy as np  # noqa: E402

from scratchnet.layers import Concat, Conv2d, Residual, Sequential  # noqa: E402
from torch_twin import to_torch  # noqa: E402  (the PyTorch twin shared by the benches)


def ours_fns(net, x):
    def fwd():
        net.forward(x)

    def fwd_bwd():
        s = net.forward(x)
        d = np.zeros_like(s)
        d[:, 0] = 1.0
        net.backward(d, param_grads=False)
    return fwd, fwd_bwd


def torch_fns(tnet, x):
    import torch
    xt = torch.from_numpy(x)

    def fwd():
        with torch.no_grad():
            tnet(xt)

    def fwd_bwd():
        xi = xt.clone().requires_grad_(True)
        for p in tnet.parameters():
            p.requires_grad_(False)
        s = tnet(xi)
        s[:, 0].sum().backward()
    return fwd, fwd_bwd


def layer_kind(layer):
    if isinstance(layer, Conv2d):
        if layer.depthwise:
            return f"conv depthwise {layer.kernel[0]}x{layer.kernel[1]}"
        return "conv 1x1" if layer.kernel == (1, 1) else f"conv {layer.kernel[0]}x{layer.kernel[1]}"
    return type(layer).__name__


def per_layer_times(net, x, tnet=None):
    """Forward seconds per layer kind (leaves only), ours and (optionally) torch's on the same leaves."""
    ours, theirs = defaultdict(float), defaultdict(float)
    leaves = []

    def walk(layer, shape_in):
        if isinstance(layer, Sequential):
            for _, l in layer.layers:
                shape_in = walk(l, shape_in)
            return shape_in
        if isinstance(layer, (Concat, Residual)):
            for _, l in layer.children():
                walk(l, shape_in)
            return layer.output_shape(shape_in)
        leaves.append((layer, shape_in))
        return layer.output_shape(shape_in)

    walk(net, x.shape)
    rng = np.random.default_rng(0)
    for layer, shape in leaves:
        xin = rng.standard_normal(shape).astype(np.float32)
        kind = layer_kind(layer)
        ours[kind] += median_time(lambda: layer.forward(xin), 1)
        if tnet is not None:
            import torch
            tl = to_torch(Sequential([("l", layer)]))
            xt = torch.from_numpy(xin)
            with torch.no_grad():
                theirs[kind] += median_time(lambda: tl(xt), 1)
    return ours, theirs


def main(argv=None):
    from scratchnet.cli import positive_int      # counts: an integer >= 1, else a clear refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["squeezenet1_0", "efficientnet_lite0"])
    ap.add_argument("--batches", nargs="+", type=positive_int, default=[1, 16])
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=None, help="threads for both engines (default: Numba's)")
    ap.add_argument("--layers", action="store_true", help="also time each layer kind at the largest batch")
    args = ap.parse_args(argv)

    import numba
    from scratchnet.models import load
    threads = args.threads or numba.get_num_threads()
    if threads > numba.config.NUMBA_NUM_THREADS:
        ap.error(f"--threads {threads}: Numba has {numba.config.NUMBA_NUM_THREADS} threads here "
                 f"(NUMBA_NUM_THREADS); give at most that")
    numba.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
        print("torch not importable: timing scratchnet only", file=sys.stderr)

    rows, layer_rows = [], []
    for name in args.models:
        try:
            net = load(name)
        except (ValueError, OSError) as e:  # an unknown name, or weights not found: one line, exit 2
            ap.error(str(e))
        tnet = to_torch(net) if torch is not None else None
        c, h, w = net.input_shape
        for bs in args.batches:
            x = np.random.default_rng(0).standard_normal((bs, c, h, w)).astype(np.float32)
            row = dict(model=name, batch=bs)
            theirs = torch_fns(tnet, x) if tnet is not None else (None, None)
            for what, fn, tfn in zip(("fwd", "fwdbwd"), ours_fns(net, x), theirs):
                if tfn is None:
                    row[f"ours_{what}_img_s"] = bs / median_time(fn, args.repeats)
                    continue
                ta, tb = alternating(fn, tfn, args.repeats)
                row.update({f"ours_{what}_img_s": bs / float(np.median(ta)),
                            f"torch_{what}_img_s": bs / float(np.median(tb)), f"ratio_{what}": median_ratio(ta, tb)})
            rows.append(row)
            print(f"  {name} batch {bs}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                                                       if isinstance(v, float)), file=sys.stderr, flush=True)
        if args.layers:
            x = np.random.default_rng(0).standard_normal((max(args.batches), c, h, w)).astype(np.float32)
            ours, theirs = per_layer_times(net, x, tnet)
            for kind in sorted(ours, key=ours.get, reverse=True):
                layer_rows.append(dict(model=name, kind=kind, ours_s=ours[kind], torch_s=theirs.get(kind)))

    blas_threads, blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset"), blas_kernels()
    print(f"\nCPU, {threads} threads (numba {numba.threading_layer()}, OPENBLAS_NUM_THREADS={blas_threads}, {blas}"
          f"{', torch ' + torch.__version__ if torch else ''}); img/s; ratio = ours time / torch time")
    hdr = f"{'model':<20}{'batch':>6}{'fwd':>10}{'torch':>10}{'ratio':>8}{'fwd+bwd':>10}{'torch':>10}{'ratio':>8}"
    print(hdr)
    for r in rows:
        print(f"{r['model']:<20}{r['batch']:>6}{r['ours_fwd_img_s']:>10.2f}{r.get('torch_fwd_img_s', float('nan')):>10.2f}"
              f"{r.get('ratio_fwd', float('nan')):>8.1f}{r['ours_fwdbwd_img_s']:>10.2f}"
              f"{r.get('torch_fwdbwd_img_s', float('nan')):>10.2f}{r.get('ratio_fwdbwd', float('nan')):>8.1f}")
    if layer_rows:
        print(f"\nforward seconds per layer kind at batch {max(args.batches)}")
        print(f"{'model':<20}{'layer kind':<24}{'ours s':>9}{'torch s':>9}{'ratio':>8}")
        for r in layer_rows:
            ts = r["torch_s"]
            print(f"{r['model']:<20}{r['kind']:<24}{r['ours_s']:>9.3f}"
                  f"{(ts if ts is not None else float('nan')):>9.3f}{(r['ours_s'] / ts if ts else float('nan')):>8.1f}")
    print(json.dumps(dict(threads=threads, cpu_count=os.cpu_count(), openblas_num_threads=blas_threads, blas=blas,
                          numba_threading_layer=numba.threading_layer(), rows=rows, layers=layer_rows)))


if __name__ == "__main__":
    run_main(main)
