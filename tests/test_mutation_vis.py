"""Tests from a mutation audit of gradcheck.py, vis/deconv.py, vis/report.py, vis/display.py,
localise/network.py and models/network.py: each kills a planted change that the rest of the suite let
through (the demo page's pictures and tables, display helpers, the localisation glue)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from scratchnet.layers import Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, ReLU, Rule
from scratchnet.models import Network
from scratchnet.vis import display, report

PRE = {"channel_order": "RGB", "mean": [120.0, 110.0, 100.0], "scale": 1 / 64}
NAMES = ["goose", "ostrich", "cup", "lemon", "limousine"]


def small_net(size=16, seed=0, dtype=np.float64, **kw):
    """conv-ReLU-pool-conv-ReLU, global average, linear: size x size RGB -> 5 named classes."""
    net = Network([("conv1", Conv2d(3, 6, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2, 2)),
                   ("conv2", Conv2d(6, 8, 3, padding=1)), ("relu2", ReLU()), ("gap", GlobalAvgPool()),
                   ("fc", Linear(8, 5))], input_shape=(3, size, size), class_names=list(NAMES),
                  preprocess=dict(PRE), name="small", **kw)
    rng = np.random.default_rng(seed)
    for _, layer, key in net.named_params():
        layer.params[key] = (rng.standard_normal(layer.params[key].shape) * 0.5).astype(dtype)
    return net


def photo(h, w, seed=1):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# vis/report.py: the demo page
# ---------------------------------------------------------------------------------------------
def test_signed_image_puts_bgr_channels_in_rgb_order():
    g = np.zeros((3, 2, 2))
    g[0] = 1.0                                          # channel 0: blue in a BGR network
    net = Network([("flat", Flatten())], input_shape=(3, 2, 2), preprocess={"channel_order": "BGR"})
    rgb = report.signed_image(g, net, pct=100)
    assert (rgb[..., 2] == 255).all() and (rgb[..., :2] == 128).all()
    np.testing.assert_array_equal(rgb, report.signed_image(g, pct=100)[..., ::-1])


def test_draw_box_outline_is_width_pixels_on_every_side():
    out = report.draw_box(np.zeros((12, 12, 3), np.uint8), (2, 3, 9, 10), (255, 0, 0), width=2)
    want = np.zeros((12, 12), bool)
    want[3:11, 2:10] = True                             # the inclusive box
    want[5:9, 4:8] = False                              # less its 2-pixel outline
    np.testing.assert_array_equal(out[..., 0] == 255, want)


def test_default_classes_of_a_network_with_its_own_class_list():
    """Not ImageNet-1k: the figure-1 classes it has, then the distinctive Tiny-ImageNet ones, then its
    first classes; exactly n of them."""
    names = ["cat", "banana", "goose", "school bus", "dog", "egg"]
    net = Network([("flat", Flatten()), ("fc", Linear(3, 6))], input_shape=(3, 1, 1), class_names=names)
    assert report.default_classes(net, 3) == [2, 3, 1]          # goose, school bus, banana
    assert report.default_classes(net, 5) == [2, 3, 1, 0, 4]


def test_saliency_section_reports_each_photos_own_softmax_probability(tmp_path):
    net = small_net()
    photos = [(f"p{i}", photo(20, 24, seed=i), {}) for i in range(3)]
    shots, rows = report.section_saliency(report.Page(tmp_path), net, "t", photos, True, None)
    for (title, img, _), row, shot in zip(photos, rows, shots):
        x, _ = display.prepare_image(net, img)
        s = net.forward(x)[0]
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        assert row["top1"] == NAMES[shot["cls"]] and shot["cls"] == int(s.argmax())
        assert row["prob"] == pytest.approx(p[shot["cls"]], rel=1e-6)


def test_rules_section_draws_each_rules_own_class_score_map(tmp_path):
    from scratchnet.io.images import load_image
    from scratchnet.vis.saliency import map_image, saliency
    net = small_net()
    page = report.Page(tmp_path)
    shots, _ = report.section_saliency(page, net, "t", [("p", photo(20, 24), {})], True, None)
    report.section_rules(page, net, "t", shots, True, None)
    x = display.prepare_pixels(net, shots[0]["pixels"])
    drawn = {}
    for r in Rule:
        want = report._upscale(map_image(saliency(net, x, shots[0]["cls"], r).maps[0]))
        drawn[r.value] = load_image(tmp_path / "t" / f"rule_{r.value}_0.png")
        np.testing.assert_array_equal(drawn[r.value], want, err_msg=r.value)
    assert not np.array_equal(drawn["gradient"], drawn["guided"])     # the example tells them apart


def test_localisation_section_reports_the_best_iou_over_the_true_boxes(tmp_path, monkeypatch):
    import scratchnet.localise as loc
    box = (1, 1, 4, 4)
    monkeypatch.setattr(loc, "segment", lambda img, smap, **kw: SimpleNamespace(
        box=box, component=np.zeros(img.shape[:2], bool), mask=np.zeros(img.shape[:2], bool), fallback=None))
    shot = dict(title="p", loc_pixels=photo(8, 8), loc_map=np.ones((8, 8), np.float32), loc_ten_crop=False,
                loc_gt=[[1, 1, 4, 4], [5, 5, 7, 7]])      # the first true box is the found one, the second is apart
    (row,) = report.section_localisation(report.Page(tmp_path), small_net(), "t", [shot], None)
    assert row["box"] == list(box) and row["iou"] == 1.0


# ---------------------------------------------------------------------------------------------
# vis/display.py
# ---------------------------------------------------------------------------------------------
def test_prepare_pixels_refuses_images_of_another_size():
    with pytest.raises(ValueError, match=r"images are 5x6, the network takes 16x16 \(resize or crop first"):
        display.prepare_pixels(small_net(), np.zeros((5, 6, 3), np.uint8))


def test_stretch_maps_each_images_own_percentiles_to_0_and_255():
    a = np.linspace(10, 20, 300).reshape(10, 10, 3)             # away from 0: lo matters
    out = display.stretch(np.stack([a, 3 * a + 100]), 0, 100)
    for im in out:
        assert im.min() == 0 and im.max() == 255
    np.testing.assert_array_equal(out[0], out[1])               # a linear change of one image: the same picture


def test_prepare_image_says_it_takes_square_inputs_only():
    net = Network([("flat", Flatten()), ("fc", Linear(72, 5))], input_shape=(3, 4, 6), class_names=NAMES)
    with pytest.raises(ValueError, match="prepare_image handles square network inputs, this one is 4x6"):
        display.prepare_image(net, photo(10, 10))


def test_resolve_classes_refuses_bools_as_a_list_of_non_integers():
    with pytest.raises(ValueError, match=r"classes must be integer indices, wnids or class names, got bool"):
        display.resolve_classes(small_net(), [True, False])


# ---------------------------------------------------------------------------------------------
# localise/network.py
# ---------------------------------------------------------------------------------------------
def test_network_saliency_wants_one_list_of_extra_classes_per_photo():
    from scratchnet.localise.network import network_saliency
    with pytest.raises(ValueError, match=r"expected one list of extra classes per photo \(2\), got 1"):
        network_saliency(small_net(), [photo(16, 16), photo(16, 16, 2)], top=1, extra=[[3]])


def test_single_view_maps_use_the_rule_asked_for():
    from scratchnet.localise.network import network_saliency
    from scratchnet.vis.saliency import saliency
    net, img = small_net(), photo(16, 16)
    x = display.prepare_pixels(net, img)
    maps = {}
    for r in ("gradient", "guided", "deconvnet"):
        maps[r] = network_saliency(net, [img], top=0, extra=[[2]], rule=r)[0]["maps"][0]
        np.testing.assert_allclose(maps[r], saliency(net, x, 2, r).maps[0], rtol=1e-6, atol=1e-12)
    assert not np.allclose(maps["gradient"], maps["guided"])


def test_tied_scores_give_the_lower_class_index_first():
    from scratchnet.localise.network import network_saliency
    net = small_net()
    net["fc"].params["W"][:] = 0
    net["fc"].params["b"][:] = [0.0, 1.0, 1.0, 1.0, 0.5]         # classes 1, 2, 3 tie for the top
    assert network_saliency(net, [photo(16, 16)], top=4)[0]["classes"] == [1, 2, 3, 4]


def test_draw_result_tint_is_alpha_of_the_colour():
    from scratchnet.localise.network import draw_result
    img = np.full((6, 6, 3), 100, np.uint8)
    out = draw_result(img, np.ones((6, 6), bool), None, colour=(200, 0, 100), alpha=0.25)
    assert (out == np.array([125, 75, 100], np.uint8)).all()     # 0.75 * 100 + 0.25 * colour

