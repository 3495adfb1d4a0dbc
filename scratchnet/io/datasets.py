"""Image data sets on disk: readers for the layouts we use, a decoded-image cache, the mean image.

A Dataset is just the list of files with their labels (nothing is decoded).  Readers:
    tiny_imagenet(root, split)   Tiny-ImageNet-200 in its original distribution layout
    image_folder(root)           root/<class>/<image>; class = folder name (or a wnid/name from a list)
    imagenet_val_dev(root)       images/ + boxes.csv (one row per box), ImageNet-1k labels
    open_dataset(path)           any of the above, detected from what is in the folder
decode_cache(dataset, size, cache_dir) decodes every image once (decode_one) into an (N, size, size, 3)
uint8 .npy file (at cache_path) that later runs memory-map; mean_image(cache) gives the per-pixel
training mean.
"""
from __future__ import annotations

import csv
import difflib
import errno
import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_int, is_int
from ..progress import Progress
from ..tempfiles import atomic_write, clean_once, held, temp_path
from .classnames import class_index, imagenet_class_names, imagenet_wnids
from .images import ImageReadError, load_image, resize_shorter_centre_crop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Dataset:
    """Files, labels and (optionally) boxes of an image data set; nothing decoded.

    paths       : list of N Paths
    labels      : (N,) int64, indices into class_wnids / class_names
    class_wnids : list of C WordNet ids ('' where a class has none)
    class_names : list of C readable names
    boxes       : None, or a list of N float32 arrays (K_i, 4) of x0, y0, x1, y1 in the
                  image's own pixel coordinates, inclusive (K_i >= 1 boxes per image)
    root        : the folder the data set was read from
    """
    paths: list
    labels: np.ndarray
    class_wnids: list
    class_names: list
    boxes: list | None = None
    root: Path = field(default_factory=Path)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"Dataset: {len(self.paths)} paths but {len(self.labels)} labels")
        if self.boxes is not None and len(self.boxes) != len(self.paths):
            raise ValueError(f"Dataset: {len(self.paths)} paths but {len(self.boxes)} box lists")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices) -> "Dataset":
        """The images at ``indices`` (integers in 0..N-1, in the order given) or where a boolean mask of
        length N is True; same classes, same label space."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"Dataset.subset: a boolean mask must have one entry per image ({len(self)}), "
                                 f"got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(self)):
            flat = idx.reshape(-1)
            bad = flat if flat.dtype.kind not in "iu" else flat[(flat < 0) | (flat >= len(self))]
            raise ValueError(f"Dataset.subset: expected image indices in 0..{len(self) - 1} or a boolean mask, "
                             f"got {flat.dtype} values such as {bad[:5].tolist()}")
        idx = idx.astype(np.int64).reshape(-1)
        return Dataset([self.paths[i] for i in idx], self.labels[idx], list(self.class_wnids),
                       list(self.class_names), None if self.boxes is None else [self.boxes[i] for i in idx],
                       self.root)

    def __repr__(self) -> str:
        return (f"Dataset({len(self)} images, {self.num_classes} classes, "
                f"boxes={'yes' if self.boxes is not None else 'no'}, root={str(self.root)!r})")


# ----------------------------------------------------------------------------- Tiny-ImageNet

def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} ({what})")
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _box_rows(path: Path, rows: list) -> np.ndarray:
    """Rows of four number strings -> (K, 4) float32; the error names the file."""
    try:
        boxes = np.array(rows, dtype=np.float64).astype(np.float32).reshape(len(rows), 4)
    except ValueError:
        raise ValueError(f"{path}: expected four box numbers x0 y0 x1 y1 on every line") from None
    bad = ~_good_boxes(boxes)
    if bad.any():
        raise ValueError(f"{path}: box {boxes[bad][0].tolist()} is not x0 y0 x1 y1 with x0 <= x1, y0 <= y1, all "
                         f"finite ({int(bad.sum())} such line(s))")
    return boxes


def _box_row(path: Path, lineno: int, fields: list[str]) -> np.ndarray:
    try:
        box = np.array([float(v) for v in fields], dtype=np.float32).reshape(4)
    except ValueError:
        raise ValueError(f"{path}, line {lineno}: expected four box numbers x0 y0 x1 y1, got {fields}") from None
    if not _good_boxes(box[None])[0]:
        raise ValueError(f"{path}, line {lineno}: box {fields} is not x0 y0 x1 y1 with x0 <= x1, y0 <= y1, "
                         f"all finite")
    return box


def _good_boxes(boxes) -> np.ndarray:
    """(K, 4) x0 y0 x1 y1 -> (K,) True where the box is finite with x0 <= x1 and y0 <= y1."""
    return (np.isfinite(boxes).all(axis=1) & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3]))


def tiny_imagenet(root, split: str = "train", classes=None, per_class: int | None = None,
                  start: int = 0) -> Dataset:
    """Tiny-ImageNet-200 (original layout) as a Dataset with one inclusive box per image.

    root      : the folder holding wnids.txt, words.txt, train/, val/
    split     : "train" (300 a class, images <wnid>_0..299) or "val" (50 a class)
    classes   : None = all 200; an int n = the first n of wnids.txt; or a list of wnids
                (labels are positions in the chosen list; wnids.txt order by default)
    per_class : keep images start .. start+per_class-1 of each class (train: the number
                in the file name; val: the class's k-th image in val_annotations.txt order)
    """
    root = Path(root)
    if split not in ("train", "val"):
        raise ValueError(f"tiny_imagenet: split must be 'train' or 'val', got {split!r}")
    all_wnids = _read_lines(root / "wnids.txt", "Tiny-ImageNet class list, one wnid a line")
    if not all_wnids:
        raise ValueError(f"tiny_imagenet: {root / 'wnids.txt'} lists no classes")
    if per_class is not None:
        check_int("tiny_imagenet", "per_class", per_class, 1)
    check_int("tiny_imagenet", "start", start, 0)
    if classes is None:
        wnids = all_wnids
    elif isinstance(classes, (bool, np.bool_, float, np.floating, str)):
        raise ValueError(f"tiny_imagenet: classes must be None, a number of classes or a list of wnids, "
                         f"got {classes!r}")
    elif is_int(classes):
        if not 1 <= classes <= len(all_wnids):
            raise ValueError(f"tiny_imagenet: classes={classes}, expected 1..{len(all_wnids)}")
        wnids = all_wnids[:classes]
    else:
        wnids = [str(w) for w in classes]
        for w in wnids:
            if w not in all_wnids:
                close = difflib.get_close_matches(w, all_wnids, n=3)
                raise ValueError(f"tiny_imagenet: {w!r} is not in {root / 'wnids.txt'}"
                                 + (f"; close matches: {close}" if close else ""))
    label_of = {w: i for i, w in enumerate(wnids)}
    words = {}
    words_file = root / "words.txt"
    if words_file.is_file():
        for ln in _read_lines(words_file, "wnid<TAB>names"):
            w, _, text = ln.partition("\t")
            words[w] = text.split(",")[0].strip()
    names = [words.get(w, w) for w in wnids]

    stop = None if per_class is None else start + per_class
    paths, labels, boxes = [], [], []
    if split == "train":
        for w in wnids:
            box_file = root / "train" / w / f"{w}_boxes.txt"
            rows = {}
            for n, ln in enumerate(_read_lines(box_file, "file<TAB>x0 y0 x1 y1 per image"), 1):
                f = ln.split()
                if len(f) != 5:
                    raise ValueError(f"{box_file}, line {n}: expected 'file x0 y0 x1 y1', got {ln!r}")
                try:
                    k = int(f[0].rsplit(".", 1)[0].rsplit("_", 1)[1])
                except (IndexError, ValueError):
                    raise ValueError(f"{box_file}, line {n}: expected a file named {w}_<i>.JPEG, got {f[0]!r}") from None
                rows[k] = (f[0], f[1:])
            want = range(start, max(rows) + 1 if stop is None else stop)
            missing = [k for k in want if k not in rows]
            if missing:
                raise ValueError(f"tiny_imagenet: {box_file} lists no image(s) {w}_{missing[0]}.JPEG"
                                 f"{' and %d more' % (len(missing) - 1) if len(missing) > 1 else ''};"
                                 f" asked for images {start}..{want.stop - 1} of each class")
            folder = root / "train" / w / "images"
            class_boxes = _box_rows(box_file, [rows[k][1] for k in want])
            paths += [folder / rows[k][0] for k in want]
            labels += [label_of[w]] * len(want)
            boxes += list(class_boxes[:, None])
    else:
        ann = root / "val" / "val_annotations.txt"
        seen = {w: 0 for w in wnids}
        for n, ln in enumerate(_read_lines(ann, "file<TAB>wnid<TAB>x0 y0 x1 y1 per image"), 1):
            f = ln.split()
            if len(f) != 6:
                raise ValueError(f"{ann}, line {n}: expected 'file wnid x0 y0 x1 y1', got {ln!r}")
            if f[1] not in label_of:
                continue
            k = seen[f[1]]
            seen[f[1]] += 1
            if k < start or (stop is not None and k >= stop):
                continue
            paths.append(root / "val" / "images" / f[0])
            labels.append(label_of[f[1]])
            boxes.append(_box_row(ann, n, f[2:])[None])
        short = {w: c for w, c in seen.items() if stop is not None and c < stop}
        if short:
            w, c = next(iter(short.items()))
            raise ValueError(f"tiny_imagenet: {ann} has only {c} images of {w}; asked for images "
                             f"{start}..{stop - 1} of each class")
    return Dataset(paths, np.array(labels, dtype=np.int64), list(wnids), names, boxes, root)


# ----------------------------------------------------------------------------- ImageFolder

def _image_files(folder: Path, others: list | None = None) -> list[Path]:
    """The image files of ``folder``, sorted; the other (not hidden) files' paths go into ``others``.
    One pass: the suffix is looked at before the file system is asked (a stat per file)."""
    images = []
    for e in os.scandir(folder):
        if e.name.startswith("."):
            continue
        is_image = Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        if (is_image or others is not None) and e.is_file():
            (images if is_image else others).append(Path(e.path))
    return sorted(images)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_folder(root, class_names=None, class_wnids=None, allow_missing: bool = False,
                 skip_unknown: bool = False) -> Dataset:
    """root/<class>/<image> as a Dataset (no boxes).

    Without class_names: one class per sub-folder, labels in sorted folder order.
    With class_names (and optionally class_wnids; class_names="imagenet" means both ImageNet-1k
    lists in the standard order): each folder is
    a wnid or a name from those lists (case and '_' vs ' ' ignored) and labels are its index
    in the list.  An unknown folder name is an error listing close matches, unless skip_unknown=True
    (a folder holding more classes than wanted: the others are left out, with a note on stderr); a
    listed class with no folder is an error unless allow_missing=True (a folder holding some classes).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: {root} is a file, expected a data set's folder" if root.exists() else
                                f"image_folder: no folder {root}")
    if isinstance(class_names, str) and class_names == "imagenet":
        class_names, class_wnids = imagenet_class_names(), imagenet_wnids()
    folders = _class_folders(root)
    if not folders:
        raise ValueError(f"image_folder: {root} has no class sub-folders; expected root/<class>/<image>")
    if class_names is None and class_wnids is None:
        names = [f.name for f in folders]
        wnids = [f.name if _is_wnid(f.name) else "" for f in folders]
        label_of = {f: i for i, f in enumerate(folders)}
    else:
        names = list(class_names) if class_names is not None else list(class_wnids)
        wnids = list(class_wnids) if class_wnids is not None else [""] * len(names)
        if len(names) != len(wnids):
            raise ValueError(f"image_folder: {len(names)} class names but {len(wnids)} wnids")
        label_of, skipped = {}, []
        for f in folders:
            try:
                label_of[f] = class_index(f.name, names, wnids)
            except KeyError as e:
                if not skip_unknown:
                    raise ValueError(f"image_folder: class folder {f} is not a class in the given list: {e}") from None
                skipped.append(f.name)
        if skipped:
            print(f"image_folder: leaving out {len(skipped)} class folder(s) of {root} outside the {len(names)} "
                  f"classes wanted ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
            folders = [f for f in folders if f in label_of]
            if not folders:
                raise ValueError(f"image_folder: {root} has a folder for none of the {len(names)} classes wanted "
                                 f"({', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''})")
        missing = sorted(set(range(len(names))) - set(label_of.values()))
        if missing and not allow_missing:
            shown = ", ".join(repr(names[i]) for i in missing[:5])
            raise ValueError(f"image_folder: {root} has no folder for {len(missing)} of the {len(names)} classes "
                             f"({shown}{', ...' if len(missing) > 5 else ''}); pass allow_missing=True "
                             f"when the folder holds only some of them")
    paths, labels, others = [], [], []
    for f in folders:
        files = _image_files(f, others)
        if not files:
            print(f"image_folder: warning: class folder {f} holds no images", file=sys.stderr)
        paths += files
        labels += [label_of[f]] * len(files)
    if others:          # said, not dropped silently: a photo saved without its suffix is one of them
        print(f"image_folder: leaving out {len(others)} file(s) without an image suffix "
              f"({', '.join(p.name for p in others[:3])}{', ...' if len(others) > 3 else ''})", file=sys.stderr)
    if not paths:
        raise ValueError(f"image_folder: no image files (suffixes {sorted(IMAGE_SUFFIXES)}) under {root}/<class>/")
    return Dataset(paths, np.array(labels, dtype=np.int64), wnids, names, None, root)


def _is_wnid(s: str) -> bool:
    return len(s) == 9 and s[0] == "n" and s[1:].isdigit()


# ----------------------------------------------------------------------------- imagenet-val-dev

VAL_DEV_HEADER = ["file", "label", "wnid", "orig_width", "orig_height", "x0", "y0", "x1", "y1"]


def imagenet_val_dev(root) -> Dataset:
    """ILSVRC-2012 validation photos with boxes: root/images/*.JPEG and root/boxes.csv.

    boxes.csv has one row per box (header file,label,wnid,orig_width,orig_height,x0,y0,x1,y1);
    rows are grouped by file, so each image gets a (K, 4) float32 box array in the stored
    image's coordinates.  Labels index the ImageNet-1k standard order; images sorted by name.
    """
    root = Path(root)
    table = root / "boxes.csv"
    if not table.is_file():
        raise FileNotFoundError(f"imagenet_val_dev: missing {table} (header {','.join(VAL_DEV_HEADER)})")
    wnids = imagenet_wnids()
    label, boxes = {}, {}
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != VAL_DEV_HEADER:
            raise ValueError(f"{table}: expected header {','.join(VAL_DEV_HEADER)}, got {header}")
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                f, lab, w = row[0], int(row[1]), row[2]
            except (ValueError, IndexError):
                raise ValueError(f"{table}, line {n}: expected {len(VAL_DEV_HEADER)} fields "
                                 f"({','.join(VAL_DEV_HEADER)}), got {row}") from None
            box = _box_row(table, n, row[5:9])             # its own message for what is not a box
            if len(row) != len(VAL_DEV_HEADER) or not 0 <= lab < 1000 or wnids[lab] != w:
                raise ValueError(f"{table}, line {n}: label {lab} and wnid {w} disagree with the "
                                 f"ImageNet-1k order (or the row is malformed): {row}")
            if label.setdefault(f, lab) != lab:
                raise ValueError(f"{table}, line {n}: {f} has two labels, {label[f]} and {lab}")
            boxes.setdefault(f, []).append(box)
    files = sorted(label)
    return Dataset([root / "images" / f for f in files], np.array([label[f] for f in files], dtype=np.int64),
                   wnids, imagenet_class_names(), [np.stack(boxes[f]) for f in files], root)


# ----------------------------------------------------------------------------- detection

def open_dataset(path, root_split="train", **kw) -> Dataset:
    """Read a data set, detecting its layout from the folder's contents:

      Tiny-ImageNet root (wnids.txt + train/)        -> tiny_imagenet(path, root_split, **kw) (training
                                                        reads a root as "train", evaluation as "val")
      Tiny-ImageNet train/ or val/ folder            -> tiny_imagenet(path.parent, split, **kw)
      imagenet-val-dev (boxes.csv + images/)         -> imagenet_val_dev(path)
      ImageFolder (class sub-folders of images)      -> image_folder(path, **kw)
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"open_dataset: {p} is a file, expected a data set's folder" if p.exists() else
                                f"open_dataset: no folder {p}")
    if (p / "wnids.txt").is_file() and (p / root_split).is_dir():
        return tiny_imagenet(p, root_split, **kw)
    if p.name in ("train", "val") and (p.parent / "wnids.txt").is_file():
        return tiny_imagenet(p.parent, p.name, **kw)
    if (p / "boxes.csv").is_file() and (p / "images").is_dir():
        if kw:
            raise ValueError(f"open_dataset: {p} is imagenet-val-dev, which takes no options; got {sorted(kw)}")
        return imagenet_val_dev(p)
    folders = _class_folders(p)
    if any(_image_files(f) for f in folders):
        return image_folder(p, **kw)
    raise ValueError(
        f"open_dataset: {p} has none of the layouts we read; expected one of\n"
        f"  Tiny-ImageNet root: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/val_annotations.txt\n"
        f"  Tiny-ImageNet split folder: .../tiny-imagenet-200/train or .../val\n"
        f"  imagenet-val-dev: boxes.csv (file,label,wnid,...) and images/\n"
        f"  ImageFolder: <root>/<class>/<image>.jpg|png|...")


# ----------------------------------------------------------------------------- decoded cache

CACHE_VERSION = 1  # bump when the decoding (resize/crop rule) changes


def decode_one(path, size: int) -> np.ndarray:
    """Decode one file to (size, size, 3) uint8: shorter side resized to size, then centre crop."""
    img = load_image(path)
    if img.shape[:2] != (size, size):
        img = resize_shorter_centre_crop(img, size, size)
    return img


def cache_path(dataset: Dataset, size: int, cache_dir) -> Path:
    """Where decode_cache stores `dataset` at `size`: <cache_dir>/<root name>-<size>px-<N>-<hash>.npy,
    the hash over each file's path, size and modification time (a file replaced under the same name is
    decoded again)."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|".encode())
    for p in dataset.paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:                     # decoding names it as unreadable
            stamp = "missing"
        h.update(os.fsencode(f"{os.path.abspath(p)}|{stamp}\n"))     # a name not in UTF-8 too
    stem = Path(dataset.root).name or "dataset"
    return Path(cache_dir) / f"{stem}-{size}px-{len(dataset)}-{h.hexdigest()[:16]}.npy"


