"""Every CUDA kernel of kernels/*.cu launched at least once, in float32 and in float64, at small odd
shapes, for NVIDIA's compute-sanitizer (bench/run_gpu_sanitize.sh runs this under memcheck, racecheck,
synccheck and initcheck on a real GPU).

    python bench/sanitize_kernels.py [--keep-pool] [--seed 0]

The emulator of tests/cuda_emu.h runs the kernels' C++ on the CPU, but it cannot see what only a GPU
shows: an access past the end of a real allocation, a shared-memory race between threads that really
run at once, a barrier that not every thread reaches, a read of device memory nobody wrote. The
sanitizer sees those, on whatever kernels a program launches; this program makes sure that is all of
them. It goes through the layers as the engine uses them (forward, then backward with the parameter and
input gradients; ReLU and ReLU6 under all three backward rules), the loss and the fused SGD update,
and at the end prints how many times each kernel ran and exits 1 if one of kernels/gpu.py's kernels
(any element type) never ran: a list that has fallen behind the kernels would otherwise let a kernel
go unchecked and the sanitizer still say "0 errors".

CuPy's memory pool is switched off unless --keep-pool: each array is then its own cudaMalloc, so
memcheck can tell a read just past an array's end (inside the pool's block, otherwise) from a good one.
Shapes are odd (no size a multiple of the 256-thread block), one convolution's weight gradient is long
enough to be summed in slices (gpu.weight_grad's strided-batched GEMM), and one ReLU is longer than the
largest grid (65536 blocks of 256), so the grid-stride loops go round more than once.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys

import scratchnet  # noqa: F401  first: its thread settings must precede NumPy's OpenBLAS (scratchnet/threads.py)
import numpy as np

from scratchnet import backend, kernels
from scratchnet.layers import (AvgPool2d, Conv2d, LocalResponseNorm, MaxPool2d, ReLU, ReLU6, Linear,
                               softmax_cross_entropy)

RULES = ("gradient", "deconvnet", "guided")


def layers():
    """(name, layer, input shape, rules): every layer kind whose device code is a kernel of ours."""
    return [
        ("conv3x3 pad 1", Conv2d(3, 8, 3, 1, 1), (3, 3, 11, 9), RULES[:1]),
        ("conv7x7 stride 2 (the paper's conv1)", Conv2d(3, 5, 7, 2), (2, 3, 23, 21), RULES[:1]),
        ("conv5x5 stride 2, asymmetric pads", Conv2d(4, 6, 5, 2, (1, 2, 0, 1)), (2, 4, 11, 10), RULES[:1]),
        ("conv groups 2", Conv2d(6, 4, 3, 2, 1, groups=2), (2, 6, 8, 9), RULES[:1]),
        ("conv depthwise", Conv2d(4, 4, 3, 1, 1, groups=4), (2, 4, 7, 6), RULES[:1]),
        ("conv1x1", Conv2d(8, 5, 1), (2, 8, 5, 7), RULES[:1]),
        # N*oh*ow = 66810: dW summed in 8 slices of 8320 columns (gpu.dw_split), and 250 columns after them
        ("conv3x3, dW in slices", Conv2d(2, 3, 3, 1, 1), (3, 2, 131, 170), RULES[:1]),
        ("maxpool 3/2 pad 1 ceil", MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 10, 11), RULES[:1]),
        ("maxpool 2x3/1x2 asymmetric pads", MaxPool2d((2, 3), (1, 2), padding=(0, 1, 1, 0)), (2, 3, 6, 7),
         RULES[:1]),
        ("avgpool 3/2 pad 1 ceil", AvgPool2d(3, 2, 1, ceil_mode=True), (2, 3, 10, 11), RULES[:1]),
        ("LRN 5", LocalResponseNorm(5, 1e-4, 0.75, 2.0), (2, 7, 5, 6), RULES[:1]),
        ("LRN 7, fewer channels than half the window", LocalResponseNorm(7, 0.5, 0.75, 2.0), (3, 2, 3, 3),
         RULES[:1]),
        ("linear", Linear(13, 5), (3, 13), RULES[:1]),
        ("ReLU", ReLU(), (3, 5, 7, 9), RULES),
        ("ReLU6", ReLU6(), (3, 5, 7, 9), RULES),
        ("ReLU, more elements than one grid", ReLU(), (1, 1, 1, 65536 * 256 + 3), RULES[:1]),
    ]


def exercise(dtype, rng, say=print):
    """One forward and backward of every layer of ``layers()`` on the GPU, then the loss and the fused
    SGD update, in ``dtype``; the device is synchronised after each so that an error is met there."""
    from scratchnet.kernels import gpu
    xp = gpu.backend().xp                   # the array module the GPU kernels allocate with (CuPy)
    for name, layer, shape, rules in layers():
        for _, lay, key in layer.named_params():
            lay.params[key] = (rng.standard_normal(lay.params[key].shape) * 0.5).astype(dtype)
        layer.to("gpu")
        x = xp.asarray((rng.standard_normal(shape) * 4).astype(dtype))      # x 4: ReLU6's kink at 6 too
        y = layer.forward(x, True)
        dy = xp.asarray(rng.standard_normal(y.shape).astype(dtype))
        for rule in rules:
            layer.backward(dy, rule, True, True)
        xp.cuda.Device().synchronize()
        say(f"  {np.dtype(dtype).name:8s} {name}")
    scores = xp.asarray(rng.standard_normal((5, 7)).astype(dtype))
    softmax_cross_entropy(scores, xp.asarray(rng.integers(0, 7, 5)))
    w, g, v = (xp.asarray(rng.standard_normal(301).astype(dtype)) for _ in range(3))
    kernels.sgd_update(w, g, v, 0.1, 0.9, 5e-4)
    xp.cuda.Device().synchronize()
    say(f"  {np.dtype(dtype).name:8s} softmax cross-entropy, SGD update")


@contextlib.contextmanager
def counting_launches():
    """Count, while inside, every launch of a kernel of ours by (name, element type), and the
    strided-batched GEMMs; yields the Counter."""
    from scratchnet.kernels import gpu
    counts = collections.Counter()
    launch, b = gpu._launch, gpu.backend()
    gemm, own = b.gemm_strided_batched, vars(b).get("gemm_strided_batched")

    def counted(name, dtype, work, args, threads=gpu.THREADS):
        counts[name, gpu.C_TYPES[np.dtype(dtype)]] += work > 0
        return launch(name, dtype, work, args, threads)

    def gemm_counted(*args):
        counts["gemm_strided_batched", gpu.C_TYPES[np.dtype(args[-4].dtype)]] += 1
        return gemm(*args)

    gpu._launch, b.gemm_strided_batched = counted, gemm_counted
    try:
        yield counts
    finally:
        gpu._launch = launch
        if own is None:
            del b.gemm_strided_batched      # the class's method again
        else:
            b.gemm_strided_batched = own


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-pool", action="store_true",
                   help="keep CuPy's memory pool (by default every array is its own cudaMalloc)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problem = backend.gpu_problem()
    if problem is not None:
        print(f"sanitize_kernels: needs a GPU: {problem}", file=sys.stderr)
        return 2
    from scratchnet.kernels import gpu
    xp = gpu.backend().xp
    if not args.keep_pool:
        if hasattr(xp.cuda, "set_allocator"):
            xp.cuda.set_allocator(None)
        else:
            print(f"sanitize_kernels: warning: this CuPy ({xp.__version__}) has no cuda.set_allocator; its "
                  f"memory pool stays on, and memcheck misses reads just past an array's end", file=sys.stderr)
    try:        # CuPy's reductions (a sum of the dW slices, the loss's mean) through its own kernels, not CUB's,
        from cupy._core import _accelerator       # whose known sanitizer reports are not ours to judge
        _accelerator.set_reduction_accelerators([])
        _accelerator.set_routine_accelerators([])
    except (ImportError, AttributeError):
        pass
    rng = np.random.default_rng(args.seed)
    with counting_launches() as counts:
        for dtype in (np.float32, np.float64):
            exercise(dtype, rng)
    wanted = [(k, t) for names in gpu.KERNELS.values() for k in names for t in gpu.C_TYPES.values()]
    wanted += [("gemm_strided_batched", t) for t in gpu.C_TYPES.values()]
    print(f"{'kernel':24s} {'float':>6s} {'double':>6s}")
    for k in dict.fromkeys(k for k, _ in wanted):
        print(f"{k:24s} {counts[k, 'float']:6d} {counts[k, 'double']:6d}")
    missing = [f"{k}<{t}>" for k, t in wanted if counts[k, t] == 0]
    if missing:
        print(f"sanitize_kernels: never launched: {', '.join(missing)} (add a layer that runs them to "
              f"bench/sanitize_kernels.py's layers())", file=sys.stderr)
        return 1
    print(f"sanitize_kernels: all {len(wanted)} kernels launched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
