"""Class-model step control: which (down, up) factors climb highest, against fixed steps.

    python bench/classmodel_steps.py [--models efficientnet_lite0 squeezenet1_0]
                                     [--classes goose ostrich "Siberian husky"] [--steps 100]
                                     [--lam 1e-5] [--lr 2] [--pairs 0.5:1.1 0.5:2.0 0.7:1.2 ...]

For each network, runs ``class_model`` (by default at its defaults: 100 normalised steps of 2 grey
levels, lam 1e-5, from the zero image) once with fixed steps and once per pair of step-control factors
(``step_factors=(down, up)``: the step is multiplied by ``down`` after a step that lowered the class's
objective J = S_c - lam ||I/u||^2, else by ``up``, capped at ``--lr``), and prints each run's mean
final J, its mean final S_c and the mean number of steps that lowered J (each shortened the next); the
defaults (``STEP_DOWN``, ``STEP_UP``) are marked. Ends with one JSON line. This is the comparison behind
the README's class-model paragraph and ``scratchnet/vis/classmodel.py``'s note on the defaults; not a
speed benchmark (each network's runs are deterministic: the same call gives the same bits).

Takes about 5 minutes on 2 cores at the defaults (13 runs per network; the pretrained weights come with pip).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from contextlib import redirect_stderr

import scratchnet  # noqa: F401  first: its thread settings must precede NumPy's OpenBLAS (scratchnet/threads.py)
import numpy as np
from timing import blas_kernels

from scratchnet.cli import positive_int
from scratchnet.models import load
from scratchnet.vis import classmodel as cm
from scratchnet.vis.display import resolve_class

DEFAULT_PAIRS = ["0.9:1.05", "0.5:1.1", "0.5:1.5", "0.5:2.0", "0.7:1.1", "0.7:1.2", "0.8:1.1", "0.3:1.1", "0.8:1.05",
                 "0.85:1.05", "0.9:1.1", "0.95:1.02"]


def pair(text: str) -> tuple[float, float]:
    """argparse type of --pairs: 'DOWN:UP' with 0 < DOWN < 1 <= UP."""
    try:
        down, up = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DOWN:UP (two numbers, e.g. 0.5:1.1), got {text!r}") from None
    if not (math.isfinite(up) and 0 < down < 1 <= up):
        raise argparse.ArgumentTypeError(f"expected 0 < DOWN < 1 <= UP, got {text!r}")
    return down, up


def run(net, classes, steps, **kw):
    """One class_model run -> (mean final J, mean final S_c, mean falls of J or None, whether some class's J
    ended below its start)."""
    err = io.StringIO()
    with redirect_stderr(err):               # "J ended below where it started" is a column here
        r = cm.class_model(net, classes, steps=steps, **kw)
    for line in err.getvalue().splitlines():  # any other warning (a zero gradient, ...) is shown
        if "ended below where it started" not in line:
            print(line, file=sys.stderr)
    falls = r.settings["falls"]
    return (float(np.mean(r.objective[-1])), float(np.mean(r.scores[-1])),
            None if falls is None else float(np.mean(falls)), bool((r.objective[-1] < r.objective[0]).any()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "squeezenet1_0"])
    ap.add_argument("--classes", nargs="+", default=["goose", "ostrich", "Siberian husky"])
    ap.add_argument("--steps", type=positive_int, default=cm.DEFAULTS["steps"])
    ap.add_argument("--lam", type=float, default=cm.DEFAULTS["lam"], help="L2 weight per grey level squared")
    ap.add_argument("--lr", type=float, default=cm.DEFAULTS["lr"], help="the (largest) step, grey levels rms")
    ap.add_argument("--pairs", nargs="+", type=pair, default=[pair(p) for p in DEFAULT_PAIRS],
                    metavar="DOWN:UP")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.lam) and args.lam >= 0 and math.isfinite(args.lr) and args.lr > 0):
        ap.error(f"expected --lam >= 0 and --lr > 0, got --lam {args.lam:g} --lr {args.lr:g}")
    default = (cm.STEP_DOWN, cm.STEP_UP)
    pairs = list(dict.fromkeys([default] + list(args.pairs)))        # the defaults first, no repeats
    nets = {}
    for name in args.models:                 # every network and class first: no run lost to a late typo
        try:
            net = load(name)
            nets[name] = net, [resolve_class(net, c) for c in args.classes]
        except (OSError, ValueError, KeyError) as e:
            ap.error(f"{name}: {e}")
    rows = []
    print(f"BLAS: {blas_kernels()} (the ascent's path, and so these figures, move with its kernels)")
    for name, (net, classes) in nets.items():
        print(f"\n{name}: {len(classes)} classes {args.classes}, {args.steps} steps, lam {args.lam:g}, "
              f"lr {args.lr:g} grey levels", flush=True)
        print(f"  {'steps':<28} {'mean J':>9} {'mean S_c':>9} {'falls of J':>10}", flush=True)
        runs = [("fixed", None)] + [(f"control {d:g} / {u:g}" + (" (default)" if (d, u) == default else ""), (d, u))
                                    for d, u in pairs]
        for label, factors in runs:
            kw = dict(step_control=False) if factors is None else dict(step_factors=factors)
            j, s, h, fell = run(net, classes, args.steps, lam=args.lam, lr=args.lr, **kw)
            print(f"  {label:<28} {j:9.1f} {s:9.1f} {'-' if h is None else f'{h:.1f}':>10}"
                  f"{'  (J ended below its start for some class)' if fell else ''}", flush=True)
            rows.append(dict(model=name, step_factors=None if factors is None else list(factors),
                             mean_objective=round(j, 3), mean_score=round(s, 3),
                             mean_falls=h, objective_fell=fell))
    print(json.dumps(dict(bench="classmodel_steps", classes=args.classes, steps=args.steps, lam=args.lam, lr=args.lr,
                          rows=rows)))


if __name__ == "__main__":
    sys.exit(main())
