"""The paper's visualisations on small networks: saliency, class models, DeconvNet vs gradient, the demo.

Each claim of the paper is a test: the saliency map is max_c |dS_c/dI| (checked against central
differences), the three backward rules are what their definitions say, the DeconvNet differs from the
gradient only at ReLU, and class-model ascent increases the documented objective.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import clirun
from clirun import bench_json, run_bench
from scratchnet.layers import (Concat, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, ReLU, ReLU6, Residual,
                               Rule, Sequential)
from scratchnet.models import Network
from scratchnet.vis import classmodel as cm
from scratchnet.vis import deconv, display
from scratchnet.vis.saliency import class_gradient, saliency, saliency_from_gradient, ten_crop_saliency

PRE = {"channel_order": "RGB", "mean": [120.0, 110.0, 100.0], "scale": 1 / 64}


def randomise(net, seed=0, dtype=np.float64, std=0.5):
    rng = np.random.default_rng(seed)
    for _, layer, key in net.named_params():
        layer.params[key] = (rng.standard_normal(layer.params[key].shape) * std).astype(dtype)
    return net


def tiny_net(seed=0, dtype=np.float64, relu=True, size=8):
    """conv-ReLU-pool, a Fire-like concat, a residual depthwise block, conv-ReLU, global pool, linear: 5 classes."""
    layers = [("conv1", Conv2d(3, 4, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(3, 2, ceil_mode=True)),
              ("fire", Concat([("a", Sequential([("c", Conv2d(4, 3, 1)), ("r", ReLU())])),
                               ("b", Sequential([("c", Conv2d(4, 3, 3, padding=1)), ("r", ReLU6())]))])),
              ("dw", Residual(Sequential([("c", Conv2d(6, 6, 3, padding="same", groups=6)), ("r", ReLU())]))),
              ("conv2", Conv2d(6, 5, 3, stride=2, padding=(0, 1, 1, 0))), ("relu2", ReLU()),
              ("gap", GlobalAvgPool()), ("fc", Linear(5, 5))]
    if not relu:
        layers = [(n, l) for n, l in layers if not isinstance(l, ReLU)]
        layers[2] = ("fire", Concat([("a", Conv2d(4, 3, 1)), ("b", Conv2d(4, 3, 3, padding=1))]))
        layers[3] = ("dw", Residual(Conv2d(6, 6, 3, padding="same", groups=6)))
    net = Network(layers, input_shape=(3, size, size), preprocess=dict(PRE), name="tiny")
    return randomise(net, seed, dtype)


def numerical_input_grad(net, x, c, eps=1e-5):
    """d S_c / d x of one image x (1, C, H, W) by central differences, every entry, float64.
    All 2 * C * H * W perturbed copies go through the network as one batch."""
    n = x[0].size
    bump = np.eye(n).reshape(n, *x.shape[1:]) * eps
    scores = net.forward(np.concatenate([x + bump, x - bump]))[:, c]
    return ((scores[:n] - scores[n:]) / (2 * eps)).reshape(x.shape)


@pytest.fixture(scope="module")
def net():
    return tiny_net()


@pytest.fixture(scope="module")
def live_net():
    """tiny_net with positive biases in the Fire block, so that no path is dead at the zero image."""
    net = tiny_net()
    for _, branch in net["fire"].branches:
        branch["c"].params["b"] += 1.0
    return net


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((3, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# saliency
# ---------------------------------------------------------------------------------------------
def test_saliency_equals_numerical_gradient(net, x):
    c = 2
    grad, cls, scores = class_gradient(net, x[:1].copy(), c)
    num = numerical_input_grad(net, x[:1], c)
    assert cls.tolist() == [c]
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8 * np.abs(num).max())


def test_saliency_is_max_over_channels_of_abs_gradient(net, x):
    s = saliency(net, x[:1].copy(), 3)
    num = numerical_input_grad(net, x[:1], 3)
    assert s.maps.shape == (1, 8, 8)
    np.testing.assert_allclose(s.maps[0], np.abs(num[0]).max(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(s.maps, saliency_from_gradient(class_gradient(net, x[:1].copy(), 3)[0]))


def test_saliency_default_class_is_top1(net, x):
    s = saliency(net, x)
    assert s.classes.tolist() == net.forward(x).argmax(1).tolist()
    np.testing.assert_allclose(s.scores, net.forward(x).max(1))


def test_saliency_batched_equals_one_at_a_time(net, x):
    classes = np.array([[0, 4], [1, 2], [3, 3]])
    both = saliency(net, x, classes, "guided", batch_size=4)
    assert both.maps.shape == (3, 2, 8, 8) and both.classes.tolist() == classes.tolist()
    for i in range(3):
        for k in range(2):
            one = saliency(net, x[i:i + 1], int(classes[i, k]), "guided")
            np.testing.assert_allclose(both.maps[i, k], one.maps[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(both.scores[i, k], one.scores[0])


def test_saliency_rejects_bad_class(net, x):
    with pytest.raises(ValueError, match="class index out of range"):
        saliency(net, x, 7)


def test_ten_crop_class_is_the_top_of_the_mean_of_the_ten_crops_scores():
    """With no class given, the 10-crop map is of the top-1 class of the 10 crops' mean scores, and its
    score is that mean. The photo is chosen so that the centre crop and the first corner crop disagree
    with the mean: taking the class from either of those instead fails here."""
    from scratchnet.io.images import resize_shorter
    from scratchnet.models.preprocess import prepare_pixels
    from scratchnet.vis.saliency import ten_crop_boxes
    net = tiny_net()
    for seed in range(200):
        img = (np.random.default_rng(seed).random((12, 14, 3)) * 255).astype(np.uint8)
        pix = resize_shorter(img, 12)
        crops = [pix[y:y + 8, x:x + 8] for y, x in ten_crop_boxes(*pix.shape[:2], 8, 8)]
        scores = net.forward(prepare_pixels(net, np.stack(crops + [c[:, ::-1] for c in crops])))
        top = scores.mean(axis=0).argmax()
        if scores[0].argmax() != top and scores[4].argmax() != top:
            break
    else:
        pytest.fail("no photo found whose crops disagree with their mean")
    r = ten_crop_saliency(net, img, resize=12)
    assert r.class_index == top
    assert r.score == pytest.approx(scores[:, top].mean(), rel=1e-12)


def test_ten_crop_map_of_flipped_photo_is_flipped_map():
    net = tiny_net(dtype=np.float32)
    img = (np.random.default_rng(2).random((12, 14, 3)) * 255).astype(np.uint8)
    a = ten_crop_saliency(net, img, 1, resize=12)
    b = ten_crop_saliency(net, np.ascontiguousarray(img[:, ::-1]), 1, resize=12)
    assert a.map.shape == (12, 14) and a.crop_maps.shape == (10, 8, 8)
    np.testing.assert_allclose(b.map, a.map[:, ::-1], rtol=1e-5, atol=1e-7)
    assert (a.map > 0).all()      # every pixel is covered by some crop
    # a photo whose resized map would pass LARGE_RESIZE pixels (5 GB for a 1 x 8000 strip): a clear error
    with pytest.raises(ValueError, match=r"a 8000x1 photo is too elongated for the 10-crop map: .* 2048000 long"):
        ten_crop_saliency(net, np.zeros((1, 8000, 3), np.uint8), 1, resize=256)
    # preprocess "resize": None means "no resize" there (preprocess.py); the 10 crops then take 8/7 of
    # the input side, as for a network that names none
    net.preprocess["resize"] = None
    assert ten_crop_saliency(net, img, 1).map.shape == (9, 10)      # input 8: shorter side round(64 / 7)
    with pytest.warns(UserWarning, match=r"5 crops coincide .* e\.g\. 9: .* scratchnet saliency --resize 9"):
        ten_crop_saliency(net, img[:12, :12], 1, resize=8)             # square at the input size: no room
    # a resize below the input size used to be raised to it without a word (--resize 100 for a
    # 227-pixel network gave 227); it is now refused, and --resize without --ten-crop is too
    with pytest.raises(ValueError, match=r"resize must be at least 8, the side of the network's 8x8 input .* got 7"):
        ten_crop_saliency(net, img, 1, resize=7)


def test_saliency_command_refuses_resize_without_ten_crop(tiny_path, photo, tmp_path, capsys):
    from scratchnet.cli import main
    assert main(["saliency", str(photo), "--model", str(tiny_path), "--resize", "20",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--resize sets the photo's size before the ten crops: it needs --ten-crop" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["saliency", str(photo), "--model", str(tiny_path), "--ten-crop", "--resize", "15",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--resize must be at least 16, the side of the network's input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# the three backward rules
# ---------------------------------------------------------------------------------------------
def hand_net():
    """x (1, 2, 1, 1) -> 1x1 conv (3 units) -> ReLU -> linear (2 classes): small enough to do by hand."""
    net = Network([("conv", Conv2d(2, 3, 1)), ("relu", ReLU()), ("flat", Flatten()), ("fc", Linear(3, 2))],
                  input_shape=(2, 1, 1))
    W1 = np.array([[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]])
    net["conv"].params.update(W=W1.reshape(3, 2, 1, 1), b=np.array([0.0, 2.5, 0.1]))
    net["fc"].params.update(W=np.array([[1.0, -3.0, 2.0], [0.0, 1.0, 1.0]]), b=np.zeros(2))
    return net, W1


def test_rules_match_their_definitions_on_a_hand_made_net():
    net, W1 = hand_net()
    x = np.array([1.0, -1.0]).reshape(1, 2, 1, 1)
    h = W1 @ np.array([1.0, -1.0]) + np.array([0.0, 2.5, 0.1])     # [-1, 0.5, 2.6]: unit 0 is off
    top = np.array([1.0, -3.0, 2.0])                               # d S_0 / d relu output
    want = {"gradient": W1.T @ (top * (h > 0)),                    # dy * [x > 0]
            "deconvnet": W1.T @ (top * (top > 0)),                 # dy * [dy > 0]
            "guided": W1.T @ (top * (h > 0) * (top > 0))}
    assert len({tuple(v) for v in want.values()}) == 3             # the example tells them apart
    for rule, w in want.items():
        g, _, _ = class_gradient(net, x, 0, rule)
        np.testing.assert_allclose(g.reshape(2), w, rtol=1e-12)


@pytest.mark.parametrize("layer", ["conv1", "fire", "dw", "fc"])
def test_deconvnet_differs_from_gradient_only_at_relu(net, x, layer):
    """Zeiler & Fergus's DeconvNet = transposed convolutions + unpooling to the switches + rectifying the
    signal at each ReLU. An independent backward pass written from those definitions agrees with the
    engine under every rule; without ReLUs the three rules coincide; with them, they part."""
    x1 = x[:1]
    act = deconv.forward_to(net, x1, layer)
    seed = deconv.neuron_seed(act, deconv.pick_neuron(act))
    recs = {}
    for rule in Rule:
        deconv.forward_to(net, x1, layer)
        ours = deconv.backward_from(net, layer, seed, rule)
        ref = deconv.reference_backward(net, x1, layer, seed, rule)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
        recs[rule.value] = ours
    if deconv.count_relus(net, layer) == 0:
        assert np.array_equal(recs["deconvnet"], recs["gradient"])
    # and the gradient reconstruction is the gradient of the neuron's activation
    chk = deconv.gradient_check(net, x1, layer, n_pixels=6)
    assert chk["max_error_rel_to_max_grad"] < 1e-7


def test_gradient_check_at_the_kinks_says_it_shows_nothing():
    """A fresh paper network (zero biases) at the black image: every ReLU input is exactly 0, where the
    engine's gradient is 0 by convention and a central difference sees half a slope. The pixels are
    left out (they used to be compared: an error of 1e27 "of the largest entry"), and the check says
    it had nothing to compare; the JSON has null where a ratio is undefined, never Infinity."""
    from scratchnet.models import paper_net
    net = paper_net(32, num_classes=7, width=0.0625, seed=3)
    x = np.zeros((1, 3, 32, 32), np.float32)
    chk = deconv.gradient_check(net, x, "fc8", n_pixels=6)
    assert chk["kinks"] == 6 and not chk["informative"] and chk["max_error_rel_to_max_grad"] is None
    with pytest.raises(ValueError, match="n_pixels must be at most the image's 3072 entries, got 3073"):
        deconv.gradient_check(net, x, "fc8", n_pixels=3073)
    table = deconv.compare_rules(net, x, ["relu1"])
    assert table[0]["deconvnet_vs_gradient"] == float("inf")    # ||deconvnet - 0|| / ||0||


def _kink_net():
    """x -> fc1 (identity) -> ReLU -> fc2 (1, 2): at x = (0, 1) unit 0 sits exactly on its kink."""
    net = Network([("flat", Flatten()), ("fc1", Linear(2, 2)), ("relu", ReLU()), ("fc2", Linear(2, 1))],
                  input_shape=(1, 1, 2))
    net["fc1"].params["W"], net["fc1"].params["b"] = np.eye(2), np.zeros(2)
    net["fc2"].params["W"], net["fc2"].params["b"] = np.array([[1.0, 2.0]]), np.zeros(1)
    return net


def test_gradient_check_compares_distinct_pixels_and_leaves_the_kink_out():
    chk = deconv.gradient_check(_kink_net(), np.array([0.0, 1.0]).reshape(1, 1, 1, 2), "fc2", n_pixels=2)
    assert sorted(chk["pixels"]) == [[0, 0, 0], [0, 0, 1]]          # both pixels, neither twice
    assert chk["kinks"] == 1 and chk["informative"] and chk["max_error_rel_to_max_grad"] < 1e-9


def test_gradient_check_scale_and_a_dead_neuron(monkeypatch):
    from scratchnet.models import paper_net
    # a dead neuron off every kink: zeros on both sides show nothing
    net = paper_net(32, num_classes=7, width=0.0625, seed=3)
    net["conv1"].params["b"][:] = -1e3
    chk = deconv.gradient_check(net, np.zeros((1, 3, 32, 32), np.float32), "fc8", n_pixels=4)
    assert chk["kinks"] == 0 and not chk["informative"] and chk["max_error_rel_to_max_grad"] is None
    # an engine map of zeros against a real slope is an error of 1 (relative to the numerical side)
    real = deconv.reconstruct

    def zeroed(*a, **k):
        r = real(*a, **k)
        r.images[...] = 0
        return r
    monkeypatch.setattr(deconv, "reconstruct", zeroed)
    chk = deconv.gradient_check(_kink_net(), np.array([0.5, 1.0]).reshape(1, 1, 1, 2), "fc2", n_pixels=2)
    assert chk["informative"] and chk["max_error_rel_to_max_grad"] == pytest.approx(1.0)


def test_ten_crop_refusal_starts_just_past_large_resize(monkeypatch):
    from scratchnet.io import images
    net = tiny_net(dtype=np.float32)
    img = (np.random.default_rng(2).random((12, 14, 3)) * 255).astype(np.uint8)
    monkeypatch.setattr(images, "LARGE_RESIZE", 12 * 14 - 1)
    with pytest.raises(ValueError, match="too elongated"):
        ten_crop_saliency(net, img, 1, resize=12)
    monkeypatch.setattr(images, "LARGE_RESIZE", 12 * 14)
    assert ten_crop_saliency(net, img, 1, resize=12).map.shape == (12, 14)


def test_command_json_is_strict(capsys):
    """NaN and infinities reach the last line of a command as null (strict parsers refuse NaN/Infinity)."""
    from scratchnet.cli import emit_json, strict_json
    assert strict_json({"a": float("inf"), "b": [np.float32("nan"), 1.5], "c": np.array([1.0, -np.inf]),
                        "d": (2, "x")}) == {"a": None, "b": [None, 1.5], "c": [1.0, None], "d": [2, "x"]}
    emit_json({"ratio": float("inf")})
    assert capsys.readouterr().out.strip() == '{"ratio": null}'


@pytest.mark.parametrize("layer", ["norm1", "pool2", "conv5", "fc7"])
def test_reference_reconstruction_of_the_paper_network_with_lrn(layer):
    """The paper's own network (LRN after conv1 and conv2): the independent float64 backward pass agrees
    with the engine under all three rules, layer after layer; so the demo's check runs on a network
    trained here too."""
    from scratchnet.models import paper_net
    net = paper_net(32, num_classes=7, width=0.0625, seed=3).astype(np.float64)
    for _, lay, key in net.named_params():
        if key == "b":
            lay.params[key] = lay.params[key] + 0.05     # some ReLUs open at every layer
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32))
    errs = deconv.reference_check(net, x, layer)
    assert set(errs) == {"gradient", "deconvnet", "guided"}
    assert max(errs.values()) < 1e-10, errs


def test_strongest_neuron_skips_saturated_relu6():
    """A ReLU6 output at 6 has zero gradient: 'max' means the strongest neuron below the clip."""
    act = np.zeros((1, 2, 2, 2))
    act[0, 0, 0, 0], act[0, 1, 1, 0] = 6.0, 5.5
    assert deconv.pick_neuron(act, "max") == [(0, 0, 0)]
    assert deconv.pick_neuron(act, "max", upper=6.0) == [(1, 1, 0)]
    net = Network([("conv", Conv2d(3, 2, 1)), ("act", Sequential([("r", ReLU6())]))], input_shape=(3, 2, 2))
    assert deconv.saturation(net, "act") == 6.0 and deconv.saturation(net, "conv") == float("inf")


def test_rules_coincide_without_relu(x):
    plain = tiny_net(relu=False)
    table = deconv.compare_rules(plain, x[:2])
    assert table and all(t["relus"] == 0 and t["deconvnet_vs_gradient"] == 0 and t["guided_vs_gradient"] == 0
                         for t in table)


def test_rules_part_above_relus(net, x):
    table = {t["layer"]: t for t in deconv.compare_rules(net, x[:2])}
    assert table["conv1"]["deconvnet_vs_gradient"] == 0       # below the first ReLU: identical
    assert table["relu2"]["deconvnet_vs_gradient"] > 1e-3
    assert table["relu2"]["guided_vs_deconvnet"] > 1e-3


def test_gradient_check_float32_is_at_rounding_level(x):
    net32 = tiny_net(dtype=np.float32)
    seen = []
    chk = deconv.gradient_check(net32, x[:1].astype(np.float32), "relu2", n_pixels=8,
                                progress=lambda done, total: seen.append((done, total)))
    assert chk["max_error_rel_to_max_grad"] < 1e-4
    assert seen == [(k, 8) for k in range(1, 9)]            # after each pixel (compare-rules' progress lines)


def test_forward_to_names_layers(net, x):
    with pytest.raises(ValueError, match="no top-level layer named 'nope'; layers: conv1"):
        deconv.forward_to(net, x, "nope")
    blocks = Network([("block", Sequential([("conv", Conv2d(3, 2, 1)), ("relu", ReLU())]))], input_shape=(3, 4, 4))
    with pytest.raises(ValueError, match="'block.conv' is inside the block 'block', whose output is the one to give"):
        deconv.layer_index(blocks, "block.conv")
    with pytest.raises(ValueError, match="does not fit"):
        deconv.reconstruct(net, x, "conv1", neuron=(9, 0, 0))


# ---------------------------------------------------------------------------------------------
# class models
# ---------------------------------------------------------------------------------------------
def test_class_model_ascent_raises_objective_monotonically(live_net):
    net = live_net
    lam = 1e-4
    r = cm.class_model(net, [1, 3], steps=12, lr=4e-3, lam=lam, optimiser="plain", momentum=0)
    assert r.scores.shape == (13, 2) and r.objective.shape == (13, 2)
    assert (np.diff(r.objective, axis=0) > -1e-12).all()
    assert (r.objective[-1] > r.objective[0] + 1e-3).all()
    # the documented objective: J = S_c - lam ||I / u||^2 with u the size of one grey level (scale 1/64)
    u = 1 / 64
    s = net.forward(r.x)[[0, 1], [1, 3]]
    np.testing.assert_allclose(r.objective[-1], s - lam * (r.x ** 2).sum(axis=(1, 2, 3)) / u ** 2, rtol=1e-10)
    np.testing.assert_allclose(cm.objective_value(net, r.x, [1, 3], lam), r.objective[-1], rtol=1e-10)
    np.testing.assert_allclose(r.scores[-1], s, rtol=1e-10)
    assert r.images.shape == (2, 8, 8, 3) and r.images.dtype == np.uint8


def test_class_model_l2_penalty_gradient_is_what_is_documented(live_net):
    net = live_net
    """A plain step from I moves by lr * (dS_c/dI - 2 lam I / u^2), u = 1/64 here."""
    lam, lr = 0.3, 1e-3
    r3 = cm.class_model(net, [2], steps=2, lr=lr, lam=lam, optimiser="plain")
    r4 = cm.class_model(net, [2], steps=3, lr=lr, lam=lam, optimiser="plain")
    g, _, _ = class_gradient(net, r3.x.copy(), 2)
    np.testing.assert_allclose(r4.x, r3.x + lr * (g - 2 * lam * r3.x * 64 ** 2), rtol=1e-9, atol=1e-12)


def test_class_model_batched_equals_one_at_a_time(live_net):
    net = live_net
    kw = dict(steps=4, lr=3.0, lam=1e-5, momentum=0.9)
    both = cm.class_model(net, [0, 4], **kw)
    for k, c in enumerate([0, 4]):
        one = cm.class_model(net, [c], **kw)
        np.testing.assert_allclose(both.x[k], one.x[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(both.scores[:, k], one.scores[:, 0], rtol=1e-9)


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(start_noise=5.0, jitter=1), dict(start_noise=5.0, clamp=True),
                                dict(step_control=False)], ids=["momentum", "noise_jitter", "noise_clamp", "fixed_step"])
def test_class_model_in_groups_of_batch_size_equals_one_batch(live_net, kw, capsys):
    """batch_size classes a pass (the memory of a pass grows with its batch: some 70 MB a class for
    SqueezeNet, 70 GB for 1000 classes in one batch): the same start images, jitter, step control and
    results as one batch of all (float64: to rounding), and a progress line per group."""
    classes = [0, 4, 2, 1, 3]
    one = cm.class_model(live_net, classes, steps=4, **kw)
    groups = cm.class_model(live_net, classes, steps=4, batch_size=2, progress=sys.stderr, **kw)
    np.testing.assert_allclose(groups.x, one.x, rtol=1e-9, atol=1e-12)
    for key in ("scores", "objective", "pixels"):
        np.testing.assert_allclose(getattr(groups, key), getattr(one, key), rtol=1e-9, atol=1e-12, err_msg=key)
    assert groups.classes.tolist() == classes and groups.settings.keys() == one.settings.keys()
    assert (groups.settings["batch_size"], one.settings["batch_size"]) == (2, 5)
    assert groups.settings["falls"] == one.settings["falls"]
    np.testing.assert_allclose(groups.settings["final_steps"] or [], one.settings["final_steps"] or [])
    err = capsys.readouterr().err
    assert [ln.strip() for ln in err.splitlines() if ln.strip().startswith("classes")] == \
        ["classes 1-2 of 5", "classes 3-4 of 5", "classes 5-5 of 5"]
    with pytest.raises(ValueError, match="batch_size"):
        cm.class_model(live_net, classes, steps=1, batch_size=0)


def test_class_model_regularisers_run_and_clamp_stays_in_range(live_net):
    net = live_net
    r = cm.class_model(net, [1], steps=3, lr=50.0, jitter=2, blur_every=2, clip_pct=20, clamp=True)
    assert np.isfinite(r.x).all()
    pix = display.to_pixels(net, r.x)
    assert pix.min() >= -1e-3 and pix.max() <= 255 + 1e-3


def test_class_model_linear_score_for_relu_gap_heads():
    """SqueezeNet-style head (conv -> ReLU -> global average): ascent uses the map before the ReLU."""
    net = Network([("conv1", Conv2d(3, 4, 3, padding=1)), ("relu1", ReLU()), ("conv_final", Conv2d(4, 3, 1)),
                   ("relu_final", ReLU()), ("pool", GlobalAvgPool())], input_shape=(3, 6, 6), preprocess=dict(PRE))
    randomise(net, 3)
    net["conv_final"].params["b"][:] = -50.0            # every class map negative: S_c = 0, no gradient
    assert cm.linear_score_layer(net) == "conv_final"
    r = cm.class_model(net, [0], steps=5, lr=5.0, lam=0.0, seed=3)
    assert r.settings["score_layer"] == "conv_final" and r.settings["seed"] == 3
    json.dumps(r.settings)
    assert r.objective[-1, 0] > r.objective[0, 0]       # it moved, although S_c stayed at 0
    # the step is the gradient of the documented objective, mean_ij z_c (seed 1/(H W) on channel c):
    # one plain step from the zero image against central differences of objective_value there
    lr, eps = 1e-3, 1e-6
    one = cm.class_model(net, [0], steps=1, lr=lr, lam=0.0, optimiser="plain")
    x0 = np.zeros((1, 3, 6, 6))
    num = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
        bump = np.zeros_like(x0)
        bump[idx] = eps
        num[idx] = (cm.objective_value(net, x0 + bump, [0], 0.0)[0]
                    - cm.objective_value(net, x0 - bump, [0], 0.0)[0]) / (2 * eps)
    assert np.abs(num).max() > 1e-3
    np.testing.assert_allclose(one.x, lr * num, rtol=1e-6, atol=1e-12)


def test_class_model_normalised_step_moves_lr_grey_levels(live_net):
    """The normalised optimiser's step is lr grey levels (RMS over the image), whatever the network's
    input scale: u = 1/64 here, so lr = 2 moves the image by 2/64 in input units."""
    r = cm.class_model(live_net, [1, 3], steps=1, lr=2.0, lam=0.0, momentum=0.0)
    rms = np.sqrt((r.x ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(rms / cm.grey_level(live_net), [2.0, 2.0], rtol=1e-9)
    assert cm.grey_level(live_net) == 1 / 64


def test_class_model_jitter_takes_the_gradient_at_the_shifted_image_and_shifts_it_back(live_net):
    """With jitter the gradient is taken at the image rolled by (dy, dx) and rolled back by (-dy, -dx)
    before the step: from the zero image (which rolls to itself) one plain step is the unjittered step
    rolled back. (dy, dx) is the first draw of default_rng(seed), as class_model takes it.)"""
    seed = next(s for s in range(100) if np.all(np.random.default_rng(s).integers(-3, 4, 2) != 0))
    dy, dx = np.random.default_rng(seed).integers(-3, 4, 2)
    kw = dict(steps=1, lr=1.0, lam=0.0, optimiser="plain")
    plain = cm.class_model(live_net, [2], **kw)
    jittered = cm.class_model(live_net, [2], jitter=3, seed=seed, **kw)
    np.testing.assert_array_equal(jittered.x, np.roll(plain.x, (-dy, -dx), axis=(2, 3)))
    assert not np.array_equal(jittered.x, np.roll(plain.x, (dy, dx), axis=(2, 3)))


def replay_step_control(objective, lr, down, up):
    """The documented rule, replayed from an ascent's objective history (steps+1, M): each class's final
    step and its number of falls."""
    step, falls = np.full(objective.shape[1], lr), np.zeros(objective.shape[1], int)
    for before, after in zip(objective[:-1], objective[1:]):
        fell = after < before
        step, falls = np.where(fell, step * down, np.minimum(step * up, lr)), falls + fell
    return step, falls


def test_step_control_raises_the_objective_where_a_fixed_step_lowers_it(live_net, capsys):
    """Normalised steps of a fixed length circle the maximum at that distance: here (as on
    EfficientNet-Lite0 at the defaults) they end below the start; the controlled steps end above it.
    The controlled lengths follow the documented rule, checked against the objective's history."""
    lr = 2.0
    ctl = cm.class_model(live_net, [0, 1], steps=30, lam=1e-3, lr=lr)
    fixed = cm.class_model(live_net, [0, 1], steps=30, lam=1e-3, lr=lr, step_control=False)
    assert (ctl.objective[-1] > ctl.objective[0]).all() and (fixed.objective[-1] < fixed.objective[0]).all()
    step, falls = replay_step_control(ctl.objective, lr, cm.STEP_DOWN, cm.STEP_UP)
    np.testing.assert_allclose(ctl.settings["final_steps"], step, rtol=1e-12)
    assert ctl.settings["falls"] == falls.tolist() and min(falls) > 0
    assert ctl.settings["step_control"] and not fixed.settings["step_control"]
    # off with a regulariser (the objective is then taken at a moved or blurred image) and for plain steps
    assert (cm.STEP_DOWN, cm.STEP_UP) == (0.9, 1.05)                 # the factors the README measured
    back = cm.class_model(live_net, [0, 1], steps=30, lam=0.0, lr=lr)   # class 1 fell once, then grew back
    assert back.settings["falls"][1] == 1 and back.settings["final_steps"][1] == lr    # to lr, not past it
    assert not cm.class_model(live_net, [0], steps=2, clip_pct=10).settings["step_control"]
    assert not cm.class_model(live_net, [0], steps=2, blur_every=1).settings["step_control"]
    assert not cm.class_model(live_net, [0], steps=2, jitter=1).settings["step_control"]
    assert not cm.class_model(live_net, [0], steps=2, optimiser="plain", lr=1e-3).settings["step_control"]
    capsys.readouterr()


