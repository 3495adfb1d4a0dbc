"""ILSVRC-style evaluation of weakly supervised localisation, and Oxford-pets mask IoU.

Per image the network gives its top-5 classes (best first) and one saliency map per predicted class.
Each method turns (image, saliency map) into one box per guess:

  graphcut            `graphcut.segment` seeded by the class's saliency map (the paper, section 3.2)
  whole_image         the whole image, whatever the class
  centre_box          a centred box of one fixed size (fraction of the sides), whatever the class
  saliency_threshold  box around the largest component of saliency >= fraction * max

Errors (fractions of images, lower is better), with the ILSVRC criterion of `boxes.is_correct`:

  top1_cls_error / top5_cls_error   the true class is not the first / not among the five guesses
  top1_loc_error                    the first guess (class, box) is not right
  top5_loc_error                    none of the five guesses is right (the paper's 46.4% is this)
  gt_known_loc_error                the box made for the *true* class is not right: box quality alone.
                                    It uses `saliency_true` when a record has it, else the map of the
                                    true class when that class is among the five guesses; images with
                                    neither are left out (`gt_known_images` says how many counted).

A guess of the wrong class is wrong whatever its box, so only the box of the true class (when it is
among the guesses) is ever computed: one segmentation per image and method, not five.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import is_int
from .boxes import (box_area, centre_box, is_correct, saliency_threshold_box, whole_image_box)
from .graphcut import DEFAULT_PAIRWISE_WEIGHT, check_segment_params, segment

METHODS = ("graphcut", "whole_image", "centre_box", "saliency_threshold")
CENTRE_FRACTIONS = tuple(np.round(np.arange(0.30, 1.001, 0.05), 2))
# raw gradient maps are heavy-tailed (a few pixels hold the maximum): the best threshold on real maps
# lies below 5% of the maximum, hence the finer steps at the low end
THRESHOLD_FRACTIONS = (0.01, 0.02, 0.03, 0.04) + tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


class NoRecordsError(ValueError):
    """evaluate was given no record (a generator may end before its first: every photo unreadable)."""


@dataclass
class LocRecord:
    """One image of the evaluation.

    image          (H, W, 3) uint8 RGB
    gt_label       int, the true class
    gt_boxes       list of inclusive boxes (x0, y0, x1, y1) of the true class
    top5           the network's 5 predicted classes, best first
    saliency       (5, H, W) float, saliency[j] is the map for class top5[j]
    saliency_true  optional (H, W) float, the map for the true class (for gt_known_loc_error)
    name           optional, for reports
    """
    image: np.ndarray
    gt_label: int
    gt_boxes: list
    top5: list
    saliency: np.ndarray
    saliency_true: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        im, sal = self.image, self.saliency
        who = f"LocRecord {self.name!r}" if self.name else "LocRecord"
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            got = f"shape {im.shape}, dtype {im.dtype}" if isinstance(im, np.ndarray) else type(im).__name__
            raise ValueError(f"{who}: expected image (H, W, 3) uint8 RGB, got {got}")
        H, W, _ = im.shape
        if not all(is_int(c) for c in self.top5):
            raise ValueError(f"{who}: expected top5 = 5 integer class indices, got {list(self.top5)}")
        self.top5 = [int(c) for c in self.top5]
        if len(self.top5) != 5 or len(set(self.top5)) != 5:
            raise ValueError(f"{who}: expected top5 = 5 distinct class indices, got {self.top5}")
        if not isinstance(sal, np.ndarray) or sal.shape != (5, H, W):
            got = sal.shape if isinstance(sal, np.ndarray) else type(sal).__name__
            raise ValueError(f"{who}: expected saliency (5, H, W) = (5, {H}, {W}), one map per "
                             f"predicted class, got {got}")
        if self.saliency_true is not None and np.shape(self.saliency_true) != (H, W):
            raise ValueError(f"{who}: expected saliency_true (H, W) = ({H}, {W}), "
                             f"got {np.shape(self.saliency_true)}")
        if not is_int(self.gt_label):
            raise ValueError(f"{who}: expected gt_label an integer class index, got {self.gt_label!r}")
        self.gt_label = int(self.gt_label)
        self.gt_boxes = [tuple(b) for b in self.gt_boxes]
        if not self.gt_boxes or any(len(b) != 4 for b in self.gt_boxes):
            raise ValueError(f"{who}: expected at least one ground-truth box (x0, y0, x1, y1), "
                             f"got {self.gt_boxes}")


def evaluate(records, methods=METHODS, pairwise_weight: float | None = None,
             centre_fraction: float | None = None, threshold_fraction: float | None = None,
             segment_kwargs: dict | None = None, details: bool = False) -> dict:
    """Localisation and classification errors of each method over records (LocRecords: a list, or a
    generator that makes each as it is needed; each is judged once and let go).

    pairwise_weight and segment_kwargs go to `graphcut.segment` (the weight may come in either; None in
    both: segment's defaults, the paper's 95%/30% seed quantiles and gamma 10; the commands pass
    `network.tuned_segment_kwargs`, tuned per kind of map).  centre_fraction and
    threshold_fraction left as None are chosen on these same records as `choose_fractions` chooses
    them (the "best fixed size" / "threshold chosen on the dev photos" baselines) and reported.
    Returns {"images", "top1_cls_error", "top5_cls_error", "largest_true_box_fraction_median",
    "methods": {name: {...}}}, plus "per_image" (boxes and verdicts) when details is True.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"evaluate: unknown method(s) {unknown}; expected some of {METHODS}")
    segment_kwargs = dict(segment_kwargs or {})
    if (pairwise_weight is not None and "pairwise_weight" in segment_kwargs     # (NaN != NaN: not .get's default)
            and segment_kwargs["pairwise_weight"] != pairwise_weight):
        raise ValueError(f"evaluate: two pairwise weights, pairwise_weight={pairwise_weight} and "
                         f"segment_kwargs['pairwise_weight']={segment_kwargs['pairwise_weight']}; give one")
    if pairwise_weight is None:
        pairwise_weight = segment_kwargs.get("pairwise_weight", DEFAULT_PAIRWISE_WEIGHT)
    segment_kwargs["pairwise_weight"] = pairwise_weight
    check_segment_params(**segment_kwargs)
    # each record is judged once, at every fraction still to be chosen, and let go: records may be a
    # generator over 50,000 photos whose images and maps would not fit in memory together. What stays is
    # the verdicts: for a swept method an (F, 3) int8 array (top1, top5, gt_known; -1: not measurable), and
    # with details the boxes too
    # (a fraction given goes to the boxes as given: they check it)
    grids = {"centre_box": [float(f) for f in CENTRE_FRACTIONS] if centre_fraction is None else [centre_fraction],
             "saliency_threshold": [float(f) for f in THRESHOLD_FRACTIONS] if threshold_fraction is None
             else [threshold_fraction]}
    fixed = [m for m in methods if m not in grids]
    swept = [m for m in methods if m in grids]
    judged, box_fractions = [], []
    for r in records:
        one = _judge_image(r, fixed, None, None, segment_kwargs)
        if not details:
            one.update({m: {k: one[m][k] for k in (*FLAGS, "fallbacks")} for m in fixed})
        for m in swept:
            one[m], at = _verdicts_at(r, m, grids[m])
            if details:
                one[m, "boxes"] = at
        judged.append(one)
        box_fractions.append(_largest_box_fraction(r))
    if not judged:
        raise NoRecordsError("evaluate: expected at least one LocRecord, got none")
    pick = {m: _best_index(_errors(np.stack([p[m] for p in judged]))) for m in swept}

    def verdicts(p, m):
        if m not in swept:
            return p[m]
        if details:
            return p[m, "boxes"][pick[m]]
        return {k: (None if v < 0 else int(v)) for k, v in zip(FLAGS, p[m][pick[m]])}
    per_image = [dict({k: p[k] for k in ("name", "top1_cls", "top5_cls")}, **{m: verdicts(p, m) for m in methods})
                 for p in judged]
    given = {"centre_box": centre_fraction, "saliency_threshold": threshold_fraction}
    params = {"graphcut": {"pairwise_weight": float(pairwise_weight)},
              "whole_image": {}}
    params.update({m: {"fraction": grids[m][pick[m]]} for m in swept})
    fracs = [f for f in box_fractions if f is not None]
    out = {"images": len(judged),
           "top1_cls_error": _mean_error(p["top1_cls"] for p in per_image),
           "top5_cls_error": _mean_error(p["top5_cls"] for p in per_image),
           # how much of a photo the object takes (what the centred box of a fixed size bets on)
           "largest_true_box_fraction_median": float(np.median(fracs)) if fracs else None,
           "methods": {}}
    for m in methods:
        known = [p[m]["gt_known"] for p in per_image if p[m]["gt_known"] is not None]
        res = {"top1_loc_error": _mean_error(p[m]["top1"] for p in per_image),
               "top5_loc_error": _mean_error(p[m]["top5"] for p in per_image),
               "gt_known_loc_error": _mean_error(known) if known else None,
               "gt_known_images": len(known)}
        res.update(params[m])
        if m in swept and given[m] is None:
            res["fraction_chosen_on_these_images"] = True
        if m == "graphcut":
            res["fallbacks"] = sum(p[m]["fallbacks"] for p in per_image)
        out["methods"][m] = res
    if details:
        out["per_image"] = per_image
    return out


