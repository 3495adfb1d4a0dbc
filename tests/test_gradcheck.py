"""scratchnet.gradcheck and `scratchnet gradcheck`: the checks catch planted mistakes, pass correct
code, and leave out the central differences that straddle a ReLU kink or a pooling switch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scratchnet.cli import main
from scratchnet.gradcheck import (LAYER_GRID, TOLERANCE, _picks, check_grid_entry, check_layer, check_network,
                                  make_input, randomise_params, rel_error, select_grid)
from scratchnet.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, ReLU6
from scratchnet.models import Network, paper_net

from clirun import run_cli


class _DoubledDx(Linear):
    """A Linear whose backward returns twice the input gradient (a planted mistake)."""

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        dx = super().backward(dy, rule, param_grads, input_grad)
        return None if dx is None else 2 * dx


def test_check_layer_catches_a_wrong_input_gradient_and_passes_the_right_one():
    x = np.random.default_rng(0).standard_normal((3, 6))
    good = check_layer(randomise_params(Linear(6, 4)), x)
    assert max(good.values()) < TOLERANCE
    bad = check_layer(randomise_params(_DoubledDx(6, 4)), x)
    assert bad["x"] > 0.4 and bad["W"] < TOLERANCE        # only dx is wrong, and it is named


def test_check_layer_refuses_float32_and_an_all_zero_gradient():
    with pytest.raises(TypeError, match="float64"):
        check_layer(Linear(6, 4), np.zeros((3, 6), np.float32))
    single = randomise_params(Linear(6, 4)).astype(np.float32)          # float64 input, float32 layer:
    with pytest.raises(TypeError, match=r"need the layer in float64, got W \(float32\), b \(float32\)"):
        check_layer(single, np.ones((3, 6)))                            # its "errors" would be round-off
    from scratchnet.layers import Dropout
    with pytest.raises(ValueError, match="two forward passes of the same input differ .* pass reset="):
        check_layer(Dropout(0.5), np.ones((4, 5)), train=True)         # each forward draws a new mask
    with pytest.raises(ValueError, match="all zero"):
        check_layer(ReLU(), -np.ones((2, 3)))           # every unit off: dx == 0 would prove nothing
    with pytest.raises(ValueError, match=r"the parameters \['W', 'b'\] are all zero \(layers start at zero\): "
                                         r"give them values first, e.g. scratchnet.gradcheck.randomise_params"):
        check_layer(Conv2d(3, 4, 3).astype(np.float64), np.random.default_rng(0).standard_normal((2, 3, 5, 5)))


def test_select_grid():
    assert [g[0] for g in select_grid(["lrn"])] == [g[0] for g in LAYER_GRID if "lrn" in g[0]]
    assert len(select_grid(None)) == len(LAYER_GRID) >= 47
    with pytest.raises(ValueError, match="the names are: conv3x3"):
        select_grid(["no-such-layer"])


def flip_fc7_bias_gradient(monkeypatch):
    """A planted mistake: the layer named fc7 returns its bias gradient with the wrong sign."""
    real = Linear.backward

    def flipped(self, dy, rule="gradient", param_grads=True, input_grad=True):
        dx = real(self, dy, rule, param_grads, input_grad)
        if param_grads and self.name == "fc7":
            self.grads["b"] = -self.grads["b"]
        return dx
    monkeypatch.setattr(Linear, "backward", flipped)


@pytest.fixture(scope="module")
def small_net():
    return paper_net(input_size=32, num_classes=5, width=1 / 16, seed=1, dtype=np.float64)


def test_check_network_passes_the_paper_network_and_catches_planted_mistakes(small_net, monkeypatch):
    res = check_network(small_net, cls=2, pixels=8, entries=2)
    assert res["worst"] < TOLERANCE and res["checked"] >= 30
    assert set(res["params"]) == {name for name, _, _ in small_net.named_params()}

    # the image gradient 1% off at one layer
    conv2 = type(small_net["conv2"])
    real = conv2.backward

    def off(self, dy, *a, **k):
        dx = real(self, dy, *a, **k)
        return dx * 1.01 if dx is not None and self.name == "conv2" else dx
    monkeypatch.setattr(conv2, "backward", off)
    res = check_network(small_net, cls=2, pixels=8, entries=0)
    assert 5e-3 < res["image"] < 2e-2 and res["worst"] == res["image"]
    monkeypatch.undo()

    # one parameter's gradient wrong (a bias gradient of the wrong sign)
    flip_fc7_bias_gradient(monkeypatch)
    res = check_network(small_net, cls=2, pixels=4, entries=2)
    assert res["params"]["fc7.b"] > 1 and res["params"]["fc6.b"] < TOLERANCE


def _kink_net(act=ReLU):
    net = Network([("flat", Flatten()), ("fc1", Linear(2, 2)), ("relu", act()), ("fc2", Linear(2, 1))],
                  input_shape=(1, 1, 2))
    net["fc1"].params["W"] = np.eye(2)
    net["fc1"].params["b"] = np.zeros(2)
    net["fc2"].params["W"] = np.array([[1.0, 2.0]])
    return net


def test_check_network_leaves_out_differences_across_a_kink():
    """Unit 0's pre-activation is exactly 0: a central difference in x[0] or in its bias straddles the
    ReLU kink (at eps and at eps / 100), so it is left out and counted, not compared."""
    net = _kink_net()
    x = np.array([0.0, 1.0]).reshape(1, 1, 1, 2)
    res = check_network(net, x=x, pixels=2, entries=4, eps_image=1e-4)
    assert res["kinks"]["image"] == 1 and res["image"] < 1e-9          # x[1] compared, x[0] left out
    assert res["kinks"]["fc1.b"] == 1                                   # b[0] straddles the kink
    assert res["kinks"]["fc1.W"] == 1 and res["params"]["fc1.W"] < 1e-9  # W[0, 1] (times x[1] = 1) straddles it
    assert res["worst"] < 1e-9


def test_check_network_does_not_count_zeros_agreeing_as_a_pass():
    """Both hidden units off: every gradient but fc2.b's is zero throughout, and zeros matched by zeros
    show nothing: those errors are None (not 0.0), and the worst is fc2.b's."""
    net = _kink_net()
    net["fc1"].params["b"] = -np.ones(2)
    res = check_network(net, x=np.full((1, 1, 1, 2), 0.5), pixels=2, entries=2)
    assert res["image"] is None
    assert res["params"]["fc1.W"] is None and res["params"]["fc1.b"] is None and res["params"]["fc2.W"] is None
    assert res["params"]["fc2.b"] < 1e-9 and res["worst"] == res["params"]["fc2.b"]


