"""Tests proposed by mutation testing of scratchnet/models/*, checks, backend, gradcheck, threads and
progress: each one fails on a mutant that the suite let through."""
from __future__ import annotations

import numpy as np
import pytest

from scratchnet.layers import BatchNorm2d, Conv2d, GlobalAvgPool, LocalResponseNorm
from scratchnet.models import Network, load_network, paper_net
from scratchnet.models.preprocess import prepare, prepare_pixels


# ----------------------------------------------------------------------------- preprocessing

def test_a_mean_image_of_another_size_is_resized_not_transposed():
    """A 12x16 mean image that grows from left to right, for 8x4 photos: the resized mean is 8x4, still
    grows along the width and is constant down the height (a resize of the transposed image, transposed
    back, has the shape 4x8)."""
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32) * 10, (3, 12, 16)).copy()   # [c, h, w] = 10 w
    net = Network([], input_shape=(3, 8, 4), preprocess={"mean_image": True}, mean_image=ramp)
    x = prepare_pixels(net, np.zeros((8, 4, 3), np.uint8))[0]          # = -resized mean
    assert x.shape == (3, 8, 4)
    np.testing.assert_allclose(x, x[:, :1, :].repeat(8, axis=1))        # constant down each column
    assert np.all(np.diff(-x[0, 0]) > 0)                                # growing along the width


def test_prepare_refuses_images_without_three_channels():
    """A grey (H, W, 1) photo would broadcast against the 3-channel mean into a 3-channel input."""
    net = Network([], input_shape=(3, 8, 8), preprocess={"mean": [1.0, 2.0, 3.0]})
    for channels in (1, 4):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            prepare(net, np.zeros((8, 8, channels), np.uint8))


def test_prepare_pixels_names_images_of_different_sizes():
    net = Network([], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="differ in size"):
        prepare_pixels(net, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    for empty in ([], np.zeros((0, 8, 8, 3), np.uint8)):      # the array said "images differ in size []"
        with pytest.raises(ValueError, match="no images given"):
            prepare_pixels(net, empty)


def test_prepare_divides_by_the_std_before_the_scale():
    net = Network([], input_shape=(3, 4, 4), preprocess={"mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 5.0],
                                                         "scale": 3.0})
    x = prepare_pixels(net, np.full((4, 4, 3), 110, np.uint8))
    np.testing.assert_allclose(x[0, :, 0, 0], [(110 - 10) / 2 * 3, (110 - 20) / 4 * 3, (110 - 30) / 5 * 3])


# ----------------------------------------------------------------------------- save / load

def test_batchnorm_statistics_survive_save_and_load(tmp_path):
    """The round trips elsewhere save networks without BatchNorm (paper_net, folded EfficientNet)."""
    rng = np.random.default_rng(0)
    conv, bn = Conv2d(3, 4, 3, padding=1), BatchNorm2d(4)
    conv.init_params(rng)
    bn.stats["mean"] = rng.standard_normal(4).astype(np.float32)
    bn.stats["var"] = (rng.random(4) + 0.5).astype(np.float32)
    net = Network([("conv", conv), ("bn", bn), ("gap", GlobalAvgPool())], input_shape=(3, 6, 6))
    back = load_network(net.save(tmp_path / "bn.npz"))
    for k in ("mean", "var"):
        np.testing.assert_array_equal(back["bn"].stats[k], bn.stats[k])
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


# ----------------------------------------------------------------------------- paper_net

def test_paper_net_initialisation_and_normalisation_are_the_documented_ones():
    """He normal for the hidden layers, N(0, 0.01^2) for the class layer, zero biases; LRN size 5,
    alpha 1e-4, beta 0.75, k 2 after conv1 and conv2."""
    net = paper_net(input_size=64, num_classes=50, width=0.25)
    for name in ("conv1", "conv2", "conv3", "fc6", "fc7"):
        W = net[name].params["W"]
        fan_in = W[0].size
        assert abs(W.std() / np.sqrt(2.0 / fan_in) - 1) < 0.1, name
        assert not net[name].params["b"].any()
    assert abs(net["fc8"].params["W"].std() / 0.01 - 1) < 0.1
    for name in ("norm1", "norm2"):
        lrn = net[name]
        assert isinstance(lrn, LocalResponseNorm)
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)


