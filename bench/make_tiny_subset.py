"""Copy a subset of Tiny-ImageNet-200 in its original layout, small enough to travel with the repo.

    python3 bench/make_tiny_subset.py [--src ../shared/data/tiny-imagenet-200] [--out gpu_data/tiny-sub]
                                      [--classes 100] [--per-class 100] [--val-per-class 50]

The GPU machine gets the working tree (at most 64 MiB, ignored folders only when the device tool's
``carry`` names them) but not ../shared, so bench/run_gpu_visualisers.sh trains on this copy:
``run(command="bash bench/run_gpu_visualisers.sh", carry=["gpu_data"], ...)``. /gpu_data/ is in
.gitignore.

What is copied, in the layout ``scratchnet.io.datasets.tiny_imagenet`` reads:
    wnids.txt                          the first K wnids of the source's wnids.txt (same order)
    words.txt                          the source's lines for those K wnids
    train/<wnid>/images/<wnid>_<i>.JPEG   images i = 0..N-1 of each class (by the number in the name:
                                       the reader takes every image 0..max listed in the boxes file)
    train/<wnid>/<wnid>_boxes.txt      the source's rows for exactly those images, in source order
    val/images/val_<j>.JPEG            the first V val images of each chosen class, in
    val/val_annotations.txt            val_annotations.txt order (the reader's per_class order), and
                                       the annotation rows of exactly those images, in source order
    SUBSET.json                        how it was made (also marks the folder as this script's, so a
                                       rerun may replace it)

Deterministic: same source and arguments, same files. Refuses (before copying) a subset larger than
--max-mb. Prints the number of files and the total bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from scratchnet.cli import nonnegative_int, positive_int, positive_number
from scratchnet.io.datasets import tiny_imagenet

REPO = Path(__file__).resolve().parent.parent
MARKER = "SUBSET.json"


def plan(src: Path, classes: int, per_class: int, val_per_class: int):
    """(wnids, {relative path: text} of the index files, [(source file, relative path)] of the images):
    the images ``scratchnet.io.datasets.tiny_imagenet`` picks, and the source's index rows for them."""
    try:
        train = tiny_imagenet(src, "train", classes=classes, per_class=per_class)
        val = tiny_imagenet(src, "val", classes=classes)
    except (OSError, ValueError) as e:
        sys.exit(f"make_tiny_subset: {e}; lower --classes / --per-class")
    wnids, chosen = train.class_wnids, set(train.class_wnids)
    counts = np.bincount(val.labels, minlength=len(wnids))
    kept_val = [p for p, k in zip(val.paths, _rank_in_class(val.labels)) if k < val_per_class]
    if (counts < val_per_class).any():
        w = int(np.argmax(counts < val_per_class))
        print(f"make_tiny_subset: warning: {src / 'val' / 'val_annotations.txt'} has only {counts[w]} val "
              f"images of {wnids[w]} (asked for {val_per_class}; {(counts < val_per_class).sum()} class(es) short)",
              file=sys.stderr)

    def rows(path: Path, keep) -> str:         # the source's lines whose first field passes keep, in order
        return "".join(ln + "\n" for ln in path.read_text(encoding="utf-8").splitlines()
                       if ln.strip() and keep(ln.split()[0]))

    texts = {"wnids.txt": "".join(w + "\n" for w in wnids)}
    if (src / "words.txt").is_file():
        texts["words.txt"] = rows(src / "words.txt", lambda w: w in chosen)
    names = {p.name for p in train.paths}
    for w in wnids:
        texts[f"train/{w}/{w}_boxes.txt"] = rows(src / "train" / w / f"{w}_boxes.txt", lambda f: f in names)
    val_names = {p.name for p in kept_val}
    texts["val/val_annotations.txt"] = rows(src / "val" / "val_annotations.txt", lambda f: f in val_names)
    copies = [(p, p.relative_to(src).as_posix()) for p in [*train.paths, *kept_val]]
    return wnids, texts, copies


def _rank_in_class(labels: np.ndarray) -> list[int]:
    """For each item, how many earlier items share its label (0 for the first of each class)."""
    seen, ranks = {}, []
    for y in labels.tolist():
        ranks.append(seen.get(y, 0))
        seen[y] = ranks[-1] + 1
    return ranks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "tiny-imagenet-200",
                    help="Tiny-ImageNet-200 root (default ../shared/data/tiny-imagenet-200 from the repo root)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu_data" / "tiny-sub",
                    help="output folder (default gpu_data/tiny-sub in the repo root)")
    ap.add_argument("--classes", type=positive_int, default=100, help="the first K wnids of wnids.txt (default 100)")
    ap.add_argument("--per-class", type=positive_int, default=100,
                    help="training images 0..N-1 of each class (default 100)")
    ap.add_argument("--val-per-class", type=nonnegative_int, default=50, help="val images of each class (default 50 = all)")
    ap.add_argument("--max-mb", type=positive_number, default=45.0,
                    help="refuse a subset larger than this many MB (10^6 bytes; default 45)")
    args = ap.parse_args(argv)

    src, out = args.src.resolve(), args.out.resolve()
    if not (src / "wnids.txt").is_file() or not (src / "train").is_dir():
        sys.exit(f"make_tiny_subset: no Tiny-ImageNet-200 at {src} (expected wnids.txt and train/ there); "
                 f"pass --src")
    if out == src or src in out.parents:
        sys.exit(f"make_tiny_subset: --out {out} is inside --src")
    wnids, texts, copies = plan(src, args.classes, args.per_class, args.val_per_class)

    planned = sum(len(t.encode("utf-8")) for t in texts.values()) + sum(s.stat().st_size for s, _ in copies)
    if planned > args.max_mb * 1e6:
        sys.exit(f"make_tiny_subset: the subset would be {planned:,} bytes, over --max-mb {args.max_mb:g} MB; "
                 f"lower --classes/--per-class/--val-per-class")

    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
            sys.exit(f"make_tiny_subset: {out} exists and was not made by this script (no {MARKER}); "
                     f"remove it or choose another --out")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for rel, text in texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        for s, rel in copies:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s, tmp / rel)
        info = dict(src=str(args.src), classes=args.classes, per_class=args.per_class,
                    val_per_class=args.val_per_class, train_images=sum(r.startswith("train/") for _, r in copies),
                    val_images=sum(r.startswith("val/") for _, r in copies), first_wnid=wnids[0], last_wnid=wnids[-1])
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)

    files = len(texts) + len(copies) + 1                     # with the marker
    total = planned + (out / MARKER).stat().st_size
    print(f"make_tiny_subset: {out}: {args.classes} classes, {info['train_images']} training and "
          f"{info['val_images']} val images; {files} files, {total:,} bytes ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