def test_step_factors_are_an_argument_and_follow_the_same_rule(live_net, capsys):
    """step_factors=(down, up) replaces (STEP_DOWN, STEP_UP) in the rule, is recorded, and is checked."""
    lr, factors = 2.0, (0.25, 1.5)
    r = cm.class_model(live_net, [0, 1], steps=30, lam=1e-3, lr=lr, step_factors=factors)
    step, falls = replay_step_control(r.objective, lr, *factors)
    np.testing.assert_allclose(r.settings["final_steps"], step, rtol=1e-12)
    assert r.settings["falls"] == falls.tolist() and min(falls) > 0
    assert r.settings["step_factors"] == list(factors)
    default = cm.class_model(live_net, [0, 1], steps=30, lam=1e-3, lr=lr)
    assert default.settings["step_factors"] == [cm.STEP_DOWN, cm.STEP_UP]
    assert not np.array_equal(default.x, r.x)
    assert cm.class_model(live_net, [0], steps=2, step_control=False).settings["step_factors"] is None
    for bad, says in (((1.0, 1.1), "step_factors[0]"), ((0, 1.1), "step_factors[0]"), ((0.5, 0.9), "step_factors[1]"),
                      ((0.5, float("nan")), "step_factors[1]"), (("0.5", 1.1), "step_factors[0]"),
                      ((0.5,), "two numbers"), (0.5, "two numbers"), ("ab", "two numbers"),
                      ({0.9, 1.05}, "two numbers"), ({0.9: 1, 1.05: 2}, "two numbers")):
        with pytest.raises(ValueError, match=re.escape(says)):
            cm.class_model(live_net, [0], steps=1, step_factors=bad)
    capsys.readouterr()