def decode_cache(dataset: Dataset, size: int, cache_dir, on_error: str = "skip", workers: int = 2,
                 chunk: int = 256, progress: bool = True):
    """Decode every image of `dataset` once into a uint8 .npy file and memory-map it.

    Returns (images, kept): images is an np.memmap (M, size, size, 3) uint8, RGB, read-only;
    kept is (M,) int64, the dataset indices of its rows (all N unless files were skipped),
    so labels are dataset.labels[kept].
    The file is keyed by a hash of (paths, file sizes and times, size) and written under a temporary
    name, then renamed, so a crashed run never leaves a half-written cache.  Unreadable files are named
    on stderr and skipped (on_error="skip") or raise ImageReadError (on_error="raise").
    Decoding uses `workers` threads (PIL releases the GIL); a progress line goes to stderr.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"decode_cache: on_error must be 'skip' or 'raise', got {on_error!r}")
    final = cache_path(dataset, size, cache_dir)
    kept_file = final.with_suffix(".kept.npy")
    if final.is_file() and kept_file.is_file():
        kept = np.load(kept_file)
        _check_skipped(dataset, kept, on_error, final)
        return np.load(final, mmap_mode="r"), kept

    final.parent.mkdir(parents=True, exist_ok=True)
    clean_once(final.parent)                # a decode (up to GBs) or its .kept.npy, killed half-way
    n = len(dataset)
    tmp = temp_path(final, ".npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    _reserve(tmp)
    ok = np.ones(n, dtype=bool)
    done, lock, failed, t0 = [0], threading.Lock(), threading.Event(), time.time()
    shown = Progress(enabled=progress)              # redrawn on a terminal, a line every 30 s in a log

    def work(lo: int) -> None:
        for i in range(lo, min(lo + chunk, n)):
            if failed.is_set():
                return
            try:
                out[i] = decode_one(dataset.paths[i], size)
            except ImageReadError as e:
                ok[i] = False
                if on_error == "raise":
                    failed.set()
                    raise
                print(f"\ndecode_cache: skipping unreadable file: {e}", file=sys.stderr)
        with lock:
            done[0] += min(chunk, n - lo)
            shown.update(f"decode_cache: {done[0]}/{n} images ({100 * done[0] // max(n, 1)}%) "
                         f"{time.time() - t0:.1f} s -> {final.name}")

    try:
        with held(tmp):         # while it is written, another process's remove_stale_temps leaves it
            futures = []
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                try:
                    for lo in range(0, n, chunk):
                        futures.append(pool.submit(work, lo))
                    for f in futures:
                        if f.exception() is not None:
                            raise f.exception()
                except BaseException:   # an unreadable file (on_error="raise"), or Ctrl-C (which can come while
                    failed.set()        # submit starts a thread the pool then does not wait for): every worker
                    for g in futures:   # stops at its next image, not at the end of the decode
                        g.cancel()
                    raise
            shown.done(f"decode_cache: {n} images in {time.time() - t0:.1f} s")
            kept = np.flatnonzero(ok).astype(np.int64)
            if len(kept) < n:
                print(f"decode_cache: skipped {n - len(kept)} unreadable file(s) of {n}", file=sys.stderr)
                out = _compact(out, tmp, kept)
            out.flush()
            del out
            _save_atomic(kept_file, kept)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.load(final, mmap_mode="r"), kept


def _compact(out: np.memmap, tmp: Path, kept: np.ndarray) -> np.memmap:
    """Copy the kept rows of `out` into a fresh temporary .npy that takes tmp's name."""
    tmp2 = tmp.with_name(tmp.name + ".kept.npy")
    small = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept),) + out.shape[1:])
    _reserve(tmp2)
    with held(tmp2):
        for lo in range(0, len(kept), 1024):
            small[lo:lo + 1024] = out[kept[lo:lo + 1024]]
        small.flush()
        del out, small
        os.replace(tmp2, tmp)
    return np.load(tmp, mmap_mode="r+")


