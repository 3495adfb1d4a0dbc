"""The ``scratchnet`` command line (also ``python -m scratchnet``).

Each area registers its own subcommands from a small ``cli`` module beside its code, so this file
only assembles them:

    scratchnet.models.cli     classify, evaluate classification, info
    scratchnet.vis.cli        saliency, classmodel, deconv, compare-rules, demo
    scratchnet.localise.cli   localise, evaluate localisation, evaluate segmentation
    scratchnet.train.cli      train
    scratchnet.gradcheck      gradcheck

(The benchmarks are scripts in bench/, not commands.)

Commands that compute results print them as one JSON object on the last line of stdout, and the
JSON files they write are strict JSON too: a NaN or an infinity (an undefined ratio, an empty set's
mean) is written as null.
Every command takes ``--device cpu|gpu`` (default: $SCRATCHNET_DEVICE or cpu), resolved once in
``main``: ``gpu`` without CuPy or a GPU runs on the CPU with a message.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

from .tempfiles import cut_name

#: modules that provide ``register(subparsers, evaluate_subparsers)``
COMMAND_MODULES = ["scratchnet.models.cli", "scratchnet.vis.cli", "scratchnet.localise.cli",
                   "scratchnet.train.cli", "scratchnet.gradcheck"]


def json_default(o):
    """json.dumps fallback for NumPy scalars and arrays (and anything else, as its str)."""
    if hasattr(o, "tolist"):          # NumPy/CuPy scalars and arrays
        return o.tolist()
    return str(o)


def strict_json(o):
    """o with every NaN or infinite float (Python or NumPy, in dicts, lists, tuples and arrays) as None:
    JSON has no such numbers, and strict parsers refuse the Infinity / NaN that json.dumps writes."""
    if isinstance(o, dict):
        return {k: strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):        # NumPy/CuPy scalars and arrays
        return strict_json(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def dumps_strict(obj, **kw) -> str:
    """json.dumps for what the commands print and write: NaN and infinities as null (``strict_json``),
    NumPy values as Python ones (``json_default``)."""
    return json.dumps(strict_json(obj), default=json_default, allow_nan=False, **kw)


#: the device main() resolved for the running command ('cpu' or 'gpu'; None for a command without
#: --device): its JSON line says where it ran, as --device gpu falls back to the CPU without a GPU
_ran_on = {"device": None}


def emit_json(obj):
    """Print the one JSON object that ends a command's standard output (strict JSON: no NaN or Infinity,
    which become null), with the device the command ran on and what decided the last bits of its
    arithmetic there (backend.numerics: on the CPU OpenBLAS's kernels and threads, which move trained
    accuracies, class-model objectives and GraphCut boxes by a little; see the README's
    "Reproducibility"), so that a figure says where it came from."""
    if _ran_on["device"] is not None and isinstance(obj, dict):
        from .backend import numerics
        device = obj.get("device", _ran_on["device"])          # a command may say it itself (train does)
        obj = {**obj, "device": device, "numerics": obj.get("numerics", numerics(device))}
    print(dumps_strict(obj), flush=True)


#: the IMAGE arguments' help: the commands that take a user's photos read them upright (io.images.load_image)
PHOTOS_HELP = "photo files (JPEG, PNG, ...), turned upright as their EXIF orientation tag says"
PHOTO_HELP = "a photo file (JPEG, PNG, ...), turned upright as its EXIF orientation tag says"


def add_model_arg(p, default=None):
    """--model: a network name or a saved .npz; required when there is no default."""
    if default is None:
        p.add_argument("--model", required=True, help="squeezenet1_0, efficientnet_lite0 or a saved network (.npz)")
    else:
        p.add_argument("--model", default=default, help="network name or .npz path (default %(default)s)")


def positive_int(text: str) -> int:
    """argparse type of a count (a batch size, a number of steps or photos): an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type of an offset or an off-by-default size: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
    return v


def offset_limit(n, args, what="photos"):
    """Items --offset.. of n, at most --limit of them (the parser has checked offset >= 0, limit >= 1)."""
    if args.offset >= n:
        raise ValueError(f"--offset {args.offset} leaves no {what}: the data set has {n}")
    return range(args.offset, n if args.limit is None else min(n, args.offset + args.limit))


def positive_number(text: str) -> float:
    """argparse type of a rate, a width, a scale or a tolerance: a finite number > 0."""
    return _number(text, "> 0", lambda v: v > 0)


def nonnegative_number(text: str) -> float:
    """argparse type of a weight or a momentum that 0 turns off: a finite number >= 0."""
    return _number(text, ">= 0", lambda v: v >= 0)


