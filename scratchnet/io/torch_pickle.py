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
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TorchFileFormatError", "UnsafePickleError", "load_torch_state_dict", "restricted_loads"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# storage class name -> NumPy dtype of one element (little-endian). BFloat16 is read as its raw uint16
# bits and widened to float32 (exactly) when the tensor is built, since NumPy has no bfloat16.
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a state dict does not need (it was refused, not called)."""


class TorchFileFormatError(ValueError):
    """The file is neither a zip-format nor a legacy-format PyTorch file, or is damaged."""


# ----------------------------------------------------------------------- what the pickle may build

@dataclass(frozen=True)
class _StorageType:
    """Stands in for torch.FloatStorage etc.: only its element dtype matters."""
    name: str
    dtype: str


@dataclass
class _Storage:
    """A flat run of elements; ``data`` is filled in when its bytes are read (legacy: after the pickle)."""
    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None
    root: _Storage | None = None  # legacy views: a slice [offset, offset + numel) of another storage
    root_offset: int = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.root_offset:self.root_offset + self.numel]
        if self.data is None:
            raise TorchFileFormatError(f"storage {self.key!r} is used by a tensor but its bytes were never stored")
        return self.data


@dataclass
class _TensorRef:
    """A tensor whose storage may not be read yet: (storage, element offset, size, stride)."""
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array()
        size, stride, offset = tuple(map(int, self.size)), tuple(map(int, self.stride)), int(self.offset)
        if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
            raise TorchFileFormatError(f"tensor on storage {self.storage.key!r}: bad size {size} / stride "
                                       f"{stride} / offset {offset}")
        if 0 in size:
            out = np.zeros(size, dtype=flat.dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= len(flat):
                raise TorchFileFormatError(
                    f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} of "
                    f"storage {self.storage.key!r}, which holds {len(flat)} elements")
            view = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False)
            out = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")
        if self.storage.type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise TorchFileFormatError(f"_rebuild_tensor_v2 expected a storage, got {type(storage).__name__}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data  # an nn.Parameter is its tensor, for our purposes


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", "u1"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose globals come only from ALLOWED_GLOBALS (never imported)."""

    def __init__(self, file, persistent_load=None):
        super().__init__(file)
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load the global {module}.{name}: a state-dict file needs only "
                f"torch._utils._rebuild_tensor_v2/_rebuild_parameter, torch.*Storage and "
                f"collections.OrderedDict") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise TorchFileFormatError(f"unexpected persistent id {pid!r} (no storages in this context)")
        return self._persistent(pid)


def restricted_loads(data: bytes, persistent_load=None):
    """pickle.loads with the restricted ``find_class`` (raises UnsafePickleError for any other global)."""
    return _RestrictedUnpickler(io.BytesIO(data), persistent_load).load()


def _load_pickle(unpickler: _RestrictedUnpickler, what: str, label: str):
    try:
        return unpickler.load()
    except (UnsafePickleError, TorchFileFormatError):
        raise
    except Exception as e:  # EOFError, UnpicklingError, TypeError from a malformed REDUCE, ...
        raise TorchFileFormatError(f"{label}: cannot read {what}: {type(e).__name__}: {e}") from None


def _storage_type(obj, pid) -> _StorageType:
    if not isinstance(obj, _StorageType):
        raise TorchFileFormatError(f"persistent id {pid!r}: expected a torch.*Storage type")
    return obj


def _check_persistent_id(pid, length: int, label: str):
    if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise TorchFileFormatError(
            f"{label}: persistent id of kind {kind!r}; only tensor storages are supported (was a whole "
            f"nn.Module pickled? save model.state_dict() instead)")
    if len(pid) != length:
        raise TorchFileFormatError(f"{label}: storage persistent id {pid!r}: expected {length} fields")


# ----------------------------------------------------------------------------------------- formats

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
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            _check_persistent_id(pid, 5, label)
            _, stype, key, _location, numel = pid
            stype, key = _storage_type(stype, pid), str(key)
            if key not in storages:
                member = f"{prefix}data/{key}"
                try:
                    raw = zf.read(member)
                except KeyError:
                    raise TorchFileFormatError(f"{label}: storage {key!r} has no member {member}") from None
                itemsize = np.dtype(stype.dtype).itemsize
                if len(raw) != int(numel) * itemsize:
                    raise TorchFileFormatError(
                        f"{label}: {member} holds {len(raw)} bytes, expected {numel} x {itemsize}-byte "
                        f"{stype.name} elements = {int(numel) * itemsize}")
                storages[key] = _Storage(stype, key, int(numel), np.frombuffer(raw, dtype=stype.dtype))
            return storages[key]

        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), persistent_load)
        return _load_pickle(unpickler, pkl[0], label)


