"""Bad input to the Python API (what a notebook user calls): a clear error that says what was expected,
raised before any work is done, never a traceback from inside NumPy or Numba and never a silent wrong
result. The command line has its own tests, in the test module of each command.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from scratchnet.io.images import centre_crop
from scratchnet.layers import ShapeError
from scratchnet.localise import segment
from scratchnet.localise.network import localise_image
from scratchnet.models import load_network, paper_net
from scratchnet.models.preprocess import prepare
from scratchnet.train import TrainConfig, Trainer
from scratchnet.vis import classmodel as cm
from scratchnet.vis.saliency import class_gradient, saliency, saliency_from_gradient, ten_crop_saliency


@pytest.fixture(scope="module")
def net():
    return paper_net(32, num_classes=5, width=1 / 16, seed=0,
                     class_names=["goose", "lemon", "limousine", "dumbbell", "bell pepper"])


@pytest.fixture()
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


# ----------------------------------------------------------------------------- the network

def test_network_input_errors(net, x):
    with pytest.raises(ShapeError, match=r"float32 or float64, got dtype float16$"):
        net.forward(x.astype(np.float16))
    swapped = x.astype(x.dtype.newbyteorder())                 # big-endian float32, e.g. from another machine's file
    with pytest.raises(ShapeError, match=r"got dtype >f4 \(the other byte order: x.astype\(x.dtype.newbyteorder\(\)\)"):
        net.forward(swapped)
    np.testing.assert_array_equal(net.forward(swapped.astype(swapped.dtype.newbyteorder())), net.forward(x))
    with pytest.raises(ShapeError, match=r"empty batch .*expected N >= 1"):
        net.forward(x[:0])


def test_backward_checks_what_it_is_given(x):
    fresh = paper_net(32, num_classes=5, width=1 / 16, seed=0)
    with pytest.raises(ShapeError, match="before any forward: call forward"):
        fresh.backward(np.ones((2, 5), np.float32))
    fresh.forward(x)
    for bad in (np.ones((2, 6), np.float32), np.ones(5, np.float32), np.ones((3, 5), np.float32)):
        with pytest.raises(ShapeError, match=r"dscores must have the shape \(2, 5\)"):
            fresh.backward(bad)
    with pytest.raises(ShapeError, match=r"dscores must be an array \(2, 5\).*got list"):
        fresh.backward([[1.0] * 5] * 2)
    assert fresh.backward(np.ones((2, 5), np.float32), param_grads=False).shape == x.shape


@pytest.mark.parametrize("bad, message", [(np.ones((2, 3), np.int32), r"expected a floating-point array .* got dtype int32"),
                                          ([[1.0, 2.0]], "expected an array, got list")])
def test_dropout_and_flatten_check_their_input_as_the_other_layers_do(bad, message):
    """Found by a helper's fuzz: Dropout died inside NumPy (UFuncTypeError from its in-place mask scaling) on
    integers, both layers with an AttributeError on a list."""
    from scratchnet.layers import Dropout, Flatten
    for layer, train in ((Dropout(0.5), True), (Dropout(0.5), False), (Flatten(), False)):
        with pytest.raises(ShapeError, match=f"{type(layer).__name__}: {message}"):
            layer.forward(bad, train)


@pytest.mark.parametrize("scores", [np.ones((2, 3), np.int64), np.ones((2, 3), np.float16), [[0.0, 1.0, 2.0]] * 2])
def test_the_loss_takes_float32_or_float64_scores_on_either_device(scores):
    """The GPU's kernel refused int64 and float16 scores with a TypeError from inside; the CPU returned float64
    or float16 gradients. Both now say what is expected."""
    from scratchnet.layers import softmax_cross_entropy
    with pytest.raises(ValueError, match="softmax_cross_entropy: expected float32 or float64 scores"):
        softmax_cross_entropy(scores, np.array([0, 1]))


def _rewrite(src, dst, change):
    """Copy the .npz src to dst with change(name, bytes) -> bytes applied to every member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, change(item.filename, zin.read(item.filename)))


def _npy(array) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_damaged_network_files_name_the_damage(net, tmp_path):
    good = net.save(tmp_path / "good.npz")
    meta = json.loads(str(np.load(good)["__meta__"]))
    arch = str(np.load(good)["__architecture__"])
    W = np.load(good)["param/fc8.W"]
    cases = {
        "meta_not_json": ("__meta__.npy", _npy(np.array("{not json")), "cannot be read as a scratchnet network"),
        "meta_no_shape": ("__meta__.npy", _npy(np.array(json.dumps({k: v for k, v in meta.items()
                                                                    if k != "input_shape"}))),
                          "cannot be read as a scratchnet network.*KeyError: 'input_shape'"),
        "unknown_arg": ("__architecture__.npy", _npy(np.array(arch.replace('"kernel_size"', '"kernel_sise"', 1))),
                        "cannot be read as a scratchnet network.*TypeError"),
        "int_params": ("param/fc8.W.npy", _npy(W.astype(np.int32)), "fc8.W has dtype int32, expected float32"),
        "nan_params": ("param/fc8.W.npy", _npy(np.full_like(W, np.nan)), "fc8.W holds NaN or Inf"),
        "mixed_dtypes": ("param/fc8.W.npy", _npy(W.astype(np.float64)), "parameters mix dtypes"),
    }
    for name, (member, payload, message) in cases.items():
        bad = tmp_path / f"{name}.npz"
        _rewrite(good, bad, lambda f, b: payload if f == member else b)
        with pytest.raises(ValueError, match=message):
            load_network(bad)
    load_network(good)                                  # and the untouched file still loads


def test_paper_net_arguments_are_checked(tmp_path):
    for kwargs, message in [(dict(num_classes=0), "num_classes must be an integer >= 1"),
                            (dict(width=0), r"width \(it scales every hidden width\) must be > 0"),
                            (dict(dtype=np.int32), "dtype must be float32 or float64"),
                            (dict(input_size="32"), r"input_size \(pixels\) must be an integer >= 1"),
                            (dict(input_size=True), "input_size"), (dict(dropout=1.0), "dropout")]:
        with pytest.raises(ValueError, match=message):
            paper_net(**{"input_size": 32, **kwargs})
    # NumPy integers are integers, and the network they build saves (its arch record is JSON)
    paper_net(np.int64(32), num_classes=np.int32(5), width=1 / 16, seed=np.int64(3)).save(tmp_path / "np.npz")


def test_preprocessing_sizes_are_checked(net):
    img = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"crop \(pixels\) must be an integer >= 1, got -5"):
        prepare(net, img, crop=-5)
    with pytest.raises(ValueError, match="crop size must be positive"):
        centre_crop(img, 0)


# ----------------------------------------------------------------------------- visualisers

