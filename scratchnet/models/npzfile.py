"""Reading and writing the project's .npz files (networks, checkpoints) without trusting them.

``atomic_savez`` writes through a temporary file and a rename, so a crash never leaves half a file.
The readers refuse, naming the file and what was expected, anything np.load would mishandle or hand
back silently: a file that is not a zip archive, a member stored twice or with an odd compression, a
member that is not an .npy array or cannot be read, parameters that are not finite float32/float64.
``NetworkFileError`` is load_network's error; the checkpoint reader passes its own.
"""
from __future__ import annotations

import collections
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..tempfiles import atomic_write


class NetworkFileError(ValueError):
    """A file that load_network cannot use (not an .npz, not a network, damaged, or parameters it refuses);
    the message names the file and what is wrong. A missing file is a FileNotFoundError."""


def atomic_savez(path, arrays):
    """np.savez to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save to {path}: it is a folder; give a file name, e.g. "
                                f"{path / 'model.npz'}")
    atomic_write(path, lambda fh: np.savez(fh, **arrays), suffix=".tmp.npz")


def open_npz(path, kind, writer, error=ValueError):
    """np.load(path) of an existing file that should be an .npz written by ``writer``; ``error``
    (naming the file, "not a scratchnet {kind}") when it cannot be read or is not a zip archive,
    instead of NumPy's advice to unpickle it. The caller closes the result (a with block)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as e:
        raise error(f"cannot read {kind} file {path}: {e.strerror or e}") from None
    if not head.startswith(b"PK\x03\x04"):             # every .npz is a zip archive
        what = "a single .npy array" if head == b"\x93NUMPY" else f"a file starting with {head!r}"
        raise error(f"{path} is not a scratchnet {kind}: expected an .npz archive as {writer} writes "
                    f"(a zip file), got {what}")
    try:
        with zipfile.ZipFile(path) as z:        # np.load would leave its file open on a damaged archive
            infos = z.infolist()
    except Exception as e:
        raise error(f"{path} is not a scratchnet {kind} (.npz expected): {e}") from None
    twice = sorted(name for name, n in collections.Counter(i.filename for i in infos).items() if n > 1)
    if twice:                                   # zipfile would read the last one without a word
        raise error(f"{path}: the archive holds {twice[0]} more than once (a damaged or altered file); "
                    f"expected each member once, as {writer} writes")
    odd = [i for i in infos if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]
    if odd:
        raise error(f"{path}: member {odd[0].filename} uses zip compression method {odd[0].compress_type}; "
                    f"expected stored or deflated, as NumPy writes (a damaged file?)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise error(f"{path} is not a scratchnet {kind} (.npz expected): {e}") from None


#: what reading a damaged or hostile .npz member can raise: a flipped byte (zip CRC), a cut file (EOF,
#: zlib), a cut .npy header (tokenize), an altered zip method (NotImplementedError), absurd sizes or
#: nesting (the last three)
NPZ_DAMAGE = (KeyError, TypeError, ValueError, AttributeError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
              tokenize.TokenError, NotImplementedError, MemoryError, OverflowError, RecursionError)


def npz_member(z, name, path, error=None):
    """z[name] as an array, or ``error`` (default NetworkFileError) naming the file: for a member that
    cannot be read, or that is not an .npy array (np.load hands such a member back as bytes)."""
    error = error or NetworkFileError
    try:
        arr = z[name]
    except NPZ_DAMAGE as e:
        raise error(f"{path}: {name} cannot be read (a damaged file?): {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise error(f"{path}: {name} is not an .npy array (a damaged file?)")
    return arr


def check_values(arr, what, path, error=None):
    """``error`` (default NetworkFileError) unless arr is float32 or float64 and finite."""
    error = error or NetworkFileError
    if arr.dtype not in (np.float32, np.float64):
        raise error(f"{path}: {what} has dtype {arr.dtype}, expected float32 or float64")
    if not np.isfinite(arr).all():
        raise error(f"{path}: {what} holds NaN or Inf values (saved from a diverged run?)")


def checked_npz_array(z, name, shape, path, trailing_ok=False, error=None):
    """z[name] if it is a finite float32/float64 array of ``shape`` (``trailing_ok``: of that leading shape,
    any trailing ones: a mean image is (C,) or (C, H, W)), else ``error`` (default NetworkFileError)
    saying what was expected."""
    error = error or NetworkFileError
    arr = npz_member(z, name, path, error)
    fits = arr.shape[:len(shape)] == tuple(shape) if trailing_ok else arr.shape == tuple(shape)
    if not fits or arr.dtype not in (np.float32, np.float64) or not np.isfinite(arr).all():
        raise error(f"{path}: {name} must be a finite float array of shape {tuple(shape)}"
                    f"{' + (H, W)' if trailing_ok else ''}, got {arr.dtype} {arr.shape}")
    return arr
