"""Every layer against central differences (float64), and every fast path against its naive twin.

A new layer joins the gradient-check grid by adding one line to LAYER_GRID in scratchnet/gradcheck.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from scratchnet import kernels
from scratchnet.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Linear,
                               LocalResponseNorm, MaxPool2d, ReLU, ReLU6, Rule, ShapeError,
                               relu_backward_reference, softmax_cross_entropy)
from scratchnet.layers.conv import col2im_reference, conv2d_naive, im2col_reference, same_padding
from scratchnet.layers.linear import linear_naive
from scratchnet.layers.loss import softmax_cross_entropy_naive
from scratchnet.layers.norm import batchnorm_naive, fold_batchnorm, lrn_backward_naive, lrn_naive, lrn_reference
from scratchnet.layers.pool import avgpool_naive, global_avgpool_naive, maxpool_numpy, maxpool_reference

from scratchnet.gradcheck import (LAYER_GRID, TOLERANCE, check_grid_entry, numerical_grad, randomise_params,
                                  rel_error)

# The grid itself (every layer and configuration, with inputs kept off ReLU kinks and pooling ties)
# lives in scratchnet/gradcheck.py, so that `scratchnet gradcheck` runs the very same checks.
# Every kernel output starts as NaN (SCRATCHNET_POISON=1): an element a kernel forgets to write fails.
@pytest.mark.parametrize("name,factory,shape,kind", LAYER_GRID, ids=[g[0] for g in LAYER_GRID])
def test_gradient_check(name, factory, shape, kind, monkeypatch):
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    errs = check_grid_entry(name, factory, shape, kind)
    bad = {k: v for k, v in errs.items() if v > TOLERANCE}
    assert not bad, f"{name}: relative errors {bad}"


def test_the_cpu_kernels_take_an_empty_batch():
    """N = 0 gives empty outputs of the right shapes (the wrappers' reshapes name every dimension)."""
    x = np.zeros((0, 4, 6, 6), np.float32)
    y, s = kernels.lrn_forward(x, 5, 1e-4, 0.75, 2.0)
    assert y.shape == s.shape == x.shape
    assert kernels.lrn_backward(x, x, y, s, 5, 1e-4, 0.75).shape == x.shape
    assert kernels.relu_backward(x, kernels.relu_forward(x), 2).shape == x.shape
    yp, sw = kernels.maxpool_forward(x, (3, 3), (2, 2), (0, 0, 0, 0), (2, 2))
    assert yp.shape == sw.shape == (0, 4, 2, 2)
    assert kernels.maxpool_backward(yp, sw, (6, 6)).shape == x.shape


@pytest.mark.parametrize("kind,make", [
    ("gemm", lambda: Conv2d(4, 6, 3, stride=2, padding=1)),
    ("wide", lambda: Conv2d(4, 6, 3, padding=1)),
    ("gemm", lambda: Conv2d(4, 6, 3, padding=1, groups=2)),
    ("pointwise", lambda: Conv2d(4, 6, 1)),
    ("depthwise", lambda: Conv2d(4, 4, 3, padding=1, groups=4)),
], ids=["strided", "wide", "grouped", "pointwise", "depthwise"])
def test_a_convolution_takes_an_empty_batch(kind, make):
    """N = 0 through every path of Conv2d: an empty output of the right shape, an empty input gradient,
    zero parameter gradients (the Network refuses an empty batch; a layer used alone does not fail)."""
    conv = make()
    conv.init_params(np.random.default_rng(0))
    conv.im2col_mode = "wide" if kind == "wide" else "plain"
    y = conv.forward(np.zeros((0, 4, 9, 9), np.float32))
    assert conv._cache[0] == kind and y.shape == (0, conv.out_channels) + conv.output_shape((1, 4, 9, 9))[2:]
    dx = conv.backward(np.zeros_like(y))
    assert dx.shape == (0, 4, 9, 9)
    for key, gr in conv.grads.items():
        assert gr.shape == conv.params[key].shape and not gr.any(), key


@pytest.mark.parametrize("name,factory,shape,kind", LAYER_GRID, ids=[g[0] for g in LAYER_GRID])
def test_every_layer_takes_an_empty_batch(name, factory, shape, kind):
    """N = 0 through forward and backward of every layer configuration: outputs of N = 0 and the right
    other dimensions, an input gradient of the input's shape (no NumPy reshape error)."""
    layer = randomise_params(factory())
    x = np.zeros((0,) + tuple(shape[1:]))
    y = layer.forward(x, train=True)
    assert y.shape == (0,) + tuple(layer.output_shape(tuple(shape))[1:]), name
    assert layer.backward(np.zeros_like(y)).shape == x.shape, name


def test_the_poison_shows_an_element_a_kernel_forgets(monkeypatch):
    """With SCRATCHNET_POISON=1 a ReLU kernel that skips the last element leaves a NaN, and the grid's
    test fails on it; without the poison the element holds whatever the fresh memory held."""
    from scratchnet.kernels import cpu_relu
    real = cpu_relu.relu_fwd
    monkeypatch.setattr(cpu_relu, "relu_fwd", lambda x, upper, y: real(x[:-1], upper, y[:-1]))
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    x = np.linspace(-1, 1, 24).reshape(2, 3, 2, 2)
    y = kernels.relu_forward(x)
    assert np.isnan(y.reshape(-1)[-1]) and not np.isnan(y.reshape(-1)[:-1]).any()
    relu_entry = [g for g in LAYER_GRID if g[0] == "relu"][0]
    with pytest.raises((AssertionError, ValueError)):       # a NaN error, or two forwards that "differ"
        test_gradient_check(*relu_entry, monkeypatch)


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 5))
    y = np.array([0, 3, 4, 1])
    loss, d = softmax_cross_entropy(s, y)
    num = numerical_grad(lambda: softmax_cross_entropy(s, y)[0], s)
    assert rel_error(d, num) < 1e-7
    big = s * 1e4                                # would overflow a naive exp
    loss_big, d_big = softmax_cross_entropy(big, y)
    assert np.isfinite(loss_big) and np.isfinite(d_big).all()
    with pytest.raises(ValueError, match="class indices"):
        softmax_cross_entropy(s, np.array([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"an empty batch \(N = 0\) has no mean loss: expected N >= 1"):
        softmax_cross_entropy(s[:0], y[:0])           # not NaN with NumPy's "mean of empty slice" warning


# -------------------------------------------------------------------------------------------------
# fast paths against naive references
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_batchnorm_global_pool_and_loss_equal_naive(dtype):
    """The array-code layers whose backward the grid checks numerically, against their definitions
    written as loops (the loss also at scores that overflow a plain exp)."""
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    lin = randomise_params(Linear(7, 5)).astype(dtype)
    x = rng.standard_normal((3, 7)).astype(dtype)
    ref = linear_naive(x.astype(np.float64), lin.params["W"].astype(np.float64), lin.params["b"].astype(np.float64))
    np.testing.assert_allclose(lin.forward(x), ref, rtol=tol, atol=tol)
    bn = randomise_params(BatchNorm2d(4)).astype(dtype)
    x4 = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    ref = batchnorm_naive(x4.astype(np.float64), *(np.asarray(a, np.float64) for a in (
        bn.params["gamma"], bn.params["beta"], bn.stats["mean"], bn.stats["var"])), bn.eps)
    np.testing.assert_allclose(bn.forward(x4), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(GlobalAvgPool().forward(x4), global_avgpool_naive(x4.astype(np.float64)),
                               rtol=tol, atol=tol)
    labels = np.array([0, 3, 4, 1])
    for scale in (1.0, 1e4):
        s = (rng.standard_normal((4, 6)) * scale).astype(dtype)
        loss, d = softmax_cross_entropy(s, labels)
        loss_ref, d_ref = softmax_cross_entropy_naive(s, labels)
        assert abs(loss - loss_ref) <= tol * max(1.0, abs(loss_ref))
        np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol)


CONV_CASES = [
    dict(c=3, o=4, k=3, stride=1, padding=1, groups=1, hw=(7, 6)),
    dict(c=3, o=5, k=7, stride=2, padding=0, groups=1, hw=(15, 15)),
    dict(c=4, o=6, k=5, stride=2, padding=(1, 0, 2, 1), groups=2, hw=(9, 8)),
    dict(c=6, o=6, k=3, stride=2, padding="same", groups=6, hw=(8, 9)),
    dict(c=4, o=8, k=1, stride=1, padding=0, groups=1, hw=(5, 5)),
    dict(c=2, o=3, k=(2, 3), stride=(1, 2), padding=0, groups=1, hw=(5, 6)),   # a stride of 1 in one direction
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["auto", "plain", "wide"])
def test_conv_fast_path_equals_naive(case, dtype, mode):
    rng = np.random.default_rng(0)
    conv = Conv2d(case["c"], case["o"], case["k"], case["stride"], case["padding"], case["groups"], dtype=dtype)
    conv.im2col_mode = mode
    conv.params["W"] = rng.standard_normal(conv.params["W"].shape).astype(dtype)
    conv.params["b"] = rng.standard_normal(case["o"]).astype(dtype)
    x = rng.standard_normal((2, case["c"]) + case["hw"]).astype(dtype)
    y = conv.forward(x)
    pads = conv.pads_for(*case["hw"])
    ref = conv2d_naive(x.astype(np.float64), conv.params["W"].astype(np.float64), conv.params["b"].astype(np.float64),
                       conv.stride, pads, case["groups"])
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("k,s", [((3, 3), (1, 1)), ((5, 5), (2, 2)), ((2, 3), (1, 2)), ((7, 7), (2, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_kernels_equal_references(k, s, dtype):
    rng = np.random.default_rng(0)
    xpad = rng.standard_normal((3, 4, 11, 12)).astype(dtype)
    oh, ow = (11 - k[0]) // s[0] + 1, (12 - k[1]) // s[1] + 1
    cols = kernels.im2col(xpad, k, s, (oh, ow))
    np.testing.assert_array_equal(cols, im2col_reference(xpad, k, s, (oh, ow)))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(kernels.col2im(dcols, xpad.shape, k, s, (oh, ow)),
                               col2im_reference(dcols, xpad.shape, k, s, (oh, ow)), rtol=1e-5, atol=1e-5)
    # col2im is the adjoint of im2col: <im2col(x), d> == <x, col2im(d)>
    lhs = float((cols.astype(np.float64) * dcols).sum())
    rhs = float((xpad.astype(np.float64) * kernels.col2im(dcols, xpad.shape, k, s, (oh, ow))).sum())
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


@pytest.mark.parametrize("k", [(3, 3), (5, 5), (2, 3), (1, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_im2col_col2im_equal_plain_ones(k, dtype):
    """Stride-1 "wide" columns: cropped to ow they are the plain im2col; their col2im (junk columns 0)
    is the plain col2im."""
    rng = np.random.default_rng(0)
    n, c, hp, wp = 3, 4, 9, 10
    xpad = rng.standard_normal((n, c, hp, wp)).astype(dtype)
    oh, ow = hp - k[0] + 1, wp - k[1] + 1
    wide = kernels.im2col_wide(xpad, k, oh)
    assert wide.shape == (c * k[0] * k[1], n * oh * wp)
    plain = kernels.im2col(xpad, k, (1, 1), (oh, ow))
    np.testing.assert_array_equal(wide.reshape(-1, n, oh, wp)[..., :ow].reshape(plain.shape), plain)
    dplain = rng.standard_normal(plain.shape).astype(dtype)
    dwide = np.zeros((plain.shape[0], n, oh, wp), dtype)
    dwide[..., :ow] = dplain.reshape(-1, n, oh, ow)
    np.testing.assert_allclose(kernels.col2im_wide(dwide.reshape(wide.shape), xpad.shape, k, oh),
                               kernels.col2im(dplain, xpad.shape, k, (1, 1), (oh, ow)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wr", [5, 7], ids=["plain", "wide"])
def test_rows_to_nchw_and_back_are_numpys_copies_and_bias_add(wr, dtype, monkeypatch):
    """The copies on either side of the convolution's GEMMs, rows (O, N*oh*Wr) <-> (N, O, oh, ow) (Wr > ow:
    the wide layout's junk columns), with the bias added on the way forward, give the bits of NumPy's
    transposing copy and +=; every output element is written (poisoned outputs), junk columns are 0."""
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    rng = np.random.default_rng(0)
    o, n, oh, ow = 6, 3, 4, 5
    rows = rng.standard_normal((o, n * oh * wr)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    want = np.ascontiguousarray(rows.reshape(o, n, oh, wr)[..., :ow].transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(kernels.rows_to_nchw(rows, n, (oh, ow)), want)
    want += bias.reshape(1, o, 1, 1)
    y = kernels.rows_to_nchw(rows, n, (oh, ow), bias)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_array_equal(y, want)
    back = kernels.nchw_to_rows(y, wr)
    assert back.shape == (o, n * oh * wr) and back.dtype == dtype
    want_rows = np.zeros((o, n, oh, wr), dtype)
    want_rows[..., :ow] = y.transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(back, want_rows.reshape(o, -1))
    if wr == ow:
        np.testing.assert_array_equal(kernels.nchw_to_rows(y), back)         # the default width is ow
    flipped = y[:, ::-1, :, ::-1]                                             # a view, not contiguous
    np.testing.assert_array_equal(kernels.nchw_to_rows(flipped, wr), kernels.nchw_to_rows(flipped.copy(), wr))
    np.testing.assert_array_equal(kernels.rows_to_nchw(back[::-1], n, (oh, ow)), y[:, ::-1])   # rows reversed


def test_rows_to_nchw_and_back_say_what_does_not_fit():
    rows = np.zeros((6, 3 * 4 * 5), np.float32)
    with pytest.raises(ValueError, match=r"rows_to_nchw: expected rows \(O, N\*oh\*Wr\) with N=3, oh=4 and Wr >= ow=6"):
        kernels.rows_to_nchw(rows, 3, (4, 6))
    with pytest.raises(ValueError, match=r"rows_to_nchw: expected rows .* with N=7"):
        kernels.rows_to_nchw(rows, 7, (4, 5))
    with pytest.raises(ValueError, match=r"rows_to_nchw: expected a bias of shape \(6,\), got \(5,\)"):
        kernels.rows_to_nchw(rows, 3, (4, 5), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"nchw_to_rows: rows of width 4 cannot hold 5 output columns"):
        kernels.nchw_to_rows(np.zeros((3, 6, 4, 5), np.float32), 4)


def test_wide_columns_are_chosen_where_they_pay():
    from scratchnet.layers.conv import _wide_pays
    assert _wide_pays(57, 55, 64)            # SqueezeNet fire2 expand3x3: 4% more columns
    assert _wide_pays(20, 16, 16)            # paper 64 network, width 0.25, conv2
    assert not _wide_pays(10, 8, 384)        # 8x8 maps, pad 1, many outputs: the GEMM would grow 25%
    conv = Conv2d(8, 512, 7)                 # "auto" weighs the padded width (14), not ow + pads (8):
    conv.forward(np.zeros((1, 8, 14, 14), np.float32))       # 75% more columns, times 512 outputs
    assert conv._cache[0] == "gemm"
    one = Conv2d(8, 1000, 1, padding=1)      # SqueezeNet's conv_final: 1x1, pad 1: no junk column at all
    one.forward(np.zeros((1, 8, 13, 13), np.float32))
    assert one._cache[0] == "wide"
    conv = Conv2d(3, 4, 3, stride=2, padding=1)
    conv.im2col_mode = "wide"                # stride 2: wide columns do not apply, plain ones are used
    conv.forward(np.zeros((1, 3, 8, 8), np.float32))
    assert conv._cache[0] == "gemm"


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(in / s); total pad = max((out - 1) s + k - in, 0), extra pixel at the end
    assert same_padding(224, 224, (3, 3), (2, 2)) == (0, 1, 0, 1)
    assert same_padding(112, 112, (3, 3), (1, 1)) == (1, 1, 1, 1)
    assert same_padding(7, 7, (5, 5), (2, 2)) == (2, 2, 2, 2)


@pytest.mark.parametrize("k,s,p,ceil", [(3, 2, 0, True), (2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, True),
                                        ((2, 3), (1, 2), (0, 1, 1, 0), False), (2, 2, 1, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_kernel_equals_reference(k, s, p, ceil, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    pool = MaxPool2d(k, s, p, ceil_mode=ceil)
    y = pool.forward(x)
    ref, sw = maxpool_reference(x, pool.kernel, pool.stride, pool.padding, ceil)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(pool._cache, sw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.backward(dy)
    expect = np.zeros((2, 3, 9 * 8), dtype)
    for idx in np.ndindex(y.shape):          # route each gradient to its switch, one at a time
        expect[idx[0], idx[1], sw[idx]] += dy[idx]
    np.testing.assert_allclose(dx, expect.reshape(x.shape), rtol=1e-6)


def test_maxpool_ceil_mode_sizes_match_caffe():
    # Caffe/PyTorch ceil mode: 109 -> 54, 26 -> 13, 13 -> 6 (the paper network) and 55 -> 27 (SqueezeNet)
    for n, want in [(109, 54), (26, 13), (13, 6), (111, 55), (55, 27)]:
        assert MaxPool2d(3, 2, ceil_mode=True).output_shape((1, 1, n, n))[2] == want


def test_ceil_mode_drops_a_window_that_would_start_in_the_padding():
    # 5 + 2 * 1 padding, kernel 2, stride 2: ceil(5 / 2) + 1 = 4 windows, but the 4th would start at
    # padded row 6, in the bottom padding, so there are 3 (PyTorch: max_pool2d(5x5, 2, 2, 1, ceil_mode)
    # is 3x3). The references share pool_output_size, so this is the rule's own check.
    for pool in (MaxPool2d(2, 2, 1, ceil_mode=True), AvgPool2d(2, 2, 1, ceil_mode=True)):
        assert pool.output_shape((1, 1, 5, 5)) == (1, 1, 3, 3)
        assert pool.output_shape((1, 1, 6, 6)) == (1, 1, 4, 4)          # the 4th starts at row 6 of 8
    assert MaxPool2d(2, 2, 1).output_shape((1, 1, 5, 5)) == (1, 1, 3, 3)   # floor: 5 // 2 + 1


@pytest.mark.parametrize("k,s", [(3, 2), (2, 2), (3, 1)])
def test_numpy_maxpool_of_the_benchmark_equals_the_kernel(k, s):
    """bench_cpu.py times the Numba kernel against maxpool_numpy: both must compute the same thing."""
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    pool = MaxPool2d(k, s)
    y = pool.forward(x)
    ref, arg = maxpool_numpy(x, pool.kernel, pool.stride, y.shape[2:])
    np.testing.assert_array_equal(y, ref)
    oy, ox = np.divmod(arg, k)                   # window offset -> the flat index the switches hold
    rows = np.arange(y.shape[2])[:, None] * s + oy
    cols = np.arange(y.shape[3])[None, :] * s + ox
    np.testing.assert_array_equal(pool._cache, rows * x.shape[3] + cols)


def test_the_allocation_bench_runs_every_kernel_both_ways():
    """bench/bench_alloc.py calls the Numba kernels directly, with outputs from NumPy and from Numba:
    a change of a kernel's signature must not leave it broken."""
    from clirun import bench_json, run_bench
    out = bench_json(run_bench("bench_alloc.py", "--batch", 1, "--repeats", 1))
    assert [r["kernel"].split()[0] for r in out["rows"]] == ["relu_fwd", "maxpool_fwd", "im2col", "col2im", "lrn_fwd"]
    assert all(r["numpy_ms"] > 0 and r["numba_ms"] > 0 and r["ratio"] > 0 for r in out["rows"])


AVGPOOL_CASES = [(2, 2, 0, False, (6, 6)), (3, 2, 1, True, (6, 6)), (3, 2, 1, False, (7, 6)),
                 (3, 2, 0, True, (6, 6)), (2, 2, 1, True, (5, 5)), ((2, 3), (2, 1), (1, 0, 0, 1), False, (5, 6)),
                 # padding as wide as the window or wider (average pooling allows it): windows wholly in the
                 # padding, where the naive reference once averaged real rows (a slice's stop went negative)
                 (1, 1, (2, 0, 0, 0), False, (3, 2)), (2, 1, (3, 2, 2, 3), True, (4, 3)), (3, 2, 3, True, (5, 4))]


@pytest.mark.parametrize("k,s,p,ceil,hw", AVGPOOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avgpool_equals_naive_and_backward_is_its_adjoint(k, s, p, ceil, hw, dtype):
    rng = np.random.default_rng(0)
    pool = AvgPool2d(k, s, p, ceil_mode=ceil)
    x = rng.standard_normal((2, 3) + hw).astype(dtype)
    y = pool.forward(x)
    ref = avgpool_naive(x.astype(np.float64), pool.kernel, pool.stride, pool.padding, ceil)
    np.testing.assert_allclose(y, ref, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    # pooling is linear, so backward must be the naive forward's adjoint: <naive(z), dy> = <z, dx>
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy.astype(dtype)).astype(np.float64)
    for _ in range(3):
        z = rng.standard_normal(x.shape)
        lhs = float((avgpool_naive(z, pool.kernel, pool.stride, pool.padding, ceil) * dy).sum())
        assert abs(lhs - float((z * dx).sum())) <= (1e-5 if dtype == np.float32 else 1e-12) * (1 + abs(lhs))


@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])        # 0.75 has its own sqrt path; others use pow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_kernels_equal_naive(dtype, beta):
    """Forward (y and s) and backward of the Numba kernels against the loops in norm.py, on maps of
    37x41 pixels: more than one of the kernels' 1024-pixel blocks."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 11, 37, 41)) * 20).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    for size in (1, 3, 5, 7, 13):                                  # 13 > 11 channels: clipped windows
        lrn = LocalResponseNorm(size, 1e-4, beta, 2.0)
        y = lrn.forward(x)
        np.testing.assert_allclose(y, lrn_naive(x64, size, 1e-4, beta, 2.0), rtol=tol)
        y2, s2 = lrn_reference(x, size, 1e-4, beta, 2.0)
        np.testing.assert_allclose(y, y2, rtol=tol)
        np.testing.assert_allclose(lrn._cache[2], s2, rtol=tol)
        dx = lrn.backward(dy)
        assert dx.dtype == dtype
        ref = lrn_backward_naive(dy64, x64, size, 1e-4, beta, 2.0)
        np.testing.assert_allclose(dx, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_after_a_large_channel_equals_the_definition(dtype):
    """The window sums were running sums (add the channel entering, drop the one leaving): once a large
    channel had left, its neighbours' sums were its rounding error (float32, one channel at 3e5 among
    channels at 30: 16% off; float64, 1e9 among ones with alpha 1: 177.8 for 0.44), and a float32 channel
    past 1.8e19 squared to inf and zeroed the whole pixel. The reference's cumulative sum cancelled the
    same way, so only the loops from the definition could tell."""
    cases = [([3e5] + [30] * 9, (5, 1e-4, 0.75, 2.0)), ([1e9] + [1] * 7, (3, 1.0, 0.75, 1e-3))]
    if dtype == np.float32:
        cases.append(([1e20] + [1] * 6, (5, 1e-4, 0.75, 2.0)))
    for values, args in cases:
        x = np.array(values, dtype).reshape(1, -1, 1, 1)
        x64 = x.astype(np.float64)
        lrn = LocalResponseNorm(*args)
        y = lrn.forward(x)
        want = lrn_naive(x64, *args)
        np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-12, err_msg=str(values[:2]))
        np.testing.assert_allclose(lrn_reference(x64, *args)[0], want, rtol=1e-12)
        dx = lrn.backward(np.ones_like(y))
        ref = lrn_backward_naive(np.ones_like(x64), x64, *args)
        np.testing.assert_allclose(dx, ref, rtol=1e-4 if dtype == np.float32 else 1e-10,    # dx differences
                                   atol=(1e-6 if dtype == np.float32 else 1e-12) * np.abs(ref).max(),   # terms
                                   err_msg=str(values[:2]))


def test_lrn_kernels_refuse_an_even_window():
    """The backward sums over window(c), which is the set of channels whose window holds c only for
    odd sizes (with size 4 the backward is 24% off the naive one): the kernels' wrappers refuse even ones."""
    x = np.ones((1, 6, 2, 2), np.float32)
    with pytest.raises(ValueError, match="odd"):
        kernels.lrn_forward(x, 4, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="odd"):
        kernels.lrn_backward(x, x, x, x, 4, 1e-4, 0.75)


def test_relu_rules_match_definitions_on_hand_made_inputs():
    x = np.array([-2.0, -0.5, 0.5, 3.0, 7.0, 5.0])
    dy = np.array([1.0, -1.0, -2.0, 4.0, 5.0, -6.0])
    #                 x>0:  0   0    1    1    1    1
    #                dy>0:  1   0    0    1    1    0
    expect = {
        "gradient": np.array([0, 0, -2.0, 4.0, 5.0, -6.0]),
        "deconvnet": np.array([1.0, 0, 0, 4.0, 5.0, 0]),
        "guided": np.array([0, 0, 0, 4.0, 5.0, 0]),
    }
    relu = ReLU()
    relu.forward(x)
    for rule, want in expect.items():
        np.testing.assert_array_equal(relu.backward(dy, rule), want)
        np.testing.assert_array_equal(relu_backward_reference(dy, x, rule), want)
    relu6 = ReLU6()                                # x = 7 is above 6: the gradient is 0 there
    relu6.forward(x)
    np.testing.assert_array_equal(relu6.backward(dy, "gradient"), [0, 0, -2.0, 4.0, 0, -6.0])
    np.testing.assert_array_equal(relu6.backward(dy, "deconvnet"), expect["deconvnet"])
    np.testing.assert_array_equal(relu6.backward(dy, Rule.GUIDED), [0, 0, 0, 4.0, 0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", list(Rule))
def test_relu_kernels_equal_reference(rule, dtype):
    rng = np.random.default_rng(0)
    for upper in (math.inf, 6.0):
        x = (rng.standard_normal((3, 4, 5, 6)) * 5).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        y = kernels.relu_forward(x, upper)
        np.testing.assert_array_equal(y, np.clip(x, 0, upper))
        np.testing.assert_array_equal(kernels.relu_backward(dy, y, rule.code, upper),
                                      relu_backward_reference(dy, x, rule, upper))


def test_unknown_rule_is_a_clear_error():
    relu = ReLU()
    relu.forward(np.ones((2, 2)))
    with pytest.raises(ValueError, match="gradient.*deconvnet.*guided"):
        relu.backward(np.ones((2, 2)), "zeiler")
    for code in (3, -1, True, np.True_, 1.0, np.float64(2.0), "1", None):           # the kernels' own entry takes codes 0, 1, 2 only
        with pytest.raises(ValueError, match="rule code must be 0"):
            kernels.relu_backward(np.ones(2), np.ones(2), code)


# -------------------------------------------------------------------------------------------------
# bad input
# -------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_layer_and_what_it_expected():
    conv = Conv2d(3, 4, 3, name="conv1")
    with pytest.raises(ShapeError, match=r"conv1: expected input of shape \(N, C, H, W\)"):
        conv.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="conv1: expected 3 input channels, got 1"):
        conv.forward(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="conv1: expected a floating-point array"):
        conv.forward(np.zeros((1, 3, 8, 8), np.uint8))
    # float16 and other-byte-order floats: named here, not a Numba typing error from inside a kernel
    for layer in (conv, ReLU(name="relu"), MaxPool2d(3, 2, name="pool"), LocalResponseNorm(name="norm")):
        with pytest.raises(ShapeError, match=rf"{layer.name}: .*got dtype float16$"):
            layer.forward(np.zeros((1, 3, 8, 8), np.float16))
        with pytest.raises(ShapeError, match=rf"{layer.name}: .*got dtype >f4 \(the other byte order"):
            layer.forward(np.zeros((1, 3, 8, 8), ">f4"))
    with pytest.raises(ShapeError, match="conv1: input 2x2 is too small"):
        conv.forward(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ShapeError, match="smaller than the 3x3 pooling window"):
        MaxPool2d(3, 2, name="pool1").forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ShapeError, match=r"fc: expected input \(N, 8\)"):
        Linear(8, 2, name="fc").forward(np.zeros((1, 7), np.float32))
    # padding as wide as the window lets a window lie wholly in it (a max of nothing: -inf); average
    # pooling averages the zeros and takes any padding
    with pytest.raises(ValueError, match=r"MaxPool2d: padding \(1, 1, 1, 1\) .* smaller than the 1x1 window"):
        MaxPool2d(1, padding=1)
    with pytest.raises(ValueError, match=r"smaller than the 2x2 window \(at most 1 rows, 1 columns\)"):
        MaxPool2d(2, 1, padding=(0, 0, 2, 0))
    with pytest.raises(ValueError, match=r"smaller than the 2x3 window \(at most 1 rows, 2 columns\)"):
        MaxPool2d((2, 3), padding=(2, 0, 0, 0))
    y = MaxPool2d(3, 1, padding=2).forward(np.ones((1, 1, 4, 4), np.float32))      # it used to load: still does
    assert np.isfinite(y).all()
    assert np.isfinite(AvgPool2d(3, padding=2).forward(np.ones((1, 1, 4, 4), np.float32))).all()


def test_dropout_scales_kept_units_by_one_over_keep_probability():
    p = 0.3
    d = Dropout(p, seed=0)
    x = np.ones((400, 50))
    y = d.forward(x, train=True)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(y[kept], 1 / (1 - p))
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    np.testing.assert_array_equal(d.forward(x, train=False), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_ties_route_to_the_first_maximum_in_row_order(dtype):
    """On a tie the switch is the first maximum of the window in row order (the CUDA kernel keeps the
    same rule, so both devices send the gradient to the same input)."""
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[0, 0, 1, 1] = 5      # window (0, 0): three tied maxima
    x[0, 0, 2:, 2:] = 1                                   # window (1, 1): all four tied
    pool = MaxPool2d(2, 2)
    y = pool.forward(x)
    dx = pool.backward(np.ones_like(y))
    expect = np.zeros_like(x)
    expect[0, 0, 0, 1] = expect[0, 0, 2, 2] = 1           # first in row order
    expect[0, 0, 0, 2] = expect[0, 0, 2, 0] = 1           # all-zero windows: their first element
    np.testing.assert_array_equal(dx, expect)
    ys, switches = maxpool_reference(x, (2, 2), (2, 2), (0, 0, 0, 0), False)
    np.testing.assert_array_equal(y, ys)
    np.testing.assert_array_equal(pool._cache, switches)


def test_fold_batchnorm_into_a_convolution_with_a_bias():
    """conv(x; W', b') = BN(conv(x; W, b)) for the folded W', b', a bias included (EfficientNet's convs
    have none, so its test cannot tell b' = (b - mean) a + beta from b - mean a + beta)."""
    rng = np.random.default_rng(5)
    W, b, x = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), rng.standard_normal((2, 3, 6, 6))
    gamma, beta, mean = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    var = rng.random(4) + 0.5
    W2, b2 = fold_batchnorm(W, b, gamma, beta, mean, var, 1e-5)
    np.testing.assert_allclose(conv2d_naive(x, W2, b2, (1, 1), (1, 1, 1, 1)),
                               batchnorm_naive(conv2d_naive(x, W, b, (1, 1), (1, 1, 1, 1)), gamma, beta, mean, var, 1e-5),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads,want", [((1, 1, 0, 0), [[1, 3], [11, 13], [21, 23]]),
                                       ((0, 0, 1, 0), [[5, 7, 9], [15, 17, 19]])])
def test_maxpool_with_bottom_pad_unlike_left_pad_equals_padded_reference(pads, want):
    """The CPU kernel's left pad is pads[2], not the bottom pad pads[1] (which the grid's configurations
    all have equal to the left one)."""
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    pool = MaxPool2d(2, 2, padding=pads)
    y = pool.forward(x)
    np.testing.assert_array_equal(y[0, 0], want)
    np.testing.assert_array_equal(y, maxpool_reference(x, (2, 2), (2, 2), pads, False)[0])
    np.testing.assert_array_equal(x.reshape(-1)[pool._cache], y)          # each switch points at its max



_NO_JIT_CHILD = """
import sys, numpy as np
from scratchnet.models import load
net = load(sys.argv[1])
x = np.load(sys.argv[2])
s = net.forward(x)
onehot = np.zeros_like(s); onehot[:, 3] = 1
maps = {r: net.backward(onehot, rule=r, param_grads=False) for r in ("gradient", "deconvnet", "guided")}
np.savez(sys.argv[3], scores=s, **maps)
import numba
print("DISABLE_JIT", int(numba.config.DISABLE_JIT))
"""


@pytest.mark.parametrize("disable_jit", ["1", "0"])
def test_the_kernels_give_the_same_maps_as_plain_python(tmp_path, disable_jit):
    """NUMBA_DISABLE_JIT=1 (the README's way to step into a kernel with a debugger) runs every Numba
    kernel as the Python it is written in: a network's scores and its three reconstructions come out
    as the compiled kernels give them (to float32 rounding: compiled sums may be ordered otherwise).
    With "0" the child compiles as usual: the comparison itself is checked to hold."""
    import os
    import subprocess
    import sys
    from scratchnet.models import load, paper_net
    from scratchnet.train import init_network
    net = paper_net(32, num_classes=5, width=0.125)
    init_network(net, seed=1)
    net.save(tmp_path / "net.npz")
    net = load(tmp_path / "net.npz")
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "NUMBA_DISABLE_JIT": disable_jit}
    r = subprocess.run([sys.executable, "-c", _NO_JIT_CHILD, str(tmp_path / "net.npz"), str(tmp_path / "x.npy"),
                        str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"DISABLE_JIT {disable_jit}" in r.stdout, r.stdout
    child = np.load(tmp_path / "out.npz")
    s = net.forward(x)
    onehot = np.zeros_like(s)
    onehot[:, 3] = 1
    np.testing.assert_allclose(child["scores"], s, rtol=1e-5, atol=1e-6)
    for rule in ("gradient", "deconvnet", "guided"):
        mine = net.backward(onehot, rule=rule, param_grads=False)
        assert np.abs(mine).max() > 0, rule
        np.testing.assert_allclose(child[rule], mine, rtol=1e-4, atol=1e-5 * np.abs(mine).max(), err_msg=rule)


# ----------------------------------------------------------------------------- what a mutation audit found untested
@pytest.mark.parametrize("name", [g[0] for g in __import__("scratchnet.gradcheck", fromlist=["LAYER_GRID"]).LAYER_GRID])
def test_every_layer_skips_the_gradients_nobody_asked_for(name):
    """Caffe's rule, for every configuration of the grid: input_grad=False returns None (and leaves the
    parameter gradients as with it), param_grads=False writes no parameter gradient (and leaves dx as
    with it). Only conv1 of the paper network was checked, so the wide, pointwise, ReLU, pooling and
    Flatten paths could compute what nobody asked for unnoticed."""
    from scratchnet.gradcheck import LAYER_GRID, randomise_params
    _, make, shape, kind = next(g for g in LAYER_GRID if g[0] == name)
    layer = randomise_params(make())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    train = kind == "dropout"

    def run(**flags):
        for _, lay in layer.named_layers():
            lay.grads.clear()
            if isinstance(lay, Dropout):
                lay.rng = np.random.default_rng(3)          # the same mask each time
        y = layer.forward(x, train)
        dx = layer.backward(np.random.default_rng(1).standard_normal(y.shape), **flags)
        return dx, {(path, k): np.array(v) for path, lay in layer.named_layers() for k, v in lay.grads.items()}
    dx, grads = run()
    none, grads_without_dx = run(input_grad=False)
    assert none is None, name
    assert grads_without_dx.keys() == grads.keys()
    for k, v in grads.items():
        np.testing.assert_array_equal(grads_without_dx[k], v, err_msg=f"{name} {k}")
    dx_alone, no_grads = run(param_grads=False)
    assert no_grads == {}, f"{name} wrote {sorted(no_grads)} with param_grads=False"
    np.testing.assert_array_equal(dx_alone, dx, err_msg=name)


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_blocks_pass_the_rule_and_each_branchs_share_of_dy(rule):
    """Concat and Residual backward = the sum of their branches' backward under the same rule, each
    branch given its own channels of dy: a Concat that split at the wrong channel with three branches, or
    a block that sent its branches "gradient" whatever the rule (DeconvNet inside Fire modules and MBConv
    blocks), passed every test, whose blocks had two branches and ran under the gradient rule."""
    from scratchnet.gradcheck import conv_relu, randomise_params
    from scratchnet.layers import Concat, Residual
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5))
    branches = [conv_relu(3, 1, 1, 0), conv_relu(3, 2, 3, 1), conv_relu(3, 3, 1, 0)]
    block = randomise_params(Concat([(f"b{i}", b) for i, b in enumerate(branches)]))
    dy = rng.standard_normal(block.forward(x).shape)
    dx = block.backward(dy, rule)
    want, start = 0, 0
    for b in branches:
        n = b.forward(x).shape[1]
        want = want + b.backward(dy[:, start:start + n], rule)
        start += n
    np.testing.assert_allclose(dx, want, rtol=1e-12)
    res = randomise_params(Residual(conv_relu(3, 4, 3, 1), conv_relu(3, 4, 1, 0)))
    dy = rng.standard_normal(res.forward(x).shape)
    dx = res.backward(dy, rule)
    want = res.body.backward(dy, rule) + res.shortcut.backward(dy, rule)
    np.testing.assert_allclose(dx, want, rtol=1e-12)
    if rule != "gradient":
        res.forward(x)
        assert not np.allclose(res.backward(dy, "gradient"), dx)   # the rule matters on these inputs


def test_wide_im2col_leaves_no_garbage_in_the_junk_columns(monkeypatch):
    """With outputs poisoned (NaN before a kernel writes), the wide layout's junk columns must be written
    (zeros): dW = dy2 @ cols.T multiplies them by zero, and NaN x 0 is NaN."""
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 6))
    grads = {}
    for mode in ("wide", "plain"):
        conv = Conv2d(2, 3, 3, padding=1, dtype=np.float64)
        conv.params["W"] = np.random.default_rng(1).standard_normal(conv.params["W"].shape)
        conv.im2col_mode = mode
        y = conv.forward(x)
        conv.backward(np.ones_like(y))
        grads[mode] = conv.grads["W"]
    assert np.isfinite(grads["wide"]).all()
    np.testing.assert_allclose(grads["wide"], grads["plain"], rtol=1e-12)


def test_an_all_nan_window_switches_to_its_first_pixel():
    """The documented NaN rule: a window of NaN gives -inf and its switch is the window's first pixel
    inside the input, where backward sends dy (a switch of 0 for every window passed)."""
    x = np.full((1, 1, 4, 4), np.nan)
    y, sw = kernels.maxpool_forward(x, (2, 2), (2, 2), (0, 0, 0, 0), (2, 2))
    assert (y == -np.inf).all()
    assert sw[0, 0].tolist() == [[0, 2], [8, 10]]


def test_depthwise_backward_computes_dx_only_when_asked():
    rng = np.random.default_rng(0)
    xpad, W = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((2, 1, 3, 3))
    dy = rng.standard_normal((1, 2, 4, 4))
    dW, dxpad = kernels.depthwise_backward(dy, xpad, W, (1, 1), True, False)
    assert dxpad is None and dW.shape == W.shape
    dW2, dxpad2 = kernels.depthwise_backward(dy, xpad, W, (1, 1), False, True)
    assert dW2 is None and dxpad2.shape == xpad.shape