def test_class_model_warns_when_the_objective_ends_below_its_start(live_net, capsys):
    """On a network whose scores are small (one trained here), the default lam swamped the score and
    the image circled near zero at lower objectives than the start, silently."""
    capsys.readouterr()
    r = cm.class_model(live_net, [0, 1], steps=5, lam=10.0)
    assert (r.objective[-1] < r.objective[0]).all()
    assert "the objective ended below where it started for class(es) [0, 1]: the L2 penalty (lam 10)" in \
        capsys.readouterr().err
    r = cm.class_model(live_net, [0, 1, 2], steps=5, lam=10.0, batch_size=1)   # groups: one line for all
    err = capsys.readouterr().err
    assert err.count("ended below") == 1 and "for class(es) [0, 1, 2]" in err
    r = cm.class_model(live_net, [0, 1], steps=5, lam=0.0)
    assert (r.objective[-1] > r.objective[0]).all() and "warning" not in capsys.readouterr().err
    r = cm.class_model(live_net, [0, 1], steps=5, lam=10.0, jitter=2)   # not the penalty's doing alone
    assert (r.objective[-1] < r.objective[0]).all()
    assert "the regularisers (jitter, blur, clipping) move the image" in capsys.readouterr().err
    r = cm.class_model(live_net, [0, 1], steps=5, lam=10.0, clip_pct=5)
    assert (r.objective[-1] < r.objective[0]).all()
    assert "the regularisers (jitter, blur, clipping) move the image" in capsys.readouterr().err


def test_an_ascent_that_cannot_move_is_not_said_to_have_fallen(net, capsys):
    """tiny_net's gradient at the zero image is exactly 0: J stays where it started (a warning says why),
    and is not reported as having ended below it."""
    r = cm.class_model(net, [0], steps=3)
    assert (r.objective[-1] == r.objective[0]).all()
    err = capsys.readouterr().err
    assert "exactly 0" in err and "ended below" not in err
    cm.class_model(net, [0, 1, 2], steps=3, batch_size=1)                 # said once, not once a group
    assert capsys.readouterr().err.count("exactly 0") == 1