def test_paper_net_width_rounds_to_the_nearest_channel_count():
    net = paper_net(input_size=64, num_classes=10, width=0.1)
    # 64 * 0.1 = 6.4 -> 6; 256 * 0.1 = 25.6 -> 26; 4096 * 0.1 = 409.6 -> 410
    assert [net[f"conv{i}"].out_channels for i in range(1, 6)] == [6, 26, 26, 26, 26]
    assert net["fc6"].out_features == 410


def test_paper_net_dropout_layers_draw_different_masks():
    """drop6 and drop7 each have their own seed: with one seed they would drop the same units."""
    net = paper_net(input_size=64, num_classes=10, width=1 / 16)
    assert net["drop6"].seed != net["drop7"].seed
    a = net["drop6"].rng.random(256)
    b = net["drop7"].rng.random(256)
    assert not np.array_equal(a, b)


def test_paper_nets_of_different_seeds_share_no_dropout_generator():
    """Runs with seeds 0, 1, 2, ... (to average over them) draw unrelated masks: seed + 6 / seed + 7 gave
    seed 1's drop6 the generator of seed 0's drop7. Seed 0 keeps 6 and 7 (the README's runs)."""
    seeds = [(s, paper_net(input_size=64, num_classes=10, width=1 / 16, seed=s)) for s in range(5)]
    used = [(s, n[d].seed) for s, n in seeds for d in ("drop6", "drop7")]
    assert len({g for _, g in used}) == len(used), used
    assert (seeds[0][1]["drop6"].seed, seeds[0][1]["drop7"].seed) == (6, 7)


# ----------------------------------------------------------------------------- imported networks

def test_squeezenet_weights_of_the_wrong_shape_are_refused(monkeypatch, tmp_path):
    """The real file fits; a layer of another shape must be named, not copied in."""
    import scratchnet.io.squeezenet_file as sqfile
    from scratchnet.models.squeezenet import load_squeezenet_weights, squeezenet1_0
    net = squeezenet1_0(pretrained=False)
    bad = {"conv1": (np.zeros((96, 3, 5, 5), np.float32), np.zeros(96, np.float32))}
    monkeypatch.setattr(sqfile, "read_squeezenet_net", lambda path: bad)
    with pytest.raises(ValueError, match=r"layer conv1 has W \(96, 3, 5, 5\)"):
        load_squeezenet_weights(net, tmp_path / "x.net")
    assert net["conv1"].params["W"].shape == (96, 3, 7, 7)


def test_efficientnet_state_dict_with_entries_left_over_is_refused():
    from scratchnet.io.torch_pickle import load_torch_state_dict
    from scratchnet.models.efficientnet import efficientnet_lite0, load_efficientnet_weights, weights_path
    try:
        path = weights_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    state = dict(load_torch_state_dict(path))
    state["_extra_head.weight"] = np.zeros(3, np.float32)
    net = efficientnet_lite0(pretrained=False, fold_bn=False)
    with pytest.raises(ValueError, match=r"1 state-dict entries were not used \(e\.g\. \['_extra_head\.weight'\]"):
        load_efficientnet_weights(net, state)


def test_mbconv_adds_the_shortcut_only_where_the_shapes_allow():
    from scratchnet.layers import Residual
    from scratchnet.models.efficientnet import mbconv
    assert isinstance(mbconv(16, 16, 3, 1, 6), Residual)
    assert not isinstance(mbconv(16, 16, 3, 2, 6), Residual)        # stride 2: the input is too big to add
    assert not isinstance(mbconv(16, 24, 3, 1, 6), Residual)


def test_efficientnet_head_dropout_is_0_2():
    """Lite0's dropout before the classifier is 0.2 (only training sees it: inference tests cannot)."""
    from scratchnet.models.efficientnet import efficientnet_lite0
    assert efficientnet_lite0(pretrained=False)["dropout"].p == 0.2


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("classes", [5, 6])
def test_evaluate_counts_the_fifth_ranked_class_in_the_top_5(classes, tmp_path, capsys):
    """A red photo whose class the network ranks fifth: top-1 0, top-5 1 with six classes; with five
    classes every image is in the top 5, and top-5 is not reported."""
    from PIL import Image

    from clirun import run_cli
    from scratchnet.io.classnames import imagenet_wnids
    wnids = list(imagenet_wnids()[:classes])
    conv = Conv2d(3, classes, 1)
    conv.params["W"][:, 0, 0, 0] = np.arange(classes, 0, -1, dtype=np.float32)   # red: class 0 first, 4 fifth
    net = Network([("conv", conv), ("gap", GlobalAvgPool())], input_shape=(3, 8, 8),
                  class_names=[f"c{i}" for i in range(classes)], preprocess={"crop": 8},
                  arch={"class_wnids": wnids})
    path = net.save(tmp_path / "net.npz")
    (tmp_path / "data" / wnids[4]).mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "data" / wnids[4] / "a.png")
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data"], capsys)
    assert out["images"] == 1 and out["top1"] == 0.0
    assert out["top5"] == (1.0 if classes == 6 else None)


