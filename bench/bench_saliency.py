"""Saliency throughput on the CPU: scratchnet against PyTorch on the same network and weights.

    python bench/bench_saliency.py [--batch 16] [--repeats 3] [--models squeezenet1_0 paper_net224]

One saliency pass = forward to the unnormalised scores, backward of the one-hot top-1 score to the
image (no weight gradients), max over channels of |grad|. The PyTorch twin of each network is built
layer by layer from the scratchnet network (``to_torch``), checked to give the same scores and the same
maps, and timed in the same run with the same number of threads. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from scratchnet.layers import (AvgPool2d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear,
                               LocalResponseNorm, MaxPool2d, ReLU, ReLU6, Residual, Sequential)
from scratchnet.vis.saliency import class_gradient, saliency_from_gradient


# ---------------------------------------------------------------------------------------------
# the same network in PyTorch
# ---------------------------------------------------------------------------------------------
def to_torch(layer):
    """A torch.nn.Module computing the same function as a scratchnet layer (inference mode)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    class Chain(nn.Module):
        def __init__(self, mods):
            super().__init__()
            self.mods = nn.ModuleList(mods)

        def forward(self, x):
            for m in self.mods:
                x = m(x)
            return x

    class Cat(nn.Module):
        def __init__(self, mods):
            super().__init__()
            self.mods = nn.ModuleList(mods)

        def forward(self, x):
            return torch.cat([m(x) for m in self.mods], 1)

    class Add(nn.Module):
        def __init__(self, body, short):
            super().__init__()
            self.body, self.short = body, short

        def forward(self, x):
            return self.body(x) + (x if self.short is None else self.short(x))

    class Fn(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)

    class Conv(nn.Module):
        def __init__(self, lay):
            super().__init__()
            self.lay = lay
            self.W = nn.Parameter(t(lay.params["W"]), requires_grad=False)
            self.b = nn.Parameter(t(lay.params["b"]), requires_grad=False) if lay.has_bias else None

        def forward(self, x):
            lay = self.lay
            tp, bt, lf, rt = lay.pads_for(x.shape[2], x.shape[3])
            if tp == bt and lf == rt:
                return F.conv2d(x, self.W, self.b, lay.stride, (tp, lf), 1, lay.groups)
            return F.conv2d(F.pad(x, (lf, rt, tp, bt)), self.W, self.b, lay.stride, 0, 1, lay.groups)

    if isinstance(layer, Sequential):
        return Chain([to_torch(l) for _, l in layer.layers])
    if isinstance(layer, Concat):
        return Cat([to_torch(b) for _, b in layer.branches])
    if isinstance(layer, Residual):
        return Add(to_torch(layer.body), None if layer.shortcut is None else to_torch(layer.shortcut))
    if isinstance(layer, Conv2d):
        return Conv(layer)
    if isinstance(layer, ReLU6):
        return nn.ReLU6()
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, MaxPool2d):
        tp, bt, lf, rt = layer.padding
        if tp == bt and lf == rt:
            return nn.MaxPool2d(layer.kernel, layer.stride, (tp, lf), ceil_mode=layer.ceil_mode)
        pool = nn.MaxPool2d(layer.kernel, layer.stride, 0, ceil_mode=layer.ceil_mode)
        return Fn(lambda x: pool(F.pad(x, (lf, rt, tp, bt), value=-float("inf"))))
    if isinstance(layer, AvgPool2d):
        tp, bt, lf, rt = layer.padding
        return nn.AvgPool2d(layer.kernel, layer.stride, (tp, lf), ceil_mode=layer.ceil_mode, count_include_pad=True)
    if isinstance(layer, GlobalAvgPool):
        return Fn(lambda x: x.mean((2, 3)))
    if isinstance(layer, LocalResponseNorm):   # torch divides alpha by size (Caffe's form)
        return nn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    if isinstance(layer, BatchNorm2d):
        g, b = t(layer.params["gamma"]), t(layer.params["beta"])
        m, v = t(np.asarray(layer.stats["mean"])), t(np.asarray(layer.stats["var"]))
        return Fn(lambda x: F.batch_norm(x, m, v, g, b, False, 0.0, layer.eps))
    if isinstance(layer, Linear):
        W = t(layer.params["W"])
        b = t(layer.params["b"]) if layer.has_bias else None
        return Fn(lambda x: F.linear(x, W, b))
    if isinstance(layer, Flatten):
        return Fn(lambda x: x.flatten(1))
    if isinstance(layer, Dropout):
        return nn.Identity()
    raise NotImplementedError(f"to_torch: no PyTorch twin for {type(layer).__name__}")