def test_class_model_errors(net, live_net, capsys):
    with pytest.raises(ValueError, match=r"expected indices 0\.\.4, got \[5\]"):
        cm.class_model(net, [5], steps=1)
    with pytest.raises(ValueError, match="optimiser"):
        cm.class_model(net, [0], steps=1, optimiser="adam")
    capsys.readouterr()
    cm.class_model(net, [0], steps=1)                    # tiny_net: every unit is off at the zero image
    err = capsys.readouterr().err
    assert "class_model: warning: the class score's gradient at the zero image is exactly 0" in err
    assert "start_noise=10 (scratchnet classmodel --start-noise 10)" in err
    # the way out, beyond the paper: a seeded noise start, from which the ascent climbs
    a = cm.class_model(net, [0, 1], steps=5, start_noise=10, seed=4)
    assert "warning" not in capsys.readouterr().err
    assert a.scores[-1].min() > a.scores[0].max() and a.settings["start_noise"] == 10
    np.testing.assert_array_equal(cm.class_model(net, [0, 1], steps=5, start_noise=10, seed=4).x, a.x)
    with pytest.raises(ValueError, match="start_noise"):
        cm.class_model(net, [0], steps=1, start_noise=-1)
    # each plain step scales the image by 1 - lr 2 lam / u^2: below -1 it can only blow up, and the error says so
    f32 = copy.deepcopy(live_net).astype(np.float32)
    plain = r"diverged at step \d+ of 100 .* scales the image by 1 - lr \* 2 \* lam / u\^2 = -19, which must stay above"
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=plain):
        cm.class_model(f32, [0], steps=100, optimiser="plain", lam=10 * cm.grey_level(f32) ** 2, lr=1.0)
    # an ascent that overflows says so (it used to be refused as a network input with NaN or Inf); with the
    # normalised optimiser there is no plain-step explanation
    overflow = r"ascent diverged at step \d of 3 \(the image is"
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=overflow) as e:
        cm.class_model(copy.deepcopy(live_net).astype(np.float32), [0], steps=3, lr=1e45)
    assert "a plain step" not in str(e.value) and str(e.value).endswith("; lower lr")


# ---------------------------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pre, mean_image", [
    (PRE, None),
    ({"channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "scale": 1.0}, None),
    ({"mean_image": True, "scale": 1 / 64}, "yes"),
])
def test_to_pixels_inverts_prepare_pixels(pre, mean_image):
    net = tiny_net(dtype=np.float32)
    net.preprocess = dict(pre)
    if mean_image:
        net.mean_image = np.random.default_rng(0).uniform(0, 255, (3, 8, 8)).astype(np.float32)
    img = (np.random.default_rng(1).random((2, 8, 8, 3)) * 255).astype(np.uint8)
    back = display.to_pixels(net, display.prepare_pixels(net, img))
    np.testing.assert_allclose(back, img, atol=1e-3)


def test_stretch_maps_percentiles_to_full_range():
    a = np.linspace(-5, 5, 300).reshape(10, 10, 3)
    out = display.stretch(a, 0, 100)
    assert out.min() == 0 and out.max() == 255 and out.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# command line and the demo, end to end on a tiny network
# ---------------------------------------------------------------------------------------------
def save_tiny_net(folder):
    """The tiny float32 network, five named classes, saved as folder/tiny.npz (also tests/test_gpu_host.py's)."""
    net = tiny_net(dtype=np.float32, size=16)
    for _, branch in net["fire"].branches:          # no dead path at the zero image (class models move)
        branch["c"].params["b"] += 1.0
    path = folder / "tiny.npz"
    net.class_names = ["goose", "ostrich", "cup", "lemon", "limousine"]
    net.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny_net(tmp_path_factory.mktemp("net"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from scratchnet.io.images import save_png
    img = (np.random.default_rng(3).random((20, 24, 3)) * 255).astype(np.uint8)
    return save_png(tmp_path_factory.mktemp("img") / "photo.png", img)


def run_cli(argv, capsys):
    return clirun.run_cli(argv, capsys)[0]


def test_cli_saliency_classmodel_deconv_compare(tiny_path, photo, tmp_path, capsys):
    out = run_cli(["saliency", str(photo), "--model", str(tiny_path), "--class", "cup", "--rule", "all",
                   "--out", str(tmp_path / "s")], capsys)
    assert [r["rule"] for r in out["results"]] == ["gradient", "deconvnet", "guided"]
    assert all(r["class_name"] == "cup" and Path(r["overlay_png"]).exists() for r in out["results"])
    out = run_cli(["saliency", str(photo), "--model", str(tiny_path), "--ten-crop", "--out", str(tmp_path / "t")],
                  capsys)
    assert out["results"][0]["map_shape"] == [18, 22]      # shorter side 16 * 8 / 7, the 10 crops cover it
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "4", "--steps", "3",
                   "--out", str(tmp_path / "c")], capsys)
    assert out["classes"] == [0, 4] and all(Path(p).exists() for p in out["pngs"])
    assert len(json.loads(Path(out["history"]).read_text())["scores"]) == 4
    out = run_cli(["deconv", str(photo), "--model", str(tiny_path), "--layer", "dw", "--out", str(tmp_path / "d")],
                  capsys)
    assert len(out["results"]) == 3 and Path(out["results"][0]["png"]).exists()
    out = run_cli(["compare-rules", str(photo), "--model", str(tiny_path), "--check-pixels", "4"], capsys)
    assert out["layers"][0]["deconvnet_vs_gradient"] == 0.0
    assert out["gradient_check"]["max_error_rel_to_max_grad"] < 1e-3


