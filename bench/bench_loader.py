"""The training loader's batch making: the fused Numba kernel against the NumPy steps it replaced.

    python bench/bench_loader.py [--size 64] [--batch 128] [--pad 4] [--repeats 7]

BatchLoader.make_batch (kernels/cpu_augment.py: crop, flip, NHWC -> NCHW, mean and scale in one pass)
and BatchLoader.make_batch_reference (Augment.crop_flip, transpose, cast, mean, scale in NumPy) on the
same random uint8 photos, interleaved (bench/timing.py), each timed over 20 batches, median of --repeats
(the ratio: the median of the pairs' ratios); then one whole epoch through the prefetch thread, as the
trainer takes it. Prints images per second and the ratio, then the same figures as one JSON line.
Why it matters: on a GPU the 64-pixel network trains faster than the NumPy steps made batches.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import scratchnet  # noqa: F401  first: thread settings before NumPy (scratchnet/threads.py)
import numpy as np

from scratchnet.io.datasets import mean_image
from scratchnet.io.loader import Augment, BatchLoader
from timing import alternating, median_ratio, run_main


def main(argv=None):
    from scratchnet.cli import nonnegative_int, positive_int     # counts: clear refusals below 1 (0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=positive_int, default=64)
    ap.add_argument("--batch", type=positive_int, default=128)
    ap.add_argument("--pad", type=nonnegative_int, default=4)
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--images", type=positive_int, default=10000)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    mean = mean_image(images[:1000])
    loader = BatchLoader(images, np.zeros(args.images, np.int64), args.batch, augment=Augment(pad=args.pad, flip=True),
                         mean=mean, scale=1 / 64, prefetch=2)
    order = loader.order(0)
    n_batches = min(20, len(loader))

    def batches(make):
        for b in range(n_batches):
            make(0, b, order[b * args.batch:(b + 1) * args.batch])

    # interleaved (the warm-up call also compiles the kernel; Numba then caches it on disk)
    tf, tr = alternating(lambda: batches(loader.make_batch), lambda: batches(loader.make_batch_reference),
                         args.repeats)
    images_timed = sum(len(order[b * args.batch:(b + 1) * args.batch]) for b in range(n_batches))  # last may be short
    f, r = images_timed / statistics.median(tf), images_timed / statistics.median(tr)
    t = time.perf_counter()
    seen = sum(len(y) for _, y in loader.epoch_batches(1))
    epoch = seen / (time.perf_counter() - t)
    print(f"{args.size}x{args.size} photos, batch {args.batch}, reflect-pad {args.pad} crop + flip, mean image, "
          f"scale 1/64; medians of {args.repeats}")
    print(f"  fused kernel (make_batch)            {f:9.0f} img/s")
    print(f"  NumPy steps (make_batch_reference)   {r:9.0f} img/s")
    print(f"  fused / NumPy (median of the pairs)  {median_ratio(tr, tf):9.1f}x")
    print(f"  one epoch through the prefetch thread {epoch:8.0f} img/s ({seen} images)")
    print(json.dumps(dict(bench="loader", size=args.size, batch=args.batch, pad=args.pad, repeats=args.repeats,
                          fused_img_s=round(f), numpy_img_s=round(r), ratio=round(median_ratio(tr, tf), 2),
                          epoch_img_s=round(epoch), epoch_images=seen)))


if __name__ == "__main__":
    run_main(main)