FLAGS = ("top1", "top5", "gt_known")
CRITERIA = {"top1_loc_error": 0, "top5_loc_error": 1, "gt_known_loc_error": 2}     # a column of the flags


def _verdicts_at(r, method, grid):
    """Record r judged by ``method`` (centre_box or saliency_threshold) at each fraction of ``grid``:
    (F, 3) int8 flags (top1, top5, gt_known: 1 wrong, 0 right, -1 not measurable), and the verdicts."""
    at = [_judge_image(r, (method,), f, f, None)[method] for f in grid]
    return np.array([[-1 if v[k] is None else v[k] for k in FLAGS] for v in at], np.int8), at


def _errors(flags, criterion="top5_loc_error"):
    """The error at each fraction from the records' stacked flags (N, F, 3): the mean of the measurable
    verdicts of ``criterion``, inf where none is."""
    col = flags[:, :, CRITERIA[criterion]]
    return [_mean_error([int(v) for v in col[:, i] if v >= 0]) if (col[:, i] >= 0).any() else float("inf")
            for i in range(col.shape[1])]


def _best_index(errors):
    """The index of the lowest error (ties: the first)."""
    return min(range(len(errors)), key=errors.__getitem__)


def _largest_box_fraction(r):
    """(area of the largest true box) / (image area) of a record; None without boxes."""
    return max(box_area(b) for b in r.gt_boxes) / (r.image.shape[0] * r.image.shape[1]) if len(r.gt_boxes) else None


