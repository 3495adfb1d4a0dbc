"""Section 4 of the paper (relation to DeconvNets) as tests: the gradient of a class score w.r.t. the
image is what `backward(rule="gradient")` returns, and the DeconvNet reconstruction differs from it only
at ReLU.
"""
from __future__ import annotations

import numpy as np
import pytest

from scratchnet.layers import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU, Rule)
from scratchnet.models import load_network, paper_net

from scratchnet.gradcheck import numerical_grad, rel_error


@pytest.fixture(scope="module")
def small_net():
    """The paper's network (all its layer types: conv, ReLU, LRN, ceil-mode max-pool, FC, dropout)
    at 32x32 and width 1/16, in float64."""
    return paper_net(input_size=32, num_classes=5, width=1 / 16, seed=1, dtype=np.float64)


def test_gradient_rule_is_the_numerical_gradient_of_the_class_score(small_net):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 32, 32))
    c = 2
    onehot = np.zeros((1, 5))
    onehot[0, c] = 1
    small_net.forward(x)
    g = small_net.backward(onehot, rule="gradient", param_grads=False)
    # numerical derivative of S_c at 40 random pixels, errors relative to the largest of them
    idx = [tuple(rng.integers(0, s) for s in x.shape) for _ in range(40)]
    num = np.empty(len(idx))
    for j, i in enumerate(idx):
        xp, xm = x.copy(), x.copy()
        xp[i] += 1e-5
        xm[i] -= 1e-5
        num[j] = (small_net.forward(xp)[0, c] - small_net.forward(xm)[0, c]) / 2e-5
    analytic = np.array([g[i] for i in idx])
    assert np.count_nonzero(analytic) >= 30, "most checked pixels must have a gradient to compare"
    assert rel_error(analytic, num) < 1e-6, np.abs(analytic - num).max()


def test_param_gradients_of_the_whole_network_match_numerical(small_net):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32))
    dscores = rng.standard_normal((2, 5))
    small_net.forward(x)
    small_net.backward(dscores, input_grad=False)
    for name in ("conv3.b", "fc8.b"):
        layer = small_net[name.split(".")[0]]
        num = numerical_grad(lambda: float((small_net.forward(x) * dscores).sum()), layer.params["b"])
        assert rel_error(layer.grads["b"], num) < 1e-6, name
    # and 12 entries of every parameter of every layer, weights included
    for name, layer, key in small_net.named_params():
        flat = layer.params[key].reshape(-1)
        picks = rng.choice(flat.size, size=min(12, flat.size), replace=False)
        num = np.empty(len(picks))
        for j, i in enumerate(picks):
            old = flat[i]
            flat[i] = old + 1e-6
            fp = float((small_net.forward(x) * dscores).sum())
            flat[i] = old - 1e-6
            fm = float((small_net.forward(x) * dscores).sum())
            flat[i] = old
            num[j] = (fp - fm) / 2e-6
        analytic = layer.grads[key].reshape(-1)[picks]
        assert np.any(analytic), name
        assert rel_error(analytic, num) < 1e-6, (name, rel_error(analytic, num))