def _load_legacy(path: Path, buf: bytes):
    label = str(path)
    f = io.BytesIO(buf)
    magic = _load_pickle(_RestrictedUnpickler(f), "the magic number", label)
    if magic != LEGACY_MAGIC:
        raise TorchFileFormatError(f"{label}: expected the legacy magic number {LEGACY_MAGIC:#x}, got {magic!r}")
    version = _load_pickle(_RestrictedUnpickler(f), "the protocol version", label)
    if version != LEGACY_PROTOCOL:
        raise TorchFileFormatError(f"{label}: expected legacy protocol version {LEGACY_PROTOCOL}, got {version!r}")
    sys_info = _load_pickle(_RestrictedUnpickler(f), "the sys_info dict", label)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchFileFormatError(f"{label}: only little-endian files are supported (sys_info {sys_info!r})")

    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        _check_persistent_id(pid, 6, label)
        _, stype, key, _location, numel, view = pid
        stype, key = _storage_type(stype, pid), str(key)
        if key not in storages:
            storages[key] = _Storage(stype, key, int(numel))
        if view is None:
            return storages[key]
        view_key, view_offset, view_numel = view
        if str(view_key) not in storages:
            storages[str(view_key)] = _Storage(stype, str(view_key), int(view_numel),
                                               root=storages[key], root_offset=int(view_offset))
        return storages[str(view_key)]

    obj = _load_pickle(_RestrictedUnpickler(f, persistent_load), "the object pickle", label)
    keys = _load_pickle(_RestrictedUnpickler(f), "the list of storage keys", label)
    if not isinstance(keys, list):
        raise TorchFileFormatError(f"{label}: expected the list of storage keys after the object, got {keys!r}")

    offset = f.tell()
    for key in map(str, keys):
        if key not in storages:
            raise TorchFileFormatError(f"{label}: storage key {key!r} listed at the end was never referenced")
        s = storages[key]
        itemsize = np.dtype(s.type.dtype).itemsize
        if offset + 8 > len(buf):
            raise TorchFileFormatError(f"{label}: truncated: expected the int64 element count of storage "
                                       f"{key!r} at byte offset {offset}, file ends at {len(buf)}")
        count = int(np.frombuffer(buf, "<i8", 1, offset)[0])
        offset += 8
        if count != s.numel:
            raise TorchFileFormatError(f"{label}: storage {key!r} at byte offset {offset - 8}: element count "
                                       f"{count}, but the pickle declared {s.numel}")
        if offset + count * itemsize > len(buf):
            raise TorchFileFormatError(f"{label}: truncated: storage {key!r} needs {count * itemsize} bytes "
                                       f"at byte offset {offset}, file ends at {len(buf)}")
        s.data = np.frombuffer(buf, s.type.dtype, count, offset)
        offset += count * itemsize
    return obj


def _resolve(obj):
    """Replace every _TensorRef in nested dicts/lists/tuples by its NumPy array."""
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict as ``name -> np.ndarray`` (conv weights OIHW, linear (out, in)).

    Reads both the zip format and the legacy pre-1.6 format; a top-level ``{'state_dict': ...}`` or
    ``{'model': ...}`` checkpoint is unwrapped. Raises UnsafePickleError for a pickle naming any
    global beyond tensor rebuilding, TorchFileFormatError for a file that is neither format or is damaged.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        buf = path.read_bytes()
        if not buf.startswith(b"\x80"):  # a binary pickle starts with the PROTO opcode
            raise TorchFileFormatError(
                f"{path}: not a PyTorch file: expected a zip archive with <archive>/data.pkl (torch.save "
                f"since 1.6) or a legacy pickle stream starting with the PROTO opcode 0x80 and the magic "
                f"number {LEGACY_MAGIC:#x}; the file starts with {buf[:8]!r}")
        obj = _load_legacy(path, buf)

    state = _resolve(obj)
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise TorchFileFormatError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise TorchFileFormatError(f"{path}: expected a dict of tensors; {key!r} holds a {type(value).__name__}")
    return dict(state)
