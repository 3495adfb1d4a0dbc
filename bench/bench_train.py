"""Training throughput of the paper's 64-pixel network: our SGD step against PyTorch's, same run.

    python bench/bench_train.py [--widths 1.0 0.5] [--batch 128] [--steps 3] [--threads 2] [--classes 200]

For each width: images/s of one training step (forward in train mode with dropout, softmax
cross-entropy, backward with weight gradients and no image gradient, SGD momentum + weight decay
update) for scratchnet and, where torch is importable, for the same network in PyTorch with
torch.set_num_threads(threads) (the best of --steps timed steps after one warm-up step each).
Then a per-layer profile of our step (forward / backward seconds and share of the step) for
the first width.  The figure to read is our time / theirs, the median over alternating pairs of steps
(bench/timing.py): this machine is shared and noisy.
The last line of stdout is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import alternating, blas_kernels, import_peer_then_scratchnet, median_ratio, run_main  # noqa: E402

torch = import_peer_then_scratchnet()   # before NumPy: each engine's thread pools as suit it (see timing.py)

import numpy as np  # noqa: E402

from torch_twin import to_torch  # noqa: E402

from scratchnet.layers import softmax_cross_entropy  # noqa: E402
from scratchnet.models import paper_net  # noqa: E402
from scratchnet.train.sgd import SGD  # noqa: E402


def our_step(net, opt, x, y):
    scores = net.forward(x, train=True)
    _, dscores = softmax_cross_entropy(scores, y)
    net.backward(dscores, param_grads=True, input_grad=False)
    opt.step()


def torch_step_fn(net, x, y):
    import torch
    model = to_torch(net)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return step


def profile_layers(net, x, y):
    """Seconds of each layer's forward and backward in one training step: [(name, fwd, bwd)]."""
    fwd, bwd = {}, {}
    h = x
    for name, layer in net.layers:
        t = time.perf_counter()
        h = layer.forward(h, train=True)
        fwd[name] = time.perf_counter() - t
    _, d = softmax_cross_entropy(h, y)
    for i, (name, layer) in enumerate(reversed(net.layers)):
        t = time.perf_counter()
        d = layer.backward(d, "gradient", True, i < len(net.layers) - 1)
        bwd[name] = time.perf_counter() - t
    return [(name, fwd[name], bwd[name]) for name, _ in net.layers]


def main(argv=None):
    from scratchnet.cli import positive_int, positive_number   # else a clear one-line refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=positive_number, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--batch", type=positive_int, default=128)
    ap.add_argument("--steps", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads (ours: OPENBLAS_NUM_THREADS)")
    ap.add_argument("--classes", type=positive_int, default=200)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 64, 64)).astype(np.float32)
    y = rng.integers(0, args.classes, args.batch).astype(np.int64)
    have_torch = torch is not None
    if have_torch:
        torch.set_num_threads(args.threads)
    blas = blas_kernels()
    print(f"batch {args.batch}, 64x64, {args.classes} classes; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {blas}, "
          f"torch threads {args.threads if have_torch else '-'}; "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    results = {}
    for w in args.widths:
        net = paper_net(64, args.classes, width=w, seed=0)
        opt = SGD(net, lr=0.01)
        mine = lambda: our_step(net, opt, x, y)  # noqa: E731
        if have_torch:
            ta, tb = alternating(mine, torch_step_fn(paper_net(64, args.classes, width=w, seed=0), x, y),
                                 repeats=args.steps, warmup=1)
            ours, theirs = args.batch / min(ta), args.batch / min(tb)
            row = dict(width=w, ours_img_s=round(ours, 1), torch_img_s=round(theirs, 1),
                       our_time_over_theirs=round(median_ratio(ta, tb), 2))
        else:
            ta, _ = alternating(mine, lambda: None, repeats=args.steps, warmup=1)
            row = dict(width=w, ours_img_s=round(args.batch / min(ta), 1))
        results[str(w)] = row
        print(f"width {w}: ours {row['ours_img_s']:.1f} img/s" + (
            f", PyTorch {row['torch_img_s']:.1f} img/s, our time / theirs {row['our_time_over_theirs']:.2f} "
            f"(median of {args.steps} alternating pairs)" if have_torch else " (PyTorch not installed)"),
            file=sys.stderr)

    net = paper_net(64, args.classes, width=args.widths[0], seed=0)
    our_step(net, SGD(net, lr=0.01), x, y)                     # warm-up (Numba compilation, buffers)
    prof = profile_layers(net, x, y)
    total = sum(f + b for _, f, b in prof)
    print(f"per-layer profile, width {args.widths[0]} (seconds; share of the step):", file=sys.stderr)
    for name, f, b in prof:
        if f + b > 0.01 * total:
            print(f"  {name:8s} fwd {f:7.3f}  bwd {b:7.3f}  {100 * (f + b) / total:5.1f}%", file=sys.stderr)
    print(json.dumps(dict(batch=args.batch, results=results, profile_width=args.widths[0],
                          profile={n: [round(f, 4), round(b, 4)] for n, f, b in prof},
                          load_average=round(os.getloadavg()[0], 1), blas=blas)))


if __name__ == "__main__":
    run_main(main)
