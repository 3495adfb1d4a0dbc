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

REPO = Path(__file__).resolve().parent.parent
MARKER = "SUBSET.json"


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        sys.exit(f"make_tiny_subset: missing {path}")
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _index(name: str, wnid: str) -> int:
    """<wnid>_<i>.JPEG -> i"""
    stem = name.rsplit(".", 1)[0]
    prefix, _, num = stem.rpartition("_")
    if prefix != wnid or not num.isdigit():
        raise ValueError(f"unexpected training file name {name!r} for class {wnid}")
    return int(num)


def plan(src: Path, classes: int, per_class: int, val_per_class: int):
    """(wnids, {relative path: text} of the index files, [(source file, relative path)] of the images)."""
    all_wnids = _lines(src / "wnids.txt")
    if not 1 <= classes <= len(all_wnids):
        sys.exit(f"make_tiny_subset: --classes {classes}: {src / 'wnids.txt'} has {len(all_wnids)} classes")
    wnids = all_wnids[:classes]
    chosen = set(wnids)
    texts, copies = {}, []
    texts["wnids.txt"] = "".join(w + "\n" for w in wnids)
    words = src / "words.txt"
    if words.is_file():
        texts["words.txt"] = "".join(ln + "\n" for ln in _lines(words) if ln.split("\t", 1)[0] in chosen)

    for w in wnids:
        box_file = src / "train" / w / f"{w}_boxes.txt"
        rows = {}
        for ln in _lines(box_file):
            name = ln.split()[0]
            rows[_index(name, w)] = (name, ln)
        missing = [i for i in range(per_class) if i not in rows]
        if missing:
            sys.exit(f"make_tiny_subset: {box_file} lists no image {w}_{missing[0]}.JPEG "
                     f"({len(missing)} of 0..{per_class - 1} missing); lower --per-class")
        keep = sorted(i for i in rows if i < per_class)
        # the source's rows (dict order = file order), restricted to the kept images
        texts[f"train/{w}/{w}_boxes.txt"] = "".join(ln + "\n" for i, (_, ln) in rows.items() if i < per_class)
        for i in keep:
            name = rows[i][0]
            copies.append((src / "train" / w / "images" / name, f"train/{w}/images/{name}"))

    ann = src / "val" / "val_annotations.txt"
    seen = {w: 0 for w in wnids}
    val_rows = []
    for ln in _lines(ann):
        f = ln.split()
        if len(f) < 2 or f[1] not in chosen or seen[f[1]] >= val_per_class:
            continue
        seen[f[1]] += 1
        val_rows.append(ln)
        copies.append((src / "val" / "images" / f[0], f"val/images/{f[0]}"))
    short = [(w, c) for w, c in seen.items() if c < val_per_class]
    if short:
        print(f"make_tiny_subset: warning: {ann} has only {short[0][1]} val images of {short[0][0]} "
              f"(asked for {val_per_class}; {len(short)} class(es) short)", file=sys.stderr)
    texts["val/val_annotations.txt"] = "".join(ln + "\n" for ln in val_rows)
    return wnids, texts, copies


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "tiny-imagenet-200",
                    help="Tiny-ImageNet-200 root (default ../shared/data/tiny-imagenet-200 from the repo root)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu_data" / "tiny-sub",
                    help="output folder (default gpu_data/tiny-sub in the repo root)")
    ap.add_argument("--classes", type=int, default=100, help="the first K wnids of wnids.txt (default 100)")
    ap.add_argument("--per-class", type=int, default=100,
                    help="training images 0..N-1 of each class (default 100)")
    ap.add_argument("--val-per-class", type=int, default=50, help="val images of each class (default 50 = all)")
    ap.add_argument("--max-mb", type=float, default=45.0,
                    help="refuse a subset larger than this many MB (10^6 bytes; default 45)")
    args = ap.parse_args(argv)
    if args.per_class < 1 or args.val_per_class < 0:
        ap.error("--per-class must be >= 1 and --val-per-class >= 0")

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

    files = [p for p in out.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    print(f"make_tiny_subset: {out}: {args.classes} classes, {info['train_images']} training and "
          f"{info['val_images']} val images; {len(files)} files, {total:,} bytes ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
