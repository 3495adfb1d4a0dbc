"""Who makes a Numba kernel's output matters: NumPy's allocator against Numba's, same kernel.

    python bench/bench_alloc.py [--batch 16] [--repeats 9]

The engine's CPU kernels write into arrays made with NumPy (kernels/__init__.py says why). This
times each big kernel of a saliency pass twice, alternately: writing into a fresh array from NumPy
(as scratchnet does), and into a fresh array from Numba's allocator (as a kernel that calls
``np.empty`` inside itself gets). The work is the same; only the pages differ. NumPy asks Linux for
transparent huge pages (``madvise(MADV_HUGEPAGE)``) for arrays of 4 MiB and more, Numba does not, so
the first touch of Numba's array faults once per 4 KiB page. The effect depends on the kernel's
setting ``/sys/kernel/mm/transparent_hugepage/enabled``, printed first: with ``madvise`` (the
usual default) NumPy's arrays get huge pages and Numba's do not; with ``always`` both do, with
``never`` neither. The figures mean this only for outputs well above 32 MiB (the default batch):
after a large block is freed, glibc serves blocks up to its mmap threshold (which grows to 32 MiB)
from memory it has touched before, so at small batches both arrays can come back already paged in.

Shapes: SqueezeNet v1.0's conv1 at the batch given (ReLU, max-pool, im2col, col2im) and the paper
network's conv1 output (LRN). Prints the median time of each and the median per-pair ratio
(Numba's / NumPy's), then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scratchnet  # noqa: E402,F401  (thread settings before NumPy loads)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from scratchnet.cli import positive_int  # noqa: E402
from scratchnet.kernels import cpu_im2col, cpu_lrn, cpu_pool, cpu_relu  # noqa: E402
from timing import alternating, median_ratio, run_main  # noqa: E402


@nb.njit(cache=True)
def numba_empty(size, like):
    """A fresh flat array of ``size`` elements of like's dtype, from Numba's allocator."""
    return np.empty(size, like.dtype)


def numpy_empty(size, like):
    return np.empty(size, like.dtype)


def cases(batch):
    """(name, bytes written, fn(make)) for each kernel; make(size, like) gives a fresh flat output."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    x_img = rng.standard_normal((batch, 3, 227, 227)).astype(f32)      # SqueezeNet's input
    y1 = rng.standard_normal((batch, 96, 111, 111)).astype(f32)        # its conv1 output
    k, s, o = (7, 7), (2, 2), (111, 111)
    cols = rng.standard_normal((3 * 49, batch * 111 * 111)).astype(f32)
    lrn_x = rng.standard_normal((batch, 64, 109 * 109)).astype(f32)   # the paper network's conv1 output
    up = f32(np.inf)

    def relu(make):
        cpu_relu.relu_fwd(y1.reshape(-1), up, make(y1.size, y1))

    def maxpool(make):
        n, c = y1.shape[:2]
        shape = (n, c, 55, 55)
        size = n * c * 55 * 55
        cpu_pool.maxpool_fwd(y1, 3, 3, 2, 2, 0, 0, make(size, y1).reshape(shape),
                             make(size, np.empty(0, np.int32)).reshape(shape))

    def im2col(make):
        cpu_im2col.im2col(x_img, *k, *s, *o, make(cols.size, cols).reshape(cols.shape))

    def col2im(make):
        out = make(x_img.size, x_img)
        out[:] = 0                       # col2im adds into zeros (this fill is the first touch)
        cpu_im2col.col2im(cols, *k, *s, *o, out.reshape(x_img.shape))

    def lrn(make):
        cpu_lrn.lrn_fwd(lrn_x, 5, f32(1e-4), f32(0.75), f32(2), make(lrn_x.size, lrn_x).reshape(lrn_x.shape),
                        make(lrn_x.size, lrn_x).reshape(lrn_x.shape))

    mb = 1e-6 * 4
    return [("relu_fwd (SqueezeNet conv1)", y1.size * mb, relu),
            ("maxpool_fwd (SqueezeNet pool1)", 2 * batch * 96 * 55 * 55 * mb, maxpool),
            ("im2col (SqueezeNet conv1)", cols.size * mb, im2col),
            ("col2im (SqueezeNet conv1)", x_img.size * mb, col2im),
            ("lrn_fwd (paper conv1, y and s)", 2 * lrn_x.size * mb, lrn)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=16)
    ap.add_argument("--repeats", type=positive_int, default=9)
    args = ap.parse_args(argv)
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "unknown (no /sys/kernel/mm/transparent_hugepage/enabled)"
    print(f"transparent huge pages: {thp}; NumPy {np.__version__}, Numba {nb.__version__}, "
          f"{nb.get_num_threads()} threads, batch {args.batch}")
    print(f"{'kernel':<32} {'MB out':>7} {'NumPy out ms':>13} {'Numba out ms':>13} {'Numba/NumPy':>12}")
    rows = []
    for name, mbytes, fn in cases(args.batch):
        t_np, t_nb = alternating(lambda: fn(numpy_empty), lambda: fn(numba_empty), repeats=args.repeats)
        ratio = median_ratio(t_nb, t_np)
        a, b = statistics.median(t_np) * 1e3, statistics.median(t_nb) * 1e3
        print(f"{name:<32} {mbytes:7.0f} {a:13.1f} {b:13.1f} {ratio:12.2f}", flush=True)
        rows.append(dict(kernel=name, mb_out=round(mbytes, 1), numpy_ms=round(a, 2), numba_ms=round(b, 2),
                         ratio=round(ratio, 3)))
    print(json.dumps(dict(bench="alloc", thp=thp, batch=args.batch, rows=rows)))


if __name__ == "__main__":
    run_main(main)