# ----------------------------------------------------------------------------- backend

def test_to_device_takes_the_device_name_in_any_case():
    from scratchnet.backend import to_device, to_numpy
    a = np.arange(3.0)
    assert to_device(a, "CPU") is a and to_device(a, "Cpu") is a           # already there: no copy
    assert to_numpy(a) is a
    with pytest.raises(ValueError, match="device must be 'cpu' or 'gpu'"):
        to_device(a, "tpu")


# ----------------------------------------------------------------------------- gradcheck

def test_numerical_grad_refuses_an_array_it_cannot_change_in_place():
    """reshape(-1) of a non-contiguous array is a copy: f would never see the steps, and the gradient
    would come back all zero."""
    from scratchnet.gradcheck import numerical_grad
    x = np.arange(6.0).reshape(2, 3).T                  # a transposed view
    with pytest.raises(ValueError, match="C-contiguous"):
        numerical_grad(lambda: float((x ** 2).sum()), x)
    y = np.ascontiguousarray(x)
    np.testing.assert_allclose(numerical_grad(lambda: float((y ** 2).sum()), y), 2 * y, atol=1e-6)


# ----------------------------------------------------------------------------- progress

class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.parametrize("tty, every", [(True, 0.5), (False, 30.0)])
def test_progress_redraws_at_most_every_half_second_on_a_terminal_and_every_30_s_in_a_log(tty, every, monkeypatch):
    from scratchnet import progress
    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    s = _Stream(tty)
    p = progress.Progress(stream=s)
    p.update("one")
    now[0] += every * 0.9
    p.update("two")                                     # too soon: not drawn
    p.update("three", force=True)                       # forced: drawn
    now[0] += every * 1.01
    p.update("four")
    p.done("end")
    lines = [t.strip() for t in s.text.replace("\r", "\n").splitlines() if t.strip()]
    assert lines == ["one", "three", "four", "end"]
    assert ("\r" in s.text) == tty
    quiet = _Stream(tty)
    q = progress.Progress(stream=quiet, enabled=False)
    q.update("x", force=True)
    q.done("y")
    assert quiet.text == ""


def test_to_display_takes_one_image_without_the_batch_axis():
    from scratchnet.models.preprocess import to_display
    net = Network([], input_shape=(3, 4, 6), preprocess={"mean": [10.0, 20.0, 30.0], "scale": 0.5})
    img = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    x = prepare_pixels(net, img)
    np.testing.assert_array_equal(to_display(net, x[0]), img[None])


def test_a_mean_image_of_the_same_bytes_in_another_shape_changes_the_fingerprint():
    """fingerprint hashes each array's shape and dtype as well as its bytes: a (3, 4, 8) and a (3, 8, 4)
    mean image of the same bytes subtract different pixels."""
    mean = np.arange(96, dtype=np.float32).reshape(3, 4, 8)
    a = Network([], input_shape=(3, 4, 8), preprocess={"mean_image": True}, mean_image=mean)
    b = Network([], input_shape=(3, 4, 8), preprocess={"mean_image": True}, mean_image=mean.reshape(3, 8, 4))
    assert a.fingerprint() != b.fingerprint()


def test_load_of_a_saved_network_refuses_options_of_the_pretrained_ones(tmp_path):
    from scratchnet.models import load
    path = Network([("gap", GlobalAvgPool())], input_shape=(3, 4, 4)).save(tmp_path / "n.npz")
    assert load(path).input_shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"\['pretrained'\] are options of the pretrained networks"):
        load(path, pretrained=False)


def test_check_layer_refuses_a_float32_input_to_a_float64_layer():
    from scratchnet.gradcheck import check_layer, randomise_params
    from scratchnet.layers import Linear
    layer = randomise_params(Linear(6, 4)).astype(np.float64)
    with pytest.raises(TypeError, match="central differences need float64 inputs"):
        check_layer(layer, np.ones((3, 6), np.float32))
