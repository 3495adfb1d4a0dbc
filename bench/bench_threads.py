"""Thread-pool settings against each other: libraries' defaults, scratchnet's defaults, one thread.

    python bench/bench_threads.py [--rounds 3] [--workloads saliency train]

The settings are read when OpenBLAS and OpenMP load, so each measurement runs in a fresh process:

    library   SCRATCHNET_THREAD_DEFAULTS=0: OpenBLAS and OpenMP workers spin after their work (both defaults)
    scratchnet  what ``import scratchnet`` sets: OPENBLAS_THREAD_TIMEOUT=4, OMP_WAIT_POLICY=passive
    1 thread  OPENBLAS_NUM_THREADS=1, NUMBA_NUM_THREADS=1

Workloads: ``saliency`` = SqueezeNet v1.0 forward + backward to the image, batch 16 (falls back to
the paper's 224 network when SqueezeNet's weights are not found); ``train`` = one SGD step of the
paper's 64-pixel network at width 0.25, batch 128. Each process warms up once and reports the best of
3. The settings are interleaved round by round (this machine's speed drifts), and the table gives each
setting's median and range over the rounds. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "library": {"SCRATCHNET_THREAD_DEFAULTS": "0"},
    "scratchnet": {},
    "1 thread": {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
}
CLEARED = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
           "OMP_NUM_THREADS", "SCRATCHNET_THREAD_DEFAULTS")


def child(workload: str) -> None:
    """Run one workload in this (fresh) process; print images/s as JSON."""
    import scratchnet  # noqa: F401  before NumPy, as a user's script would
    import numpy as np
    from scratchnet import models
    rng = np.random.default_rng(0)
    if workload == "saliency":
        try:
            net, name = models.load("squeezenet1_0"), "squeezenet1_0"
        except Exception:                       # weights not found: the paper's network
            net, name = models.paper_net(224, 1000, seed=0), "paper_net224"
        x = (rng.standard_normal((16,) + net.input_shape) * 0.5).astype(np.float32)

        def step():
            s = net.forward(x)
            d = np.zeros_like(s)
            d[np.arange(len(x)), s.argmax(1)] = 1
            net.backward(d, "gradient", param_grads=False, input_grad=True)
        batch = 16
    else:
        from scratchnet.layers import softmax_cross_entropy
        from scratchnet.train.sgd import SGD
        net, name = models.paper_net(64, 200, width=0.25, seed=0), "paper_net64 w0.25"
        x = rng.standard_normal((128, 3, 64, 64)).astype(np.float32)
        y = rng.integers(0, 200, 128)
        opt = SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            s = net.forward(x, train=True)
            _, d = softmax_cross_entropy(s, y)
            net.backward(d, "gradient", param_grads=True, input_grad=False)
            opt.step()
        batch = 128
    step()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps(dict(model=name, img_s=batch / best)))


def main(argv=None):
    from scratchnet.cli import positive_int      # counts: an integer >= 1, else a clear refusal
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--workloads", nargs="+", default=["saliency", "train"], choices=["saliency", "train"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    results = {w: {s: [] for s in SETTINGS} for w in args.workloads}
    models = {}
    for r in range(args.rounds):
        for w in args.workloads:
            for s, env in SETTINGS.items():
                out = subprocess.run([sys.executable, __file__, "--child", w], env={**base, **env},
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"bench_threads: the {w} child under '{s}' failed:\n{out.stderr[-2000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                models[w] = row["model"]
                results[w][s].append(row["img_s"])
                print(f"round {r + 1}: {w:8s} {s:10s} {row['img_s']:7.2f} img/s", file=sys.stderr, flush=True)
    print(f"\n{'workload':28s} " + " ".join(f"{s + ' img/s (range)':>26s}" for s in SETTINGS))
    summary = {}
    for w in args.workloads:
        cells, summary[w] = [], {"model": models[w]}
        for s in SETTINGS:
            v = sorted(results[w][s])
            med = statistics.median(v)
            summary[w][s] = dict(median=med, runs=results[w][s])
            cells.append(f"{med:8.2f} ({v[0]:.1f}-{v[-1]:.1f})")
        print(f"{w + ' (' + models[w] + ')':28s} " + " ".join(f"{c:>26s}" for c in cells))
    print(json.dumps(dict(bench="threads", cpu_count=os.cpu_count(), rounds=args.rounds, results=summary)))


if __name__ == "__main__":
    main()