def _transpose_conv(dy, conv, in_shape):
    """Hand-built transpose of a convolution: scatter W^T dy back through the receptive fields
    (a loop per kernel offset). Independent of Conv2d.backward."""
    n, c, h, w = in_shape
    pads = conv.pads_for(h, w)
    W = conv.params["W"]
    o, _, kh, kw = W.shape
    sh, sw = conv.stride
    oh, ow = dy.shape[2:]
    out = np.zeros((n, c, h + pads[0] + pads[1], w + pads[2] + pads[3]))
    for i in range(kh):
        for j in range(kw):
            # out[:, c, i + p*sh, j + q*sw] += sum_o W[o, c, i, j] dy[:, o, p, q]
            out[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += np.einsum(
                "oc,nopq->ncpq", W[:, :, i, j], dy)
    return out[:, :, pads[0]:pads[0] + h, pads[2]:pads[2] + w]


def _unpool(dy, x, pool):
    """Max 'unpooling' with switches recomputed from the pool's input (first maximum wins)."""
    n, c, h, w = x.shape
    kh, kw = pool.kernel
    sh, sw = pool.stride
    out = np.zeros_like(x)
    for p in range(dy.shape[2]):
        for q in range(dy.shape[3]):
            win = x[:, :, p * sh:p * sh + kh, q * sw:q * sw + kw].reshape(n, c, -1)
            k = win.argmax(axis=2)
            wi = min(kw, w - q * sw)   # window width (clipped at the right edge in ceil mode)
            ys, xs = p * sh + k // wi, q * sw + k % wi
            for a in range(n):
                for b in range(c):
                    out[a, b, ys[a, b], xs[a, b]] += dy[a, b, p, q]
    return out


def _reconstruct_by_hand(net, x, dscores, relu_rule):
    """DeconvNet-style reconstruction built from conv transposes, unpooling with switches, the
    transpose of the linear layers, and the given ReLU rule; LRN (a smooth layer) uses its Jacobian.
    Only the ReLU rule distinguishes the three methods."""
    acts = [x]
    for _, layer in net.layers:
        acts.append(layer.forward(acts[-1]))
    d = dscores
    for i in range(len(net.layers) - 1, -1, -1):
        layer, inp = net.layers[i][1], acts[i]
        if isinstance(layer, Conv2d):
            d = _transpose_conv(d, layer, inp.shape)
        elif isinstance(layer, Linear):
            d = d @ layer.params["W"]
        elif isinstance(layer, MaxPool2d):
            d = _unpool(d, inp, layer)
        elif isinstance(layer, ReLU):
            if relu_rule == "gradient":
                d = d * (inp > 0)
            elif relu_rule == "deconvnet":
                d = d * (d > 0)
            else:
                d = d * (inp > 0) * (d > 0)
        elif isinstance(layer, Flatten):
            d = d.reshape(inp.shape)
        elif isinstance(layer, Dropout):
            pass
        elif isinstance(layer, LocalResponseNorm):
            layer.forward(inp)
            d = layer.backward(d)
        else:
            raise AssertionError(type(layer))
    return d


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_deconvnet_differs_from_gradient_only_at_relu(small_net, rule):
    """Rebuilding each method by hand from the layer transposes, with only the ReLU rule changed,
    gives exactly what the engine's backward returns for that rule."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 32, 32))
    dscores = np.zeros((1, 5))
    dscores[0, 1] = 1
    small_net.forward(x)
    engine = small_net.backward(dscores, rule=rule, param_grads=False)
    by_hand = _reconstruct_by_hand(small_net, x, dscores, rule)
    assert rel_error(engine, by_hand) < 1e-10


def test_the_three_rules_really_differ(small_net):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 32, 32))
    dscores = np.zeros((1, 5))
    dscores[0, 0] = 1
    out = {}
    for rule in Rule:
        small_net.forward(x)
        out[rule] = small_net.backward(dscores, rule=rule, param_grads=False)
    assert rel_error(out[Rule.GRADIENT], out[Rule.DECONVNET]) > 1e-3
    assert rel_error(out[Rule.GRADIENT], out[Rule.GUIDED]) > 1e-3


def test_skipping_gradients_nobody_asked_for(small_net):
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32))
    small_net.zero_grads()
    small_net.forward(x)
    assert small_net.backward(np.ones((2, 5)), input_grad=False) is None       # training: no image gradient
    assert "W" in small_net["conv1"].grads
    small_net.zero_grads()
    small_net.forward(x)
    dx = small_net.backward(np.ones((2, 5)), param_grads=False)                # saliency: no weight gradients
    assert dx.shape == x.shape and not small_net["conv1"].grads


def test_save_load_round_trip_and_mismatch(tmp_path):
    net = paper_net(input_size=32, num_classes=7, width=1 / 16, seed=2)
    net.mean_image = np.full((3, 32, 32), 100, np.float32)
    path = net.save(tmp_path / "m.npz")
    back = load_network(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x), back.forward(x))
    assert back.arch == net.arch and back.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(back.mean_image, net.mean_image)
    bad = dict(np.load(path))
    bad["param/conv1.W"] = bad["param/conv1.W"][:, :2]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="conv1.W has shape"):
        load_network(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a scratchnet network"):
        load_network(tmp_path / "other.npz")
    # files that are no .npz at all: named without NumPy's advice to unpickle them
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("hello")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])
    (tmp_path / "folder.npz").mkdir()
    for name, what in [("array.npy", "a single .npy array"), ("text.npz", "starting with b'hello'"),
                       ("empty.npz", "starting with b''"), ("cut.npz", "not a scratchnet network"),
                       ("folder.npz", "got a directory")]:
        with pytest.raises(ValueError, match="not a scratchnet network") as e:
            load_network(tmp_path / name)
        assert what in str(e.value) and "pickle" not in str(e.value), str(e.value)


def test_network_input_errors_are_clear():
    net = paper_net(input_size=32, num_classes=3, width=1 / 16)
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward(np.full((1, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        net.forward(np.zeros((1, 3, 32, 32), np.int64))
    with pytest.raises(ValueError, match="3 colour channels, got 1"):
        net.forward(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net.forward(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="too small|smaller than"):
        net.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="image size does not match"):
        net.forward(np.zeros((1, 3, 64, 64), np.float32))


def test_paper_net_shapes_and_flops():
    from scratchnet.models import flops_per_layer
    net = paper_net(224)
    shapes = {}
    s = (1, 3, 224, 224)
    for name, layer in net.layers:
        s = layer.output_shape(s)
        shapes[name] = s
    assert shapes["conv1"][2:] == (109, 109) and shapes["pool1"][2:] == (54, 54)
    assert shapes["conv2"][2:] == (26, 26) and shapes["pool2"][2:] == (13, 13)
    assert shapes["pool5"] == (1, 256, 6, 6) and shapes["fc8"] == (1, 1000)
    assert abs(sum(g for _, g in flops_per_layer(net, (3, 224, 224))) - 1.49) < 0.01
    net64 = paper_net(64, num_classes=200)
    assert net64.output_shape((1, 3, 64, 64)) == (1, 200)
    assert net64["fc6"].in_features == 4 * 4 * 256