def torch_saliency(tnet, x):
    """The same saliency pass in PyTorch: x (N, C, H, W) tensor -> maps (N, H, W), top-1 classes."""
    import torch
    x = x.detach().requires_grad_(True)
    scores = tnet(x)
    top = scores.argmax(1)
    scores.gather(1, top[:, None]).sum().backward()
    return x.grad.abs().amax(1), top


def ours_saliency(net, x):
    grad, cls, _ = class_gradient(net, x, None, "gradient")
    return saliency_from_gradient(grad), cls


def timeit(fn, repeats):
    fn()                                   # warm-up (Numba compilation, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def build(name):
    from scratchnet.models import load, paper_net
    if name.startswith("paper_net"):
        return paper_net(int(name[len("paper_net"):] or 224), 1000, seed=0)
    return load(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["squeezenet1_0", "paper_net224"])
    args = ap.parse_args(argv)
    try:
        import torch
        torch.set_grad_enabled(True)
    except ImportError:
        torch = None
        print("PyTorch not importable: timing scratchnet only", file=sys.stderr)
    threads = torch.get_num_threads() if torch is not None else None
    rows = []
    for name in args.models:
        net = build(name)
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((args.batch,) + net.input_shape) * 30 * net.preprocess.get("scale", 1.0)
             if net.preprocess else rng.standard_normal((args.batch,) + net.input_shape)).astype(np.float32)
        print(f"{name}: timing scratchnet ...", file=sys.stderr, flush=True)
        ours = timeit(lambda: ours_saliency(net, x), args.repeats)
        row = dict(model=name, batch=args.batch, scratchnet_s=ours, scratchnet_img_s=args.batch / ours)
        if torch is not None:
            tnet = to_torch(net).eval()
            xt = torch.from_numpy(x)
            m_ours, c_ours = ours_saliency(net, x)
            m_t, c_t = torch_saliency(tnet, xt)
            same = bool((c_t.numpy() == c_ours).all())
            err = float(np.abs(m_t.numpy() - m_ours).max() / max(np.abs(m_t.numpy()).max(), 1e-30))
            print(f"{name}: timing PyTorch ...", file=sys.stderr, flush=True)
            peer = timeit(lambda: torch_saliency(tnet, xt), args.repeats)
            row.update(torch_s=peer, torch_img_s=args.batch / peer, ratio_vs_torch=ours / peer,
                       same_top1=same, max_map_rel_diff=err)
        rows.append(row)
    print(f"\nsaliency, batch {args.batch}, best of {args.repeats}, CPU ({os.cpu_count()} cores, "
          f"torch threads {threads})")
    print(f"{'model':16s} {'scratchnet img/s':>17s} {'torch img/s':>12s} {'time ratio':>11s} {'maps rel diff':>14s}")
    for r in rows:
        print(f"{r['model']:16s} {r['scratchnet_img_s']:17.2f} {r.get('torch_img_s', float('nan')):12.2f} "
              f"{r.get('ratio_vs_torch', float('nan')):11.2f} {r.get('max_map_rel_diff', float('nan')):14.2e}")
    print(json.dumps(dict(bench="saliency", device="cpu", cpu_count=os.cpu_count(), torch_threads=threads,
                          goal="time ratio <= 1.5", results=rows)))


if __name__ == "__main__":
    main()