def test_classes_must_be_classes(net, x):
    for bad in (3.7, True, [1.0, 2.0]):
        with pytest.raises(ValueError, match="integer"):
            class_gradient(net, x, bad)
    with pytest.raises(ValueError, match=r"one class for all images or one per image \(2\)"):
        class_gradient(net, x, [1, 2, 3])
    with pytest.raises(ValueError, match="unknown class 'gose'.*close matches: 'goose'"):
        saliency(net, x, "gose")
    by_name = saliency(net, x, ["lemon", "goose"])                      # names work like indices
    np.testing.assert_array_equal(by_name.classes, [1, 0])
    np.testing.assert_array_equal(by_name.maps, saliency(net, x, [1, 0]).maps)


def test_saliency_arguments_are_checked(net, x):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        saliency(net, x, batch_size=0)
    with pytest.raises(ValueError, match=r"expected network input \(N, C, H, W\) as an array, got list"):
        saliency(net, [x[0]])
    with pytest.raises(ValueError, match=r"expected image gradients \(N, C, H, W\), got shape \(3, 32, 32\)"):
        saliency_from_gradient(x[0])
    photo = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"resize \(the shorter side in pixels\) must be an integer >= 1"):
        ten_crop_saliency(net, photo, resize=-10)
    with pytest.raises(ValueError, match="integer"):
        ten_crop_saliency(net, photo, class_index=2.9)


def test_class_model_settings_are_checked(net):
    for kwargs, message in [(dict(lr=-2), r"lr \(a step up the class score\) must be > 0"), (dict(lr=0), "lr .* must be > 0"),
                            (dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
                            (dict(steps=2.5), "steps must be an integer"),
                            (dict(lam=float("nan")), "lam must be >= 0, got nan"),
                            (dict(blur_every=2, blur_sigma=0), r"blur_sigma \(with blur_every set\) must be > 0")]:
        with pytest.raises(ValueError, match=message):
            cm.class_model(net, [0], **{"steps": 1, **kwargs})
    with pytest.raises(ValueError, match="integer"):
        cm.class_model(net, 2.7, steps=1)
    assert cm.class_model(net, ["lemon"], steps=1).classes.tolist() == [1]


# ----------------------------------------------------------------------------- localisation

def test_localisation_arguments_are_checked(net):
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    sal = np.random.default_rng(1).random((40, 40))
    with pytest.raises(ValueError, match="class"):
        localise_image(net, img, cls=True)
    with pytest.raises(ValueError, match="max_points must be an integer >= 1"):
        segment(img, sal, max_points=0)
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        segment(img, sal, n_components=2.5)
    from scratchnet.localise import LocRecord
    from scratchnet.localise.network import network_saliency
    with pytest.raises(ValueError, match="gt_label an integer class index, got 3.7"):
        LocRecord(img, 3.7, [(0, 0, 9, 9)], [0, 1, 2, 3, 4], np.zeros((5, 40, 40)))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        network_saliency(net, [img], batch_size=0)


# ----------------------------------------------------------------------------- training

def _data(n, size=32, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % classes


@pytest.mark.parametrize("val,message", [
    (_data(4, size=16), "validation images are 16x16, the network expects 32x32"),
    ((_data(4)[0], np.arange(3)), "validation labels: 3 for 4 images"),
    ((_data(4)[0],), r"validation data must be a pair \(images, labels\), got tuple of length 1"),
    ((_data(4)[0].astype(np.float32), _data(4)[1]), r"validation images must be a uint8 array \(N, H, W, 3\)"),
    ((_data(4)[0], np.array([0.0, 1.0, 2.0, 3.0])), "validation labels must be integer class indices"),
])
def test_a_bad_validation_set_is_refused_before_any_training(tmp_path, val, message):
    net = paper_net(32, num_classes=5, width=1 / 16, seed=0)
    with pytest.raises(ValueError, match=message):
        Trainer(net, _data(8), val, tmp_path / "run", TrainConfig(epochs=1, batch_size=4), progress=False)
    assert not (tmp_path / "run").exists()              # nothing started, nothing written


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=0), "lr must be > 0"), (dict(epochs=0), "epochs must be an integer >= 1"),
    (dict(scale=0), "scale must be > 0"), (dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(lr=float("nan")), "lr must be > 0"),
])
def test_train_config_values_are_checked(tmp_path, kwargs, message):
    net = paper_net(32, num_classes=5, width=1 / 16, seed=0)
    with pytest.raises(ValueError, match="TrainConfig: " + message):
        Trainer(net, _data(8), None, tmp_path / "run", TrainConfig(**kwargs), progress=False)
    assert net.mean_image is None and not net.preprocess.get("mean_image")   # the network is untouched


def test_resume_skips_a_metrics_line_cut_short_by_a_crash(tmp_path, capsys):
    def trainer(epochs):
        net = paper_net(32, num_classes=5, width=1 / 16, seed=0)
        cfg = TrainConfig(epochs=epochs, batch_size=4, log_every=1, prefetch=1)
        return Trainer(net, _data(8), _data(4, seed=1), tmp_path / "run", cfg, progress=False)

    trainer(1).fit()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"kind": "step", "step": 9, "lo')         # the crash: half a line
    trainer(2).fit(resume=True)
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert "dropped 1 unreadable line" in capsys.readouterr().err


def test_classes_named_by_digits_are_found_by_name():
    """Folders named 0..11 give classes named "0".."11" in sorted order ("0", "1", "10", "11", "2", ...):
    the name "2" is class 4, not index 2 (the validation labels of `scratchnet train --val` come this way)."""
    from scratchnet.io.classnames import class_index
    names = sorted(str(i) for i in range(12))
    assert class_index("2", names) == names.index("2") == 4
    assert class_index("10", names) == 2
    assert class_index(2, names) == 2                      # an int is always an index
    with pytest.raises(IndexError, match=r"class index -1 is out of range: expected 0\.\.11"):
        class_index("-1", names)
    with pytest.raises(KeyError, match="unknown class '--1'"):
        class_index("--1", names)
    from scratchnet.vis.display import resolve_class
    folders = paper_net(32, num_classes=12, width=1 / 16, class_names=names)
    assert resolve_class(folders, np.array(3)) == 3        # a 0-d array too
    assert resolve_class(folders, "3") == names.index("3")
    # a network trained here knows its classes' wnids (scratchnet train saves them): a wnid names a class
    tiny = paper_net(32, num_classes=3, width=1 / 16, class_names=["cat", "cup", "fox"])
    tiny.class_wnids = ["n02124075", "n04067472", "n04540053"]
    assert resolve_class(tiny, "n04067472") == 1 and resolve_class(tiny, "fox") == 2
    with pytest.raises(ValueError, match="unknown class 'n01443537'"):
        resolve_class(tiny, "n01443537")
    tiny.class_wnids = None
    tiny.arch["class_wnids"] = ["n02124075", "n04067472", "n04540053"]     # where an older file kept them
    assert resolve_class(tiny, "n04540053") == 2
    tiny.class_wnids = ["n1", "n2", "n3", "n4"]                             # not one a class: not used
    with pytest.raises(ValueError, match="unknown class 'n4'"):
        resolve_class(tiny, "n4")
    assert class_index("7", ["cat", "dog", "emu", "fox", "gnu", "hen", "owl", "yak"]) == 7   # no such name


