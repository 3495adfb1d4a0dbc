"""Saliency throughput on the CPU: scratchnet against PyTorch on the same network and weights.

    python bench/bench_saliency.py [--batch 16] [--repeats 3] [--models squeezenet1_0 paper_net224]

One saliency pass = forward to the unnormalised scores, backward of the one-hot top-1 score to the
image (no weight gradients: the twin's parameters have requires_grad False, so PyTorch too computes
only the image gradient), max over channels of |grad|. The PyTorch twin of each network is built
layer by layer from the scratchnet network (``to_torch``), checked to give the same scores and the same
maps, and timed in the same run with the same number of threads.

The two engines are timed alternately (ours, theirs, ours, theirs, ...) and the figure to read is the
median of the per-pair time ratios: this 2-core machine's speed drifts by 1.5x within a minute, which
makes two separately taken best times incomparable. Prints a table, then one JSON line.

``--keep-freed-memory`` (glibc only) is an experiment on allocation costs, for both engines at once:
large blocks come from the heap and freed memory is never given back to the system (``mallopt``), so
each pass reuses the pages the last one touched instead of faulting in fresh ones. scratchnet does not
do this itself: it changes the whole process's memory behaviour.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import alternating, blas_kernels, import_peer_then_scratchnet, median_ratio, median_time, run_main  # noqa: E402

torch = import_peer_then_scratchnet()   # before NumPy: each engine's thread pools as suit it (see timing.py)

import numpy as np  # noqa: E402

from scratchnet.threads import DEFAULTS as THREAD_VARS  # noqa: E402
from torch_twin import to_torch  # noqa: E402  (the PyTorch twin shared by the benches)
from scratchnet.vis.saliency import class_gradient, saliency_from_gradient


def torch_saliency(tnet, x):
    """The same saliency pass in PyTorch: x (N, C, H, W) tensor -> maps (N, H, W), top-1 classes."""
    x = x.detach().requires_grad_(True)
    scores = tnet(x)
    top = scores.argmax(1)
    scores.gather(1, top[:, None]).sum().backward()
    return x.grad.abs().amax(1), top


def ours_saliency(net, x):
    grad, cls, _ = class_gradient(net, x, None, "gradient")
    return saliency_from_gradient(grad), cls


def build(name):
    from scratchnet.models import load, paper_net
    if name.startswith("paper_net"):
        return paper_net(int(name[len("paper_net"):] or 224), 1000, seed=0)
    return load(name)


def keep_freed_memory():
    """glibc's mallopt: blocks up to 1 GiB from the heap (M_MMAP_THRESHOLD), and the heap never trimmed
    (M_TRIM_THRESHOLD), for the rest of the process."""
    import ctypes
    m_trim_threshold, m_mmap_threshold = -1, -3          # malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError) as e:
        raise SystemExit(f"bench_saliency: --keep-freed-memory needs glibc's mallopt: {e}") from None
    if not ok:
        raise SystemExit("bench_saliency: --keep-freed-memory: glibc's mallopt refused the thresholds")


def main(argv=None):
    from scratchnet.cli import positive_int      # counts: an integer >= 1, else a clear refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=16)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--models", nargs="+", default=["squeezenet1_0", "paper_net224"])
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc: reuse freed memory instead of new pages, for both engines (see above)")
    args = ap.parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()
    if torch is None:
        print("PyTorch not importable: timing scratchnet only", file=sys.stderr)
    else:
        torch.set_grad_enabled(True)
    threads = torch.get_num_threads() if torch is not None else None
    rows = []
    for name in args.models:
        try:
            net = build(name)
        except ValueError as e:             # an unknown name: one line, exit 2
            ap.error(str(e))
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((args.batch,) + net.input_shape) * 30 * net.preprocess.get("scale", 1.0)
             if net.preprocess else rng.standard_normal((args.batch,) + net.input_shape)).astype(np.float32)
        if torch is None:
            print(f"{name}: timing scratchnet ...", file=sys.stderr, flush=True)
            ours = median_time(lambda: ours_saliency(net, x), args.repeats)
            rows.append(dict(model=name, batch=args.batch, scratchnet_s=ours, scratchnet_img_s=args.batch / ours))
            continue
        tnet = to_torch(net).eval()
        for p in tnet.parameters():
            p.requires_grad_(False)        # the same computation: the image gradient only
        xt = torch.from_numpy(x)
        m_ours, c_ours = ours_saliency(net, x)
        m_t, c_t = torch_saliency(tnet, xt)
        same = bool((c_t.numpy() == c_ours).all())
        err = float(np.abs(m_t.numpy() - m_ours).max() / max(np.abs(m_t.numpy()).max(), 1e-30))
        print(f"{name}: timing scratchnet and PyTorch alternately ...", file=sys.stderr, flush=True)
        ta, tb = alternating(lambda: ours_saliency(net, x), lambda: torch_saliency(tnet, xt), args.repeats)
        ratios = sorted(a / b for a, b in zip(ta, tb))
        t_ours, t_torch = float(np.median(ta)), float(np.median(tb))     # medians, like the ratio
        row = dict(model=name, batch=args.batch, scratchnet_s=t_ours, scratchnet_img_s=args.batch / t_ours,
                   torch_s=t_torch, torch_img_s=args.batch / t_torch,
                   ratio_vs_torch=median_ratio(ta, tb), ratio_range=[ratios[0], ratios[-1]],
                   same_top1=same, max_map_rel_diff=err)
        rows.append(row)
    blas = blas_kernels()
    print(f"\nsaliency, batch {args.batch}, {args.repeats} alternating timings, CPU ({os.cpu_count()} cores, "
          f"torch threads {threads}, {blas}"
          f"{', freed memory kept' if args.keep_freed_memory else ''})")
    print(f"{'model':16s} {'scratchnet img/s':>17s} {'torch img/s':>12s} {'time ratio':>11s} {'(min-max)':>12s} {'maps rel diff':>14s}"
          f"\n{'':16s} {'(median)':>17s} {'(median)':>12s} {'(median)':>11s}")
    for r in rows:
        print(f"{r['model']:16s} {r['scratchnet_img_s']:17.2f} {r.get('torch_img_s', float('nan')):12.2f} "
              f"{r.get('ratio_vs_torch', float('nan')):11.2f} {'%.2f-%.2f' % tuple(r.get('ratio_range', (np.nan, np.nan))):>12s} "
              f"{r.get('max_map_rel_diff', float('nan')):14.2e}")
    print(json.dumps(dict(bench="saliency", device="cpu", cpu_count=os.cpu_count(), torch_threads=threads,
                          goal="time ratio <= 1.5", thread_env={k: os.environ.get(k) for k in THREAD_VARS},
                          blas=blas, keep_freed_memory=args.keep_freed_memory, results=rows)))


if __name__ == "__main__":
    run_main(main)
