"""Read a PyTorch state dict (``torch.save(model.state_dict(), path)``) into NumPy, without PyTorch.

Two on-disk formats exist; both are a pickle whose tensors point at separately stored raw bytes.

Zip format (``torch.save`` since PyTorch 1.6)::

    <archive>/data.pkl      the pickled object
    <archive>/data/<key>    raw little-endian bytes of storage <key>
    <archive>/byteorder     "little" (absent in older files, which are little-endian)

Legacy format (before 1.6; e.g. the EfficientNet-Lite0 file) — one stream of consecutive pickles::

    pickle(magic number 0x1950a86a20f9469cfc6c)  pickle(protocol version 1001)
    pickle(sys_info dict: little_endian, type_sizes)
    pickle(the object)                           pickle(list of storage keys)
    per key, in that order: int64 element count, then count * itemsize raw bytes

Inside the object pickle a tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)``; the storage is a *persistent id* tuple::

    zip:    ('storage', torch.FloatStorage, key, location, numel)
    legacy: ('storage', torch.FloatStorage, key, location, numel, view_metadata or None)

Unpickling runs code named in the file, so ``find_class`` allows only the tensor-rebuilding functions,
the storage types and ``collections.OrderedDict``; anything else raises ``UnsafePickleError`` before it
is called. Tensors come back as C-contiguous NumPy copies (``as_strided`` over the storage, then copy).
"""
from __future__ import annotations