def test_empty_classes_are_called_empty(net, x):
    with pytest.raises(ValueError, match="non-empty list of classes"):
        cm.class_model(net, [], steps=1)
    with pytest.raises(ValueError, match=r"one class for all images or one per image \(2\), got shape \(0,\)"):
        saliency(net, x, [])
    with pytest.raises(ValueError, match="training data is empty"):
        Trainer(paper_net(32, num_classes=5, width=1 / 16), (_data(4)[0][:0], []), None, "unused",
                TrainConfig(epochs=1), progress=False)


def test_a_corrupted_member_is_a_network_file_error(net, tmp_path):
    from scratchnet.models.network import NetworkFileError
    good = net.save(tmp_path / "good.npz")
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:                       # flip bytes inside one stored member
        info = z.getinfo("param/fc8.W.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[start:start + 8] = bytes(8)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(NetworkFileError, match=r"bad.npz: param/fc8.W cannot be read \(a damaged file\?\): BadZipFile"):
        load_network(bad)


def test_a_network_file_with_another_number_of_class_names_is_refused(net, tmp_path):
    """A file whose class list is shorter than its outputs loaded, and `scratchnet classify` then printed
    half an answer and an IndexError."""
    from scratchnet.models.network import NetworkFileError
    import json
    good = net.save(tmp_path / "good.npz")
    for key in ("class_names", "class_wnids"):
        with np.load(good) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["__meta__"]))
        meta[key] = [f"c{i}" for i in range(net.num_classes - 2)]
        arrays["__meta__"] = np.array(json.dumps(meta))
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(NetworkFileError, match=f"lists {net.num_classes - 2} {key}, but the network has "
                                                   f"{net.num_classes} outputs"):
            load_network(tmp_path / "bad.npz")


def test_backward_after_a_partial_forward_asks_for_a_forward(x):
    from scratchnet.vis.deconv import backward_from, forward_to
    fresh = paper_net(32, num_classes=5, width=1 / 16, seed=0)
    fresh.forward(x)
    y = forward_to(fresh, x[:1], "conv2")                  # caches now hold one image, up to conv2
    assert backward_from(fresh, "conv2", np.ones_like(y)).shape == (1, 3, 32, 32)
    with pytest.raises(ShapeError, match="call forward"):
        fresh.backward(np.ones((2, 5), np.float32))


def test_saving_where_it_cannot_says_where(net, tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder; give a file name"):
        net.save(tmp_path / "adir")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"cannot write .*file/model.npz"):
        net.save(blocker / "model.npz")                 # a file where the folder should be
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "file"]   # nothing half-written


@pytest.mark.parametrize("make,message", [
    (lambda L: L.Conv2d(3, 4, 0), "Conv2d: kernel_size must be an integer >= 1 or a pair of them, got 0"),
    (lambda L: L.Conv2d(3, 4, 2.5), "Conv2d: kernel_size must be an integer >= 1 or a pair of them, got 2.5"),
    (lambda L: L.Conv2d(3, 4, (3, 3, 3)), r"Conv2d: kernel_size .* got \(3, 3, 3\)"),
    (lambda L: L.Conv2d(3, 4, 3, stride=0), "Conv2d: stride must be an integer >= 1"),
    (lambda L: L.Conv2d(3, 4, 3, padding=-1), r"Conv2d: padding must be an integer >= 0, .* got -1"),
    (lambda L: L.Conv2d(3, -4, 3), "Conv2d: out_channels must be an integer >= 1, got -4"),
    (lambda L: L.Conv2d(3, 4, 3, groups=0), "Conv2d: groups must be an integer >= 1, got 0"),
    (lambda L: L.MaxPool2d(0), "MaxPool2d: kernel_size must be an integer >= 1"),
    (lambda L: L.MaxPool2d(2, stride=0), "MaxPool2d: stride must be an integer >= 1"),
    (lambda L: L.AvgPool2d(2, padding=(1, 2, 3)), r"AvgPool2d: padding must be .* got \(1, 2, 3\)"),
    (lambda L: L.MaxPool2d(3, padding="same"), r"MaxPool2d: .* got 'same' \(pooling takes explicit padding\)"),
    (lambda L: L.Linear(6, -4), "Linear: out_features must be an integer >= 1, got -4"),
    (lambda L: L.LocalResponseNorm(5.0), "LocalResponseNorm: size must be a positive odd integer, got 5.0"),
    (lambda L: L.BatchNorm2d(0), "BatchNorm2d: channels must be an integer >= 1, got 0")])
def test_layer_settings_are_checked_when_the_layer_is_made(make, message):
    """Not at the first forward, as a reshape or a ZeroDivisionError from inside NumPy."""
    from scratchnet import layers
    with pytest.raises(ValueError, match=message):
        make(layers)


def test_layer_sizes_may_be_ints_numpy_ints_tuples_lists_or_1d_arrays():
    from scratchnet.layers import Conv2d, MaxPool2d
    for k in (3, np.int64(3), (3, 3), [3, 3], np.array([3, 3])):
        assert Conv2d(2, 2, k, padding=np.array([1, 1])).kernel == (3, 3) == MaxPool2d(k).kernel


def test_a_layer_asked_for_backward_before_forward_says_so():
    from scratchnet import layers as L
    dy4, dy2 = np.ones((1, 2, 2, 2), np.float32), np.ones((1, 2), np.float32)
    for layer, dy in [(L.ReLU(), dy4), (L.Conv2d(2, 2, 1), dy4), (L.MaxPool2d(2), dy4), (L.AvgPool2d(2), dy4),
                      (L.LocalResponseNorm(), dy4), (L.BatchNorm2d(2), dy4), (L.Flatten(), dy2),
                      (L.GlobalAvgPool(), dy2), (L.Linear(2, 2), dy2),
                      (L.Concat([("a", L.ReLU()), ("b", L.ReLU())]), dy4), (L.Dropout(0.5), dy2)]:
        for param_grads in (True, False):           # also when only the input gradient is asked for
            with pytest.raises(ShapeError, match=f"{type(layer).__name__}: backward before forward: call forward"):
                layer.backward(dy, param_grads=param_grads)


