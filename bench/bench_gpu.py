"""GPU benchmark of the engine (CuPy + kernels/*.cu) against PyTorch (cuDNN) on the paper's network.

    python bench/bench_gpu.py [--batches 128 256] [--size 224] [--repeats 10] [--tf32] [--no-torch]

For each batch size, in float32, on one GPU:
  * forward (test mode), an SGD training step (forward in train mode, softmax cross-entropy, backward
    with weight gradients and no image gradient, the fused momentum update of every parameter) and
    saliency (forward, then backward to the images with no weight gradients), in images per second;
  * the same three in PyTorch with the same architecture and weights (bench/torch_twin.py), cuDNN
    autotuning on (torch.backends.cudnn.benchmark), TF32 off unless --tf32, timed in the same run;
    and our time over theirs;
  * our per-layer forward and backward times, and GFLOP/s of the convolutions and fully connected
    layers against this GPU's measured SGEMM rate (cupy.matmul of two 8192x8192 float32 matrices);
  * each convolution taken apart (padding, im2col, GEMM, copy to NCHW, dW GEMM, dcols GEMM, col2im):
    where the time goes, for the next optimisation; and the dW GEMM summed in S = 1, 8, 32, 128 slices
    of N*P (kernels/gpu.py's weight_grad, whose rule dw_split picks S for the engine);
  * the host's share of a training step: its dropout masks, drawn by NumPy on the CPU.
Times come from CUDA events around each call after warm-up calls, the median of --repeats.
Before timing, our forward scores are compared with PyTorch's (relative error, printed).
--tf32 lets both libraries use TF32 tensor cores for float32 GEMMs and convolutions.
The last line of stdout is one JSON object with everything; progress goes to stderr.
Expected run time: under 3 minutes on an H100 with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


import scratchnet  # noqa: F401  first: its thread settings must precede NumPy's OpenBLAS (scratchnet/threads.py)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_twin import to_torch, torch_available, torch_steps  # noqa: E402

import scratchnet as sn  # noqa: E402
from scratchnet import backend, kernels  # noqa: E402
from scratchnet.layers import Conv2d, Linear, softmax_cross_entropy  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cuda_time(fn, repeats, warmup, event, elapsed_ms, synchronize):
    """Median seconds of fn() between two CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize()
    ts = []
    for _ in range(repeats):
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(elapsed_ms(start, end) / 1e3)
    return statistics.median(ts)


def sgemm_gflops(cp, n=8192, repeats=10):
    rng = cp.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=cp.float32)
    b = rng.standard_normal((n, n), dtype=cp.float32)
    t = cuda_time(lambda: cp.matmul(a, b), repeats, 3, cp.cuda.Event, cp.cuda.get_elapsed_time,
                  cp.cuda.Device().synchronize)
    return 2 * n ** 3 / t / 1e9


def decays(key):
    try:
        from scratchnet.train.sgd import decays as d
        return d(key)
    except ImportError:
        return key == "W"