def _number(text: str, want: str, ok) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {want}, got {text!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise argparse.ArgumentTypeError(f"expected a number {want}, got {v:g}")
    return v


def unit_fraction(text: str) -> float:
    """argparse type of a fraction of an image's side or of a map's maximum: a number in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v:g}")
    return v


def add_device_arg(p):
    p.add_argument("--device", default=None, choices=["cpu", "gpu"],
                   help="where to compute (default: $SCRATCHNET_DEVICE, else cpu)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scratchnet",
        description="From-scratch ConvNet engine reproducing Simonyan, Vedaldi & Zisserman (2013): "
                    "class models, saliency maps, DeconvNet vs gradient, weakly supervised localisation.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"scratchnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ev = sub.add_parser("evaluate", help="evaluate a network (classification, localisation or segmentation)")
    ev_sub = ev.add_subparsers(dest="what", metavar="WHAT")
    ev_sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:      # that area is not built yet
                continue
            raise
        mod.register(sub, ev_sub)
    return parser


def import_plugins(names=None):
    """Import the modules named in ``names`` (default $SCRATCHNET_IMPORT, comma-separated), e.g. one
    that registers a layer class of your own in scratchnet.layers.LAYER_TYPES, so that every command
    can load networks that use it. A module that cannot be imported is a ValueError naming it."""
    names = os.environ.get("SCRATCHNET_IMPORT", "") if names is None else names
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"$SCRATCHNET_IMPORT names the module {name!r}, which cannot be imported: {e} "
                             "(is its folder on PYTHONPATH?)") from None
        except Exception as e:                  # the module's own code failed
            raise ValueError(f"$SCRATCHNET_IMPORT: importing {name!r} failed: {type(e).__name__}: {e}") from None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import_plugins()
    except ValueError as e:
        print(f"scratchnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    if hasattr(args, "device"):         # --device, else $SCRATCHNET_DEVICE, else cpu; gpu without one: cpu
        from .backend import resolve_device
        try:
            args.device = resolve_device(args.device)
        except ValueError as e:         # a bad $SCRATCHNET_DEVICE
            print(f"scratchnet {args.command}: error: {e} (from $SCRATCHNET_DEVICE)", file=sys.stderr)
            return 2
    _ran_on["device"] = getattr(args, "device", None)
    try:
        check_output_paths(args)              # before any work: a bad --out must not cost a long run
        with warnings.catch_warnings():       # a library warning as one line, like the commands' own,
            shown = set()                     # and once: not again for each of 10,000 photos

            def one_line(message, *_, **__):
                if str(message) not in shown:
                    shown.add(str(message))
                    print(f"scratchnet {args.command}: warning: {message}", file=sys.stderr)
            warnings.showwarning = one_line
            return args.func(args) or 0
    except KeyboardInterrupt as e:      # 128 + the signal, as a shell reports it: 130 Ctrl-C, 143 SIGTERM
        print("interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except (ValueError, FileNotFoundError) as e:   # user errors: one clear line, no traceback
        print(f"scratchnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:               # stdout closed early (`scratchnet info | head`): nothing to say
        try:                              # and nothing at exit either, when Python flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):      # a stdout with no file behind it
            pass
        return 1
    except OSError as e:                  # the system refused a file operation (permissions, a full disk)
        what = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        print(f"scratchnet {args.command}: error: {what}", file=sys.stderr)
        return 2
    except MemoryError as e:              # NumPy's says how much, and of what shape: the size asked for
        print(f"scratchnet {args.command}: error: out of memory: {str(e) or 'an allocation failed'} (smaller "
              f"settings: batch size, network width, input size, number of photos?)", file=sys.stderr)
        return 2
    finally:
        _ran_on["device"] = None


def unique_stems(paths, max_bytes=200):
    """File stems, with _2, _3, ... added to a stem taken before, ignoring case (X.jpg and x.png are one
    file name on macOS and Windows): outputs are named by stem. A stem is cut to ``max_bytes`` (whole
    characters), leaving room for what the outputs add (`_deconvnet_map.npy`) within the 255 bytes of
    a file name: a photo's 250-byte name stopped a batch with "File name too long"."""
    used, out = set(), []
    for p in paths:
        stem = cut_name(Path(p).stem, max_bytes)
        name, i = stem, 1
        while name.casefold() in used:
            i += 1
            name = f"{stem}_{i}"
        used.add(name.casefold())
        out.append(name)
    return out


#: the options that name a folder a command writes into (created if missing), and one file
FOLDER_OPTIONS, FILE_OPTIONS = ("out", "cache"), ("details",)


def _why_not_writable(folder) -> str:
    """'read-only file system' where that is the reason (os.access says only no), else 'permission denied'."""
    try:
        if os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
            return "read-only file system"
    except (OSError, AttributeError):
        pass
    return "permission denied"


def check_output_paths(args):
    """A ValueError naming the option unless each output folder in ``args`` is a folder or can be made
    one, and each output file's folder exists and is writable: checked before a command starts, so a
    typo is not found after an hour's work. A cache may be read-only (one filled before is only read)."""
    for name in FOLDER_OPTIONS + FILE_OPTIONS:
        value = getattr(args, name, None)
        if value is None or (name == "cache" and getattr(args, "no_cache", False)):
            continue
        flag, path = "--" + name, Path(value)
        if name in FOLDER_OPTIONS:
            if path.exists() and not path.is_dir():
                raise ValueError(f"{flag} {value} is a file; expected a folder (one that does not exist yet "
                                 "is created)")
            folder = path
        else:
            if path.is_dir():
                raise ValueError(f"{flag} {value} is a folder; expected a file name")
            if path.exists() and not os.access(path, os.W_OK):
                raise ValueError(f"{flag} {value}: cannot write the file (permission denied)")
            folder = path.parent
        here = folder
        while not here.exists():               # the nearest part of the path that exists
            here = here.parent
        if not here.is_dir():
            raise ValueError(f"{flag} {value}: {here} is a file, so {folder} cannot be a folder")
        if here != folder and name in FILE_OPTIONS:
            raise ValueError(f"{flag} {value}: the folder {folder} does not exist")
        if name != "cache" and not os.access(here, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {value}: cannot write in {here} ({_why_not_writable(here)})")


if __name__ == "__main__":
    sys.exit(main())