def test_a_network_with_a_layer_of_your_own_says_how_to_load_it(tmp_path, monkeypatch):
    from scratchnet.layers import LAYER_TYPES, Flatten, Layer, Linear
    from scratchnet.models import Network
    from scratchnet.models.network import NetworkFileError

    class Twice(Layer):
        def forward(self, x, train=False):
            return 2 * x

        def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
            return 2 * dy

        def output_shape(self, in_shape):
            return tuple(in_shape)

    net = Network([("twice", Twice()), ("flat", Flatten()), ("fc", Linear(12, 3))], input_shape=(3, 2, 2))
    net.save(tmp_path / "n.npz")
    with pytest.raises(NetworkFileError, match=r"unknown layer type 'Twice'.*LAYER_TYPES\['Twice'\] = Twice"):
        load_network(tmp_path / "n.npz")
    monkeypatch.setitem(LAYER_TYPES, "Twice", Twice)
    x = np.ones((1, 3, 2, 2), np.float32)
    assert np.array_equal(load_network(tmp_path / "n.npz").forward(x), net.forward(x))


def test_the_command_line_loads_a_layer_of_your_own_named_in_scratchnet_import(tmp_path, monkeypatch, capsys):
    """A module named in $SCRATCHNET_IMPORT is imported before the command runs; it registers the class.
    Without it the error says so, and does not call the file damaged."""
    import sys
    from scratchnet.cli import main
    (tmp_path / "mylayers_sn.py").write_text(
        "from scratchnet.layers import LAYER_TYPES, Layer\n"
        "class Twice(Layer):\n"
        "    def forward(self, x, train=False):\n        return self.kept_output(2 * x)\n"
        "    def backward(self, dy, rule='gradient', param_grads=True, input_grad=True):\n"
        "        return 2 * self.check_dy(dy)\n"
        "    def output_shape(self, in_shape):\n        return tuple(in_shape)\n"
        "LAYER_TYPES['Twice'] = Twice\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from scratchnet.layers import LAYER_TYPES, Flatten, Linear
    from scratchnet.models import Network
    import mylayers_sn
    net = Network([("twice", mylayers_sn.Twice()), ("flat", Flatten()), ("fc", Linear(12, 3))], input_shape=(3, 2, 2))
    path = net.save(tmp_path / "n.npz")

    def forget():                               # as in a fresh process: neither imported nor registered
        LAYER_TYPES.pop("Twice", None)
        sys.modules.pop("mylayers_sn", None)
    try:
        forget()
        monkeypatch.delenv("SCRATCHNET_IMPORT", raising=False)
        assert main(["info", "--model", str(path)]) == 2
        err = capsys.readouterr().err
        assert "unknown layer type 'Twice'" in err and "SCRATCHNET_IMPORT" in err and "damaged" not in err
        monkeypatch.setenv("SCRATCHNET_IMPORT", "mylayers_sn")
        assert main(["info", "--model", str(path)]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["params"] == 12 * 3 + 3
        monkeypatch.setenv("SCRATCHNET_IMPORT", "mylayers_sn, no_such_module_sn")
        assert main(["info", "--model", str(path)]) == 2
        assert "$SCRATCHNET_IMPORT names the module 'no_such_module_sn', which cannot be" in capsys.readouterr().err
        (tmp_path / "broken_sn.py").write_text("raise RuntimeError('half-written plugin')\n")
        monkeypatch.setenv("SCRATCHNET_IMPORT", "broken_sn")
        assert main(["info", "--model", str(path)]) == 2
        assert "$SCRATCHNET_IMPORT: importing 'broken_sn' failed: RuntimeError: half-written plugin" in \
            capsys.readouterr().err
    finally:
        forget()


def test_a_network_file_asking_for_absurd_sizes_or_nesting_is_a_network_file_error(net, tmp_path):
    """Not a raw MemoryError or RecursionError (found by a hostile-file audit)."""
    from scratchnet.models.network import NetworkFileError
    net.save(tmp_path / "n.npz")
    z = dict(np.load(tmp_path / "n.npz"))
    arch = json.loads(str(z["__architecture__"]))
    fc = next(c for _, c in arch["children"] if c["type"] == "Linear")
    fc["args"].update(in_features=10 ** 9, out_features=10 ** 9)                  # 3.5 EiB of weights
    np.savez(tmp_path / "huge.npz", **dict(z, __architecture__=np.array(json.dumps(arch))))
    with pytest.raises(NetworkFileError, match="huge.npz cannot be read .* MemoryError"):
        load_network(tmp_path / "huge.npz")
    np.savez(tmp_path / "deep.npz", **dict(z, __meta__=np.array("[" * 100_000)))
    with pytest.raises(NetworkFileError, match="deep.npz cannot be read .* RecursionError"):
        load_network(tmp_path / "deep.npz")
    np.savez(tmp_path / "mean.npz", **dict(z, __mean_image__=np.array(["x"])))   # found at load, not forward
    with pytest.raises(NetworkFileError, match=r"__mean_image__ must be a finite float array of shape \(3,\) "
                                               r"\+ \(H, W\), got <U1 \(1,\)"):
        load_network(tmp_path / "mean.npz")


def test_layer_names_that_would_collide_in_parameter_paths_are_refused():
    """"x.0" beside a child "x" holding "0": both parameters would be "x.0.W"; a save kept one, a load
    filled one and left the other at zero (found by an audit)."""
    from scratchnet.layers import Concat, ReLU, Sequential
    with pytest.raises(ValueError, match="Sequential: a layer name must be a non-empty string without '.', got 'x.0'"):
        Sequential([("x.0", ReLU())])
    with pytest.raises(ValueError, match="Concat: duplicate layer name 'b'"):
        Concat([("b", ReLU()), ("b", ReLU())])
    with pytest.raises(ValueError, match="duplicate layer name 'a'"):
        Sequential([("a", ReLU()), ("a", ReLU())])


def test_half_precision_parameters_are_refused(net, tmp_path):
    from scratchnet.models.network import NetworkFileError
    good = net.save(tmp_path / "good.npz")
    one = tmp_path / "one_half.npz"                        # one parameter float16, the others float32
    _rewrite(good, one, lambda f, b: _npy(np.load(good)["param/fc8.W"].astype(np.float16))
             if f == "param/fc8.W.npy" else b)
    with pytest.raises(NetworkFileError, match="fc8.W has dtype float16, expected float32 or float64"):
        load_network(one)
    every = tmp_path / "all_half.npz"                      # all float16: no mix to catch it either
    with np.load(good) as z:
        halves = {k + ".npy": _npy(z[k].astype(np.float16)) for k in z.files if k.startswith("param/")}
    assert len(halves) > 1
    _rewrite(good, every, lambda f, b: halves.get(f, b))
    with pytest.raises(NetworkFileError, match="has dtype float16, expected float32 or float64"):
        load_network(every)


def test_save_writes_its_temporary_file_beside_the_target(net, tmp_path, monkeypatch):
    """The temporary file is renamed onto the target: in another folder (another file system) the
    rename would fail or not be atomic."""
    import os
    renames = []
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        renames.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "sub" / "m.npz"
    assert net.save(target) == target
    monkeypatch.undo()
    assert len(renames) == 1
    src, dst = renames[0]
    assert os.path.dirname(os.path.abspath(src)) == str(target.parent)
    assert os.path.basename(src) != "m.npz" and os.path.abspath(dst) == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.npz"]     # no temporary left behind
    load_network(target)


def test_a_saved_network_file_has_the_usual_permissions(net, tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        net.save(tmp_path / "m.npz")
        os.umask(0o027)
        net.save(tmp_path / "g.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644      # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "g.npz").stat().st_mode) == 0o640


def test_saving_never_touches_the_process_umask(net, tmp_path, monkeypatch):
    """Reading the umask means setting it (os.umask), which would change it for every other thread
    for a moment; the temporary file is created with mode 0666 and the kernel applies the umask."""
    import os

    def no_umask(mask):
        raise AssertionError("atomic_savez called os.umask")
    monkeypatch.setattr(os, "umask", no_umask)
    net.save(tmp_path / "m.npz")
    monkeypatch.undo()
    load_network(tmp_path / "m.npz")


def test_one_notion_of_an_integer():
    """scratchnet.checks: Python and NumPy integers are integers; bools, floats and strings are not
    (True is not a batch size, 3.0 is not a class index)."""
    from scratchnet.checks import check_int, is_int
    assert all(is_int(v) for v in (0, 3, -2, np.int64(5), np.uint8(7)))
    assert not any(is_int(v) for v in (True, False, np.True_, 3.0, np.float32(2), "3", None))
    assert check_int("f", "n", np.int32(4), 1) == 4 and type(check_int("f", "n", np.int32(4))) is int
    for bad in (True, 2.0, "2"):
        with pytest.raises(ValueError, match=r"f: n must be an integer >= 1, got"):
            check_int("f", "n", bad, 1)
    with pytest.raises(ValueError, match=r"f: n must be an integer >= 1, got 0"):
        check_int("f", "n", 0, 1)


def test_a_number_is_finite_and_in_its_range():
    """scratchnet.checks.check_number: NaN and the infinities are refused like out-of-range values,
    open and closed bounds as asked."""
    from scratchnet.checks import check_number
    assert check_number("f", "x", 0.5, low=0, high=1) == 0.5 and check_number("f", "x", 0, low=0) == 0.0
    for bad in (float("nan"), float("inf"), -float("inf"), np.float64("nan"), True, "1"):
        with pytest.raises(ValueError, match="f: x must be"):
            check_number("f", "x", bad)
    with pytest.raises(ValueError, match="f: x must be"):
        check_number("f", "x", 0, low=0, low_open=True)
    with pytest.raises(ValueError, match="f: x must be"):
        check_number("f", "x", 1, high=1, high_open=True)


def test_the_device_variable_is_read_without_regard_to_case(monkeypatch):
    from scratchnet.backend import default_device
    for value, want in (("GPU", "gpu"), ("Cpu", "cpu"), ("", "cpu")):
        monkeypatch.setenv("SCRATCHNET_DEVICE", value)
        assert default_device() == want
    monkeypatch.delenv("SCRATCHNET_DEVICE")
    assert default_device() == "cpu"


# -- a layer's backward checks dy before any kernel reads it ----------------------------------------
def _grid_layer(name):
    from scratchnet.gradcheck import LAYER_GRID, make_input, randomise_params
    factory, shape, kind = next((f, s, k) for n, f, s, k in LAYER_GRID if n == name)
    layer = randomise_params(factory()).astype(np.float32)
    x = make_input(kind, shape, np.random.default_rng(0)).astype(np.float32)
    return layer, x


@pytest.mark.parametrize("name", [n for n, *_ in __import__("scratchnet.gradcheck").gradcheck.LAYER_GRID])
def test_every_layer_refuses_a_dy_unlike_its_output(name):
    """A dy larger than forward's output once made the Numba ReLU loop read past its arrays (garbage
    that changed from run to run) and the max-pool backward segfault; a smaller one was taken
    silently or failed inside NumPy. Every layer configuration of the gradient-check grid now says
    what it expected, for a larger, a smaller and a wrongly typed dy, with param_grads and
    input_grad either way."""
    layer, x = _grid_layer(name)
    y = layer.forward(x, train=name.startswith("dropout"))
    good = np.ones_like(y)
    bigger = np.ones(tuple(d + 3 for d in y.shape), np.float32)
    smaller = np.ones(y.shape[:-1] + (max(y.shape[-1] - 1, 0),), np.float32)
    for dy in (bigger, smaller, good.reshape(-1), good.astype(np.float64)):
        for pg, ig in ((True, True), (False, True), (True, False)):
            with pytest.raises(ShapeError, match=r"dy must have the (shape|dtype) .* of forward's output, got"):
                layer.backward(dy, "gradient", param_grads=pg, input_grad=ig)
    with pytest.raises(ShapeError, match="dy must be an array"):
        layer.backward(good.tolist())
    dx = layer.backward(good)                  # the right dy still works after all those refusals
    assert dx.shape == x.shape and dx.dtype == np.float32


def test_relu_backward_with_a_larger_dy_no_longer_reads_past_its_arrays():
    """The case that returned run-to-run garbage: every input negative, so any dx must be zero."""
    from scratchnet.layers import ReLU
    r = ReLU()
    r.forward(-np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(ShapeError, match=r"ReLU: dy must have the shape \(1, 3, 4, 4\) of forward's output, "
                                         r"got \(1, 3, 512, 512\)"):
        r.backward(np.ones((1, 3, 512, 512), np.float32), "gradient")
    assert not r.backward(np.ones((1, 3, 4, 4), np.float32)).any()


def test_concat_refuses_a_dy_with_extra_channels():
    """Its branches would each check their own slice and never see channels past the last one."""
    layer, x = _grid_layer("fire_concat")
    y = layer.forward(x)
    expand = layer["expand"]
    with pytest.raises(ShapeError, match="expand: dy must have the shape"):
        layer.backward(np.ones((y.shape[0], y.shape[1] + 2) + y.shape[2:], np.float32))
    assert expand.backward(np.ones_like(y)).shape == (x.shape[0], 2) + x.shape[2:]


def test_a_network_casts_dscores_to_its_scores_dtype(net):
    """A float64 (or integer) one-hot on a float32 network gives the float32 gradient, as a float32 one
    does, instead of a dtype the layers' kernels do not expect; a complex one is refused."""
    x = np.random.default_rng(3).standard_normal((2,) + net.input_shape).astype(np.float32)
    scores = net.forward(x)
    onehot = np.zeros(scores.shape, np.float32)
    onehot[:, 1] = 1
    want = net.backward(onehot, param_grads=False)
    for d in (onehot.astype(np.float64), onehot.astype(np.int64), onehot.astype(bool)):
        net.forward(x)
        got = net.backward(d, param_grads=False)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    net.forward(x)
    with pytest.raises(ShapeError, match="dscores must be a real array"):
        net.backward(onehot.astype(np.complex64))


def test_a_wrong_image_size_names_the_size_the_network_was_built_for():
    """It used to surface at fc6 as a feature count ((N, 1024) expected, (2, 256) got)."""
    net = paper_net(input_size=64, num_classes=10, width=0.125)
    with pytest.raises(ShapeError, match=r"network input is 32x32 but this network was built for 64x64 images"):
        net.forward(np.zeros((2, 3, 32, 32), np.float32))


def test_every_command_that_takes_a_network_has_a_default_one():
    """classify and info used to require --model while the other commands defaulted to a network that
    pip brings; evaluate classification still asks (a measurement should name what it measures)."""
    from scratchnet.cli import build_parser
    p = build_parser()
    assert p.parse_args(["info"]).model == "efficientnet_lite0"
    assert p.parse_args(["classify", "x.jpg"]).model == "efficientnet_lite0"
    assert p.parse_args(["saliency", "x.jpg"]).model == "efficientnet_lite0"


def test_backward_from_takes_a_seed_of_another_dtype_like_network_backward(net):
    """Network.backward casts dscores to the scores' dtype; backward_from (a pass from a middle layer,
    for DeconvNet reconstructions) does the same with its seed, rather than a layer refusing it."""
    from scratchnet.vis.deconv import backward_from, forward_to
    x = np.random.default_rng(5).standard_normal((1,) + net.input_shape).astype(np.float32)
    name = net.layers[2][0]
    a = forward_to(net, x, name)
    want = backward_from(net, name, np.ones_like(a))
    forward_to(net, x, name)
    got = backward_from(net, name, np.ones(a.shape))                      # float64 ones
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_a_network_moved_or_cast_after_its_forward_asks_for_a_new_forward(net):
    """What forward kept has the old dtype (or device): backward after astype/to says to run forward
    again, instead of a layer in the middle finding a dy of the wrong dtype."""
    import copy
    x = np.random.default_rng(5).standard_normal((1,) + net.input_shape).astype(np.float32)
    n64 = copy.deepcopy(net)
    s = n64.forward(x)
    n64.astype(np.float64)
    with pytest.raises(ShapeError, match="network backward before any forward"):
        n64.backward(np.ones(s.shape))
    layer = n64.layers[0][1]
    with pytest.raises(ShapeError, match="backward before forward"):
        layer.backward(np.ones((1,) + layer.output_shape((1,) + net.input_shape)[1:]))
    n64.forward(x.astype(np.float64))
    assert n64.backward(np.ones(s.shape)).dtype == np.float64


def test_check_layer_blames_zero_parameters_only_when_they_are_the_reason():
    from scratchnet.gradcheck import check_layer, randomise_params
    from scratchnet.layers import Conv2d
    conv = randomise_params(Conv2d(3, 4, 3))
    conv.params["b"][:] = 0
    with pytest.raises(ValueError, match=r"all zero, so the check would prove nothing; choose an input"):
        check_layer(conv, np.zeros((2, 3, 5, 5)))               # W's gradient is 0 because x is


def test_output_stems_are_unique_ignoring_case():
    """X.jpg and x.png would be one file name on macOS and Windows."""
    from scratchnet.cli import unique_stems
    assert unique_stems(["a/x.jpg", "b/x.jpg", "X.png", "c/x_2.png", "y.png"]) == ["x", "x_2", "X_3", "x_2_2", "y"]


def test_a_read_only_cache_folder_is_accepted_and_a_read_only_details_file_is_not(tmp_path, monkeypatch):
    """A cache filled before may sit on a read-only mount (it is only read); a --details file that
    cannot be written would fail only after the whole evaluation."""
    import argparse
    import os
    from scratchnet.cli import check_output_paths
    cache, details = tmp_path / "cache", tmp_path / "d.jsonl"
    cache.mkdir()
    details.write_text("")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) in (str(cache), str(details)) else real(p, mode))
    check_output_paths(argparse.Namespace(cache=str(cache)))
    with pytest.raises(ValueError, match=r"--details .*d\.jsonl: cannot write the file \(permission denied\)"):
        check_output_paths(argparse.Namespace(details=str(details)))
    with pytest.raises(ValueError, match=r"--out .*cache: cannot write in .*cache \(permission denied\)"):
        check_output_paths(argparse.Namespace(out=str(cache)))


def test_a_closed_pipe_ends_a_command_quietly(tmp_path, capsys):
    """`scratchnet info | head -1` used to end in a BrokenPipeError traceback; the pipe is stood in for
    by a stdout whose reader has gone (an OS pipe would take the whole output into its buffer).
    sys.stdout is put back inside the test, not by monkeypatch: capsys takes its own stdout away when
    the test's call ends, and monkeypatch, undone later, would then make that closed capture
    sys.stdout for the rest of a `pytest -s` run."""
    import io
    import sys
    from scratchnet.cli import main
    path = paper_net(input_size=32, num_classes=4, width=0.125).save(tmp_path / "n.npz")

    class Gone(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    captured, sys.stdout = sys.stdout, Gone()
    try:
        rc = main(["info", "--model", str(path)])
    finally:
        sys.stdout = captured
    assert rc == 1
    assert capsys.readouterr().err == ""


def test_the_closed_pipe_test_leaves_stdout_open_under_pytest_s():
    """Run without output capture (`pytest -s`, as one does to watch a test), the closed-pipe test above
    used to leave sys.stdout a closed capture: every later print failed, pytest's own at exit too."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        "tests/test_api_errors.py", "-k", "closed_pipe_ends or batch_size_first"],
                       capture_output=True, text=True, check=False, cwd=root)
    assert r.returncode == 0 and "2 passed" in r.stdout, (r.stdout + r.stderr)[-3000:]
    assert "closed file" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_network_output_shape_says_it_takes_the_batch_size_first(net):
    with pytest.raises(ShapeError, match=r"output_shape takes a batch's shape \(N,\) \+ \(3, 32, 32\), the batch "
                                         r"size first, e.g. \(1,\) \+ net.input_shape; got \(3, 32, 32\)"):
        net.output_shape(net.input_shape)
    assert net.output_shape((2,) + net.input_shape)[0] == 2


def test_the_benchmarks_refuse_bad_settings_in_one_line():
    """--batch 0 was a reshape error, --repeats 0 a StatisticsError, --size 5 a ShapeError traceback."""
    from clirun import run_bench
    from conftest import SHARED
    for args, code, msg in ((["--batch", "0"], 2, "argument --batch: expected an integer >= 1, got 0"),
                            (["--repeats", "0"], 2, "argument --repeats: expected an integer >= 1, got 0"),
                            (["--size", "5", "--no-torch", "--batch", "1", "--repeats", "1"], 2,
                             "bench_cpu.py: error: paper_net: input_size 5 is too small"),
                            # 1 PiB: more than any address space, so refused at once on every machine
                            (["--batch", "1000000000", "--no-torch", "--repeats", "1"], 2,
                             "bench_cpu.py: error: out of memory: Unable to allocate 1.07 PiB")):
        p = run_bench("bench_cpu.py", *args)
        assert p.returncode == code and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
    for script, args, msg in (("bench_pretrained.py", ["--models", "bogus"], "unknown model 'bogus'"),
                              ("bench_saliency.py", ["--models", "bogus"], "unknown model 'bogus'"),
                              ("bench_train.py", ["--widths", "0"], "argument --widths: expected a number > 0"),
                              ("bench_localise.py", ["--pairwise-weight", "-1"], "expected a number >= 0, got -1"),
                              ("tune_localise.py", ["--rule", "bogus"], "argument --rule: invalid choice"),
                              ("tune_localise.py", ["--quantiles", "0.95"], "expected fg,bg (two numbers"),
                              ("tune_localise.py", ["--quantiles", "0.3,0.95"], "expected 0 < bg < fg < 1"),
                              ("tune_localise.py", ["--pairwise", "nan"], "argument --pairwise: expected a number >= 0"),
                              ("tune_localise.py", ["--data", "/nonexistent"], "imagenet_val_dev: missing"),
                              # (the model is loaded after the data set, ../shared's by default, is read)
                              *[("tune_localise.py", ["--model", "bogus"], "unknown model 'bogus'")] *
                              (SHARED / "data" / "imagenet-val-dev").is_dir()):
        p = run_bench(script, *args)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (script, p.stderr)


def test_a_network_repr_lists_its_layers(net):
    """It printed just Network()."""
    r = repr(net)
    assert r.startswith("Network(\n  (conv1): Conv2d(in_channels=3, ") and "\n  (fc8): Linear(" in r and r.endswith("\n)")
    assert repr(net["conv1"]).startswith("Conv2d(in_channels=3, out_channels=")


# -- from a mutation round on this stop's checks -----------------------------------------------------------
def test_check_output_paths_each_case(tmp_path):
    import argparse
    from scratchnet.cli import check_output_paths
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--details .*d\.jsonl: the folder .*nope does not exist"):
        check_output_paths(argparse.Namespace(details=str(tmp_path / "nope" / "d.jsonl")))
    with pytest.raises(ValueError, match=r"--details .* is a folder; expected a file name"):
        check_output_paths(argparse.Namespace(details=str(tmp_path)))
    check_output_paths(argparse.Namespace(cache=str(a_file), no_cache=True))     # not used: not checked
    with pytest.raises(ValueError, match=r"--cache .*f\.txt is a file; expected a folder"):
        check_output_paths(argparse.Namespace(cache=str(a_file), no_cache=False))
    check_output_paths(argparse.Namespace(out=str(tmp_path / "new" / "deeper"), details=str(tmp_path / "d.jsonl")))


def test_a_refused_file_operation_is_one_line(monkeypatch, capsys):
    """A permission or full-disk error from a command: one line naming the file, exit 2, no traceback."""
    import scratchnet.models.cli as mcli
    from scratchnet.cli import main

    def refuse(args):
        raise PermissionError(13, "Permission denied", "/x/report")
    monkeypatch.setattr(mcli, "cmd_info", refuse)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "scratchnet info: error: Permission denied: /x/report\n"


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    """`scratchnet train --width 1e9` (or --input-size 100000) reached NumPy's allocation error as a
    traceback; now one line with NumPy's size and shape, exit 2."""
    import scratchnet.models.cli as mcli
    from scratchnet.cli import main

    def too_big(args):
        np.zeros((2 ** 62,), np.uint8)            # refused at once: more than any address space
    monkeypatch.setattr(mcli, "cmd_info", too_big)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchnet info: error: out of memory: Unable to allocate") and err.count("\n") == 1


def test_a_damaged_network_file_leaves_no_file_open(tmp_path):
    """np.load leaves its file open when the archive is damaged; the zip is checked first."""
    import gc
    import warnings
    from scratchnet.models.network import NetworkFileError
    bad = tmp_path / "n.npz"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(NetworkFileError):
            load_network(bad)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]


def test_version_and_a_missing_pets_folder(tmp_path, capsys):
    from scratchnet import __version__
    from scratchnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"scratchnet {__version__}"
    assert main(["evaluate", "segmentation", "--data", str(tmp_path / "nope")]) == 2
    assert f"no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["train", "--data", "d", "--lr", "0"], "argument --lr: expected a number > 0, got 0"),
    (["train", "--data", "d", "--width", "-1"], "argument --width: expected a number > 0, got -1"),
    (["train", "--data", "d", "--weight-decay", "inf"], "argument --weight-decay: expected a number >= 0, got inf"),
    (["localise", "x.jpg", "--pairwise", "-1"], "argument --pairwise: expected a number >= 0, got -1"),
    (["classmodel", "--class", "1", "--lam", "nan"], "argument --lam: expected a number >= 0, got nan"),
    (["gradcheck", "--tol", "x"], "argument --tol: expected a number > 0, got 'x'")])
def test_a_bad_number_is_refused_by_its_flag_before_any_work(argv, says, capsys):
    """The command line names the flag, not the library argument it becomes (TrainConfig: lr, ...)."""
    from scratchnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_blocks_refuse_branches_that_do_not_fit_in_forward():
    """Residual added a 1-channel body to a 3-channel input by broadcasting (a wrong answer, refused only at
    backward), and Concat and a spatial mismatch reached NumPy's own messages; output_shape knew all along."""
    from scratchnet.layers import Concat, Conv2d, GlobalAvgPool, Residual
    x = np.ones((2, 3, 5, 5), np.float32)
    for block, message in ((Residual(Conv2d(3, 1, 1)), r"body output \(2, 1, 5, 5\) and shortcut output \(2, 3, 5, 5\)"),
                           (Residual(Conv2d(3, 3, 3)), r"body output \(2, 3, 3, 3\) and shortcut output"),
                           (Residual(Conv2d(3, 3, 1), Conv2d(3, 3, 1, stride=2)), "and shortcut output"),
                           (Concat([Conv2d(3, 2, 3), Conv2d(3, 2, 1)]), "branch outputs differ in spatial size")):
        with pytest.raises(ShapeError, match=message):
            block.output_shape(x.shape)
        with pytest.raises(ShapeError, match=message):
            block.forward(x)
    r = Residual(Conv2d(3, 3, 1))
    y = r.forward(x)
    with pytest.raises(ShapeError, match=r"dy must have the shape \(2, 3, 5, 5\)"):
        r.backward(np.ones((2, 3, 5, 4), np.float32))
    assert r.backward(np.ones_like(y)).shape == x.shape
    with pytest.raises(ShapeError, match="at least 1x1 pixels"):                # the mean of nothing: NaN
        GlobalAvgPool().forward(np.ones((1, 2, 0, 4), np.float32))


def test_a_layer_refuses_an_input_of_another_dtype_than_its_parameters_and_a_network_converts_it():
    """float64 input on float32 weights gave float64 out of the GEMM paths and float32 out of the
    depthwise one (and a float32 weight gradient for float64 weights)."""
    from scratchnet.layers import BatchNorm2d, Conv2d, Linear
    x64 = np.ones((1, 3, 5, 5))
    for layer in (Conv2d(3, 3, 3), Conv2d(3, 3, 3, groups=3), Conv2d(3, 4, 1), BatchNorm2d(3)):
        with pytest.raises(ShapeError, match="the input is float64 but the parameters are float32: convert one"):
            layer.forward(x64)
        assert layer.astype(np.float64).forward(x64).dtype == np.float64
    with pytest.raises(ShapeError, match="the input is float32 but the parameters are float64"):
        Linear(4, 2).astype(np.float64).forward(np.ones((1, 4), np.float32))
    net = paper_net(32, num_classes=5, width=1 / 16, seed=0)
    x32 = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    s = net.forward(x32.astype(np.float64))                   # converted to the network's float32
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, net.forward(x32))
    assert net.backward(np.ones_like(s)).dtype == np.float32