def main(argv=None):
    from scratchnet.cli import nonnegative_int, positive_int     # counts: clear refusals below 1 (0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[128, 256])
    ap.add_argument("--size", type=positive_int, default=224)
    ap.add_argument("--repeats", type=positive_int, default=10)
    ap.add_argument("--warmup", type=nonnegative_int, default=3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores (both libraries)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--sgemm-n", type=positive_int, default=8192, help="size of the SGEMM that measures the peak")
    args = ap.parse_args(argv)

    problem = backend.gpu_problem()
    if problem is not None:
        print(f"bench_gpu: no usable GPU: {problem}", file=sys.stderr)
        return 2
    import cupy as cp
    from scratchnet.kernels import gpu
    try:            # always set: CUPY_TF32=1 in the environment must not turn a float32 run into TF32
        gpu.set_tf32(args.tf32)
    except RuntimeError as e:
        if args.tf32 or os.environ.get("CUPY_TF32", "0") != "0":
            raise
        log(f"bench_gpu: {e}; CUPY_TF32 is unset, so CuPy's GEMMs stay float32")
    props = cp.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    ev = dict(event=cp.cuda.Event, elapsed_ms=cp.cuda.get_elapsed_time, synchronize=cp.cuda.Device().synchronize)

    def ours_time(fn):
        return cuda_time(fn, args.repeats, args.warmup, **ev)

    sgemm = sgemm_gflops(cp, args.sgemm_n)
    log(f"{device}: cupy {cp.__version__}, SGEMM {args.sgemm_n}^2 {sgemm / 1e3:.1f} TFLOP/s{' (TF32)' if args.tf32 else ''}")

    cpu_net = sn.models.paper_net(args.size, num_classes=1000, seed=0)
    flops = dict(sn.models.flops_per_layer(cpu_net, (3, args.size, args.size)))
    gflop_img = sum(flops.values())
    net = sn.models.paper_net(args.size, num_classes=1000, seed=0).to("gpu")
    params = list(net.named_params())
    velocity = {path: cp.zeros_like(layer.params[key]) for path, layer, key in params}

    tnet = torch = None
    if not args.no_torch and torch_available():   # --no-torch: torch not even imported
        import torch
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = args.tf32
            torch.backends.cudnn.allow_tf32 = args.tf32
            try:                                # read back from C++ (a warning, not an end: one GPU call)
                torch_tf32 = (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32))
            except RuntimeError as e:
                torch_tf32 = f"unreadable ({str(e)[:200]})"
            if torch_tf32 != (args.tf32, args.tf32):
                log(f"bench_gpu: WARNING: PyTorch {torch.__version__} reports TF32 (matmul, cuDNN) = {torch_tf32} "
                    f"after both were set to {args.tf32}")
            tnet = to_torch(cpu_net).cuda()
            topt = torch.optim.SGD(tnet.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
            tev = dict(event=lambda: torch.cuda.Event(enable_timing=True),
                       elapsed_ms=lambda a, b: a.elapsed_time(b), synchronize=torch.cuda.synchronize)
        else:
            log("PyTorch has no CUDA device here: no peer")

    result = dict(device=device, cupy=cp.__version__, size=args.size, tf32=args.tf32, repeats=args.repeats,
                  sgemm_gflops=sgemm, gflop_per_image=gflop_img, batches={})
    if tnet is not None:
        result["torch"] = torch.__version__
        result["torch_tf32_matmul_cudnn"] = torch_tf32

    rng = np.random.default_rng(0)
    inputs = {}
    for batch in args.batches:
        x_np = rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
        inputs[batch] = x_np, rng.integers(0, 1000, batch)
    # The same function? Same weights, test mode, no TF32: compared for every batch before any training
    # step, since each engine's SGD steps (with its own dropout masks) move the two networks' weights apart
    # (a batch compared after the previous batch's training steps differed by 0.28 on the H200).
    rel_err = {}
    if tnet is not None:
        tnet.eval()
        for batch, (x_np, _) in inputs.items():
            with torch.no_grad():
                ref = tnet(torch.as_tensor(x_np, device="cuda")).cpu().numpy()
            ours = cp.asnumpy(net.forward(cp.asarray(x_np)))
            rel_err[batch] = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
            log(f"batch {batch}: forward scores vs PyTorch, relative error {rel_err[batch]:.2e}")

    for batch in args.batches:
        x_np, labels_np = inputs[batch]
        x, labels = cp.asarray(x_np), cp.asarray(labels_np)
        onehot = cp.zeros((batch, 1000), cp.float32)
        onehot[cp.arange(batch), labels] = 1

        def forward():
            return net.forward(x)

        def train_step():
            scores = net.forward(x, train=True)
            _, d = softmax_cross_entropy(scores, labels)
            net.backward(d, input_grad=False)
            for path, layer, key in params:
                kernels.sgd_update(layer.params[key], layer.grads[key], velocity[path], LR, MOMENTUM,
                                   WEIGHT_DECAY if decays(key) else 0.0)

        def saliency():
            net.forward(x)
            return net.backward(onehot, param_grads=False)

        row = dict(scratchnet={}, torch={}, ratio_ours_over_torch={})
        if tnet is not None:
            tx, tl = torch.as_tensor(x_np, device="cuda"), torch.as_tensor(labels_np, device="cuda")
            row["forward_rel_err_vs_torch"] = rel_err[batch]

        for name, fn in (("forward", forward), ("train_step", train_step), ("saliency", saliency)):
            t = ours_time(fn)
            row["scratchnet"][name] = dict(ms=t * 1e3, img_s=batch / t)
            log(f"batch {batch}: scratchnet {name:<10} {t * 1e3:8.1f} ms  {batch / t:8.0f} img/s")
        row["host_dropout_masks_ms"] = host_mask_ms(net, batch, args.size)
        cp.get_default_memory_pool().free_all_blocks()

        if tnet is not None:
            for name, fn in torch_steps(tnet, topt, tx, tl).items():
                t = cuda_time(fn, args.repeats, args.warmup, **tev)
                row["torch"][name] = dict(ms=t * 1e3, img_s=batch / t)
                row["ratio_ours_over_torch"][name] = row["scratchnet"][name]["ms"] / (t * 1e3)
                log(f"batch {batch}: torch      {name:<10} {t * 1e3:8.1f} ms  {batch / t:8.0f} img/s")
            torch.cuda.empty_cache()
        result["batches"][batch] = row

    # per layer, at the largest batch
    batch = max(args.batches)
    h = cp.asarray(rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32))
    layers = []
    acts = []
    for name, layer in net.layers:
        acts.append(h)
        t = ours_time(lambda: layer.forward(h, True))
        h = layer.forward(h, True)
        layers.append(dict(layer=name, fwd_ms=t * 1e3))
    g = cp.ones_like(h)
    for i in range(len(net.layers) - 1, -1, -1):
        name, layer = net.layers[i]
        layer.forward(acts[i], True)
        t = ours_time(lambda: layer.backward(g, "gradient", True, i > 0))
        g2 = layer.backward(g, "gradient", True, i > 0)
        layers[i]["bwd_ms"] = t * 1e3
        gf = flops.get(name, 0) * batch
        if gf and isinstance(layer, (Conv2d, Linear)):
            layers[i]["fwd_gflops"] = gf / (layers[i]["fwd_ms"] / 1e3)
            layers[i]["bwd_gflops"] = (2 if i > 0 else 1) * gf / (t)   # dW and dx (no dx for the first layer)
            layers[i]["fwd_of_sgemm"] = layers[i]["fwd_gflops"] / sgemm
            layers[i]["bwd_of_sgemm"] = layers[i]["bwd_gflops"] / sgemm
        g = g2 if g2 is not None else g
    result["layers_batch"] = batch
    result["layers"] = layers
    result["conv_parts"] = conv_parts(net, acts, ours_time, cp, sgemm)

    # the tables
    print(f"{device}, float32, {args.size}x{args.size}, SGEMM {sgemm / 1e3:.1f} TFLOP/s"
          f"{', TF32 on' if args.tf32 else ''}; medians of {args.repeats} (CUDA events)")
    if tnet is not None:
        print(f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, TF32 (matmul, cuDNN) "
              f"read back: {torch_tf32}")
    print(f"\n{'batch':>6} {'':<11}{'ours img/s':>12}{'torch img/s':>13}{'time ours/torch':>17}")
    for b, row in result["batches"].items():
        for name, v in row["scratchnet"].items():
            tt = row["torch"].get(name)
            print(f"{b:>6} {name:<11}{v['img_s']:12.0f}" + (f"{tt['img_s']:13.0f}{v['ms'] / tt['ms']:17.2f}" if tt else ""))
    for b, row in result["batches"].items():
        print(f"host, batch {b}: the training step's dropout masks take {row['host_dropout_masks_ms']:.1f} ms of "
              f"NumPy on the CPU, of a {row['scratchnet']['train_step']['ms']:.1f} ms step (hidden while the GPU "
              f"has queued work)")
    print(f"\nper layer, batch {batch}:")
    print(f"{'layer':<9}{'fwd ms':>9}{'bwd ms':>9}{'fwd GFLOP/s':>13}{'of SGEMM':>10}{'bwd GFLOP/s':>13}{'of SGEMM':>10}")
    for r in layers:
        line = f"{r['layer']:<9}{r['fwd_ms']:9.2f}{r['bwd_ms']:9.2f}"
        if "fwd_gflops" in r:
            line += f"{r['fwd_gflops']:13.0f}{r['fwd_of_sgemm']:10.0%}{r['bwd_gflops']:13.0f}{r['bwd_of_sgemm']:10.0%}"
        print(line)
    print(f"\nconvolutions by part, batch {batch} (ms; a GEMM's share of the SGEMM rate beside it; the first "
          f"layer's backward sum leaves out dcols, col2im and unpad, as its measured backward computes no input gradient):")
    print(f"{'layer':<7}" + "".join(f"{p:>9}" + ("     " if p in GEMM_PARTS else "") for p in FWD_PARTS)
          + f"{'sum':>8}{'meas.':>8} |" + "".join(f"{p:>9}" + ("     " if p in GEMM_PARTS else "") for p in BWD_PARTS)
          + f"{'sum':>8}{'meas.':>8}")
    measured = {r["layer"]: r for r in layers}
    for r in result["conv_parts"]:
        line = f"{r['layer']:<7}"
        for p in FWD_PARTS:
            line += f"{r[p + '_ms']:9.2f}" + (f"{r[p + '_of_sgemm']:5.0%}" if p in GEMM_PARTS else "")
        line += f"{r['fwd_parts_ms']:8.2f}{measured[r['layer']]['fwd_ms']:8.2f} |"
        for p in BWD_PARTS:
            line += f"{r[p + '_ms']:9.2f}" + (f"{r[p + '_of_sgemm']:5.0%}" if p in GEMM_PARTS else "")
        line += f"{r['bwd_parts_ms']:8.2f}{measured[r['layer']]['bwd_ms']:8.2f}"
        print(line)
    print("dW summed in S slices of N*P (kernels/gpu.py weight_grad: one strided-batched GEMM reading the slices in "
          "place, then a sum; S=1 is one GEMM), ms, and in brackets the largest difference from S=1 over dW's largest "
          "magnitude for a random dy; the engine's S (dw_split) is marked *; if another S is clearly faster, "
          "dw_split's constants are what to change:")
    for r in result["conv_parts"]:
        print(f"  {r['layer']:<7}" + "".join(f"  S={S}{'*' if S == r['dW_S'] else ' '} {ms:7.2f} "
                                             f"({r['dW_by_S_rel_diff'][S]:.0e})" for S, ms in r["dW_by_S_ms"].items()))
    print(json.dumps(result))
    return 0