def _reserve(path: Path) -> None:
    """Give the memory-mapped file ``path`` its disk blocks now: written through the map into a full
    disk, its pages could not be stored and the kernel sent SIGBUS (a "Bus error", no Python error and
    the temporary left); reserved first, a full disk is an OSError (ENOSPC) naming the file."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            os.unlink(path)
            raise OSError(e.errno, f"{e.strerror}: no room for the decode cache ({os.fstat(fd).st_size / 1e6:.1f} "
                                   f"MB) in {path.parent}; free some, or give --cache another folder") from None
        # EINVAL, EOPNOTSUPP: a file system that cannot reserve; written as before
    finally:
        os.close(fd)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array), suffix=".tmp.npy")


def _check_skipped(dataset: Dataset, kept: np.ndarray, on_error: str, cache: Path) -> None:
    if on_error == "raise" and len(kept) < len(dataset):
        missing = np.setdiff1d(np.arange(len(dataset)), kept)
        names = ", ".join(str(dataset.paths[i]) for i in missing[:5])
        raise ImageReadError(f"decode_cache: {len(missing)} file(s) were unreadable when {cache} was made: "
                             f"{names}{', ...' if len(missing) > 5 else ''}")


def mean_image(cache, chunk: int = 1024) -> np.ndarray:
    """Per-pixel mean of a (N, H, W, 3) uint8 image array, as (3, H, W) float32 (CHW, like the net input).

    Summed in float64 over chunks of `chunk` images, so a memory-mapped cache is read once
    without loading it whole.
    """
    if cache.ndim != 4 or cache.shape[3] != 3 or cache.dtype != np.uint8:
        raise ValueError(f"mean_image: expected uint8 images (N, H, W, 3), got shape {cache.shape} "
                         f"dtype {cache.dtype}")
    if len(cache) == 0:
        raise ValueError("mean_image: no images")
    total = np.zeros(cache.shape[1:], dtype=np.float64)
    for lo in range(0, len(cache), chunk):
        total += np.asarray(cache[lo:lo + chunk]).sum(axis=0, dtype=np.float64)
    return (total / len(cache)).transpose(2, 0, 1).astype(np.float32)