def test_check_network_of_a_fortran_ordered_parameter():
    """The check perturbs parameters through flat views; its own copy of the network is made contiguous
    first, or the perturbations would land in a copy and every difference would be 0."""
    net = Network([("flat", Flatten()), ("fc1", Linear(3, 2)), ("relu", ReLU()), ("fc2", Linear(2, 2))],
                  input_shape=(1, 1, 3))
    net["fc1"].params["W"] = np.asfortranarray(np.random.default_rng(0).standard_normal((2, 3)))
    net["fc1"].params["b"] = np.ones(2)
    net["fc2"].params["W"] = np.array([[1.0, -2.0], [0.5, 3.0]])
    res = check_network(net, pixels=3, entries=6)
    assert res["params"]["fc1.W"] < 1e-9 and res["worst"] < 1e-9


def test_check_network_class_out_of_range(small_net):
    with pytest.raises(ValueError, match="class index 5 is out of range: the network has 5 classes"):
        check_network(small_net, cls=5)


def test_gradcheck_command(capsys):
    out, _ = run_cli(["gradcheck", "--only", "lrn1", "relu6", "--pixels", "4", "--entries", "1"], capsys)
    assert [r["name"] for r in out["layers"]] == ["relu6", "lrn1"]
    assert all(r["ok"] for r in out["layers"]) and out["network"]["ok"] and out["failed"] == []
    net = out["network"]                                     # the options reach the network check
    assert (net["pixels"], net["entries"]) == (4, 1)
    assert net["checked"] == 4 + len(net["params"]) * 1 - sum(net["kinks"].values())

    # a bound nothing meets: exit 1, the failures named
    assert main(["gradcheck", "--only", "relu6", "--no-network", "--tol", "1e-30"]) == 1
    o, err = capsys.readouterr()
    assert "FAIL" in o and "failed: relu6" in err
    assert json.loads(o.strip().splitlines()[-1])["failed"] == ["relu6"]

    assert main(["gradcheck", "--only", "nothing-like-this"]) == 2
    assert "the names are" in capsys.readouterr().err
    assert main(["gradcheck", "--no-layers", "--no-network"]) == 2          # 0 of 0 checks is not a pass
    assert "--no-layers and --no-network together leave nothing to check" in capsys.readouterr().err

    # a class the network does not have: refused before any check runs
    assert main(["gradcheck", "--class", "5"]) == 2
    o, err = capsys.readouterr()
    assert "--class: class index 5 is out of range: expected 0..4" in err and "conv3x3" not in o
    assert main(["gradcheck", "--no-layers", "--class", "class 2", "--pixels", "2", "--entries", "0"]) == 0
    assert "image gradient of class 2's score" in capsys.readouterr().out     # a name, as other commands take