def choose_fractions(records, which=("centre_box", "saliency_threshold"),
                     centre_fractions=CENTRE_FRACTIONS, threshold_fractions=THRESHOLD_FRACTIONS,
                     criterion: str = "top5_loc_error") -> dict:
    """Pick the centre-box fraction and the saliency-threshold fraction with the lowest `criterion`
    on these records (ties: the first in the list).  Returns {"centre_box": f, "saliency_threshold": f,
    "sweep": {method: [(fraction, error), ...]}} for the methods in `which`."""
    records = list(records)
    if criterion not in CRITERIA:
        raise ValueError(f"choose_fractions: expected criterion top1_loc_error, top5_loc_error or "
                         f"gt_known_loc_error, got {criterion!r}")
    if not records:
        raise ValueError("choose_fractions: expected at least one LocRecord, got none")
    grids = {"centre_box": centre_fractions, "saliency_threshold": threshold_fractions}
    out = {"sweep": {}}
    for method in which:
        grid = [float(f) for f in grids[method]]
        errors = _errors(np.stack([_verdicts_at(r, method, grid)[0] for r in records]), criterion)
        out["sweep"][method] = list(zip(grid, errors))
        out[method] = grid[_best_index(errors)]
    return out


# --------------------------------------------------------------------------------------------- pets

def mask_iou_trimap(mask: np.ndarray, trimap: np.ndarray) -> float:
    """IoU of a predicted mask (H, W) bool with the pet of an Oxford-IIIT trimap (H, W):
    1 = pet, 2 = background, 3 = boundary/unclear (left out of both intersection and union).
    1.0 when neither the mask nor the trimap has any pet pixel outside the boundary band."""
    mask, trimap = np.asarray(mask), np.asarray(trimap)
    if mask.shape != trimap.shape or mask.ndim != 2:
        raise ValueError(f"mask_iou_trimap: expected mask and trimap of the same (H, W) shape, "
                         f"got {mask.shape} and {trimap.shape}")
    if not np.isin(trimap, (1, 2, 3)).all():
        raise ValueError(f"mask_iou_trimap: expected trimap values 1 (pet), 2 (background), "
                         f"3 (boundary), got {np.unique(trimap)[:10]}")
    valid = trimap != 3
    pet = trimap == 1
    m = mask.astype(bool) & valid
    union = (m | pet).sum()
    return 1.0 if union == 0 else float((m & pet).sum() / union)


@dataclass
class PetImage:
    """One Oxford-IIIT Pet photo: image (H, W, 3) uint8 RGB, trimap (H, W) uint8 in {1, 2, 3}."""
    name: str
    image: np.ndarray
    trimap: np.ndarray