def test_the_commands_read_a_user_s_photo_upright(tiny_path, tmp_path, capsys, monkeypatch):
    """A phone's portrait photo, stored sideways with EXIF orientation 6: classify, saliency, deconv,
    compare-rules and localise give what they give on the same photo saved upright without a tag, and
    demo --photos reads it upright too."""
    from PIL import Image

    from scratchnet.cli import main
    from scratchnet.io import images
    from scratchnet.vis import report
    upright = (np.random.default_rng(4).random((24, 18, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "turn 90 degrees clockwise to show"
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "phone.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "plain.png")
    got = {}
    for name in ("phone", "plain"):
        p, o = tmp_path / f"{name}.png", tmp_path / name
        assert main(["classify", str(p), "--model", str(tiny_path), "--topk", "5"]) == 0
        got[name, "classify"] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
        s = run_cli(["saliency", str(p), "--model", str(tiny_path), "--out", str(o / "s")], capsys)["results"][0]
        got[name, "saliency"] = (s["class_index"], s["score"], np.load(s["map_npy"]).tolist())
        d = run_cli(["deconv", str(p), "--model", str(tiny_path), "--layer", "dw", "--out", str(o / "d")], capsys)
        got[name, "deconv"] = [np.load(r["npy"]).tolist() for r in d["results"]]
        c = run_cli(["compare-rules", str(p), "--model", str(tiny_path), "--check-pixels", "4"], capsys)
        got[name, "compare-rules"] = c["layers"]
        loc = run_cli(["localise", str(p), "--model", str(tiny_path), "--out", str(o / "l")], capsys)["results"][0]
        got[name, "localise"] = (loc["size"], loc["box"], loc["class"], loc["score"])
    for what in ("classify", "saliency", "deconv", "compare-rules", "localise"):
        assert got["phone", what] == got["plain", what], what
    assert got["phone", "localise"][0] == [18, 24]                     # width, height: as viewers show it

    def seen(path, upright=False):
        raise RuntimeError(f"read upright={upright}")  # the demo reads its photos first: stop there
    monkeypatch.setattr(images, "load_image", seen)
    with pytest.raises(RuntimeError, match="read upright=True"):
        report.demo([str(tiny_path)], tmp_path / "demo", quick=True, photos=[tmp_path / "phone.png"])


def test_cli_says_when_a_map_is_zero_everywhere(photo, tmp_path, capsys):
    """Under the DeconvNet rule a class whose weights into the last ReLU are all negative sends nothing
    back (the rule rectifies the returning signal): a warning, not a silently black PNG."""
    net = tiny_net(dtype=np.float32, size=16)
    net["fc"].params["W"][2] = -np.abs(net["fc"].params["W"][2]) - 0.1
    net.class_names = ["goose", "ostrich", "cup", "lemon", "limousine"]
    net.save(tmp_path / "neg.npz")
    argv = ["saliency", str(photo), "--model", str(tmp_path / "neg.npz"), "--class", "cup", "--out", str(tmp_path / "s")]
    out, err = clirun.run_cli(argv + ["--rule", "deconvnet"], capsys)
    assert "warning: the deconvnet map of" in err and "zero everywhere: no signal of class 'cup'" in err
    assert not np.load(out["results"][0]["map_npy"]).any()
    out, err = clirun.run_cli(argv + ["--rule", "gradient"], capsys)      # the gradient goes through
    assert "zero everywhere" not in err and np.load(out["results"][0]["map_npy"]).any()


def test_cli_prints_a_library_warning_once_as_one_line(tiny_path, tmp_path, capsys):
    from scratchnet.io.images import save_png
    from scratchnet.models import load_network
    net = load_network(tiny_path)
    net.preprocess["resize"] = 16                      # as a 16-pixel network trained here would have it
    net.save(tmp_path / "t16.npz")
    square = save_png(tmp_path / "sq.png", np.full((16, 16, 3), 128, np.uint8))
    _, err = clirun.run_cli(["saliency", square, square, "--model", tmp_path / "t16.npz", "--ten-crop",
                             "--out", tmp_path / "s"], capsys)
    assert err.count("warning") == 1 and "scratchnet saliency: warning: ten_crop_saliency: " in err
    assert "UserWarning" not in err
    _, err = clirun.run_cli(["saliency", square, "--model", tmp_path / "t16.npz", "--ten-crop", "--resize", "18",
                             "--out", tmp_path / "s"], capsys)        # what the warning advises: no warning
    assert "warning" not in err


def test_cli_saliency_of_two_photos_with_one_name_keeps_both(tiny_path, photo, tmp_path, capsys):
    import shutil
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(photo, tmp_path / d / "x.png")
    out, _ = clirun.run_cli(["saliency", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--model", tiny_path,
                             "--out", tmp_path / "s"], capsys)
    pngs = [r["map_png"] for r in out["results"]]
    assert [Path(p).name for p in pngs] == ["x_gradient_map.png", "x_2_gradient_map.png"]
    assert all(Path(p).exists() for p in pngs)


def test_cli_saliency_writes_each_group_of_photos_before_reading_the_next(tiny_path, tmp_path, capsys,
                                                                             monkeypatch):
    """All photos and maps were held until the last map was made (2 MB a photo for SqueezeNet; 10,000
    photos, 20 GB). Now --batch-size photos at a time: the maps have the bits of one call over all the
    photos and the JSON lists them rule by rule, as before; a photo that cannot be decoded, even the
    last, is still found before any work."""
    from scratchnet.cli import main
    from scratchnet.io.images import ImageReadError, load_image, save_png
    from scratchnet.models import load_network
    from scratchnet.vis import cli as vis_cli
    from scratchnet.vis import saliency as sal_module
    rng = np.random.default_rng(5)
    paths = [save_png(tmp_path / f"p{i}.png", (rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)) for i in range(5)]
    out = run_cli(["saliency", *map(str, paths), "--model", str(tiny_path), "--rule", "all", "--batch-size", "2",
                   "--out", str(tmp_path / "s")], capsys)
    assert [(r["rule"], Path(r["image"]).name) for r in out["results"]] == \
        [(rule, p.name) for rule in ("gradient", "deconvnet", "guided") for p in paths]
    net = load_network(tiny_path)
    x = np.concatenate([display.prepare_image(net, load_image(p))[0] for p in paths])
    for rule in ("gradient", "deconvnet", "guided"):
        want = saliency(net, x, None, rule, 2).maps
        got = [np.load(r["map_npy"]) for r in out["results"] if r["rule"] == rule]
        assert all(np.array_equal(g, w.astype(np.float32)) for g, w in zip(got, want)), rule

    made, real_saliency = [], saliency
    monkeypatch.setattr(sal_module, "saliency", lambda net, x, *a: made.append(
        sorted(f.name for f in (tmp_path / "g").glob("*_map.npy"))) or real_saliency(net, x, *a))
    run_cli(["saliency", *map(str, paths), "--model", str(tiny_path), "--batch-size", "2", "--out", str(tmp_path / "g")],
            capsys)
    assert made == [[f"p{i}_gradient_map.npy" for i in range(j)] for j in (0, 2, 4)]    # what each pass found
    monkeypatch.undo()
    real = vis_cli._read

    def read(path):                 # the last photo turns out damaged past its header
        if Path(path).name == "p4.png":
            raise ImageReadError(f"cannot read image {path}: truncated")
        return real(path)
    monkeypatch.setattr(vis_cli, "_read", read)
    assert main(["saliency", *map(str, paths), "--model", str(tiny_path), "--batch-size", "2",
                 "--out", str(tmp_path / "none")]) == 2
    assert "p4.png: truncated" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_cli_unknown_class_is_one_clear_line(tiny_path, photo, tmp_path, capsys):
    from scratchnet.cli import main
    assert main(["saliency", str(photo), "--model", str(tiny_path), "--class", "zebra",
                 "--out", str(tmp_path)]) == 2
    assert "unknown class 'zebra'" in capsys.readouterr().err


def test_cli_bad_counts_and_failed_commands_leave_nothing_behind(tiny_path, photo, tmp_path, capsys):
    """A zero or negative count is refused by the parser, naming the option and what it expects (not a
    NumPy or range() message from deep inside); a command that fails before writing makes no --out folder."""
    from scratchnet.cli import main
    for argv, msg in [(["saliency", str(photo), "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
                      (["classmodel", "--class", "goose", "--steps", "-3"], "--steps: expected an integer >= 0, got -3"),
                      (["classmodel", "--class", "goose", "--jitter", "x"], "--jitter: expected an integer >= 0, got 'x'"),
                      (["demo", "--loc-photos", "0"], "--loc-photos: expected an integer >= 1, got 0"),
                      (["deconv", str(photo), "--layer", "dw", "--neuron", "foo"],
                       "--neuron: expected 'max', a channel index or c,i,j, got 'foo'")]:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--model", str(tiny_path), "--out", str(tmp_path / "never")])
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv
    for argv, msg in [(["deconv", str(photo), "--layer", "nolayer"], "no top-level layer named 'nolayer'"),
                      (["saliency", str(tiny_path)], "cannot read image"),
                      (["classmodel", "--class", "zebra"], "unknown class 'zebra'"),
                      (["classmodel", "--class", "goose", "0"], "names the same class more than once: goose")]:
        assert main(argv + ["--model", str(tiny_path), "--out", str(tmp_path / "never")]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as e:
        main(["compare-rules", str(photo), "--model", str(tiny_path), "--neuron", "1,2"])
    assert e.value.code == 2 and "--neuron: expected 'max', a channel index or c,i,j, got '1,2'" in capsys.readouterr().err
    assert main(["compare-rules", str(photo), "--model", str(tiny_path), "--check-pixels", "100000"]) == 2
    assert "--check-pixels: expected at most the image's 768 entries (3x16x16), got 100000" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["compare-rules", "--model", str(tiny_path), "--layers", "fire", str(photo)]) == 2
    assert (f"IMAGE is missing: the photo to compare the rules on ({str(photo)!r} was taken as a layer: --layers "
            "takes every word after it, so put IMAGE before --layers or end the list with --)") in capsys.readouterr().err
    assert main(["compare-rules", str(photo), "--model", str(tiny_path), "--neuron", "500"]) == 2
    assert "channel 500 out of range: the layer" in capsys.readouterr().err
    assert main(["deconv", str(photo), "--model", str(tiny_path), "--layer", "dw", "--neuron", "500",
                 "--out", str(tmp_path / "never")]) == 2
    assert "channel 500 out of range: the layer dw has 6 channels (0..5)" in capsys.readouterr().err
    assert main(["deconv", str(photo), "--model", str(tiny_path), "--layer", "dw", "--neuron", "1,9,9",
                 "--out", str(tmp_path / "never")]) == 2
    assert "neuron index (1, 9, 9) does not fit the output of shape (6, 8, 8) of the layer dw" in capsys.readouterr().err


def test_demo_runs_end_to_end_on_a_tiny_network(tiny_path, tmp_path, capsys):
    out = run_cli(["demo", "--model", str(tiny_path), "--quick", "--out", str(tmp_path / "demo")], capsys)
    index = Path(out["index"])
    page = index.read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 10 and out["images"] >= 10
    for s in srcs:
        assert not s.startswith(("/", "http")) and (index.parent / s).exists(), s
    assert "Class models" in page and "saliency" in page and "DeconvNet" in page
    summary = json.loads((index.parent / "summary.json").read_text())
    (m,) = summary["models"].values()
    assert m["rules"]["gradient_check"]["max_error_rel_to_max_grad"] < 1e-3


def test_a_demo_that_fails_half_way_leaves_the_earlier_report_whole(tiny_path, tmp_path, capsys, monkeypatch):
    """The pictures are made in a hidden folder and replace the earlier report's only at the end: a run
    into an existing report that failed half-way (after its class models) left its new class models
    under the old index.html's captions. What a killed run left there, the next run removes."""
    import os

    from scratchnet import tempfiles
    from scratchnet.cli import main
    from scratchnet.tempfiles import _HOST
    from scratchnet.vis import report
    out = tmp_path / "demo"
    run_cli(["demo", "--model", str(tiny_path), "--quick", "--steps", "2", "--out", str(out)], capsys)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any("classmodel" in str(p) for p in before)

    def broken(*a, **k):
        raise RuntimeError("half-way")
    monkeypatch.setattr(report, "section_rules", broken)
    with pytest.raises(RuntimeError, match="half-way"):      # more steps: other class models, then the failure
        main(["demo", "--model", str(tiny_path), "--quick", "--steps", "3", "--out", str(out)])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()

    killed = out / f".report.{_HOST}.{_dead_pid()}.ab12.tmp"      # a run killed (kill -9) half-way
    (killed / "m0_tiny").mkdir(parents=True)
    (killed / "m0_tiny" / "photo_0.png").write_bytes(b"x")
    os.utime(killed, (1e9, 1e9))
    monkeypatch.setattr(tempfiles, "_cleaned", set())              # as in the next process
    run_cli(["demo", "--model", str(tiny_path), "--quick", "--steps", "3", "--out", str(out)], capsys)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after.keys() == before.keys() and after != before        # the new report, and nothing hidden


def _dead_pid():
    """The pid of a process that has ended (a child run and waited for)."""
    import subprocess
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_demo_loads_every_network_before_any_work(tiny_path, tmp_path, capsys):
    """A typo in the second network's name was found only after the first network's whole section
    (about 7 minutes for EfficientNet): it is now refused before the first picture."""
    from scratchnet.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_path), "nosuch_net", "--quick", "--out", str(out)]) == 2
    assert "nosuch_net" in capsys.readouterr().err
    assert not out.exists()                     # not even an empty folder


@pytest.mark.parametrize("cmd", [["saliency", "--out"], ["localise", "--out"], ["classmodel", "--class", "0", "--out"],
                                 ["demo", "--quick", "--out"], ["deconv", "--layer", "dw", "--out"]])
def test_an_output_folder_that_is_a_file_is_refused_in_one_line(cmd, tiny_path, photo, tmp_path, capsys):
    """It used to be a FileExistsError traceback from mkdir, after the work (the file is left alone)."""
    from scratchnet.cli import main
    f = tmp_path / "afile.png"
    f.write_bytes(b"mine")
    images = [str(photo)] if cmd[0] in ("saliency", "localise", "deconv") else []
    assert main(cmd + [str(f), "--model", str(tiny_path)] + images) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {f} is a file; expected a folder" in err, err
    assert f.read_bytes() == b"mine"
    assert main(cmd + [str(f / "sub"), "--model", str(tiny_path)] + images) == 2
    assert f"--out {f / 'sub'}: {f} is a file, so {f / 'sub'} cannot be a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a real network on real photos (needs ../shared)
# ---------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_squeezenet_saliency_falls_on_the_object(shared):
    """On ImageNet validation photos, the saliency map of the true class puts more of its mass inside
    the ground-truth boxes than the boxes' share of the image (11 of these 12 photos when measured)."""
    from scratchnet.io.datasets import imagenet_val_dev
    from scratchnet.io.images import load_image
    from scratchnet.models import load
    net = load("squeezenet1_0")
    ds = imagenet_val_dev(shared / "data" / "imagenet-val-dev")
    idx = np.linspace(0, len(ds) - 1, 12).astype(int)
    x = np.concatenate([display.prepare_pixels(net, load_image(ds.paths[i])) for i in idx])
    maps = saliency(net, x, ds.labels[idx]).maps
    gain = []
    for m, i in zip(maps, idx):
        inside = np.zeros(m.shape, bool)
        for x0, y0, x1, y1 in ds.boxes[i].astype(int):
            inside[y0:y1 + 1, x0:x1 + 1] = True
        gain.append(m[inside].sum() / m.sum() - inside.mean())
    assert sum(g > 0 for g in gain) >= 9 and np.mean(gain) > 0.08, np.round(gain, 2)


@pytest.mark.shared
def test_demo_of_a_network_trained_on_tiny_imagenet_uses_its_val_photos_and_boxes(shared, tmp_path, capsys):
    """A network with a mean image and Tiny-ImageNet's classes: the demo shows val photos of its class-model
    classes and measures the localisation error on val boxes (an untrained network here: the page's
    plumbing is what is tested; the trained run's figures are in the README)."""
    from scratchnet.io.datasets import tiny_imagenet
    from scratchnet.models import paper_net
    ds = tiny_imagenet(shared / "data" / "tiny-imagenet-200", "val")
    net = paper_net(64, num_classes=200, width=0.0625, seed=0, class_names=ds.class_names)
    net.mean_image = np.full((3, 64, 64), 110.0, np.float32)
    net.preprocess = dict(net.preprocess, mean_image=True, scale=1 / 64)
    net.save(tmp_path / "tiny.npz")
    out = run_cli(["demo", "--model", str(tmp_path / "tiny.npz"), "--quick", "--loc-photos", "12",
                   "--out", str(tmp_path / "demo")], capsys)
    summary = json.loads((Path(out["index"]).parent / "summary.json").read_text())
    (m,) = summary["models"].values()
    names = [s["photo"] for s in m["saliency"]]
    assert names and all(n.startswith("val_") for n in names)
    assert [s["label"] for s in m["saliency"]] == m["class_models"][0]["classes"]     # one photo per class shown
    assert ds.class_names[m["class_models"][0]["classes"][0]] == "goose"             # figure 1's first class
    loc = m["localisation_error"]
    assert loc["images"] == 12 and set(loc["methods"]) >= {"graphcut", "whole_image", "centre_box"}
    assert "Localisation error on 12 Tiny-ImageNet" in Path(out["index"]).read_text()


def test_ten_crop_map_averages_each_pixel_over_the_crops_covering_it(monkeypatch):
    from scratchnet.vis import saliency as sal_mod

    def constant_gradient(net, x, classes=None, rule="gradient"):
        return np.ones(x.shape, np.float32), np.full(len(x), 1), np.zeros((len(x), 5), np.float32)

    monkeypatch.setattr(sal_mod, "class_gradient", constant_gradient)
    img = (np.random.default_rng(2).random((12, 14, 3)) * 255).astype(np.uint8)
    r = sal_mod.ten_crop_saliency(tiny_net(dtype=np.float32), img, 1, resize=12)
    np.testing.assert_array_equal(r.map, 1.0)      # the mean of ones, however many crops cover a pixel


def test_network_wnids_are_imagenet_only_for_imagenet_names_and_own_wnids_only_one_a_class():
    from scratchnet.io.classnames import imagenet_class_names, imagenet_wnids
    head = [("gap", GlobalAvgPool())]
    names = [f"thing {i}" for i in range(1000)]
    assert display.network_wnids(Network(head, input_shape=(1000, 4, 4), class_names=names)) is None
    assert display.network_wnids(Network(head, input_shape=(1000, 4, 4))) == imagenet_wnids()
    assert display.network_wnids(Network(head, input_shape=(1000, 4, 4),
                                         class_names=imagenet_class_names())) == imagenet_wnids()
    own = ["n01440764", "n01443537", "n01484850"]
    assert display.network_wnids(Network(head, input_shape=(3, 4, 4), class_wnids=own)) == own
    assert display.network_wnids(Network(head, input_shape=(5, 4, 4), class_wnids=own)) is None   # 3 for 5
    assert display.network_wnids(Network(head, input_shape=(5, 4, 4), arch={"class_wnids": own})) is None
    assert display.network_wnids(Network(head, input_shape=(3, 4, 4), arch={"class_wnids": own})) == own


# ---------------------------------------------------------------------------------------------
# deconv: neuron choice, seeds, the per-layer table and the independent backward pass
# ---------------------------------------------------------------------------------------------
def test_layer_index_takes_negative_indices_and_refuses_beyond(net, x):
    n = len(net.layers)
    assert deconv.layer_index(net, -1) == n - 1 and deconv.layer_index(net, -n) == 0
    assert deconv.layer_index(net, np.int64(2)) == 2
    for bad in (n, -n - 1):
        with pytest.raises(ValueError, match="out of range"):
            deconv.layer_index(net, bad)
    np.testing.assert_array_equal(deconv.forward_to(net, x[:1], -1), net.forward(x[:1]))


def test_pick_neuron_channel_and_index_tuple_forms():
    act = np.zeros((2, 2, 3, 3))
    act[0, 1, 2, 1], act[0, 1, 0, 0], act[0, 0, 1, 1] = 5.0, -4.0, 9.0    # channel 1's max and min
    act[1, 1, 1, 2], act[1, 1, 2, 2] = 3.0, -2.0
    assert deconv.pick_neuron(act, 1) == [(1, 2, 1), (1, 1, 2)]            # the strongest of that channel
    assert deconv.pick_neuron(act, np.int64(0))[0] == (0, 1, 1)
    assert deconv.pick_neuron(act, (1, 0, 2)) == [(1, 0, 2), (1, 0, 2)]    # the same index for every image
    for bad in [(1, 2), (1, 2, 0, 0), (-1, 0, 0), (0, 3, 0), (2, 0, 0)]:
        with pytest.raises(ValueError, match="does not fit"):
            deconv.pick_neuron(act, bad)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="out of range"):
            deconv.pick_neuron(act, bad)


def test_map_seed_is_the_feature_map_and_reaches_the_backward_pass(net, x):
    """mode="map": the seed is channel c's activations (not ones), and reconstruct / compare_rules use it."""
    x2 = x[:2]
    act = deconv.forward_to(net, x2, "relu2")
    neurons = deconv.pick_neuron(act)
    seed = deconv.neuron_seed(act, neurons, "map")
    for n, (c, _, _) in enumerate(neurons):
        np.testing.assert_array_equal(seed[n, c], act[n, c])
        assert not np.delete(seed[n], c, axis=0).any()
    one = deconv.neuron_seed(act, neurons)
    assert one.sum() == 2 and all(one[(n,) + idx] == 1 for n, idx in enumerate(neurons))
    want = {}
    for rule in Rule:
        want[rule.value] = deconv.reference_backward(net, x2, "relu2", seed, rule)
        rec = deconv.reconstruct(net, x2, "relu2", rule, mode="map")
        assert rec.mode == "map" and rec.rule == rule.value and rec.neurons == neurons
        np.testing.assert_allclose(rec.images, want[rule.value], rtol=1e-10, atol=1e-12)
    (row,) = deconv.compare_rules(net, x2, ["relu2"], mode="map")
    rd = deconv.relative_difference
    assert row["deconvnet_vs_gradient"] == pytest.approx(rd(want["deconvnet"], want["gradient"]), rel=1e-9)
    assert row["guided_vs_gradient"] == pytest.approx(rd(want["guided"], want["gradient"]), rel=1e-9)
    assert row["guided_vs_deconvnet"] == pytest.approx(rd(want["guided"], want["deconvnet"]), rel=1e-9)
    assert len({row["deconvnet_vs_gradient"], row["guided_vs_gradient"], row["guided_vs_deconvnet"]}) == 3
    assert row["norms"] == pytest.approx({r: np.linalg.norm(v) for r, v in want.items()}, rel=1e-9)


def test_reconstruct_and_compare_rules_report_each_images_own_neuron(net, x):
    x3 = x[:3]
    act = deconv.forward_to(net, x3, "dw")
    rec = deconv.reconstruct(net, x3, "dw", neuron=1)
    want = [act[(n,) + idx] for n, idx in enumerate(rec.neurons)]
    assert len(set(want)) == 3
    np.testing.assert_array_equal(rec.activations, want)
    (row,) = deconv.compare_rules(net, x3, ["dw"], neuron=1)
    assert row["neuron"] == [list(i) for i in rec.neurons] and row["activation"] == [float(v) for v in want]
    assert row["relus"] == 4 == deconv.count_relus(net, "dw")       # relu1, fire's two, the block's


def test_relative_difference_is_relative_to_the_second_argument():
    assert deconv.relative_difference([1.0, 0.0], [0.0, 2.0]) == pytest.approx(np.sqrt(5) / 2)
    assert deconv.relative_difference([0.0, 2.0], [1.0, 0.0]) == pytest.approx(np.sqrt(5))
    assert deconv.relative_difference([0.0], [0.0]) == 0.0


def test_compare_rules_default_layers_are_those_with_a_4d_output(net, x):
    table = deconv.compare_rules(net, x[:1])
    assert [t["layer"] for t in table] == ["conv1", "relu1", "pool1", "fire", "dw", "conv2", "relu2"]
    assert [t["relus"] for t in table] == [0, 1, 1, 3, 4, 4, 5]


def test_gradient_check_compares_the_largest_entries_first(net, x):
    chk = deconv.gradient_check(net, x[:1], "relu2", n_pixels=6)
    g = deconv.reconstruct(net, x[:1], "relu2").images[0]
    top3 = [list(np.unravel_index(k, g.shape)) for k in np.argsort(np.abs(g).ravel())[::-1][:3]]
    assert chk["pixels"][:3] == top3


def _pool_net(padding=0, relu6=False):
    return Network([("act", ReLU6() if relu6 else ReLU()), ("pool", MaxPool2d(3, 2, padding=padding))],
                   input_shape=(1, 6, 6))


def _engine_and_reference(net, x1, layer, seed):
    out = {}
    for rule in Rule:
        deconv.forward_to(net, x1, layer)
        out[rule.value] = (deconv.backward_from(net, layer, seed, rule),
                           deconv.reference_backward(net, x1, layer, seed, rule))
    return out


@pytest.mark.parametrize("padding", [0, 1])
def test_reference_backward_max_pool_switches_with_ties_and_padding(padding):
    """The reference finds its own switches: the first maximum of a window wins (a flat image ties
    every window), and with padding a switch indexes the unpadded plane."""
    net = _pool_net(padding)
    for x1 in [np.ones((1, 1, 6, 6)), np.random.default_rng(6).standard_normal((1, 1, 6, 6))]:
        act = deconv.forward_to(net, x1, "pool")
        seed = np.ones_like(act)
        for rule, (ours, ref) in _engine_and_reference(net, x1, "pool", seed).items():
            assert ours.any()
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12, err_msg=rule)
    x1 = np.ones((1, 1, 6, 6))                          # flat: each window's first entry is its switch
    ref = deconv.reference_backward(net, x1, "pool", np.ones((1, 1) + deconv.forward_to(net, x1, "pool").shape[2:]))
    assert ref[0, 0, 0, 0] >= 1 and ref[0, 0, -1, -1] == 0


