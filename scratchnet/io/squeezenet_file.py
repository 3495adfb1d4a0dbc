"""Reader and writer for the Deep-Compression SqueezeNet v1.0 file ``compressed_SqueezeNet.net``.

The file (songhan/SqueezeNet-Deep-Compression, 675,763 bytes) stores the 26 convolution layers of
SqueezeNet v1.0 pruned and quantised. Everything is little-endian:

    header   26 x uint32           n[i] = number of stored entries of layer i
    per layer, in the same order:
      codebook   256 x float32      codebook[0] == 0.0 (see "filler entries" below)
      bias       O x float32        O = the layer's output channels
      codes      n x uint8          weight value = codebook[code]
      increments ceil(n/2) bytes    4-bit relative positions, low nibble first
                                    (for odd n the last high nibble is unused and written as 0)

The flat (OIHW, C order — Caffe's blob layout) position of entry k is ``cumsum(increment + 1)[k] - 1``;
every position that has no entry holds 0.

Filler entries. A 4-bit increment can skip at most 15 zeros, so a run of g zeros before a weight is
written as ``g // 16`` filler entries with increment 15 and code 0, followed by the real entry with
increment ``g % 16``. A filler lands on a zero weight and decodes to ``codebook[0] == 0.0``; real weights
never use code 0. The counts in the header include the fillers. (Measured on the published file: every
code-0 entry has increment 15, ``codebook[0]`` is 0.0 in all 26 layers and no other codebook entry is 0,
and re-encoding the decoded layers with this rule and the file's own codebooks gives the file back
byte for byte — see tests/test_io_weights.py.) The reference decoder (decode.py in the same repository)
fills unstored positions with ``codebook[0]``, which is why entry 0 must be 0.0; we check it.

Layer names: the Caffe prototxt calls the fire layers ``fireN/conv1x1_1`` (squeeze), ``fireN/conv1x1_2``
(expand 1x1) and ``fireN/conv3x3_2`` (expand 3x3); here they are ``fireN/squeeze1x1``,
``fireN/expand1x1`` and ``fireN/expand3x3`` (``SQUEEZENET_LAYERS`` keeps both names).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "SQUEEZENET_LAYERS",
    "SqueezeNetFormatError",
    "find_squeezenet_weights",
    "read_squeezenet_codebooks",
    "read_squeezenet_net",
    "write_squeezenet_net",
]

CODEBOOK_SIZE = 256
MAX_INCREMENT = 15  # 4 bits
ENV_VAR = "SCRATCHNET_SQUEEZENET"
FILE_NAME = "compressed_SqueezeNet.net"
#: the file's place in the shared folder (scratchnet/io/shared.py finds the folder)
IN_SHARED = Path("models", "squeezenet1.0-deep-compression", FILE_NAME)


def _squeezenet_layers() -> tuple[tuple[str, str, tuple[int, int, int, int]], ...]:
    """(our name, Caffe name, OIHW weight shape) for the 26 conv layers, in file order."""
    layers = [("conv1", "conv1", (96, 3, 7, 7))]
    squeeze = [16, 16, 32, 32, 48, 48, 64, 64]
    expand = [64, 64, 128, 128, 192, 192, 256, 256]
    c_in = 96
    for fire, (s, e) in enumerate(zip(squeeze, expand), start=2):
        layers += [
            (f"fire{fire}/squeeze1x1", f"fire{fire}/conv1x1_1", (s, c_in, 1, 1)),
            (f"fire{fire}/expand1x1", f"fire{fire}/conv1x1_2", (e, s, 1, 1)),
            (f"fire{fire}/expand3x3", f"fire{fire}/conv3x3_2", (e, s, 3, 3)),
        ]
        c_in = 2 * e  # the fire module concatenates its two expand outputs
    layers.append(("conv_final", "conv_final", (1000, c_in, 1, 1)))
    return tuple(layers)


SQUEEZENET_LAYERS = _squeezenet_layers()
HEADER_BYTES = 4 * len(SQUEEZENET_LAYERS)


class SqueezeNetFormatError(ValueError):
    """The file is not a well-formed compressed_SqueezeNet.net (the message says what and where)."""


# ----------------------------------------------------------------------------------------- reading

class _Reader:
    """Walks the byte buffer front to back; every read says what it expected if the file is short."""

    def __init__(self, buf: bytes, label: str):
        self.buf, self.label, self.offset = buf, label, 0

    def take(self, dtype: str, count: int, what: str) -> np.ndarray:
        nbytes = np.dtype(dtype).itemsize * count
        if self.offset + nbytes > len(self.buf):
            raise SqueezeNetFormatError(
                f"{self.label}: truncated: expected {what} ({nbytes} bytes) at byte offset {self.offset}, "
                f"but the file ends at byte {len(self.buf)}")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.offset)
        self.offset += nbytes
        return out

    def fail(self, msg: str):
        raise SqueezeNetFormatError(f"{self.label}: {msg}")


def _decode(buf: bytes, label: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (W (O,I,kh,kw) float32, b (O,) float32, codebook (256,) float32), in file order."""
    r = _Reader(buf, label)
    counts = r.take("<u4", len(SQUEEZENET_LAYERS), f"the header of {len(SQUEEZENET_LAYERS)} uint32 counts")
    for i, ((name, _, shape), n) in enumerate(zip(SQUEEZENET_LAYERS, counts)):
        size = int(np.prod(shape))
        if n > size:
            r.fail(f"header count {i} (byte offset {4 * i}) says layer {name} stores {n} entries, "
                   f"but a {shape} layer has only {size} weights")

    layers = {}
    for (name, _, shape), n in zip(SQUEEZENET_LAYERS, counts.astype(np.int64)):
        size, n = int(np.prod(shape)), int(n)
        at = r.offset
        codebook = r.take("<f4", CODEBOOK_SIZE, f"layer {name}: {CODEBOOK_SIZE}-entry float32 codebook")
        if codebook[0] != 0.0 or not np.all(np.isfinite(codebook)):
            r.fail(f"layer {name}: the codebook at byte offset {at} should start with 0.0 and hold finite "
                   f"values, found codebook[0] = {float(codebook[0])!r} (is the file misaligned?)")
        at = r.offset
        bias = r.take("<f4", shape[0], f"layer {name}: {shape[0]} float32 biases")
        if not np.all(np.isfinite(bias)):
            r.fail(f"layer {name}: non-finite bias in the {shape[0]} float32 values at byte offset {at}")
        codes = r.take("u1", n, f"layer {name}: {n} uint8 codes")
        at = r.offset
        packed = r.take("u1", (n + 1) // 2, f"layer {name}: {n} 4-bit position increments")

        increments = np.empty(2 * len(packed), dtype=np.int64)
        increments[0::2] = packed & 0x0F  # low nibble first
        increments[1::2] = packed >> 4
        positions = np.cumsum(increments[:n] + 1) - 1
        if n and positions[-1] >= size:
            r.fail(f"layer {name}: the position increments at byte offset {at} reach flat index "
                   f"{positions[-1]}, but a {shape} layer has only {size} weights (indices 0..{size - 1})")

        weights = np.zeros(size, dtype=np.float32)
        weights[positions] = codebook[codes]
        layers[name] = (weights.reshape(shape), bias.copy(), codebook.copy())

    if r.offset != len(buf):
        r.fail(f"expected the end of the file at byte offset {r.offset} after layer conv_final, "
               f"found {len(buf) - r.offset} trailing byte(s)")
    return layers


def _read_bytes(path) -> tuple[bytes, str]:
    path = Path(path)
    return path.read_bytes(), str(path)


def read_squeezenet_net(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode ``compressed_SqueezeNet.net`` into dense float32 weights.

    Returns an ordered dict ``name -> (W, b)`` with W of shape (O, I, kh, kw) (OIHW) and b of shape (O,),
    names and shapes as in ``SQUEEZENET_LAYERS`` (conv1 (96,3,7,7) ... conv_final (1000,512,1,1)).
    Raises ``SqueezeNetFormatError`` if the file is not consumed exactly (truncated, trailing bytes, a
    count or a position that does not fit its layer), naming the layer and byte offset.
    """
    buf, label = _read_bytes(path)
    return {name: (W, b) for name, (W, b, _) in _decode(buf, label).items()}


def read_squeezenet_codebooks(path) -> dict[str, np.ndarray]:
    """name -> that layer's (256,) float32 codebook, as stored (entry 0 is 0.0)."""
    buf, label = _read_bytes(path)
    return {name: cb for name, (_, _, cb) in _decode(buf, label).items()}


# ----------------------------------------------------------------------------------------- writing

def _codes_for(name: str, values: np.ndarray, codebook: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(codebook (256,) float32, codes (n,) uint8 in 1..255) for the non-zero ``values``."""
    if codebook is None:
        distinct = np.unique(values)
        if len(distinct) > CODEBOOK_SIZE - 1:
            raise ValueError(f"layer {name}: {len(distinct)} distinct non-zero weights, but the codebook holds "
                             f"at most {CODEBOOK_SIZE - 1} besides 0.0: quantise the weights first")
        codebook = np.zeros(CODEBOOK_SIZE, dtype=np.float32)
        codebook[1:1 + len(distinct)] = distinct
        return codebook, (np.searchsorted(distinct, values) + 1).astype(np.uint8)

    codebook = np.asarray(codebook, dtype=np.float32)
    if codebook.shape != (CODEBOOK_SIZE,) or codebook[0] != 0.0:
        raise ValueError(f"layer {name}: expected a ({CODEBOOK_SIZE},) codebook with codebook[0] == 0.0, "
                         f"got shape {codebook.shape}")
    distinct, first = np.unique(codebook[1:], return_index=True)  # first index of each value
    slot = np.clip(np.searchsorted(distinct, values), 0, len(distinct) - 1)
    missing = distinct[slot] != values
    if missing.any():
        raise ValueError(f"layer {name}: weight value {values[missing][0]!r} is not in the given codebook")
    return codebook, (first[slot] + 1).astype(np.uint8)


def _encode_layer(name: str, W: np.ndarray, b: np.ndarray, codebook: np.ndarray | None) -> tuple[int, bytes]:
    """(entry count, the layer's bytes after the header) — see the module docstring for the layout."""
    flat = W.reshape(-1)
    positions = np.flatnonzero(flat)
    codebook, codes = _codes_for(name, flat[positions], codebook)

    gaps = np.diff(positions, prepend=-1) - 1        # zeros skipped before each weight
    fillers = gaps // (MAX_INCREMENT + 1)             # entries with increment 15 and code 0
    n = len(positions) + int(fillers.sum())
    real = np.cumsum(fillers + 1) - 1                 # index of each real weight among the n entries
    increments = np.full(n + n % 2, MAX_INCREMENT, dtype=np.uint8)
    increments[n:] = 0                                # the unused high nibble of an odd count
    increments[real] = gaps % (MAX_INCREMENT + 1)
    entry_codes = np.zeros(n, dtype=np.uint8)
    entry_codes[real] = codes
    packed = increments[0::2] | (increments[1::2] << 4)
    body = codebook.astype("<f4").tobytes() + b.astype("<f4").tobytes() + entry_codes.tobytes() + packed.tobytes()
    return n, body


def write_squeezenet_net(path, layers: dict, codebooks: dict | None = None) -> None:
    """Encode ``layers`` (name -> (W, b), all 26 names of ``SQUEEZENET_LAYERS``, W OIHW, b (O,)) to ``path``.

    Each layer may hold at most 255 distinct non-zero weight values (codebook entry 0 is reserved for 0.0).
    Without ``codebooks`` the codebook is the sorted distinct values, zero-padded to 256 entries; with
    ``codebooks`` (name -> (256,) float32, as from ``read_squeezenet_codebooks``) those are written and
    codes point into them, which reproduces the published file byte for byte.
    """
    counts, bodies = [], []
    for name, _, shape in SQUEEZENET_LAYERS:
        if name not in layers:
            raise ValueError(f"write_squeezenet_net: layer {name} missing; expected all of "
                             f"{[n for n, _, _ in SQUEEZENET_LAYERS]}")
        W, b = (np.asarray(a, dtype=np.float32) for a in layers[name])
        if W.shape != shape or b.shape != (shape[0],):
            raise ValueError(f"layer {name}: expected W {shape} and b ({shape[0]},), got W {W.shape} and b {b.shape}")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise ValueError(f"layer {name}: weights and biases must be finite")
        n, body = _encode_layer(name, W, b, None if codebooks is None else codebooks[name])
        counts.append(n)
        bodies.append(body)
    from ..tempfiles import atomic_write       # a crash leaves the old file, not half a new one
    data = np.asarray(counts, dtype="<u4").tobytes() + b"".join(bodies)
    atomic_write(path, lambda fh: fh.write(data))


# ----------------------------------------------------------------------------------------- finding

def find_squeezenet_weights(path=None) -> Path:
    """Where ``compressed_SqueezeNet.net`` is: ``path`` if given, else ``$SCRATCHNET_SQUEEZENET``, else
    ``models/squeezenet1.0-deep-compression/compressed_SqueezeNet.net`` in each place the shared folder
    may be (scratchnet.io.shared.shared_candidates: ``$SCRATCHNET_SHARED`` when set, as the demo and the
    tests find the shared photos, then ``../shared`` beside the repository, then from the current
    directory)."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"SqueezeNet weights: no file at {path}")
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"SqueezeNet weights: ${ENV_VAR} is {env!r}, but there is no file there")
        return Path(env)
    from .shared import shared_candidates
    candidates = [folder / IN_SHARED for folder in shared_candidates()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"SqueezeNet weights ({FILE_NAME}) not found; looked in {', '.join(str(c) for c in candidates)}. "
        f"The file is published in the GitHub repository songhan/SqueezeNet-Deep-Compression "
        f"({FILE_NAME} at the repository root); pass its path, or set {ENV_VAR}=/path/to/{FILE_NAME}.")