# ------------------------------------------------------------------ from a mutation audit of this module
def test_a_kink_within_eps_but_not_eps_over_100_is_retried_and_compared():
    # x[0] = 5e-5: +-1e-4 straddles ReLU's 0, +-1e-6 does not -> compared after the retry, not left out
    res = check_network(_kink_net(), x=np.array([5e-5, 1.0]).reshape(1, 1, 1, 2), pixels=2, entries=0,
                        eps_image=1e-4)
    assert res["kinks"]["image"] == 0 and res["image"] < 1e-9


def test_half_the_picks_rounded_up_are_the_largest():
    assert list(_picks(np.array([0.0, 0.0, 5.0, 0.0]), 1, np.random.default_rng(0))) == [2]
    assert list(_picks(np.arange(6.0), 3, np.random.default_rng(0))[:2]) == [5, 4]


def test_relu6_upper_kink_is_left_out():
    res = check_network(_kink_net(ReLU6), x=np.array([6.0, 1.0]).reshape(1, 1, 1, 2), pixels=2, entries=0,
                        eps_image=1e-4)
    assert res["kinks"]["image"] == 1 and res["image"] < 1e-9


def test_a_max_pool_tie_is_left_out():
    net = Network([("pool", MaxPool2d((1, 2))), ("flat", Flatten()), ("fc", Linear(1, 1))], input_shape=(1, 1, 2))
    net["fc"].params["W"] = np.array([[1.5]])
    res = check_network(net, x=np.ones((1, 1, 1, 2)), pixels=2, entries=0, eps_image=1e-4)
    assert res["kinks"]["image"] == 2 and res["image"] is None


def test_nothing_compared_is_worst_none_and_the_command_fails(monkeypatch, capsys):
    net = _kink_net()
    net["fc1"].params["b"] = -np.ones(2)            # both hidden units off: all zeros
    assert check_network(net, x=np.full((1, 1, 1, 2), 0.5), pixels=2, entries=0)["worst"] is None
    import scratchnet.gradcheck as gc
    monkeypatch.setattr(gc, "check_network", lambda *a, **k: dict(
        image=None, params={}, worst=None, kinks={"image": 4}, checked=0, forwards=16))
    assert main(["gradcheck", "--no-layers", "--pixels", "4", "--entries", "0"]) == 1
    assert "failed: network" in capsys.readouterr().err


def test_a_failing_parameter_is_named(monkeypatch, capsys):
    flip_fc7_bias_gradient(monkeypatch)
    assert main(["gradcheck", "--no-layers", "--pixels", "2", "--entries", "1"]) == 1
    assert "    fc7.b: " in capsys.readouterr().out


def test_rel_error_is_relative_to_the_larger_side():
    assert rel_error(np.array([2.0]), np.array([1.0])) == 0.5
    assert rel_error(np.array([1.0]), np.array([2.0])) == 0.5


def test_relu6_inputs_keep_off_6():
    x = make_input("relu6", (2000,), np.random.default_rng(0))
    assert np.abs(x).min() >= 0.05 - 1e-12 and np.abs(x - 6).min() >= 0.05 - 1e-12


class _MaskForgotten(Dropout):
    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        return dy                                    # a planted mistake: the mask not applied


def test_dropout_entries_run_in_training_mode():
    assert check_grid_entry("bad", lambda: _MaskForgotten(0.5, seed=3), (4, 5), "dropout")["x"] > 0.1


@pytest.mark.parametrize("tol", ["0", "nan"])
def test_tol_must_be_positive(tol, capsys):
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", "--only", "relu6", "--no-network", "--tol", tol])
    assert e.value.code == 2 and "argument --tol: expected a number > 0" in capsys.readouterr().err


def test_a_backward_that_returns_the_wrong_shape_is_named():
    """check_layer compared a broadcast dx (0.94 'error'); inside a network the layer below took the
    blame for a dx it was handed."""
    from scratchnet.layers import Conv2d, Layer, ShapeError
    from scratchnet.models import Network

    class Bad(Layer):
        def forward(self, x, train=False):
            return self.kept_output(x * 1.0)

        def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
            return self.check_dy(dy)[:, :1]

        def output_shape(self, in_shape):
            return tuple(in_shape)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"backward gave a gradient of shape \(2, 1, 5, 5\) for x, expected the "
                                         r"shape \(2, 4, 5, 5\) of x"):
        check_layer(Bad(), x)
    net = Network([("c", randomise_params(Conv2d(3, 4, 3, padding=1))), ("bad", Bad()), ("flat", Flatten()),
                   ("fc", randomise_params(Linear(100, 2)))], input_shape=(3, 5, 5))
    s = net.forward(np.ones((2, 3, 5, 5)))
    with pytest.raises(ShapeError, match=r"bad: backward returned dx of shape \(2, 1, 5, 5\), not the shape "
                                         r"\(2, 4, 5, 5\) of its input \(the output of c\)"):
        net.backward(np.ones_like(s))