def test_reference_backward_relu6_is_closed_above_six():
    net = _pool_net(relu6=True)
    x1 = 3 + 4 * np.random.default_rng(7).standard_normal((1, 1, 6, 6))    # below 0, inside, above 6
    assert (x1 > 6).any() and (x1 < 0).any()
    seed = np.random.default_rng(8).standard_normal((1, 1, 6, 6))
    for rule, (ours, ref) in _engine_and_reference(net, x1, "act", seed).items():
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14, err_msg=rule)
        if rule != "deconvnet":                             # the DeconvNet rule looks at dy only
            assert not ref[0, 0][x1[0, 0] > 6].any()


def test_reference_backward_batch_norm_uses_its_eps():
    from scratchnet.layers import BatchNorm2d
    net = Network([("bn", BatchNorm2d(2, eps=0.5)), ("act", ReLU())], input_shape=(2, 3, 3))
    net["bn"].params.update(gamma=np.array([1.5, -2.0]), beta=np.array([0.1, 0.2]))
    net["bn"].stats.update(mean=np.array([0.3, -0.2]), var=np.array([0.25, 1.0]))
    x1 = np.random.default_rng(9).standard_normal((1, 2, 3, 3))
    seed = np.random.default_rng(10).standard_normal((1, 2, 3, 3))
    for rule, (ours, ref) in _engine_and_reference(net, x1, "act", seed).items():
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14, err_msg=rule)
    scale = np.array([1.5, -2.0]) / np.sqrt(np.array([0.25, 1.0]) + 0.5)
    deconv.forward_to(net, x1, "act")
    np.testing.assert_allclose(deconv.reference_backward(net, x1, "act", seed, "deconvnet"),
                               seed * (seed > 0) * scale.reshape(1, 2, 1, 1), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# saliency: several classes per image, a (1,) class, the rule, the pictures
# ---------------------------------------------------------------------------------------------
def test_saliency_with_k_classes_per_image_reports_each_pairs_map_and_score(net, x):
    x3 = x[:3]
    classes = np.array([[0, 3], [4, 1], [2, 2]])
    s = saliency(net, x3, classes, "guided", batch_size=4)
    assert s.maps.shape == (3, 2, 8, 8) and s.classes.tolist() == classes.tolist() and s.rule == "guided"
    scores = net.forward(x3)
    for n in range(3):
        for j in range(2):
            g, _, _ = class_gradient(net, x3[n:n + 1], int(classes[n, j]), "guided")
            np.testing.assert_allclose(s.maps[n, j], np.abs(g[0]).max(axis=0), rtol=1e-9, atol=1e-12)
            assert s.scores[n, j] == pytest.approx(scores[n, classes[n, j]], rel=1e-12)
    one = saliency(net, x3, np.array([3]), batch_size=2)         # a (1,) array: that class for every image
    assert one.classes.tolist() == [3, 3, 3] and one.rule == "gradient"
    np.testing.assert_allclose(one.scores, scores[:, 3], rtol=1e-12)
    g, cls, _ = class_gradient(net, x3, np.array([3]))
    assert cls.tolist() == [3, 3, 3]


def test_map_image_saturates_at_the_percentile():
    from scratchnet.vis.saliency import map_image
    m = np.arange(100, dtype=np.float64).reshape(10, 10)
    img = map_image(m, pct=50)
    top = img.reshape(-1, 3)[99]
    assert (img[m >= 49.5] == top).all()                          # at or above the 50th percentile: full scale
    assert not (img[m < 45] == top).all(axis=-1).any()
    assert (map_image(m) != map_image(m, pct=50)).any()


def test_signed_image_stretches_by_the_magnitude_percentile():
    from scratchnet.vis.report import signed_image
    g = -np.linspace(0, 1, 48).reshape(3, 4, 4)                  # all negative: the stretch uses |g|
    img = signed_image(g, pct=100)
    assert img.shape == (4, 4, 3) and img[0, 0, 0] == 128 and img[-1, -1, 2] == 0
    assert 60 <= signed_image(np.full((3, 2, 2), -0.5) * [[[1]], [[2]], [[1]]], pct=100)[0, 0, 0] <= 68


def test_cli_classmodel_deconv_and_compare_rules_options_reach_the_library(tiny_path, photo, tmp_path, capsys,
                                                                           monkeypatch):
    from scratchnet.io.images import load_image
    from scratchnet.models import load_network
    from scratchnet.vis import saliency as sal_module
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "2", "--lr", "0.5",
                   "--lam", "0.01", "--optimiser", "plain", "--momentum", "0.5", "--jitter", "1", "--seed", "3",
                   "--start-noise", "2.5", "--out", str(tmp_path / "c")], capsys)
    s = out["settings"]
    assert (s["steps"], s["lr"], s["lam"], s["optimiser"], s["momentum"], s["jitter"], s["seed"], s["start_noise"]) == \
        (2, 0.5, 0.01, "plain", 0.5, 1, 3, 2.5)
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "2", "--fixed-step",
                   "--out", str(tmp_path / "f")], capsys)
    assert out["settings"]["step_control"] is False
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "2", "--step-factors",
                   "0.25", "1.5", "--out", str(tmp_path / "sf")], capsys)
    assert out["settings"]["step_control"] is True and out["settings"]["step_factors"] == [0.25, 1.5]
    for bad, says in ((["--step-factors", "0.5", "1.1", "--fixed-step"], "but --fixed-step turns step control off"),
                      (["--step-factors", "0.5", "1.1", "--regularised"], "but --regularised turns step control off"),
                      (["--step-factors", "0.5", "1.1", "--optimiser", "plain", "--lr", "1", "--jitter", "1"],
                       "but --optimiser plain, --jitter turns step control off"),
                      (["--step-factors", "1", "1.1"], "step_factors[0] (the step's factor after a fall) must be in "
                                                       "(0, 1), got 1.0")):
        from scratchnet.cli import main
        assert main(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "1",
                     "--out", str(tmp_path / "bad")] + bad) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and not (tmp_path / "bad").exists(), err
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "1", "--regularised",
                   "--out", str(tmp_path / "r")], capsys)
    assert all(out["settings"][k] == v for k, v in cm.REGULARISED.items())
    out = run_cli(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "1", "--regularised",
                   "--lam", "0", "--jitter", "0", "--out", str(tmp_path / "r0")], capsys)
    s = out["settings"]                          # what is given wins over --regularised's settings
    assert (s["lam"], s["jitter"], s["blur_every"]) == (0.0, 0, cm.REGULARISED["blur_every"])
    for bad, says in ((["--optimiser", "plain"], "--optimiser plain steps by --lr times the gradient"),
                      (["--optimiser", "plain", "--lr", "1", "--fixed-step"], "--optimiser plain has none")):
        assert main(["classmodel", "--model", str(tiny_path), "--class", "goose", "--steps", "1",
                     "--out", str(tmp_path / "bad")] + bad) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and not (tmp_path / "bad").exists(), err
    out = run_cli(["deconv", str(photo), "--model", str(tiny_path), "--layer", "dw", "--rule", "guided",
                   "--neuron", "1,0,2", "--mode", "map", "--out", str(tmp_path / "d")], capsys)
    (r,) = out["results"]
    assert out["mode"] == "map" and r["rule"] == "guided" and r["neuron"] == [1, 0, 2]
    net = load_network(tiny_path)
    x, _ = display.prepare_image(net, load_image(photo))
    want = deconv.reconstruct(net, x, "dw", "guided", (1, 0, 2), "map")
    np.testing.assert_allclose(np.load(r["npy"]), want.images[0], rtol=1e-6, atol=1e-7)
    assert r["activation"] == pytest.approx(float(want.activations[0]))
    out = run_cli(["compare-rules", str(photo), "--model", str(tiny_path), "--layers", "conv1", "dw", "--neuron", "2",
                   "--check-layer", "conv1", "--check-pixels", "5"], capsys)
    assert [t["layer"] for t in out["layers"]] == ["conv1", "dw"] and all(n[0] == 2 for t in out["layers"]
                                                                         for n in t["neuron"])
    assert out["gradient_check"]["layer"] == "conv1" and len(out["gradient_check"]["pixels"]) == 5
    assert out["gradient_check"]["neuron"][0] == 2
    seen = []
    real = sal_module.saliency
    monkeypatch.setattr(sal_module, "saliency", lambda *a, **k: seen.append(a[4:] or k) or real(*a, **k))
    run_cli(["saliency", str(photo), str(photo), "--model", str(tiny_path), "--batch-size", "1",
             "--out", str(tmp_path / "s")], capsys)
    assert seen == [(1,), (1,)]                 # a pass per group of --batch-size photos