import collections
import io
import math
import operator
import pickle
import pickletools
import reprlib
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["TorchFileFormatError", "UnsafePickleError", "load_torch_state_dict", "restricted_loads"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: an expanded tensor (stride 0) may repeat its storage's elements at most this many times over
MAX_EXPANSION = 1024
#: sizes, strides and offsets (in elements) from 2**40 on are refused (a trillion: no real tensor's)
MAX_INDEX = 2 ** 40
LEGACY_PROTOCOL = 1001

# storage class name -> NumPy dtype of one element (little-endian). BFloat16 is read as its raw uint16
# bits and widened to float32 (exactly) when the tensor is built, since NumPy has no bfloat16.
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global that a state dict does not need (it was refused, not called)."""


class TorchFileFormatError(ValueError):
    """The file is neither a zip-format nor a legacy-format PyTorch file, or is damaged."""


# ----------------------------------------------------------------------- what the pickle may build
# Everything handed to the pickle is immutable (NamedTuples, a built-in type) or made fresh for each
# lookup (the rebuild lambdas), so a hostile BUILD opcode, which sets attributes, cannot alter the
# reader. The storage bytes live in the loader's own dict, out of the pickle's reach.

class _StorageType(NamedTuple):
    """Stands in for torch.FloatStorage etc.; the element dtype is looked up by name in STORAGE_DTYPES."""
    name: str


class _StorageRef(NamedTuple):
    """What persistent_load returns for a storage: elements [offset, offset + numel) of storage ``key``
    (offset is non-zero only for the views of the legacy format)."""
    key: str
    type_name: str
    offset: int
    numel: int


class _TensorRef(NamedTuple):
    """A tensor whose storage bytes may not be read yet (legacy files store them after the pickle)."""
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple

    def to_numpy(self, storages: dict[str, np.ndarray]) -> np.ndarray:
        """C-contiguous copy of the strided view; ``storages`` maps key -> flat element array."""
        ref = self.storage
        if ref.key not in storages:
            raise TorchFileFormatError(f"storage {ref.key!r} is used by a tensor but its bytes were never stored")
        flat = storages[ref.key][ref.offset:ref.offset + ref.numel]
        size, stride, offset = self.size, self.stride, self.offset
        if 0 in size:
            out = np.zeros(size, dtype=flat.dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= len(flat):
                raise TorchFileFormatError(
                    f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} of "
                    f"storage {ref.key!r}, which holds {len(flat)} elements")
            view = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False)
            out = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")
        if ref.type_name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)  # bfloat16 = the top half of a float32
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2: a tensor is a strided view (size, stride, element offset) of a storage."""
    if not isinstance(storage, _StorageRef):
        raise TorchFileFormatError(f"_rebuild_tensor_v2 expected a storage, got {type(storage).__name__}")
    try:
        size, stride = tuple(map(operator.index, size)), tuple(map(operator.index, stride))
        storage_offset = operator.index(storage_offset)
    except TypeError:
        raise TorchFileFormatError(f"tensor on storage {storage.key!r}: size {_show(size)}, stride {_show(stride)} "
                                   f"and offset {_show(storage_offset)} should be integers") from None
    if len(size) != len(stride) or len(size) > 64 or min(size + stride + (storage_offset,)) < 0:
        raise TorchFileFormatError(f"tensor on storage {storage.key!r}: bad size / stride / offset "
                                   f"({len(size)} and {len(stride)} dimensions)")
    if max(size + stride + (storage_offset,)) >= MAX_INDEX:
        # a 0 elsewhere in size, or a dimension of 1, keeps such a number out of the checks below, and
        # NumPy then fails on it (np.zeros, as_strided) instead of this error
        raise TorchFileFormatError(f"tensor on storage {storage.key!r}: size {_show(size)}, stride {_show(stride)}, "
                                   f"offset {storage_offset}: a number of 2**40 or more")
    if 0 not in size and math.prod(size) > MAX_EXPANSION * max(storage.numel, 1):
        # stride 0 repeats elements (torch's expand), and the copy made here would then have no bound
        raise TorchFileFormatError(f"tensor on storage {storage.key!r}: {math.prod(size)} elements from a storage "
                                   f"of {storage.numel}, more than {MAX_EXPANSION} times as many")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data  # an nn.Parameter is its tensor, for our purposes


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _fresh(fn):
    return lambda *args: fn(*args)


# (module, name) -> a factory for what ``find_class`` hands the pickle (a fresh object for each lookup).
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _fresh(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: _fresh(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _fresh(_rebuild_parameter_with_state),
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # a built-in type: immutable
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in STORAGE_DTYPES},
    ("torch.storage", "UntypedStorage"): lambda: _StorageType("UntypedStorage"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose globals come only from ALLOWED_GLOBALS (never imported)."""

    def __init__(self, file, persistent_load=None):
        super().__init__(file)
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            factory = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load the global {module}.{name}: a state-dict file needs only "
                f"torch._utils._rebuild_tensor_v2/_rebuild_parameter, torch.*Storage and "
                f"collections.OrderedDict (for a whole pickled model, save model.state_dict() instead)") from None
        return factory()

    def persistent_load(self, pid):
        if self._persistent is None:
            raise TorchFileFormatError(f"unexpected persistent id {_show(pid)} (no storages in this context)")
        return self._persistent(pid)


def restricted_loads(data: bytes, persistent_load=None):
    """pickle.loads with the restricted ``find_class`` (raises UnsafePickleError for any other global)."""
    return _load_pickle(io.BytesIO(data), "the pickle", "restricted_loads", persistent_load)


def _prescan(file, what: str, label: str):
    """Walk the next pickle's opcodes without running them (pickletools), then rewind: a memo index
    beyond what the pickle has stored is refused (the unpickler would grow its memo table to it: 9 bytes
    can ask for gigabytes)."""
    start, ops = file.tell(), 0
    try:
        for op, arg, _ in pickletools.genops(file):
            ops += 1
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") and int(arg) > ops:
                raise TorchFileFormatError(f"{label}: cannot read {what}: memo index {int(arg)} after {ops} "
                                           "opcodes (a damaged or hostile pickle)")
    except TorchFileFormatError:
        raise
    except Exception as e:                   # truncated, unknown opcode, a length past the end, ...
        raise TorchFileFormatError(f"{label}: cannot read {what}: {type(e).__name__}: {_show(str(e))}") from None
    file.seek(start)


def _load_pickle(file, what: str, label: str, persistent_load=None):
    """The next pickle in ``file``, scanned (``_prescan``) and then unpickled with the restricted
    ``find_class``; any failure but a refused global is a TorchFileFormatError naming ``what``; every
    error names ``label`` (the file)."""
    _prescan(file, what, label)
    try:
        return _RestrictedUnpickler(file, persistent_load).load()
    except (UnsafePickleError, TorchFileFormatError) as e:
        if str(e).startswith(f"{label}: "):
            raise
        raise type(e)(f"{label}: {e}") from None    # raised by find_class or a rebuild, which know no file
    except Exception as e:  # EOFError, UnpicklingError, TypeError from a malformed REDUCE, ...
        raise TorchFileFormatError(f"{label}: cannot read {what}: {type(e).__name__}: {_show(str(e))}") from None


def _storage_dtype(obj, pid) -> np.dtype:
    if not isinstance(obj, _StorageType) or obj.name not in STORAGE_DTYPES:
        raise TorchFileFormatError(f"persistent id {_show(pid)}: expected a torch.*Storage type")
    return np.dtype(STORAGE_DTYPES[obj.name])


def _show(x) -> str:
    """A bounded repr of something the file built, for an error message (reprlib cuts long and deep
    values; a value even that cannot show, e.g. a 5,000-digit int, is named by its type)."""
    try:
        return reprlib.repr(x)
    except Exception:
        return f"<a {type(x).__name__}>"


def _text(x) -> str:
    return x.decode("ascii", errors="backslashreplace") if isinstance(x, bytes) else str(x)


def _check_persistent_id(pid, length: int, label: str):
    if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise TorchFileFormatError(
            f"{label}: persistent id of kind {_show(kind)}; only tensor storages are supported (was a whole "
            f"nn.Module pickled? save model.state_dict() instead)")
    if len(pid) != length:
        raise TorchFileFormatError(f"{label}: storage persistent id {_show(pid)}: expected {length} fields")


# ----------------------------------------------------------------------------------------- formats

def _check_stored(info: zipfile.ZipInfo, label: str):
    """torch.save stores its members uncompressed; a compressed one (gigabytes of zeros in a few MB)
    is refused before it is inflated."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise TorchFileFormatError(f"{label}: {info.filename} is compressed; torch.save stores every member "
                                   "uncompressed (a damaged or hostile file)")


def _load_zip(path: Path):
    label = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkl) != 1:
            raise TorchFileFormatError(f"{label}: a zip file, but not a PyTorch one: expected exactly one "
                                       f"<archive>/data.pkl, found {len(pkl)} among {names[:5]}")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise TorchFileFormatError(f"{label}: only little-endian files are supported, "
                                       f"{prefix}byteorder says {zf.read(prefix + 'byteorder')!r}")
        storages: dict[str, np.ndarray] = {}

        def persistent_load(pid):  # ('storage', torch.FloatStorage, key, location, numel)
            _check_persistent_id(pid, 5, label)
            _, stype, key, _location, numel = pid
            dtype, key, numel = _storage_dtype(stype, pid), _text(key), operator.index(numel)
            if key not in storages:
                member = f"{prefix}data/{key}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise TorchFileFormatError(f"{label}: storage {key!r} has no member {member}") from None
                if info.file_size != numel * dtype.itemsize:     # checked before anything is read
                    raise TorchFileFormatError(
                        f"{label}: {member} holds {info.file_size} bytes, expected {numel} x {dtype.itemsize}-byte "
                        f"{stype.name} elements = {numel * dtype.itemsize}")
                _check_stored(info, label)
                storages[key] = np.frombuffer(zf.read(member), dtype=dtype)
            if storages[key].dtype != dtype:
                raise TorchFileFormatError(f"{label}: storage {key!r} used as both {storages[key].dtype} and {dtype}")
            return _StorageRef(key, stype.name, 0, numel)

        _check_stored(zf.getinfo(pkl[0]), label)
        return _load_pickle(io.BytesIO(zf.read(pkl[0])), pkl[0], label, persistent_load), storages


def _load_legacy(path: Path, buf: bytes):
    label = str(path)
    f = io.BytesIO(buf)
    magic = _load_pickle(f, "the magic number", label)
    if magic != LEGACY_MAGIC:
        raise TorchFileFormatError(f"{label}: expected the legacy magic number {LEGACY_MAGIC:#x}, got {_show(magic)}")
    version = _load_pickle(f, "the protocol version", label)
    if version != LEGACY_PROTOCOL:
        raise TorchFileFormatError(f"{label}: expected legacy protocol version {LEGACY_PROTOCOL}, got {_show(version)}")
    sys_info = _load_pickle(f, "the sys_info dict", label)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchFileFormatError(f"{label}: only little-endian files are supported (sys_info {_show(sys_info)})")

    declared: dict[str, tuple[np.dtype, int]] = {}  # storage key -> (dtype, numel) from the pickle

    def persistent_load(pid):  # ('storage', torch.FloatStorage, key, location, numel, view_metadata)
        _check_persistent_id(pid, 6, label)
        _, stype, key, _location, numel, view = pid
        dtype, key, numel = _storage_dtype(stype, pid), _text(key), operator.index(numel)
        if numel < 0:
            raise TorchFileFormatError(f"{label}: storage {key!r} declared with {numel} elements")
        if declared.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise TorchFileFormatError(
                f"{label}: storage {key!r} declared as both {declared[key]} and {(dtype, numel)}")
        if view is None:
            return _StorageRef(key, stype.name, 0, numel)
        _view_key, view_offset, view_numel = view  # a slice of storage `key`
        view_offset, view_numel = operator.index(view_offset), operator.index(view_numel)
        if not (0 <= view_offset and 0 <= view_numel and view_offset + view_numel <= numel):
            raise TorchFileFormatError(f"{label}: a view of elements [{view_offset}, {view_offset + view_numel}) "
                                       f"of storage {key!r}, which has {numel}")
        return _StorageRef(key, stype.name, view_offset, view_numel)

    obj = _load_pickle(f, "the object pickle", label, persistent_load)
    keys = _load_pickle(f, "the list of storage keys", label)
    if not isinstance(keys, list):
        raise TorchFileFormatError(f"{label}: expected the list of storage keys after the object, got {_show(keys)}")

    storages: dict[str, np.ndarray] = {}
    offset = f.tell()
    for key in map(_text, keys):  # each: int64 element count, then the raw elements
        if key not in declared:
            raise TorchFileFormatError(f"{label}: storage key {key!r} listed at the end was never referenced")
        dtype, numel = declared[key]
        if offset + 8 > len(buf):
            raise TorchFileFormatError(f"{label}: truncated: expected the int64 element count of storage "
                                       f"{key!r} at byte offset {offset}, file ends at {len(buf)}")
        count = int(np.frombuffer(buf, "<i8", 1, offset)[0])
        if count != numel:
            raise TorchFileFormatError(f"{label}: storage {key!r} at byte offset {offset}: element count "
                                       f"{count}, but the pickle declared {numel}")
        offset += 8
        if offset + count * dtype.itemsize > len(buf):
            raise TorchFileFormatError(f"{label}: truncated: storage {key!r} needs {count * dtype.itemsize} "
                                       f"bytes at byte offset {offset}, file ends at {len(buf)}")
        storages[key] = np.frombuffer(buf, dtype, count, offset)
        offset += count * dtype.itemsize
    return obj, storages


def _resolve(state: dict, storages: dict[str, np.ndarray], label: str) -> dict:
    """name -> NumPy array for a dict of tensor references; anything else in it is refused before any
    tensor is copied. A reference that appears under several names is copied once (a pickle can point
    at one object many times: copying at each would have no bound)."""
    for key, value in state.items():
        if not isinstance(value, _TensorRef):
            raise TorchFileFormatError(f"{label}: expected a dict of tensors; {_show(key)} holds a "
                                       f"{type(value).__name__}")
    distinct = {id(ref): ref for ref in state.values()}
    stored = sum(a.size for a in storages.values())
    wanted = sum(math.prod(ref.size) for ref in distinct.values())
    if wanted > MAX_EXPANSION * max(stored, 1):       # many tensors over the same stored bytes
        raise TorchFileFormatError(f"{label}: its tensors hold {wanted} elements, more than {MAX_EXPANSION} times "
                                   f"the {stored} stored")
    arrays = {i: ref.to_numpy(storages) for i, ref in distinct.items()}
    return {key: arrays[id(ref)] for key, ref in state.items()}


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict as ``name -> np.ndarray`` (conv weights OIHW, linear (out, in)).

    Reads both the zip format and the legacy pre-1.6 format; a top-level ``{'state_dict': ...}`` or
    ``{'model': ...}`` checkpoint is unwrapped. Raises UnsafePickleError for a pickle naming any
    global beyond tensor rebuilding, TorchFileFormatError for a file that is neither format or is damaged.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj, storages = _load_zip(path)
    else:
        buf = path.read_bytes()
        if not buf.startswith(b"\x80"):  # a binary pickle starts with the PROTO opcode
            raise TorchFileFormatError(
                f"{path}: not a PyTorch file: expected a zip archive with <archive>/data.pkl (torch.save "
                f"since 1.6) or a legacy pickle stream starting with the PROTO opcode 0x80 and the magic "
                f"number {LEGACY_MAGIC:#x}; the file starts with {buf[:8]!r}")
        obj, storages = _load_legacy(path, buf)

    state = obj
    if isinstance(state, dict):                    # a checkpoint {"state_dict": {...}, "epoch": ...}
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise TorchFileFormatError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return _resolve(state, storages, str(path))