def _rewritten_zip(src, dst, change):
    """A copy of the zip src at dst with change(name, data) -> [(name, data), ...] applied to each member."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            for name, data in change(info.filename, zi.read(info.filename)):
                zo.writestr(name, data)
    return dst


def test_altered_npz_archives_are_refused_by_both_readers(tmp_path):
    """A fuzzer of the .npz readers found: a member without the .npy magic (np.load hands back bytes:
    an AttributeError), a cut .npy header (tokenize's TokenError), a zip compression method NumPy does not
    write (NotImplementedError), and a member name held twice (zipfile reads the last one: a network
    loaded with one parameter's values in another, without a word)."""
    import warnings
    from scratchnet.layers import Linear
    from scratchnet.models.network import Network, NetworkFileError
    from scratchnet.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from scratchnet.train.sgd import SGD
    lin = Linear(4, 3)
    lin.init_params(np.random.default_rng(0), "gaussian", std=0.1)
    net = Network([("fc", lin)], input_shape=(4,))
    good_net = net.save(tmp_path / "net.npz")
    good_ck = save_checkpoint(tmp_path / "ck.npz", net, SGD(net), dict(epoch=0, batch=0, step=0))

    def no_magic(name, data):
        return [(name, b"XXXXXX" + data[6:] if name == "param/fc.W.npy" else data)]

    def cut_header(name, data):
        return [(name, data.replace(b"(3, 4), }", b"(3, 4), ") if name == "param/fc.W.npy" else data)]

    def twice(name, data):
        return [(name, data)] + ([("param/fc.W.npy", data)] if name == "param/fc.b.npy" else [])

    def method_99(path):
        raw = bytearray(path.read_bytes())
        for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            i = raw.find(sig)
            raw[i + at:i + at + 2] = (99).to_bytes(2, "little")
        out = path.with_name("m99_" + path.name)
        out.write_bytes(bytes(raw))
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # zipfile: "Duplicate name"
        cases = [(change, f"{change.__name__}_{src.name}", src) for change in (no_magic, cut_header, twice)
                 for src in (good_net, good_ck)]
        files = [(_rewritten_zip(src, tmp_path / name, change), change.__name__) for change, name, src in cases]
    files += [(method_99(good_net), "method"), (method_99(good_ck), "method")]
    message = {"no_magic": "is not an .npy array", "cut_header": "TokenError", "twice": "more than once",
               "method": "compression method 99"}
    for path, what in files:
        if "ck.npz" in path.name:
            other = Network([("fc", Linear(4, 3))], input_shape=(4,))
            with pytest.raises(CheckpointError, match=message[what]):
                load_checkpoint(path, other, SGD(other))
        else:
            with pytest.raises(NetworkFileError, match=message[what]):
                load_network(path)


# -- from a mutation round on the benches' run_main and tune_localise's --quantiles ----------------------------
def test_run_main_exits_130_on_ctrl_c_and_2_out_of_memory_in_one_line(monkeypatch, capsys):
    import sys

    from clirun import BENCH
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_x.py")])
    from timing import run_main

    def raises(e):
        def main():
            raise e
        return main
    for main, code, err in ((raises(KeyboardInterrupt()), 130, "bench_x.py: interrupted\n"),
                            (raises(MemoryError()), 2, "bench_x.py: error: out of memory: an allocation failed"),
                            (lambda: None, None, "")):
        with pytest.raises(SystemExit) as e:
            run_main(main)
        assert e.value.code == code and capsys.readouterr().err.startswith(err)


def test_tune_localise_quantiles_are_fg_bg_strictly_inside_0_1():
    import argparse

    from clirun import BENCH
    import importlib.util
    spec = importlib.util.spec_from_file_location("tune_localise", BENCH / "tune_localise.py")
    tl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tl)
    assert tl.quantile_pair("0.95,0.3") == (0.95, 0.3)
    for bad in ("0.5,0.5", "0.9,0", "1,0.3", "0.9,-0.1", "0.3,0.9"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected 0 < bg < fg < 1"):
            tl.quantile_pair(bad)


def test_tune_localise_refuses_an_offset_at_the_end_of_the_photos(tmp_path):
    """--offset equal to the number of photos leaves none (one past the last index), as any larger one."""
    from clirun import run_bench
    from conftest import SHARED
    from scratchnet.io.datasets import imagenet_val_dev
    data = SHARED / "data" / "imagenet-val-dev"
    if not data.is_dir():
        pytest.skip("needs the shared imagenet-val-dev")
    n = len(imagenet_val_dev(data))
    p = run_bench("tune_localise.py", "--offset", n, "--data", data, "--cache", tmp_path / "cache")
    assert p.returncode == 2 and f"--offset {n} leaves no photos: the data set has {n}" in p.stderr, p.stderr


def test_an_output_folder_on_a_read_only_file_system_says_so(tmp_path, monkeypatch):
    """os.access only says no: a read-only mount was reported as 'permission denied'."""
    import os
    from types import SimpleNamespace

    from scratchnet.cli import check_output_paths
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(ValueError, match=r"--out .*: cannot write in .* \(read-only file system\)"):
        check_output_paths(SimpleNamespace(out=str(tmp_path / "o")))
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=0))
    with pytest.raises(ValueError, match=r"\(permission denied\)"):
        check_output_paths(SimpleNamespace(out=str(tmp_path / "o")))


def test_softmax_cross_entropy_refuses_float_labels_and_names_n():
    """Labels must be N integers, and the message says N (not K)."""
    from scratchnet.layers import softmax_cross_entropy
    with pytest.raises(ValueError, match=r"expected integer labels of shape \(2,\), got float64 \(2,\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected integer labels of shape \(2,\), got int64 \(3,\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_a_saved_parameter_with_inf_is_refused_as_well_as_nan():
    from scratchnet.models.npzfile import NetworkFileError, check_values
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NetworkFileError, match="NaN or Inf"):
            check_values(np.array([1.0, bad], np.float32), "W", "f.npz")
