"""CPU benchmark of the engine on the paper's network (issue: engine core).

    python bench/bench_cpu.py [--batch 8] [--size 224] [--repeats 5] [--threads N]

Prints, for the paper's network at 224x224 (batch 8 by default):
  * each layer's forward and backward time, GFLOP/s and the fraction of this machine's measured
    float32 GEMM rate;
  * the whole forward, an SGD training step (forward in train mode, backward with weight gradients
    and no image gradient, momentum update) and saliency (backward to the image, no weight gradients);
  * Numba vs NumPy for ReLU, max pooling, and the convolution's copies around its GEMMs (the output
    rows to NCHW with the bias added, the output gradient to rows);
  * where PyTorch is installed, the same network with the same weights in PyTorch, each pass timed
    alternately with ours, and our time over theirs as the median of the pairs' ratios (the ratio is
    what to compare: these machines are noisy).
The last line is one JSON object with everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (alternating, blas_kernels, gemm_gflops, import_peer_then_scratchnet, median_ratio,  # noqa: E402
                    median_time, run_main)

import_peer_then_scratchnet()   # before NumPy: each engine's thread pools as suit it (see timing.py)

import numpy as np  # noqa: E402

from torch_twin import to_torch, torch_available, torch_steps  # noqa: E402

import scratchnet as sn  # noqa: E402
from scratchnet import kernels  # noqa: E402

from scratchnet.layers.pool import maxpool_numpy  # noqa: E402


def sgd_step(net, x, labels, lr=1e-3, mom=0.9, state={}):
    scores = net.forward(x, train=True)
    loss, d = sn.layers.softmax_cross_entropy(scores, labels)
    net.backward(d, input_grad=False)
    for name, layer, key in net.named_params():
        v = state.setdefault(name, np.zeros_like(layer.params[key]))
        v *= mom
        v -= lr * layer.grads[key]
        layer.params[key] += v
    return loss


def per_layer(net, x, repeats):
    rows = []
    h = x
    acts = []
    for name, layer in net.layers:
        acts.append(h)
        t = median_time(lambda: layer.forward(h, True), repeats, warmup=1)
        h = layer.forward(h, True)
        rows.append(dict(layer=name, fwd_ms=t * 1e3))
    g = np.ones_like(h)
    for i in range(len(net.layers) - 1, -1, -1):
        name, layer = net.layers[i]
        layer.forward(acts[i], True)
        t = median_time(lambda: layer.backward(g, "gradient", True, i > 0), repeats, warmup=1)
        g2 = layer.backward(g, "gradient", True, i > 0)
        rows[i]["bwd_ms"] = t * 1e3
        g = g2 if g2 is not None else g
    return rows


def main():
    from scratchnet.cli import positive_int      # counts: an integer >= 1, else a clear refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=8, help="images per pass (default %(default)s)")
    ap.add_argument("--size", type=positive_int, default=224,
                    help="input side in pixels (at least 15 for the paper's network; default %(default)s)")
    ap.add_argument("--repeats", type=positive_int, default=5,
                    help="timed runs of each pass, the median reported, after one warm-up (default %(default)s; "
                         "3 or more: one run is noisy)")
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                    help="Numba's and PyTorch's threads (default: the CPU count, %(default)s); our GEMMs use "
                         "OpenBLAS's, set by OPENBLAS_NUM_THREADS (recorded in the JSON)")
    ap.add_argument("--no-torch", action="store_true", help="time scratchnet alone (no PyTorch peer)")
    args = ap.parse_args()

    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    try:
        net = sn.models.paper_net(args.size, num_classes=1000, seed=0)
    except ValueError as e:                 # a --size too small for its poolings: one line, exit 2
        ap.error(str(e))
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    labels = rng.integers(0, 1000, args.batch)
    onehot = np.zeros((args.batch, 1000), np.float32)
    onehot[np.arange(args.batch), labels] = 1
    gemm, blas = gemm_gflops(), blas_kernels()
    flops = dict(sn.models.flops_per_layer(net, (3, args.size, args.size)))
    total_gflop = sum(flops.values())
    print(f"machine float32 GEMM: {gemm:.1f} GFLOP/s   network: {total_gflop:.2f} GFLOP/image forward   "
          f"batch {args.batch}, {args.threads} threads, {blas}", file=sys.stderr)

    rows = per_layer(net, x, args.repeats)
    print(f"\n{'layer':<10}{'fwd ms':>9}{'bwd ms':>9}{'fwd GFLOP/s':>13}{'of GEMM':>9}{'bwd GFLOP/s':>13}")
    for r in rows:
        gf = flops.get(r["layer"], 0) * args.batch
        r["fwd_gflops"] = gf / (r["fwd_ms"] / 1e3) if gf else None
        r["bwd_gflops"] = 2 * gf / (r["bwd_ms"] / 1e3) if gf else None   # dW and dx: twice the forward
        if gf:
            print(f"{r['layer']:<10}{r['fwd_ms']:9.1f}{r['bwd_ms']:9.1f}{r['fwd_gflops']:13.1f}"
                  f"{r['fwd_gflops'] / gemm:9.0%}{r['bwd_gflops']:13.1f}")
        else:
            print(f"{r['layer']:<10}{r['fwd_ms']:9.1f}{r['bwd_ms']:9.1f}")

    def saliency():
        net.forward(x)
        return net.backward(onehot, param_grads=False)

    ours_fns = dict(forward=lambda: net.forward(x), train_step=lambda: sgd_step(net, x, labels), saliency=saliency)
    result = dict(batch=args.batch, size=args.size, threads=args.threads,
                  openblas_num_threads=os.environ.get("OPENBLAS_NUM_THREADS", "unset"), gemm_gflops=gemm, blas=blas,
                  gflop_per_image=total_gflop, layers=rows)
    ours, theirs, ratios = {}, {}, {}
    if not args.no_torch and torch_available():
        # the peer in the same run, each pass timed alternately with ours: the ratio is the median of
        # the pairs' ratios (a machine's speed drifts; the two calls of a pair see the same machine)
        import torch
        torch.set_num_threads(args.threads)
        tnet = to_torch(net)
        tx, tl = torch.from_numpy(x), torch.from_numpy(labels)
        opt = torch.optim.SGD(tnet.parameters(), lr=1e-3, momentum=0.9)
        for k, fn in torch_steps(tnet, opt, tx, tl).items():
            ta, tb = alternating(ours_fns[k], fn, args.repeats)
            ours[k], theirs[k], ratios[k] = np.median(ta), np.median(tb), median_ratio(ta, tb)
        result["torch"] = {k: dict(ms=v * 1e3, img_s=args.batch / v) for k, v in theirs.items()}
        result["torch_version"] = torch.__version__
        result["ratio_ours_over_torch"] = ratios
    else:
        ours = {k: median_time(fn, args.repeats) for k, fn in ours_fns.items()}
    result["scratchnet"] = {k: dict(ms=v * 1e3, img_s=args.batch / v) for k, v in ours.items()}

    # Numba vs NumPy for the fused kernels, on conv1's output
    a = net["conv1"].forward(x)
    y = kernels.relu_forward(a)
    dy = rng.standard_normal(a.shape).astype(np.float32)
    pool = net["pool1"]
    oh, ow = pool.output_shape(a.shape)[2:]
    n, o, ah, aw = a.shape
    rows, bias = np.ascontiguousarray(a.transpose(1, 0, 2, 3)).reshape(o, -1), net["conv1"].params["b"]

    def to_nchw_numpy():                 # Conv2d's copy to NCHW and bias add, as NumPy does them: two passes
        out = np.ascontiguousarray(rows.reshape(o, n, ah * aw).transpose(1, 0, 2)).reshape(a.shape)
        out += bias.reshape(1, o, 1, 1)
        return out
    vs = dict(
        conv_rows_to_nchw=(median_time(lambda: kernels.rows_to_nchw(rows, n, (ah, aw), bias)),
                           median_time(to_nchw_numpy)),
        conv_nchw_to_rows=(median_time(lambda: kernels.nchw_to_rows(dy)),
                           median_time(lambda: np.ascontiguousarray(dy.reshape(n, o, -1).transpose(1, 0, 2)))),
        relu_fwd=(median_time(lambda: kernels.relu_forward(a)), median_time(lambda: np.maximum(a, 0))),
        relu_bwd_guided=(median_time(lambda: kernels.relu_backward(dy, y, 2)),
                         median_time(lambda: dy * ((a > 0) & (dy > 0)))),
        maxpool_fwd=(median_time(lambda: kernels.maxpool_forward(a, (3, 3), (2, 2), (0, 0, 0, 0), (oh, ow))),
                     median_time(lambda: maxpool_numpy(a, (3, 3), (2, 2), (oh - 1, ow - 1)))),
    )
    print(f"\n{'kernel':<20}{'numba ms':>10}{'numpy ms':>10}{'speed-up':>10}   (conv1's output {tuple(a.shape)})")
    for k, (tn, tp) in vs.items():
        print(f"{k:<20}{tn * 1e3:10.2f}{tp * 1e3:10.2f}{tp / tn:10.1f}x")
    result["numba_vs_numpy"] = {k: dict(numba_ms=tn * 1e3, numpy_ms=tp * 1e3) for k, (tn, tp) in vs.items()}

    print(f"\n{'':<12}{'scratchnet img/s':>18}{'torch img/s':>14}{'time ours/torch':>17}   (medians; the ratio: "
          f"median of {args.repeats} alternating pairs)")
    for k, v in ours.items():
        print(f"{k:<12}{args.batch / v:18.1f}" + (f"{args.batch / theirs[k]:14.1f}{ratios[k]:17.2f}" if k in theirs
                                                   else "   (no PyTorch peer)"))
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