def host_mask_ms(net, batch, size, repeats=5):
    """Median host time (ms) of drawing a training step's dropout masks as Dropout does (NumPy on the CPU,
    then a copy to the GPU that CuPy makes asynchronously), for this network's shapes at this batch; a
    generator of its own, so the network's masks are not disturbed. If it nears the step's GPU time,
    the GPU waits for the host."""
    from scratchnet.layers import Dropout
    shapes, shape = [], (batch, 3, size, size)
    for _, layer in net.layers:
        if isinstance(layer, Dropout) and layer.p > 0:
            shapes.append((shape, layer.p))
        shape = layer.output_shape(shape)
    rng = np.random.default_rng(0)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s, p in shapes:
            _ = rng.random(s, dtype=np.float32) >= p
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


#: a convolution's parts as conv_parts times them (Conv2d's order), the GEMMs among them, and the
#: backward parts that only the input gradient needs
FWD_PARTS = ("pad", "im2col", "gemm", "to_nchw")
BWD_PARTS = ("db", "dy_rows", "dW", "dcols", "col2im", "unpad")
GEMM_PARTS = ("gemm", "dW", "dcols")
INPUT_GRAD_PARTS = ("dcols", "col2im", "unpad")


def conv_parts(net, acts, ours_time, cp, sgemm):
    """Each plain (im2col) convolution of ``net`` taken apart, on its real input acts[i], in the order
    Conv2d runs them: forward = padding, im2col, GEMM, copy to NCHW with the bias added (one kernel,
    rows_to_nchw); backward (weights and input)
    = bias gradient, dy to (O, N*P) rows, dW GEMM, dcols GEMM, col2im, unpadding. Milliseconds, GEMM
    rates as shares of the SGEMM rate, and the sums beside the layer's measured forward and backward.
    The dW part is the engine's (kernels.weight_grad: S = dw_split slices); dW_by_S_ms times it at other
    S too (S = 1: one cupy.matmul)."""
    from scratchnet.kernels import gpu
    from scratchnet.layers.conv import _unpad, pad_nchw
    rows = []
    for i, (name, layer) in enumerate(net.layers):
        if not isinstance(layer, Conv2d) or layer.groups != 1 or layer.pointwise:
            continue
        x = acts[i]
        n, c, h, w = x.shape
        _, o, oh, ow = layer.output_shape(x.shape)
        pads = layer.pads_for(h, w)
        W2 = layer.params["W"].reshape(o, -1)
        k, np_ = W2.shape[1], n * oh * ow
        xpad = pad_nchw(x, pads)
        cols = kernels.im2col(xpad, layer.kernel, layer.stride, (oh, ow))
        y2 = cp.matmul(W2, cols)
        y = kernels.rows_to_nchw(y2, n, (oh, ow), layer.params["b"])
        dy = cp.ones_like(y)
        dy2 = kernels.nchw_to_rows(dy)
        dcols = cp.matmul(W2.T, dy2)
        dxpad = kernels.col2im(dcols, xpad.shape, layer.kernel, layer.stride, (oh, ow))
        gflop = 2 * o * k * np_ / 1e9
        r = dict(layer=name, o=o, k=k, np=np_)
        r["pad_ms"] = ours_time(lambda: pad_nchw(x, pads)) * 1e3
        r["im2col_ms"] = ours_time(lambda: kernels.im2col(xpad, layer.kernel, layer.stride, (oh, ow))) * 1e3
        r["gemm_ms"] = ours_time(lambda: cp.matmul(W2, cols)) * 1e3
        r["to_nchw_ms"] = ours_time(lambda: kernels.rows_to_nchw(y2, n, (oh, ow), layer.params["b"])) * 1e3
        r["db_ms"] = ours_time(lambda: dy.sum(axis=(0, 2, 3))) * 1e3
        r["dy_rows_ms"] = ours_time(lambda: kernels.nchw_to_rows(dy)) * 1e3
        r["dW_ms"] = ours_time(lambda: kernels.weight_grad(dy2, cols)) * 1e3
        r["dW_S"] = gpu.dw_split(o, k, np_)
        r["dW_by_S_ms"] = {S: ours_time(lambda: gpu.weight_grad(dy2, cols, S)) * 1e3
                           for S in sorted({1, 8, 32, 128, r["dW_S"]})}
        dy_r = cp.random.default_rng(0).standard_normal(dy2.shape, dtype=dy2.dtype)   # dy = 1 hides swapped rows
        dW_1 = gpu.weight_grad(dy_r, cols, 1)
        r["dW_by_S_rel_diff"] = {S: float(cp.abs(gpu.weight_grad(dy_r, cols, S) - dW_1).max() / cp.abs(dW_1).max())
                                 for S in r["dW_by_S_ms"]}
        dy_r = dW_1 = None
        r["dcols_ms"] = ours_time(lambda: cp.matmul(W2.T, dy2)) * 1e3
        r["col2im_ms"] = ours_time(lambda: kernels.col2im(dcols, xpad.shape, layer.kernel, layer.stride, (oh, ow))) * 1e3
        r["unpad_ms"] = ours_time(lambda: _unpad(dxpad, pads)) * 1e3
        for part in GEMM_PARTS:
            r[f"{part}_of_sgemm"] = gflop / (r[f"{part}_ms"] / 1e3) / sgemm
        r["fwd_parts_ms"] = sum(r[f"{p}_ms"] for p in FWD_PARTS)
        r["input_grad"] = i > 0            # as in the per-layer timing: the first layer has no input gradient
        r["bwd_parts_ms"] = sum(r[f"{p}_ms"] for p in BWD_PARTS if r["input_grad"] or p not in INPUT_GRAD_PARTS)
        rows.append(r)
        xpad = cols = y2 = y = dy = dy2 = dcols = dxpad = None   # ~9 GB at conv1, batch 256
        cp.get_default_memory_pool().free_all_blocks()
    return rows


if __name__ == "__main__":
    sys.exit(main())