def oxford_pet_names(root) -> list:
    """The names of `root`'s photo/trimap pairs, images/<name>.jpg and trimaps/<name>.png, sorted."""
    root = Path(root)
    images, trimaps = root / "images", root / "trimaps"
    if not root.is_dir():
        raise FileNotFoundError(f"load_oxford_pets: no such folder: {root} (expected one with images/ and trimaps/)")
    if not images.is_dir() or not trimaps.is_dir():
        raise FileNotFoundError(f"load_oxford_pets: expected folders images/ and trimaps/ under {root}")
    names = sorted(p.stem for p in images.glob("*.jpg") if (trimaps / f"{p.stem}.png").exists())
    if not names:
        raise FileNotFoundError(f"load_oxford_pets: no images/<name>.jpg with a trimaps/<name>.png in {root}")
    return names


def load_oxford_pets(root, limit: int | None = None, skipped: list | None = None, names=None) -> list:
    """Read `root`/images/<name>.jpg and `root`/trimaps/<name>.png (e.g. root =
    ../shared/data/oxford-pets-dev) -> list of PetImage, sorted by name, the first `limit` only (or
    those of `names`, from ``oxford_pet_names``). A pair that cannot be decoded raises ValueError
    naming it, or, given a list `skipped`, is appended to it as "file: reason" and left out."""
    names = oxford_pet_names(root)[:limit] if names is None else list(names)
    out = []
    for name in names:
        try:
            out.append(read_pet(root, name))
        except PetReadError as e:
            if skipped is None:
                raise ValueError(f"load_oxford_pets: cannot read {e}") from None
            skipped.append(str(e))
    return out


class PetReadError(ValueError):
    """A pet photo or trimap that cannot be decoded: "file: reason"."""


def read_pet(root, name, decode=True) -> PetImage | None:
    """`root`/images/<name>.jpg and `root`/trimaps/<name>.png as a PetImage; PetReadError ("file: reason")
    when one cannot be read, ValueError when their sizes differ. decode=False reads only the two headers
    (milliseconds) for those checks and returns None: a command checks every pair so before its work."""
    from PIL import Image

    images, trimaps = Path(root) / "images", Path(root) / "trimaps"
    path = images / f"{name}.jpg"
    try:
        with Image.open(path) as im:
            size = im.size
            image = np.asarray(im.convert("RGB")) if decode else None
        path = trimaps / f"{name}.png"
        with Image.open(path) as tm:
            bands = len(tm.getbands())
            tshape = tm.size[::-1] + ((bands,) if bands > 1 else ())      # (H, W), or (H, W, C): not a trimap
            trimap = np.asarray(tm) if decode else None
    except OSError as e:                 # PIL's UnidentifiedImageError is one too
        raise PetReadError(f"{path}: {e}") from None
    if tshape != size[::-1]:
        raise ValueError(f"load_oxford_pets: {name}: trimap {tshape} does not match image {size[::-1]}")
    return PetImage(name, image, trimap) if decode else None


# --------------------------------------------------------------------------------------------- helpers

def _judge_image(r: LocRecord, methods, centre_fraction, threshold_fraction, segment_kwargs) -> dict:
    """Verdicts for one record: {"top1_cls", "top5_cls", method: {"top1", "top5", "gt_known", "box",
    "gt_known_box", "fallbacks"}} with 1 = error, 0 = right, None = not measurable."""
    H, W, _ = r.image.shape
    j = r.top5.index(r.gt_label) if r.gt_label in r.top5 else None
    true_map = r.saliency_true if r.saliency_true is not None else (r.saliency[j] if j is not None else None)
    same_map = r.saliency_true is None
    out = {"name": r.name, "top1_cls": int(j != 0), "top5_cls": int(j is None)}
    for m in methods:
        fallbacks = 0

        def box_of(sal):
            nonlocal fallbacks
            if m == "whole_image":
                return whole_image_box(H, W)
            if m == "centre_box":
                return centre_box(H, W, centre_fraction)
            if m == "saliency_threshold":
                return saliency_threshold_box(np.asarray(sal), threshold_fraction)
            seg = segment(r.image, np.asarray(sal), **segment_kwargs)
            fallbacks += int(not seg.ok)
            return seg.box

        class_free = m in ("whole_image", "centre_box")
        box = box_of(r.saliency[j]) if j is not None else None
        if class_free:
            known_box = box if box is not None else box_of(None)
        elif true_map is None:
            known_box = None
        else:
            known_box = box if (same_map and box is not None) else box_of(true_map)
        right = box is not None and is_correct(r.gt_label, box, r.gt_label, r.gt_boxes)
        out[m] = {"top1": int(not (right and j == 0)), "top5": int(not right),
                  "gt_known": None if known_box is None else
                  int(not is_correct(r.gt_label, known_box, r.gt_label, r.gt_boxes)),
                  "box": box, "gt_known_box": known_box, "fallbacks": fallbacks}
    return out


def _mean_error(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")