def test_the_step_factor_bench_reports_what_class_model_gives(tiny_path):
    """bench/classmodel_steps.py: fixed steps, the defaults, then each --pairs pair; its rows are
    class_model's own mean final objective and score; a bad pair is refused in one line."""
    from scratchnet.models import load_network
    net = load_network(tiny_path)
    classes = [display.resolve_class(net, "goose"), 4]
    assert classes[0] != classes[1]
    p = run_bench("classmodel_steps.py", "--models", tiny_path, "--classes", "goose", "4", "--steps", "30",
                  "--lam", "1e-3", "--lr", "1.5", "--pairs", "0.5:1.1", "0.9:1.05", "0.5:2")
    rows = bench_json(p)["rows"]
    assert [r["step_factors"] for r in rows] == [None, [cm.STEP_DOWN, cm.STEP_UP], [0.5, 1.1], [0.5, 2.0]]   # no repeat
    assert f"{len(classes)} classes ['goose', '4'], 30 steps, lam 0.001, lr 1.5 grey levels" in p.stdout
    marked = [line for line in p.stdout.splitlines() if "(default)" in line]
    assert len(marked) == 1 and f"control {cm.STEP_DOWN:g} / {cm.STEP_UP:g} (default)" in marked[0]
    fell = []
    for r in rows:
        kw = dict(step_control=False) if r["step_factors"] is None else dict(step_factors=r["step_factors"])
        want = cm.class_model(net, classes, steps=30, lam=1e-3, lr=1.5, **kw)
        assert r["mean_objective"] == pytest.approx(float(np.mean(want.objective[-1])), abs=1e-3)
        assert r["mean_score"] == pytest.approx(float(np.mean(want.scores[-1])), abs=1e-3)
        assert r["mean_falls"] == (None if r["step_factors"] is None else pytest.approx(np.mean(want.settings["falls"])))
        assert r["objective_fell"] == bool((want.objective[-1] < want.objective[0]).any())
        fell.append(r["objective_fell"])
    assert any(fell) and not all(fell)                      # both cases occur here, so the column is tested
    assert "ended below where it started" not in p.stderr     # that warning is the column
    for bad, says in ((["--pairs", "1.2:1.1"], "expected 0 < DOWN < 1 <= UP, got '1.2:1.1'"),
                      (["--pairs", "0.5:inf"], "expected 0 < DOWN < 1 <= UP, got '0.5:inf'"),
                      (["--classes", "nosuchclass"], "unknown class 'nosuchclass'"),
                      (["--pairs", "0.5"], "expected DOWN:UP"), (["--steps", "0"], "expected an integer >= 1"),
                      (["--lr", "0"], "expected --lam >= 0 and --lr > 0")):
        p = run_bench("classmodel_steps.py", "--models", tiny_path, *bad)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr



def test_the_blas_drift_bench_compares_maps_across_settings(tiny_path):
    """bench/blas_drift.py: each setting's maps (scikit-image's photos) against the first's, computed in a
    fresh process under that environment; the same setting twice gives the same bits; the BLAS column is
    backend.numerics of that process; a setting that is not VAR=VALUE is refused in one line."""
    from scratchnet import threads
    p = run_bench("blas_drift.py", "--model", tiny_path, "--shared-photos", 0,
                  "--settings", "default", "OPENBLAS_NUM_THREADS=1", "default")
    out = bench_json(p)
    assert [r["setting"] for r in out["rows"]] == ["default", "OPENBLAS_NUM_THREADS=1", "default"]
    assert all(r["photos"] == 5 and r["same_top5"] == 5 for r in out["rows"])
    assert out["rows"][2]["changed"] == out["rows"][2]["max_rel_diff"] == 0
    if threads.openblas() is not None:
        assert out["rows"][1]["numerics"].endswith("-1t") and out["rows"][0]["numerics"] == out["rows"][2]["numerics"]
    p = run_bench("blas_drift.py", "--model", tiny_path, "--settings", "default", "HASWELL")
    assert p.returncode == 2 and "expected 'default' or VAR=VALUE" in p.stderr and "Traceback" not in p.stderr


def test_the_saliency_bench_runs_and_records_its_settings():
    """bench/bench_saliency.py at toy size (PyTorch's half where torch is installed): one row per network,
    and the JSON records OpenBLAS's kernels and --keep-freed-memory (glibc's mallopt, for both engines)."""
    out = bench_json(run_bench("bench_saliency.py", "--models", "paper_net224", "--batch", 1, "--repeats", 1,
                               "--keep-freed-memory"))
    assert out["keep_freed_memory"] is True and out["blas"].startswith(("OpenBLAS ", "unknown"))
    (row,) = out["results"]
    assert row["model"] == "paper_net224" and row["scratchnet_img_s"] > 0
    if "same_top1" in row:                                   # PyTorch ran beside it
        assert row["same_top1"] and row["max_map_rel_diff"] < 0.1


def test_odd_arguments_of_the_visualisers_are_refused_in_one_line(net, live_net, x, tmp_path):
    """Each of these gave a wrong answer without a word (class -1 as class 4, neuron=True as channel 1, a
    layer name's letters as layers) or an IndexError / AxisError from inside NumPy."""
    from scratchnet.models import load
    from scratchnet.vis.saliency import map_image
    z = np.zeros((1, 3, 8, 8))
    net.save(tmp_path / "n.npz")
    for call, message in (
            (lambda: cm.objective_value(net, z, [-1], 1e-5), r"expected indices 0\.\.4, got \[-1\]"),
            (lambda: cm.objective_value(net, z, [5], 1e-5), r"expected indices 0\.\.4, got \[5\]"),
            (lambda: cm.objective_value(net, z, [1], float("nan")), "lam must be >= 0, got nan"),
            (lambda: cm.objective_value(net, z, [1, 2], 0.0), r"one class for all or one per image \(M,\)"),
            (lambda: cm.class_model(live_net, [3], steps=1, score_layer="gap"),
             r"channel c of score_layer 'gap', so its output must be \(M, C, H, W\) with C > 3"),
            (lambda: cm.class_model(live_net, [4], steps=1, score_layer="conv1"),
             r"with C > 4, the largest class asked for; it is \(1, 4, 8, 8\)"),
            (lambda: deconv.reconstruct(net, x, "conv2", neuron=True), "neuron must be 'max', a channel index"),
            (lambda: deconv.reconstruct(net, x, "conv2", neuron=3.0), "neuron must be 'max', a channel index"),
            (lambda: deconv.reconstruct(net, x, "conv2", neuron=(0, 1.5, 0)), "an index tuple of integers"),
            (lambda: saliency(net, x, classes=np.zeros((3, 0), np.int64)), "k >= 1 classes per image"),
            (lambda: map_image(np.full((4, 4), np.nan)), "the map holds 16 NaN or infinite values of 16"),
            (lambda: load(tmp_path / "n.npz", num_classes=5), r"\['num_classes'\] are options of the pretrained")):
        with pytest.raises(ValueError, match=message):
            call()
    assert cm.objective_value(net, z, np.array([3]), 0.0).shape == (1,)
    two = np.concatenate([z, z + 0.5])
    np.testing.assert_array_equal(cm.objective_value(net, two, 3, 0.0), cm.objective_value(net, two, [3, 3], 0.0))
    r = deconv.reconstruct(net, x, "conv2", neuron=np.int64(1))
    assert all(n[0] == 1 for n in r.neurons)
    assert [row["layer"] for row in deconv.compare_rules(net, x, layers="conv2")] == ["conv2"]   # not c, o, n...


def test_the_ten_crop_centre_is_the_networks_centre_crop_when_the_margin_is_odd():
    """SqueezeNet's 227 in 256 leaves 29 spare pixels: the 10-crop's centre crop must be the one the network
    sees (io.images.centre_crop: the spare pixel after), not one pixel on (the tests' photos all had even
    margins)."""
    from scratchnet.io.images import centre_crop
    from scratchnet.vis.saliency import ten_crop_boxes
    rng = np.random.default_rng(0)
    for H, W, h, w in ((13, 15, 8, 8), (256, 256, 227, 227), (256, 341, 227, 227)):
        y, x = ten_crop_boxes(H, W, h, w)[4]
        pix = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        np.testing.assert_array_equal(pix[y:y + h, x:x + w], centre_crop(pix, (h, w)))


def test_ten_crop_map_is_zero_where_no_crop_reaches():
    """With the photo resized to more than twice the crop (20 for 8 x 8 crops), rows 8..11 of the left
    edge are in no crop: the map is 0 there, not 0 / 0 = NaN (which map_image would refuse)."""
    net = tiny_net(size=8)
    img = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    r = ten_crop_saliency(net, img, 1, resize=20)
    assert np.isfinite(r.map).all() and r.map.shape == (20, 20)
    assert (r.map[8:12, :6] == 0).all() and (r.map[:8, :8] > 0).any()


def test_grey_level_counts_the_preprocessing_std():
    """A network whose preprocessing divides by a std (as EfficientNet's does): one grey level is scale / std
    in input space, which is what prepare_pixels makes of two images one level apart; no network in the
    other tests had a std, and u = scale * std passed."""
    net = tiny_net()
    net.preprocess = {"channel_order": "RGB", "mean": [120.0, 110.0, 100.0], "std": [4.0, 4.0, 4.0], "scale": 1.0}
    a, b = (display.prepare_pixels(net, np.full((8, 8, 3), v, np.uint8)) for v in (100, 101))
    np.testing.assert_allclose(b - a, cm.grey_level(net))
    assert cm.grey_level(net) == 0.25


def test_photos_with_the_longest_names_get_their_outputs(tiny_path, photo, tmp_path, capsys):
    """A photo's 250-byte name made `<stem>_gradient_map.png` too long for a file name: the whole batch
    stopped there. Stems are cut to 200 bytes (whole characters; names not in UTF-8 too)."""
    import os
    import shutil
    long_a = tmp_path / ("L" * 250 + ".png")
    long_b = tmp_path / ("é" * 125 + ".png")
    odd = tmp_path / os.fsdecode(b"bad\xff\xfe.png")
    for p in (long_a, long_b, odd):
        shutil.copy(photo, p)
    out = run_cli(["saliency", str(long_a), str(long_b), str(odd), str(photo), "--model", str(tiny_path),
                   "--rule", "all", "--out", str(tmp_path / "s")], capsys)
    assert len(out["results"]) == 12 and all(Path(r["overlay_png"]).exists() for r in out["results"])
    assert max(len(os.fsencode(p.name)) for p in (tmp_path / "s").iterdir()) <= 255


def test_the_reports_alt_text_is_the_captions_plain_text():
    from scratchnet.vis.report import _plain
    assert _plain('quo&quot;te&#x27;: <b>bookshop</b> &amp; co') == "quo\"te': bookshop & co"


# -- from a mutation round on the demo's publishing, class_model's groups and saliency's streaming ---------------
def test_the_demo_publishes_under_the_folders_lock_and_counts_its_pictures(tiny_path, tmp_path, capsys, monkeypatch):
    """The pictures are moved over an earlier report's while out/.publish.lock is held (two demos into
    one folder take turns), and summary.json's "images" is the number of pictures published."""
    import fcntl
    import os

    from scratchnet.vis import report
    out, seen = tmp_path / "demo", []
    real_publish = report.publish

    def publish(stage, folder, files):
        fd = os.open(Path(folder) / ".publish.lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(len(dict.fromkeys(files)))
        return real_publish(stage, folder, files)
    monkeypatch.setattr(report, "publish", publish)
    summary = run_cli(["demo", "--model", str(tiny_path), "--quick", "--steps", "2", "--out", str(out)], capsys)
    pngs = [p for p in out.rglob("*.png")]
    assert seen == [summary["images"]] == [len(pngs)]


def test_class_model_start_images_and_jitter_are_draws_of_one_generator(live_net, capsys, monkeypatch):
    """As before batch_size: default_rng(seed) gives the start images, then the jitter's rolls (not a
    second generator's first draws); a single group prints no "classes i-j of M" line."""
    shape = (2,) + tuple(live_net.input_shape)

    def after_starts(s):
        rng = np.random.default_rng(s)
        rng.standard_normal(shape)
        return tuple(int(v) for v in rng.integers(-2, 3, 2))
    seed = next(s for s in range(100) if all(after_starts(s)) and
                after_starts(s) != tuple(int(v) for v in np.random.default_rng(s).integers(-2, 3, 2)))
    rolls, real_roll = [], np.roll
    monkeypatch.setattr(np, "roll", lambda a, shift, axis=None: rolls.append(tuple(int(v) for v in shift))
                        or real_roll(a, shift, axis))
    cm.class_model(live_net, [0, 1], steps=1, jitter=2, start_noise=5.0, seed=seed, progress=sys.stderr)
    monkeypatch.undo()
    assert rolls[0] == after_starts(seed)
    assert "classes" not in capsys.readouterr().err


def test_cli_ten_crop_saliency_of_several_photos_names_and_writes_each_in_turn(tiny_path, photo, tmp_path, capsys,
                                                                              monkeypatch):
    """--ten-crop goes one photo at a time (its ten crops are the batch), each photo's files written
    before the next is read, under its own name (a/x.png, b/x.png: x, x_2), with its input picture even
    for a single rule; the plain path's progress lines count the photos from 1."""
    import shutil

    from scratchnet.vis import saliency as sal_module
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(photo, tmp_path / d / "x.png")
    made, real = [], sal_module.ten_crop_saliency
    monkeypatch.setattr(sal_module, "ten_crop_saliency", lambda *a, **k: made.append(
        sorted(f.name for f in (tmp_path / "s").glob("*_map.npy"))) or real(*a, **k))
    out, _ = clirun.run_cli(["saliency", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--model", tiny_path,
                             "--ten-crop", "--batch-size", "4", "--out", tmp_path / "s"], capsys)
    monkeypatch.undo()
    assert made == [[], ["x_gradient_map.npy"]]
    assert [Path(r["map_npy"]).name for r in out["results"]] == ["x_gradient_map.npy", "x_2_gradient_map.npy"]
    assert (tmp_path / "s" / "x_input.png").is_file() and (tmp_path / "s" / "x_2_input.png").is_file()
    _, err = clirun.run_cli(["saliency", photo, photo, photo, "--model", tiny_path, "--batch-size", "2",
                             "--out", tmp_path / "p"], capsys)
    assert "of images 1-2 of 3" in err and "of images 3-3 of 3" in err


def test_class_model_momentum_carries_the_velocity(live_net):
    """With momentum the step is mu v + g / rms(g): the velocity is kept from step to step."""
    a = cm.class_model(live_net, [0, 1], steps=4, momentum=0.0, step_control=False)
    b = cm.class_model(live_net, [0, 1], steps=4, momentum=0.9, step_control=False)
    assert not np.array_equal(a.x, b.x)


def test_the_zero_gradient_warning_names_the_noise_start(net, capsys):
    dead = copy.deepcopy(net)
    for _, lay, key in dead.named_params():
        lay.params[key] = np.zeros_like(lay.params[key])
    cm.class_model(dead, [0], steps=1, start_noise=10)
    err = capsys.readouterr().err
    assert "gradient at the start image is exactly 0" in err and "start from noise" not in err, err
