"""The GPU backend computes what the CPU engine computes: every layer, the three ReLU rules, the
loss, the fused SGD update, a whole network's image gradient and a few training steps.

Each test runs on two devices:
  cuda     : CuPy on an NVIDIA GPU, the real thing (marked ``gpu``; skipped unless
             ``scratchnet.backend.gpu_available()``).
  emulated : the same CUDA C sources (kernels/*.cu), compiled with g++ against tests/cuda_emu.h
             and run on the CPU through the same kernels/gpu.py code. This checks, on any machine,
             the kernels' index arithmetic, gpu.py's launch configurations and argument lists (types
             included, which CuPy does not check), and that no kernel writes outside its output.
             Run once more with blocks and threads in reverse order, every kernel gives the same
             bits: two threads writing different values to one element, or one thread reading what
             another writes, would not. With the write-ownership check on, no element of any output
             is changed by two threads of one launch (the lost update of two threads adding into
             one element, right here where threads take turns, wrong on a GPU). It cannot check what
             only a GPU shows: CuPy's launch, timing-dependent behaviour, cuBLAS.

Every output is poisoned (SCRATCHNET_POISON=1: NaN before the kernel runs), so an element a kernel
forgets to write fails the comparison. Inputs are fresh random numbers on every run; the seed is
in every failure message. Tolerance: the largest difference over the largest CPU magnitude,
1e-10 in float64 and 1e-4 in float32.
"""
from __future__ import annotations

import copy
import importlib
import json
import math
import os
import re
import secrets
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from scratchnet import backend, kernels
from scratchnet.kernels import gpu
from scratchnet.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear,
                               LocalResponseNorm, MaxPool2d, ReLU, ReLU6, softmax_cross_entropy)
from scratchnet.models import paper_net

import hostcupy
from cuda_emu import EmuBackend, switched_on

TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------------------------------------
# the two devices
# ---------------------------------------------------------------------------------------------
class Cuda:
    name = "cuda"

    def __init__(self):
        import cupy
        self.cp = cupy
        # float32 tolerances are not TF32's: off whatever an earlier caller in this process chose, and
        # whatever CUPY_TF32 says (CuPy reads it at its first float32 GEMM unless told otherwise)
        try:
            gpu.set_tf32(False)
        except RuntimeError:                # a CuPy without the switches: only the environment can say
            if os.environ.get("CUPY_TF32", "0") != "0":
                raise

    def put(self, a):
        return self.cp.asarray(a)

    def get(self, a):
        return self.cp.asnumpy(a)

    def move(self, layer):
        return copy.deepcopy(layer).to("gpu")

    @contextmanager
    def active(self):
        old = gpu.use_backend(None)          # the CuPy backend, created on first use
        try:
            yield
        finally:
            gpu.use_backend(old)


class Emulated:
    name = "emulated"

    def __init__(self, lib):
        self.backend = EmuBackend(lib)

    def put(self, a):
        return np.array(a, copy=True)

    def get(self, a):
        return np.asarray(a)

    def move(self, layer):
        return copy.deepcopy(layer)

    @contextmanager
    def active(self):
        """Send NumPy arrays down the GPU path of scratchnet.kernels, to the emulated kernels."""
        old = gpu.use_backend(self.backend)
        saved = kernels._on_gpu
        kernels._on_gpu = lambda a: isinstance(a, np.ndarray)
        try:
            yield
        finally:
            kernels._on_gpu = saved
            gpu.use_backend(old)


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def dev(request, monkeypatch):
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    monkeypatch.delenv("SCRATCHNET_TF32", raising=False)       # the float32 tolerances are not TF32's
    if request.param == "cuda":
        problem = backend.gpu_problem()
        if problem is not None:
            pytest.skip(f"needs a usable GPU (scratchnet.backend.gpu_problem(): {problem})")
        return Cuda()
    return Emulated(request.getfixturevalue("emulator_lib"))


class Fresh:
    """A random generator with a new seed every run; ``where`` names it in failure messages."""

    def __init__(self):     # FRESH_SEED=S reruns a failure with the seed its message names
        self.seed = int(os.environ.get("FRESH_SEED", 0)) or secrets.randbits(32)
        self.rng = np.random.default_rng(self.seed)

    def normal(self, shape, dtype, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(dtype)

    @property
    def where(self):
        return f"(seed {self.seed}; FRESH_SEED={self.seed} reruns it)"


@pytest.fixture
def fresh():
    return Fresh()


def assert_close(got, want, dtype, what, floor=1e-30):
    """max |got - want| <= tol * max(max |want|, floor), and nothing NaN (a poisoned element never
    written). ``floor``: the scale below which the difference is judged absolutely (softmax gradients
    of a near-certain batch are all tiny, and p - 1 cancels)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.isfinite(got).all() == np.isfinite(want).all(), f"{what}: NaN/Inf where the CPU has none"
    scale = max(float(np.abs(want).max(initial=0.0)), floor)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    assert err <= TOL[dtype], f"{what}: relative difference {err:.3g} > {TOL[dtype]:g}"


def norm_difference(got, want):
    """|got - want| / |want| (2-norms), NaN when the device result has a NaN/Inf: for whole networks,
    where a float32 value that sits on a ReLU kink or a pooling tie may go either way on two devices."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(got).all():
        return float("nan")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def assert_close_norm(got, want, dtype, what):
    err = norm_difference(got, want)
    assert err <= TOL[dtype], f"{what}: relative difference {err:.3g} > {TOL[dtype]:g} (NaN: NaN/Inf on the device)"


def randomise(layer, fresh, dtype):
    """Random parameters (biases too) and batch-norm statistics, in ``dtype``."""
    for _, lay, key in layer.named_params():
        lay.params[key] = fresh.normal(lay.params[key].shape, dtype, 0.5)
    if isinstance(layer, BatchNorm2d):
        layer.stats = dict(mean=fresh.normal(layer.channels, dtype), var=(fresh.rng.random(layer.channels) + 0.5).astype(dtype))
    return layer


def compare_layer(dev, fresh, layer, in_shape, dtype, rule="gradient", train=False, scale=1.0):
    """Forward, backward (input and parameter gradients) on the CPU and on ``dev``; compare all."""
    layer = randomise(layer, fresh, dtype)
    on_dev = dev.move(layer)                      # same parameters, same dropout generator state
    x = fresh.normal(in_shape, dtype, scale)
    y = layer.forward(x, train)
    dy = fresh.normal(y.shape, dtype)
    dx = layer.backward(dy, rule, True, True)
    with dev.active():
        y_d = on_dev.forward(dev.put(x), train)
        dx_d = on_dev.backward(dev.put(dy), rule, True, True)
    what = f"{type(layer).__name__} {layer.spec()} {np.dtype(dtype).name} rule={rule} on {dev.name} {fresh.where}"
    assert_close(dev.get(y_d), y, dtype, f"forward of {what}")
    assert_close(dev.get(dx_d), dx, dtype, f"input gradient of {what}")
    for key, g in layer.grads.items():
        assert_close(dev.get(on_dev.grads[key]), g, dtype, f"gradient of {key} of {what}")


@pytest.mark.parametrize("mode", ["auto", "wide"])
def test_a_stride_one_convolution_runs_the_device_im2col_kernels(dev, fresh, mode):
    """The wide columns are a CPU kernel: on the device a stride-1 convolution goes through the GPU's
    im2col and col2im_gather, even when asked for the wide layout. The emulated device (NumPy arrays
    sent to the GPU kernels) took the CPU's wide path, so its comparisons of stride-1 convolutions
    compared the CPU with itself (found by a helper's fuzz)."""
    layer = Conv2d(3, 8, 3, 1, 1)
    layer.im2col_mode = mode
    compare_layer(dev, fresh, layer, (2, 3, 9, 9), np.float32)
    if dev.name == "emulated":
        assert dev.backend.launches["im2col"] == 1 and dev.backend.launches["col2im_gather"] == 1, \
            dict(dev.backend.launches)


@pytest.mark.parametrize("make", [lambda: Conv2d(4, 6, 3, 2, 1), lambda: Conv2d(4, 6, 3, 1, 1, groups=2),
                                  lambda: Conv2d(4, 6, 1), lambda: Conv2d(4, 4, 3, 1, 1, groups=4)],
                         ids=["strided", "grouped", "pointwise", "depthwise"])
def test_a_convolution_takes_an_empty_batch_on_the_device(dev, fresh, make):
    """N = 0 through Conv2d's device paths (kernels launched over no work): empty output and input
    gradient of the right shapes, zero parameter gradients, as on the CPU (tests/test_layers.py)."""
    layer = randomise(make(), fresh, np.float32)
    on_dev = dev.move(layer)
    with dev.active():
        y = on_dev.forward(dev.put(np.zeros((0, 4, 9, 9), np.float32)))
        dx = on_dev.backward(dev.put(np.zeros(y.shape, np.float32)))
    assert y.shape == (0,) + layer.output_shape((1, 4, 9, 9))[1:] and dx.shape == (0, 4, 9, 9)
    for key, g in on_dev.grads.items():
        g = dev.get(g)
        assert g.shape == layer.params[key].shape and not g.any(), key


# ---------------------------------------------------------------------------------------------
# every layer
# ---------------------------------------------------------------------------------------------
LAYERS = {
    "conv3x3_pad1": (lambda: Conv2d(3, 8, 3, 1, 1), (2, 3, 9, 9)),
    "conv5x5_s2_asym_pad": (lambda: Conv2d(4, 6, 5, 2, (1, 2, 0, 1)), (2, 4, 11, 10)),
    "conv7x7_s2_paper_conv1": (lambda: Conv2d(3, 8, 7, 2), (2, 3, 23, 23)),
    "conv1x1": (lambda: Conv2d(8, 5, 1), (2, 8, 5, 5)),
    "conv1x1_s2": (lambda: Conv2d(8, 5, 1, 2), (2, 8, 7, 7)),
    "conv_groups2": (lambda: Conv2d(6, 4, 3, 2, 1, groups=2), (2, 6, 8, 8)),
    "conv_same_s2": (lambda: Conv2d(3, 4, 3, 2, "same"), (2, 3, 7, 7)),
    "conv_depthwise": (lambda: Conv2d(4, 4, 3, 1, 1, groups=4), (2, 4, 6, 6)),
    "conv_depthwise_rect_s21": (lambda: Conv2d(3, 3, (3, 5), (2, 1), (1, 1, 2, 2), groups=3), (2, 3, 7, 6)),
    "conv_depthwise_x2": (lambda: Conv2d(3, 6, 3, 1, 1, groups=3), (2, 3, 5, 5)),
    "conv1x1_groups2": (lambda: Conv2d(4, 6, 1, groups=2), (2, 4, 3, 4)),
    "conv_rect_s12_nobias": (lambda: Conv2d(2, 3, (2, 3), (1, 2), bias=False), (2, 2, 5, 6)),
    "maxpool3_s2_ceil": (lambda: MaxPool2d(3, 2, ceil_mode=True), (2, 3, 10, 10)),
    "maxpool3_s1_one_window_per_plane": (lambda: MaxPool2d(3, 1), (2, 8, 3, 3)),
    "maxpool2": (lambda: MaxPool2d(2), (2, 3, 8, 8)),
    "maxpool3_s2_pad1": (lambda: MaxPool2d(3, 2, padding=1), (2, 3, 9, 9)),
    "maxpool3_s1": (lambda: MaxPool2d(3, 1), (1, 2, 6, 7)),
    "maxpool_rect_asym_pad": (lambda: MaxPool2d((2, 3), (1, 2), padding=(0, 1, 1, 0)), (2, 3, 6, 7)),
    "maxpool2_s2_pad1_ceil": (lambda: MaxPool2d(2, 2, 1, ceil_mode=True), (2, 3, 5, 5)),
    "avgpool3_s2_pad1_ceil": (lambda: AvgPool2d(3, 2, 1, ceil_mode=True), (2, 3, 10, 10)),
    "avgpool2": (lambda: AvgPool2d(2), (2, 3, 8, 8)),
    "avgpool3_s1_pad1": (lambda: AvgPool2d(3, 1, 1), (1, 2, 5, 6)),
    "avgpool3_s2_pad1_floor": (lambda: AvgPool2d(3, 2, 1), (2, 3, 7, 6)),
    "avgpool_rect_asym_pad": (lambda: AvgPool2d((2, 3), (2, 1), padding=(1, 0, 0, 1)), (2, 3, 5, 6)),
    # pads (top, bottom, left, right) all different from their neighbours in any other order: a wrapper
    # that hands the kernel its pads as (top, left, bottom, right) gives other windows
    "maxpool3_s2_pads_0210": (lambda: MaxPool2d(3, 2, padding=(0, 2, 1, 0)), (2, 3, 7, 8)),
    "avgpool3_s2_pads_0210": (lambda: AvgPool2d(3, 2, padding=(0, 2, 1, 0)), (2, 3, 7, 8)),
    "lrn5_beta075": (lambda: LocalResponseNorm(5, 0.5, 0.75, 2.0), (2, 7, 5, 5)),
    "lrn3_beta05": (lambda: LocalResponseNorm(3, 0.3, 0.5, 1.0), (2, 6, 4, 3)),
    "lrn5_few_channels": (lambda: LocalResponseNorm(5, 0.5, 0.75, 2.0), (2, 2, 3, 3)),
    "lrn7_fewer_channels_than_half_window": (lambda: LocalResponseNorm(7, 0.5, 0.75, 2.0), (3, 2, 3, 3)),
    "lrn1": (lambda: LocalResponseNorm(1, 0.5, 0.75, 2.0), (2, 4, 3, 3)),
    "lrn7_beta06": (lambda: LocalResponseNorm(7, 0.3, 0.6, 1.5), (2, 9, 4, 3)),
    "global_avgpool": (lambda: GlobalAvgPool(), (2, 5, 4, 4)),
    "batchnorm": (lambda: BatchNorm2d(4), (2, 4, 3, 3)),
    "linear": (lambda: Linear(12, 5), (3, 12)),
    "linear_nobias": (lambda: Linear(12, 5, bias=False), (3, 12)),
    "flatten": (lambda: Flatten(), (2, 3, 2, 2)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equals_cpu(dev, fresh, name, dtype):
    make, shape = LAYERS[name]
    compare_layer(dev, fresh, make(), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_dropout_in_training_equals_cpu(dev, fresh, dtype):
    compare_layer(dev, fresh, Dropout(0.5, seed=fresh.seed), (4, 10), dtype, train=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
@pytest.mark.parametrize("relu", [ReLU, ReLU6], ids=["relu", "relu6"])
def test_relu_rules_equal_cpu(dev, fresh, relu, rule, dtype):
    # scale 4: ReLU6's upper kink at 6 is crossed too
    compare_layer(dev, fresh, relu(), (3, 4, 5, 7), dtype, rule=rule, scale=4.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_relu_rules_are_bit_identical_to_cpu(dev, fresh, dtype):
    """ReLU is a selection, not arithmetic: the GPU must give the CPU's bits, NaN and 0 included."""
    x = fresh.normal((1000,), dtype, 4.0)
    x[:3] = [np.nan, 0.0, 6.0]
    dy = fresh.normal((1000,), dtype)
    dy[:4] = [np.nan, np.inf, -np.inf, 0.0]      # a blocked unit gives an exact 0, even for NaN
    for upper in (math.inf, 6.0):
        y = kernels.relu_forward(x, upper)
        for code in (0, 1, 2):
            dx = kernels.relu_backward(dy, y, code, upper)
            with dev.active():
                y_d = kernels.relu_forward(dev.put(x), upper)
                dx_d = kernels.relu_backward(dev.put(dy), y_d, code, upper)
            np.testing.assert_array_equal(dev.get(y_d), y, err_msg=f"relu_fwd upper={upper} {fresh.where}")
            np.testing.assert_array_equal(dev.get(dx_d), dx, err_msg=f"{gpu.RELU_BWD[code]} upper={upper} {fresh.where}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_maxpool_switches_and_im2col_are_bit_identical_to_cpu(dev, fresh, dtype):
    """Selections and copies (and sums in the CPU's order) must match exactly, not just closely."""
    x = fresh.normal((2, 3, 11, 9), dtype)
    x[1] = fresh.rng.integers(-1, 2, x[1].shape)        # ties: the first maximum (row-major) wins
    y, sw = kernels.maxpool_forward(x, (3, 3), (2, 2), (1, 1, 1, 1), (6, 5))
    dy = fresh.normal(y.shape, dtype)
    dx = kernels.maxpool_backward(dy, sw, (11, 9), (3, 3), (2, 2), (1, 1, 1, 1))
    cols = kernels.im2col(x, (3, 2), (2, 1), (5, 8))
    back = kernels.col2im(cols, x.shape, (3, 2), (2, 1), (5, 8))
    with dev.active():
        y_d, sw_d = kernels.maxpool_forward(dev.put(x), (3, 3), (2, 2), (1, 1, 1, 1), (6, 5))
        dx_d = kernels.maxpool_backward(dev.put(dy), sw_d, (11, 9), (3, 3), (2, 2), (1, 1, 1, 1))
        cols_d = kernels.im2col(dev.put(x), (3, 2), (2, 1), (5, 8))
        back_d = kernels.col2im(cols_d, x.shape, (3, 2), (2, 1), (5, 8))
    for got, want, what in ((y_d, y, "maxpool y"), (sw_d, sw, "switches"), (dx_d, dx, "maxpool dx"),
                            (cols_d, cols, "im2col"), (back_d, back, "col2im")):
        np.testing.assert_array_equal(dev.get(got), want, err_msg=f"{what} on {dev.name} {fresh.where}")
    # col2im sums what reaches each pixel in the CPU's order: a column matrix of its own, with values
    # of very different sizes, so that another order of the same adds rounds differently. Geometries:
    # windows smaller than the stride (pixels no window covers get 0), windows overlapping three deep
    # (7 wide, stride 2), and fewer outputs than fit (pixels past the last window)
    for kernel, stride, out_hw in (((3, 2), (2, 1), (5, 8)), ((2, 1), (3, 2), (4, 5)), ((7, 3), (2, 2), (3, 4)),
                                   ((7, 3), (2, 2), (2, 3)), ((5, 5), (1, 1), (6, 4))):
        cols = kernels.im2col(x, kernel, stride, out_hw)
        dcols = fresh.normal(cols.shape, dtype) * np.exp(fresh.normal(cols.shape, dtype) * 4).astype(dtype)
        back = kernels.col2im(dcols, x.shape, kernel, stride, out_hw)
        with dev.active():
            cols_d = kernels.im2col(dev.put(x), kernel, stride, out_hw)
            back_d = kernels.col2im(dev.put(dcols), x.shape, kernel, stride, out_hw)
        np.testing.assert_array_equal(dev.get(cols_d), cols, err_msg=f"im2col {kernel} {stride} {fresh.where}")
        np.testing.assert_array_equal(dev.get(back_d), back, err_msg=f"col2im {kernel} {stride} {fresh.where}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_rows_to_nchw_and_back_are_bit_identical_to_cpu(dev, fresh, dtype):
    """The copies around the convolution's GEMMs (the forward's with its bias add) are copies and one
    add each: the CPU's bits, with and without a bias, for rows as wide as ow and wider (junk dropped
    forward, zeros backward), and an (N, O) plane count above the rows' channel count."""
    for o, n, oh, ow, wr in ((6, 3, 4, 5, 5), (5, 7, 3, 2, 4), (1, 2, 1, 1, 1)):
        rows = fresh.normal((o, n * oh * wr), dtype)
        bias = fresh.normal((o,), dtype)
        dy = fresh.normal((n, o, oh, ow), dtype)
        for b in (None, bias):
            y = kernels.rows_to_nchw(rows, n, (oh, ow), b)
            with dev.active():
                y_d = kernels.rows_to_nchw(dev.put(rows), n, (oh, ow), None if b is None else dev.put(b))
            np.testing.assert_array_equal(dev.get(y_d), y, err_msg=f"rows_to_nchw {(o, n, oh, ow, wr)} "
                                                                    f"bias={b is not None} {fresh.where}")
        want = kernels.nchw_to_rows(dy, wr)
        with dev.active():
            got = kernels.nchw_to_rows(dev.put(dy), wr)
        np.testing.assert_array_equal(dev.get(got), want, err_msg=f"nchw_to_rows {(o, n, oh, ow, wr)} {fresh.where}")


# ---------------------------------------------------------------------------------------------
# the weight gradient's GEMM, summed in slices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("split", [1, 2, 8, 1002, 1003, None], ids=["whole", "S2", "S8_tail3", "S1002_tail1", "S_L",
                                                                   "rule"])
def test_weight_grad_is_dy_times_cols_transposed(dev, fresh, split, dtype):
    """gpu.weight_grad's strided-batched GEMM over S slices (1003 columns: S = 2 gives slices of 480
    and a tail of 43, S = 8 slices of 96 and a tail of 235, S = 1002 slices of one column and a tail of
    one, which a tail test of `< L - 1` would drop, S = L slices of one column) equals
    dy2 @ cols.T on the CPU; O and K differ, so a swapped dimension cannot pass. Then again with dy2 a
    strided view and cols in Fortran order, which weight_grad must not hand to cuBLAS as they are."""
    dy2, cols = fresh.normal((5, 1003), dtype), fresh.normal((7, 1003), dtype)
    with dev.active():
        dW = dev.get(gpu.weight_grad(dev.put(dy2), dev.put(cols), split))
        wide = dev.put(np.repeat(dy2, 2, axis=1))[:, ::2]                   # (5, 1003), every other column
        dW_views = dev.get(gpu.weight_grad(wide, dev.put(cols.T.copy()).T, split))     # cols: a transposed view
    assert_close(dW, dy2 @ cols.T, dtype, f"weight_grad S={split} on {dev.name} {fresh.where}")
    assert_close(dW_views, dy2 @ cols.T, dtype, f"weight_grad S={split} of views on {dev.name} {fresh.where}")
    if dev.name == "emulated":
        assert dev.backend.launches["cublas_gemm_strided_batched"] == (2 if split and split > 1 else 0)


def test_weight_grad_slices_start_aligned_and_cover_every_column():
    """The slices weight_grad asks cuBLAS for: a multiple of SLICE_ALIGN columns long once L // S
    allows (each slice then starts 128-byte aligned), S of them and a tail covering the L columns;
    the paper's conv1 shape with L = 8 * 109 * 109 (what dw_split cuts into 11 slices)."""
    calls = []

    class Recording:
        xp = np

        def gemm_strided_batched(self, transa, transb, m, n, k, a, lda, sa, b, ldb, sb, c, ldc, sc, batch):
            calls.append(dict(m=m, n=n, k=k, lda=lda, sa=sa, ldb=ldb, sb=sb, ldc=ldc, sc=sc, batch=batch))
            c[...] = 0

    o, k, l = 64, 147, 8 * 109 * 109
    old = gpu.use_backend(Recording())
    try:
        for split in (None, 7, 100, l // 20):
            calls.clear()
            gpu.weight_grad(np.zeros((o, l), np.float32), np.zeros((k, l), np.float32), split)
            (c,) = calls
            s = gpu.dw_split(o, k, l) if split is None else split
            assert (c["batch"], c["m"], c["n"], c["ldc"], c["sc"]) == (s, k, o, k, o * k)
            assert c["lda"] == c["ldb"] == l and c["sa"] == c["sb"] == c["k"]
            ls = c["k"]
            assert ls % gpu.SLICE_ALIGN == 0 if l // s >= gpu.SLICE_ALIGN else ls == l // s, (split, ls)
            assert s * ls <= l < s * ls + s * gpu.SLICE_ALIGN, (split, ls)
    finally:
        gpu.use_backend(old)
    assert gpu.dw_split(o, k, l) == 11


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_conv_summing_dw_in_slices_equals_cpu(dev, fresh, dtype, monkeypatch):
    """A convolution whose dW the split rule sends through the sliced GEMM (forced: test sizes are
    below the rule's) still equals the CPU layer, forward and every gradient; N*oh*ow = 3*5*7 = 105
    columns in 8 slices of 13 and a tail of 1."""
    monkeypatch.setattr(gpu, "dw_split", lambda o, k, l: 8)
    compare_layer(dev, fresh, Conv2d(3, 4, (3, 2), (2, 1), (1, 0, 1, 1)), (3, 3, 9, 5), dtype)
    if dev.name == "emulated":
        assert dev.backend.launches["cublas_gemm_strided_batched"] == 1


def test_dw_split_rule_splits_only_a_small_result_over_a_long_sum():
    """The paper's conv1 at batch 256, 224 px splits its 3M columns into 128 slices (2 cuBLAS tiles x
    128 = 256 thread blocks); its conv2-conv5 and the 64-pixel conv1 at batch 8 do not; each slice
    keeps at least DW_MIN_SLICE columns."""
    assert gpu.dw_split(64, 147, 256 * 109 * 109) == 128
    assert gpu.dw_split(64, 75, 256 * 32 * 32) == 32                   # 64-px conv1, batch 256: 1 tile
    for o, k, l in [(256, 1600, 256 * 26 * 26), (256, 2304, 256 * 13 * 13), (64, 75, 8 * 32 * 32),
                    (1000, 4096, 256)]:
        assert gpu.dw_split(o, k, l) == 1, (o, k, l)
    for l in range(gpu.DW_MIN_L, 40 * gpu.DW_MIN_L, 9973):
        assert l // gpu.dw_split(64, 147, l) >= gpu.DW_MIN_SLICE


def test_cublas_stand_in_is_the_column_major_definition():
    """tests/cuda_emu.py's gemm_strided_batched (what the emulated device runs for cuBLAS) against the
    definition written out element by element, all four transposes, padded leading dimensions and
    batch strides; then the out-of-bounds reads it must refuse."""
    from cuda_emu import gemm_strided_batched
    rng = np.random.default_rng(7)
    m, n, k, batch = 3, 4, 5, 3
    for ta in (0, 1):
        for tb in (0, 1):
            ra, rb = (m, k)[ta], (k, n)[tb]                        # rows of the stored A, B
            lda, ldb, ldc = ra + 2, rb + 1, m + 3
            sa, sb, sc = lda * (k, m)[ta] + 4, ldb * (n, k)[tb] + 1, ldc * n + 2
            a, b = rng.normal(size=sa * batch), rng.normal(size=sb * batch)
            c = np.full(sc * batch, np.nan)
            gemm_strided_batched(ta, tb, m, n, k, a, lda, sa, b, ldb, sb, c, ldc, sc, batch)
            for i in range(batch):
                for r in range(m):
                    for q in range(n):
                        want = sum((a[i * sa + r * lda + t] if ta else a[i * sa + r + t * lda]) *
                                   (b[i * sb + t + q * ldb] if not tb else b[i * sb + q + t * ldb]) for t in range(k))
                        assert c[i * sc + r + q * ldc] == pytest.approx(want, rel=1e-12), (ta, tb, i, r, q)
    a, b, c = np.zeros(m * k * 2), np.zeros(k * n * 2), np.zeros(m * n * 2)
    with pytest.raises(AssertionError, match="reaches elements"):          # a third A past the buffer
        gemm_strided_batched(0, 0, m, n, k, a, m, m * k, b, k, k * n, np.zeros(m * n * 3), m, m * n, 3)
    with pytest.raises(AssertionError, match="lda 2 < 3"):
        gemm_strided_batched(0, 0, m, n, k, a, 2, m * k, b, k, k * n, c, m, m * n, 2)
    with pytest.raises(AssertionError, match="results overlap"):
        gemm_strided_batched(0, 0, m, n, k, a, m, m * k, b, k, k * n, c, m, m * n - 1, 2)


def test_cupy_backends_cublas_call_on_the_cupy_stand_in():
    """CupyBackend.gemm_strided_batched, the one call into cuBLAS that is not CuPy's matmul, given
    tests/hostcupy.py for CuPy: its arguments, in the order and types of CuPy 14's
    cupy.cuda.cublas.sgemmStridedBatched / dgemmStridedBatched (host pointers to alpha and beta,
    device pointers to the matrices, ints that fit the wrapper's C types), do weight_grad's sliced
    product, reading only inside the arrays whose pointers they are (a stride that reaches one element
    past its array is refused)."""
    be = gpu.CupyBackend.__new__(gpu.CupyBackend)            # without __init__: no real CuPy needed
    be.xp = hostcupy
    old = gpu.use_backend(be)
    try:
        for dtype in DTYPES:
            rng = np.random.default_rng(3)
            dy2, cols = rng.normal(size=(6, 4099)).astype(dtype), rng.normal(size=(11, 4099)).astype(dtype)
            got = gpu.weight_grad(hostcupy.asarray(dy2), hostcupy.asarray(cols), 16).get()
            assert_close(got, dy2 @ cols.T, dtype, "weight_grad through the CuPy backend's cuBLAS call")
        a, c = hostcupy.zeros((4, 6), np.float32), hostcupy.zeros((2, 3, 3), np.float32)
        be.gemm_strided_batched(1, 0, 3, 3, 3, a, 6, 3, a, 6, 3, c, 3, 9, 2)     # 2 slices of 3 columns: inside
        be.gemm_strided_batched(1, 0, 3, 3, 3, a, 6, 9, a, 6, 3, c, 3, 9, 2)     # A_1 ends at a's last element
        with pytest.raises(AssertionError, match="reaches"):                    # one element past it
            be.gemm_strided_batched(1, 0, 3, 3, 3, a, 6, 10, a, 6, 3, c, 3, 9, 2)
        with pytest.raises(OverflowError, match="lda"):
            be.gemm_strided_batched(1, 0, 3, 3, 3, a, 2 ** 31, 3, a, 6, 3, c, 3, 9, 2)
    finally:
        gpu.use_backend(old)


# ---------------------------------------------------------------------------------------------
# loss and optimiser
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("n,k", [(7, 13), (5, 1000), (3, 2)])
def test_softmax_xent_equals_cpu(dev, fresh, n, k, dtype):
    """Loss and dscores = (p - onehot) / N. When every row is near-certain (likely with k = 2 and scores
    of scale 5) the loss and every dscore are tiny and p - 1 cancels: below a loss of 1 and a dscore of
    1/N the difference is judged absolutely (it was a 1.3e-4 relative miss in float32, seed 1187353680)."""
    scores = fresh.normal((n, k), dtype, 5.0)
    labels = fresh.rng.integers(0, k, n)
    loss, d = softmax_cross_entropy(scores, labels)
    with dev.active():
        loss_d, d_d = softmax_cross_entropy(dev.put(scores), dev.put(labels))
    assert abs(loss_d - loss) <= TOL[dtype] * max(abs(loss), 1.0), f"loss {loss_d} vs {loss} {fresh.where}"
    assert_close(dev.get(d_d), d, dtype, f"dscores ({n}x{k}) on {dev.name} {fresh.where}", floor=1.0 / n)


@pytest.mark.parametrize("labels", [[1, 9], [-1, 2], [5, 0]])
def test_softmax_cross_entropy_names_a_label_out_of_range(dev, fresh, labels):
    """The same clear error on both devices (the GPU's kernel runs first and flags the row with NaN)."""
    scores = fresh.normal((2, 5), np.float32)
    lo, hi = min(labels), max(labels)
    message = rf"labels must be class indices in \[0, 5\), got values in \[{lo}, {hi}\]"
    with pytest.raises(ValueError, match=message):
        softmax_cross_entropy(scores, np.array(labels))
    with dev.active(), pytest.raises(ValueError, match=message):
        softmax_cross_entropy(dev.put(scores), dev.put(np.array(labels)))


@pytest.mark.parametrize("buffers", ["poisoned", "zeroed"])
def test_softmax_xent_label_out_of_range_gives_nan_not_a_stray_read(dev, fresh, monkeypatch, buffers):
    """The kernel itself writes the NaN: the dev fixture's SCRATCHNET_POISON=1 pre-fills outputs with
    NaN and would hide a kernel that forgot to, so it also runs on buffers that start as zeros (as
    recycled memory may)."""
    if buffers == "zeroed":
        monkeypatch.delenv("SCRATCHNET_POISON", raising=False)
        monkeypatch.setattr(gpu, "_out", lambda shape, dtype: gpu.backend().xp.zeros(shape, dtype))
    scores = fresh.normal((2, 5), np.float64)
    with dev.active():
        loss, _ = kernels.softmax_xent(dev.put(scores), dev.put(np.array([1, 9])))
    assert math.isnan(loss)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_fused_sgd_update_is_the_formula(dev, fresh, dtype):
    w, g, v = (fresh.normal((33, 7), dtype) for _ in range(3))
    lr, mu, wd = 0.05, 0.9, 5e-4
    v_want = mu * v.astype(np.float64) - lr * (g + wd * w.astype(np.float64))
    w_want = w + v_want
    with dev.active():
        w_d, v_d = dev.put(w), dev.put(v)
        kernels.sgd_update(w_d, dev.put(g), v_d, lr, mu, wd)
    assert_close(dev.get(v_d), v_want, dtype, f"velocity {fresh.where}")
    assert_close(dev.get(w_d), w_want, dtype, f"weights {fresh.where}")


def test_cpu_sgd_update_is_the_trainers_step(fresh):
    """kernels.sgd_update on NumPy arrays does what scratchnet.train.sgd.SGD.step does, bit for bit."""
    from scratchnet.train.sgd import SGD, decays
    net = paper_net(32, num_classes=5, width=0.125, seed=fresh.seed % 1000)
    twin = copy.deepcopy(net)
    for a in (net, twin):
        for _, layer, key in a.named_params():
            layer.grads[key] = np.full_like(layer.params[key], 0.25)
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=5e-4)
    vel = {}
    for _ in range(2):
        opt.step()
        for path, layer, key in twin.named_params():
            v = vel.setdefault(path, np.zeros_like(layer.params[key]))
            kernels.sgd_update(layer.params[key], layer.grads[key], v, 0.1, 0.9, 5e-4 if decays(key) else 0.0)
    for (path, a, key), (_, b, _) in zip(net.named_params(), twin.named_params()):
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=path)


# ---------------------------------------------------------------------------------------------
# whole networks
# ---------------------------------------------------------------------------------------------
def _network_differences(dev, fresh, rule, dtype):
    """paper_net (input 64, width 0.25) on fresh inputs and weights, on the CPU and on ``dev``: the
    relative difference of the class scores, d score / d image and every weight gradient; those over
    the tolerance, as messages (none: equal)."""
    net = paper_net(64, num_classes=10, width=0.25, seed=int(fresh.rng.integers(1000)), dtype=dtype)
    on_dev = dev.move(net)
    n = 2 if dev.name == "emulated" else 4
    x = fresh.normal((n, 3, 64, 64), dtype)
    onehot = np.zeros((n, 10), dtype)
    onehot[np.arange(n), fresh.rng.integers(0, 10, n)] = 1
    scores = net.forward(x)
    dx = net.backward(onehot, rule=rule)
    with dev.active():
        scores_d = on_dev.forward(dev.put(x))
        dx_d = on_dev.backward(dev.put(onehot), rule=rule)
    pairs = [("scores", scores_d, scores), ("image gradient", dx_d, dx)]
    pairs += [(f"d/d {path}", b.grads[key], a.grads[key])
              for (path, a, key), (_, b, _) in zip(net.named_params(), on_dev.named_params())]
    where = f"paper_net64 {np.dtype(dtype).name} {rule} on {dev.name} {fresh.where}"
    errs = [(what, norm_difference(dev.get(got), want)) for what, got, want in pairs]
    return [f"{what} of {where}: relative difference {e:.3g} > {TOL[dtype]:g}"
            for what, e in errs if not e <= TOL[dtype]]


def compare_network(dev, fresh, rule, dtype):
    """The failures of up to ``draws`` comparisons (_network_differences), stopping at the first that
    passes: [] when the first passes; as many messages as draws when all fail.

    In float32 on a GPU, cuBLAS sums in another order than the CPU's BLAS; a pre-activation within a
    few ulps of 0, or two nearly tied values in a pooling window, then goes the other way on the two
    devices, and one such flip moves a gradient by 1e-3 to 1e-2. So a float32 comparison that fails
    is repeated on new inputs and weights, up to 3 draws: a broken kernel fails every draw, a flip
    rarely fails even one (``first_draw_failure_rate``). The emulated device flips too, though its
    GEMMs are the CPU's: kernels/cpu_lrn.py computes s**-0.75 through a float64 1/sqrt(s) (Numba's
    math.sqrt), lrn.cu in the array's type, so LRN outputs differ in their last bit, and about one draw
    in 100 of rule "gradient" puts a conv3 pre-activation on the other side of 0 (FRESH_SEED=386794046
    does). float64 gets one draw. A pass after a failed draw is reported as a warning."""
    draws = 3 if dtype == np.float32 else 1
    failures = []
    for _ in range(draws):
        problems = _network_differences(dev, fresh, rule, dtype)
        if not problems:
            if failures:        # passed on a later draw: shown in pytest's warnings, so that a fault
                warnings.warn(f"passed on draw {len(failures) + 1} after: {failures[0]}")  # failing often shows
            return []
        failures.append("; ".join(problems))
    return failures


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("rule", ["gradient", "guided"])
def test_network_image_gradient_equals_cpu(dev, fresh, rule, dtype):
    """paper_net (input 64, width 0.25): class scores, d score / d image, and every weight gradient
    equal the CPU's (2-norm relative difference; float32 on a GPU: one of 3 draws, see compare_network)."""
    failures = compare_network(dev, fresh, rule, dtype)
    assert not failures, f"{len(failures)} draw(s), each with differences:\n" + "\n".join(failures)


class OtherOrder:
    """A stand-in for a device that sums in another order than the CPU's float32 BLAS: it computes in
    float64 and rounds its results to float32 (more accurate than a GPU, and as different)."""
    name = "float64 stand-in"

    def put(self, a):
        return np.asarray(a, np.float64)

    def get(self, a):
        return np.asarray(a).astype(np.float32)

    def move(self, layer):
        twin = copy.deepcopy(layer)
        for _, lay, key in twin.named_params():
            lay.params[key] = lay.params[key].astype(np.float64)
        return twin

    @contextmanager
    def active(self):
        yield


@pytest.mark.parametrize("rule", ["gradient", "guided"])
def test_float32_network_comparison_allows_for_another_summation_order(fresh, rule):
    """The float32 whole-network comparison passes against a device that rounds differently (the
    stand-in above), where a single draw fails now and then: a GPU run must not fail on that."""
    assert not compare_network(OtherOrder(), fresh, rule, np.float32)


@pytest.mark.parametrize("script,dtype,name,want_draws,want_failures", [
    ([[], ["x"]], np.float32, "cuda", 1, 0),                      # passes at once
    ([["a"], [], ["x"]], np.float32, "cuda", 2, 0),               # a flip, then a pass (warned)
    ([["a"], ["b"], ["c"], ["x"]], np.float32, "cuda", 3, 3),     # fails every draw: a broken kernel
    ([["a"], []], np.float64, "cuda", 1, 1),                      # float64: one draw
    ([["a"], [], ["x"]], np.float32, "emulated", 2, 0),           # the emulated device flips too (its LRN)
])
def test_compare_network_draws(monkeypatch, script, dtype, name, want_draws, want_failures):
    """compare_network's draws, with _network_differences scripted: how many it takes, what it returns."""
    calls = iter(script)
    taken = []
    monkeypatch.setattr(sys.modules[__name__], "_network_differences",
                        lambda *a: taken.append(1) or next(calls))
    dev = type("Dev", (), {"name": name})()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failures = compare_network(dev, None, "gradient", dtype)
    assert (len(taken), len(failures), len(caught)) == (want_draws, want_failures, int(want_draws > 1 and not want_failures))


def first_draw_failure_rate(draws=100, rule="gradient"):
    """How often one float32 draw of the whole-network comparison fails against the float64 stand-in
    (a kink or tie flip): ``cd tests && python -c "import test_gpu as t; print(t.first_draw_failure_rate())"``."""
    return sum(bool(_network_differences(OtherOrder(), Fresh(), rule, np.float32)) for _ in range(draws)) / draws


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_sgd_steps_equal_cpu(dev, fresh, dtype):
    """Three training steps (dropout on, fused update on the device, the trainer's SGD on the CPU)."""
    from scratchnet.train.sgd import SGD, decays
    lr, mu, wd = 0.01, 0.9, 5e-4
    net = paper_net(32, num_classes=10, width=0.125, seed=fresh.seed % 1000, dtype=dtype)
    on_dev = dev.move(net)
    opt = SGD(net, lr=lr, momentum=mu, weight_decay=wd)
    vel = {}
    for step in range(3):
        x = fresh.normal((4, 3, 32, 32), dtype)
        labels = fresh.rng.integers(0, 10, 4)
        loss, d = softmax_cross_entropy(net.forward(x, train=True), labels)
        net.backward(d, input_grad=False)
        opt.step()
        with dev.active():
            loss_d, d_d = softmax_cross_entropy(on_dev.forward(dev.put(x), train=True), dev.put(labels))
            on_dev.backward(d_d, input_grad=False)
            for path, layer, key in on_dev.named_params():
                v = vel.get(path)
                if v is None:
                    v = vel[path] = dev.put(np.zeros(layer.params[key].shape, dtype))
                kernels.sgd_update(layer.params[key], layer.grads[key], v, lr, mu, wd if decays(key) else 0.0)
        assert abs(loss_d - loss) <= 10 * TOL[dtype] * abs(loss), f"step {step}: loss {loss_d} vs {loss} {fresh.where}"
    for (path, a, key), (_, b, _) in zip(net.named_params(), on_dev.named_params()):
        assert_close_norm(dev.get(b.params[key]), a.params[key], dtype,
                          f"{path} after 3 steps, {np.dtype(dtype).name} on {dev.name} {fresh.where}")


def test_backward_is_deterministic(dev, fresh):
    """Gathers, no atomics: the same inputs give the same bits, launch after launch."""
    x = fresh.normal((2, 8, 13, 13), np.float32)
    dy = fresh.normal((2, 8, 6, 6), np.float32)
    with dev.active():
        _, sw = kernels.maxpool_forward(dev.put(x), (3, 3), (2, 2), (0, 0, 0, 0), (6, 6))
        a = dev.get(kernels.maxpool_backward(dev.put(dy), sw, (13, 13), (3, 3), (2, 2), (0, 0, 0, 0)))
        b = dev.get(kernels.maxpool_backward(dev.put(dy), sw, (13, 13), (3, 3), (2, 2), (0, 0, 0, 0)))
        cols = kernels.im2col(dev.put(x), (3, 3), (1, 1), (11, 11))
        c1 = dev.get(kernels.col2im(cols, x.shape, (3, 3), (1, 1), (11, 11)))
        c2 = dev.get(kernels.col2im(cols, x.shape, (3, 3), (1, 1), (11, 11)))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c1, c2)


def _every_kernel_kind(emu, seed, dtype):
    """Every layer kind forward and backward (guided rule; ReLU and ReLU6 under all three rules, each
    its own kernel), the loss and the fused SGD update on the emulated device, from inputs drawn with
    ``seed``; their outputs, as NumPy arrays."""
    out = []
    with emu.active():
        extra = {"relu": (ReLU, (2, 3, 5, 7)), "relu6": (ReLU6, (2, 3, 5, 7))}
        for name, (make, shape) in {**LAYERS, **extra}.items():
            layer = make()
            rng = np.random.default_rng(seed)
            for _, lay, key in layer.named_params():
                lay.params[key] = rng.standard_normal(lay.params[key].shape).astype(dtype)
            x = (rng.standard_normal(shape) * 4).astype(dtype)
            y = layer.forward(x, False)
            dy = rng.standard_normal(y.shape).astype(dtype)
            out += [y, layer.backward(dy, "guided", True, True)]
            out += list(layer.grads.values())
            if name in extra:
                out += [layer.backward(dy, rule, True, True) for rule in ("gradient", "deconvnet")]
        scores = rng.standard_normal((5, 7)).astype(dtype)
        out += list(softmax_cross_entropy(scores, rng.integers(0, 7, 5)))
        w, g, v = (rng.standard_normal(300).astype(dtype) for _ in range(3))
        kernels.sgd_update(w, g, v, 0.1, 0.9, 5e-4)
        out += [w, v]
    return [np.asarray(a) for a in out]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_emulated_results_do_not_depend_on_the_order_threads_run_in(emulator_lib, fresh, dtype):
    """Emulated only: every layer kind, the loss and the fused update, once with blocks and threads in
    launch order and once reversed (tests/cuda_emu.h, emu_set_reverse): the same bits. A kernel where
    one thread reads what another writes, or two threads write different values to one element, would
    differ (two threads adding into one element would not: the next test is for that)."""
    emu = Emulated(emulator_lib)
    forward = _every_kernel_kind(emu, fresh.seed, dtype)
    with switched_on(emulator_lib, "reverse"):
        backward = _every_kernel_kind(emu, fresh.seed, dtype)
    assert len(forward) == len(backward)
    for i, (a, b) in enumerate(zip(forward, backward)):
        np.testing.assert_array_equal(b, a, err_msg=f"output {i} {fresh.where}")


@pytest.mark.parametrize("small_grids", [False, True], ids=["gpu.py-grids", "1-block-of-32"])
def test_emulated_no_two_threads_write_one_element(emulator_lib, fresh, monkeypatch, small_grids):
    """Emulated only: with the write-ownership check on (tests/cuda_emu.h, emu_set_owner_check), every
    element of every output of every kernel launch above is changed by one thread at most (one block,
    for the loss kernel, whose threads cooperate through __syncthreads). Two threads accumulating
    into one element give the right sum here, run one after the other, and lose updates on a GPU,
    which is the race the order reversal above cannot show. Outputs are NaN-poisoned, so a write shows
    as changed bytes. Run twice: with gpu.py's grids (at these sizes, about a thread per element) and
    with every launch cut to one block of 32 threads, so that every kernel's grid-stride loop goes
    round (checked: each kernel has launches with more work than threads); the results must not change."""
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    emu = Emulated(emulator_lib)
    plain = _every_kernel_kind(emu, fresh.seed, np.float32)
    looped = {}
    if small_grids:
        launch = gpu._launch

        def one_small_block(name, dtype, work, args, threads=32):
            looped[name] = looped.get(name, False) or work > threads
            return launch(name, dtype, work, args, threads)
        monkeypatch.setattr(gpu, "_launch", one_small_block)
        monkeypatch.setattr(gpu, "MAX_BLOCKS", 1)
    with switched_on(emulator_lib, "owner_check"):
        checked = _every_kernel_kind(emu, fresh.seed, np.float32)   # a race fails its launch (RuntimeError)
    for i, (a, b) in enumerate(zip(plain, checked)):
        np.testing.assert_array_equal(b, a, err_msg=f"output {i} {fresh.where}")
    if small_grids:
        every_kernel = {name for names in gpu.KERNELS.values() for name in names}
        assert set(looped) == every_kernel and all(looped.values()), looped


def test_emulated_write_ownership_check_catches_a_lost_update(emulator_lib):
    """The check itself: a kernel in which every thread adds into out[0] (cuda_emu.SELFTEST_SOURCE)
    sums correctly run one thread at a time, and fails with the check on, naming both threads."""
    k = EmuBackend(emulator_lib).kernel("emu_selftest_sum_race", np.float32)
    x = np.ones(1000, np.float32)
    out = np.zeros(1, np.float32)
    k((4,), (256,), (x, out, np.int64(x.size)))
    assert out[0] == 1000                               # no race visible without the check
    with switched_on(emulator_lib, "owner_check"), pytest.raises(
            RuntimeError, match=r"emu_selftest_sum_race<float>: element 0 of argument 1 written "
                                r"by thread 0 of block 0 and by thread 1 of block 0 of one launch"):
        k((4,), (256,), (x, np.zeros(1, np.float32), np.int64(x.size)))


# ---------------------------------------------------------------------------------------------
# the harness itself
# ---------------------------------------------------------------------------------------------
def test_poison_fills_outputs_with_nan(dev):
    with dev.active():
        out = dev.get(gpu._out((5,), np.float32))
        sw = dev.get(gpu._out((5,), np.int32))
    assert np.isnan(out).all() and (sw == -1).all()


def test_emulated_launch_rejects_wrong_argument_types(emulator_lib):
    """What CuPy would silently misread: a double where the kernel takes a float, a Python int."""
    b = EmuBackend(emulator_lib)
    x = np.zeros(4, np.float32)
    k = b.kernel("relu_fwd", np.float32)
    with pytest.raises(RuntimeError, match="argument 2 must be s:f4, got s:f8"):
        k((1,), (32,), (x, x.copy(), np.float64(1.0), np.int64(4)))
    with pytest.raises(TypeError, match="Python int"):
        k((1,), (32,), (x, x.copy(), np.float32(1.0), 4))
    with pytest.raises(RuntimeError, match="expected 4 arguments"):
        k((1,), (32,), (x, x.copy(), np.float32(1.0)))


def _python_prints_ok(code):
    """Run ``code`` in a fresh Python (no emulated GPU); it must exit 0 having printed 'ok'."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=hostcupy.env_without_emulation(), check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_cpu_engine_runs_without_cupy():
    """With CuPy unimportable, scratchnet and kernels.gpu import and the CPU engine runs."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import numpy as np, scratchnet, scratchnet.kernels.gpu\n"
            "from scratchnet.models import paper_net\n"
            "net = paper_net(32, num_classes=3, width=0.125)\n"
            "s = net.forward(np.zeros((1, 3, 32, 32), np.float32))\n"
            "net.backward(np.ones_like(s))\n"
            "assert not scratchnet.backend.gpu_available()\n"
            "print('ok')\n")
    _python_prints_ok(code)


def test_cupy_is_imported_only_when_the_gpu_is_asked_for():
    """`import scratchnet`, the CLI module and a CPU forward/backward leave CuPy unimported (a fifth of
    the import time when it is installed); asking about the GPU imports it where it is installed."""
    code = ("import sys, numpy as np, scratchnet, scratchnet.cli\n"
            "from scratchnet import backend\n"
            "from scratchnet.models import paper_net\n"
            "net = paper_net(32, num_classes=3, width=0.125)\n"
            "s = net.forward(np.zeros((1, 3, 32, 32), np.float32))\n"
            "net.backward(np.ones_like(s))\n"
            "assert backend.get_array_module(s) is np and not backend.is_gpu_array(s)\n"
            "assert 'cupy' not in sys.modules, 'imported by the CPU path'\n"
            "backend.gpu_problem()\n"
            "assert ('cupy' in sys.modules) == (backend._cupy is not None), backend._cupy_import_error\n"
            "print('ok')\n")
    _python_prints_ok(code)


def test_arrays_of_a_cupy_imported_elsewhere_are_recognised():
    """Before scratchnet has looked for CuPy, an array of an already imported CuPy still dispatches to it."""
    code = ("import sys, types, numpy as np\n"
            "cupy = types.ModuleType('cupy'); cupy.ndarray = type('ndarray', (), {}); sys.modules['cupy'] = cupy\n"
            "from scratchnet import backend\n"
            "assert backend._cupy is backend._UNTRIED\n"
            "assert backend.get_array_module(np.zeros(1), cupy.ndarray()) is cupy\n"
            "assert backend.is_gpu_array(cupy.ndarray()) and not backend.is_gpu_array(np.zeros(1))\n"
            "print('ok')\n")
    _python_prints_ok(code)


class _FakeCupy:
    """Just enough of ``cupy`` for backend.gpu_problem: a device count, NVRTC, cuBLAS (loaded lazily
    by CuPy 14, so reaching ``cupy.cuda.cublas`` is what fails when libcublas is missing)."""

    def __init__(self, count=1, count_error=None, nvrtc_error=None, cublas_error=None, headers_error=None):
        def device_count():
            if count_error:
                raise count_error
            return count

        def nvrtc_version():
            if nvrtc_error:
                raise nvrtc_error
            return (12, 9)

        class Cuda:
            runtime = type("runtime", (), {"getDeviceCount": staticmethod(device_count)})
            nvrtc = type("nvrtc", (), {"getVersion": staticmethod(nvrtc_version)})

            @property
            def cublas(self):
                if cublas_error:
                    raise cublas_error
                return type("cublas", (), {"setMathMode": None})
        self.cuda = Cuda()

        def assemble(options):
            if headers_error:
                raise headers_error
            return options
        self._core = type("_core", (), {"core": type("core", (), {"assemble_cupy_compiler_options": staticmethod(assemble)})})


_NO_CUPY = ModuleNotFoundError("No module named 'cupy'", name="cupy")


@pytest.mark.parametrize("fake, expected", [
    (None, "CuPy is not installed"),
    (ImportError("\n================================================================\nFailed to import CuPy.\n..."),
     "CuPy is installed but fails to import (ImportError: Failed to import CuPy.)"),
    (ModuleNotFoundError("No module named 'fastrlock'", name="fastrlock"),
     "CuPy is installed but fails to import (ModuleNotFoundError: No module named 'fastrlock')"),
    (dict(count_error=RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient\nmore")),
     "CuPy finds no CUDA device (RuntimeError: cudaErrorInsufficientDriver: CUDA driver version is insufficient)"),
    (dict(count=0), "CuPy finds no CUDA device"),
    (dict(nvrtc_error=ImportError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12"')),
     "CuPy sees 1 GPU(s) but cannot load NVRTC or cuBLAS (ImportError: Failure finding \"libnvrtc.so.13"),
    (dict(count=2, cublas_error=ImportError('Failure finding "libcublasLt.so.13 or libcublasLt.so.12"')),
     "CuPy sees 2 GPU(s) but cannot load NVRTC or cuBLAS (ImportError: Failure finding \"libcublasLt"),
    (dict(headers_error=RuntimeError("Failed to auto-detect CUDA root directory.")),
     "CuPy sees 1 GPU(s) but not the CUDA headers NVRTC needs (RuntimeError: Failed to auto-detect"),
    (dict(), None),
])
def test_gpu_problem_says_what_is_missing_and_gpu_requests_run_on_the_cpu(fake, expected, monkeypatch, capsys):
    """CuPy missing, no device (CuPy 14 on a machine without a driver), or a GPU whose CUDA libraries
    CuPy cannot find (CuPy 14 without its [ctk] wheels or a toolkit): one line saying which, and a
    command asking for the GPU runs on the CPU instead of failing inside its first kernel launch."""
    cupy_missing = fake is None or isinstance(fake, Exception)
    monkeypatch.setattr(backend, "_cupy", None if cupy_missing else _FakeCupy(**fake))
    monkeypatch.setattr(backend, "_cupy_import_error", fake if isinstance(fake, Exception) else _NO_CUPY)
    problem = backend.gpu_problem()
    if expected is None:
        assert problem is None and backend.gpu_available() and backend.resolve_device("gpu") == "gpu"
        return
    assert problem.startswith(expected), problem
    assert "\n" not in problem and not backend.gpu_available()
    assert backend.resolve_device("gpu") == "cpu"
    err = capsys.readouterr().err
    assert f"no usable GPU: {problem}; running on the CPU" in err and "scratchnet[gpu]" in err
    assert backend.resolve_device("cpu") == "cpu" and capsys.readouterr().err == ""
    with pytest.raises(RuntimeError, match=f"device 'gpu' is not usable here: {re.escape(problem)}"):
        backend.to_device(np.zeros(2, np.float32), "gpu")       # asked for directly: an error, not a move


def test_real_cupy_without_a_gpu_falls_back_to_the_cpu(tmp_path):
    """A real CuPy on a machine without a GPU (CI installs CuPy 14 through the kernel-check extra):
    importing scratchnet works, ``--device gpu`` says why there is no GPU and the command runs on the
    CPU. (With a GPU here this is the normal path and is skipped.)"""
    probe = subprocess.run([sys.executable, "-c", "import cupy; print(cupy.__version__)"],
                           capture_output=True, text=True, env=hostcupy.env_without_emulation(), check=False)
    version = probe.stdout.strip()
    if probe.returncode != 0 or not version or version.endswith("-host"):
        pytest.skip("needs a real CuPy (pip install -e '.[kernel-check]')")
    probe = subprocess.run([sys.executable, "-c", "from scratchnet.backend import gpu_problem; print(gpu_problem())"],
                           capture_output=True, text=True, env=hostcupy.env_without_emulation(), check=False)
    if probe.stdout.strip() == "None":
        pytest.skip("a usable GPU is here: nothing to fall back from")
    net = paper_net(32, num_classes=3, width=0.125)
    net.save(tmp_path / "net.npz")
    r = subprocess.run([sys.executable, "-m", "scratchnet", "info", "--model", str(tmp_path / "net.npz"),
                        "--device", "gpu"], capture_output=True, text=True, env=hostcupy.env_without_emulation(), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "scratchnet: no usable GPU: CuPy" in r.stderr and "running on the CPU" in r.stderr, r.stderr
    assert r.stderr.count("no usable GPU") == 1 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["device"] == "cpu"         # and its JSON says so


def test_real_cupy_library_check_agrees_with_cupy(real_cupy, monkeypatch):
    """With a real CuPy and a (pretended) device, gpu_problem's library check gives the same answer as
    loading NVRTC and cuBLAS through CuPy directly: here on CI, NVRTC from its wheel and no cuBLAS."""
    cupy = real_cupy
    monkeypatch.setattr(backend, "_cupy", cupy)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    # gpu_problem remembers a pass for this CuPy module: undone with the pretended device, or later
    # tests would take this machine for one with a GPU (where NVRTC and cuBLAS both load, as with
    # cupy-cuda13x and torch's CUDA wheels)
    monkeypatch.setattr(backend, "_gpu_checked_for", None)
    loaded = []
    for name, check in (("nvrtc", lambda: cupy.cuda.nvrtc.getVersion()),
                        ("cublas", lambda: __import__("cupy_backends.cuda.libs.cublas", fromlist=["x"]).setMathMode)):
        try:
            check()
            loaded.append(name)
        except Exception:
            pass
    problem = backend.gpu_problem()
    if loaded == ["nvrtc", "cublas"]:
        assert problem is None
    else:
        assert problem.startswith("CuPy sees 1 GPU(s) but cannot load NVRTC or cuBLAS ("), problem
        assert ("libnvrtc" if "nvrtc" not in loaded else "libcublas") in problem, problem


def test_set_tf32_finds_its_switches_in_real_cupy(real_cupy):
    """gpu.set_tf32 uses CuPy internals (the public CUPY_TF32 reaches 2-D matmuls only): they exist
    in the CuPy installed here (CI: CuPy 14). Setting them needs a GPU; looking them up does not."""
    import importlib.util
    from cupy._core import _routines_linalg as linalg
    assert callable(linalg.set_compute_type)
    assert linalg.COMPUTE_TYPE_TF32 != linalg.COMPUTE_TYPE_DEFAULT
    assert importlib.util.find_spec("cupy_backends.cuda.libs.cublas") is not None


def test_the_stand_in_hides_a_real_cupys_switches_from_set_tf32(monkeypatch):
    """With tests/hostcupy.py as ``cupy``, set_tf32 says CuPy's switches are missing, also after a real
    CuPy's private modules were imported in this process (a real cupy._core beside the stand-in's
    arrays once took set_tf32 on to cupy.cuda.device, which the stand-in lacks: an AttributeError in
    the benchmark's tests wherever cuBLAS loads). Nor does the stand-in pass for a package."""
    try:
        importlib.import_module("cupy._core._routines_linalg")     # the real one, where CuPy is installed
    except Exception:
        pass
    monkeypatch.setattr(gpu, "_tf32_choice", gpu._tf32_choice)          # set_tf32 records its argument
    hostcupy.stand_in_for_cupy(monkeypatch)
    with pytest.raises(RuntimeError, match=r"set_tf32: CuPy 0\.0-host lacks the switches this uses \(No module named 'cupy\._core'"):
        gpu.set_tf32(False)
    assert not hasattr(hostcupy, "__path__")


@pytest.mark.parametrize("choice", [None, False, True])
def test_scratchnet_tf32_in_the_environment_yields_to_set_tf32(monkeypatch, choice):
    """$SCRATCHNET_TF32=1 turns TF32 on when the CuPy backend is made, unless set_tf32 was called
    before (bench_gpu.py forbids TF32 for its float32 run, then makes the backend)."""
    calls = []
    hostcupy.stand_in_for_cupy(monkeypatch)
    monkeypatch.setattr(gpu, "set_tf32", calls.append)
    monkeypatch.setattr(gpu, "_tf32_choice", choice)
    monkeypatch.setenv("SCRATCHNET_TF32", "1")
    gpu.CupyBackend()
    assert calls == ([True] if choice is None else [])


def test_every_cupy_attribute_the_source_names_exists_in_real_cupy(real_cupy):
    """A static companion of test_gpu_host's record of what ran: every ``xp.a.b``, ``cupy.a.b``,
    ``cp.a.b`` and ``_cupy.a.b`` written in scratchnet/, kernels/ and bench/ (paths no test reaches
    included, such as bench_gpu.py's CUDA events) resolves in the CuPy installed here."""
    import ast
    cupy = real_cupy
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "scratchnet").rglob("*.py"), *(root / "kernels").glob("*.py"), *(root / "bench").glob("*.py")]
    named, missing = set(), []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            parts, n = [], node
            while isinstance(n, ast.Attribute):
                parts.append(n.attr)
                n = n.value
            if parts and isinstance(n, ast.Name) and n.id in ("xp", "cupy", "cp", "_cupy"):
                name = "cupy." + ".".join(reversed(parts))
                if name not in named:
                    named.add(name)
                    if not hostcupy.real_cupy_has(cupy, name):
                        missing.append(f"{f.relative_to(root)}:{node.lineno}: {name}")
    print(f"{len(named)} attribute chains named in the source, {len(missing)} missing from CuPy {cupy.__version__}")
    assert len(named) > 20, sorted(named)
    assert not missing, f"not in CuPy {cupy.__version__}:\n" + "\n".join(missing)


def test_the_kernels_dispatch_rule_recognises_real_cupy_arrays(real_cupy):
    """scratchnet.kernels sends an array to the CUDA kernels when its type's module starts with
    "cupy" (no CuPy import needed on the CPU path): true of the real cupy.ndarray, not of NumPy's."""
    assert real_cupy.ndarray.__module__.startswith("cupy"), real_cupy.ndarray.__module__
    assert not kernels.on_gpu(np.zeros(1))


def test_im2col_and_col2im_refuse_a_geometry_that_does_not_fit(dev):
    """Windows reaching past the padded input would read and sum outside it: both wrappers refuse them
    before a launch, naming the geometry."""
    x = np.zeros((1, 2, 5, 5), np.float32)
    with dev.active():
        with pytest.raises(ValueError, match=r"im2col: 3x2 outputs of a 3x3 window, stride 2x2, do not fit a 5x5"):
            kernels.im2col(dev.put(x), (3, 3), (2, 2), (3, 2))
        cols = dev.put(np.zeros((2 * 9, 3 * 2), np.float32))
        with pytest.raises(ValueError, match=r"col2im: 3x2 outputs of a 3x3 window, stride 2x2, do not fit a 5x5"):
            kernels.col2im(cols, x.shape, (3, 3), (2, 2), (3, 2))


def test_i32_arguments_take_exactly_the_32_bit_range():
    assert gpu._i32(2 ** 31 - 1) == 2 ** 31 - 1 and gpu._i32(2 ** 31 - 1).dtype == np.int32
    assert gpu._i32(-2 ** 31) == -2 ** 31
    for v in (2 ** 31, 2 ** 32 - 1, -2 ** 31 - 1):
        with pytest.raises(OverflowError, match=f"value {v} does not fit the kernels' 32-bit int arguments"):
            gpu._i32(v)


# ---- from a mutation round on the kernels (emulated device): each test below failed on a mutant the
# ---- suite let through (max-pool switches of winnerless windows, the LRN clamp, softmax's max
# ---- subtraction; the kernel's own NaN for a bad label is test_softmax_xent_label_out_of_range_gives_nan_*)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("fill", [-np.inf, np.nan], ids=["-inf", "nan"])
def test_maxpool_window_without_a_winner_switches_to_its_first_element(dev, fresh, dtype, fill):
    """A window in which nothing beats -inf (all -inf or all NaN) that does not start at (0, 0):
    its switch is its first element inside the input, on both devices, and dy goes there."""
    x = fresh.normal((2, 2, 6, 7), dtype)
    x[:, :, 0, 1] = np.nan              # NaN never wins a window that has numbers
    x[:, :, 2:4, 3:6] = fill            # window (1, 2) of a 2x3 stride-2 pool with left pad 1: x rows 2-3, cols 3-5
    geo = ((2, 3), (2, 2), (0, 0, 1, 0), (3, 3))
    y, sw = kernels.maxpool_forward(x, *geo)
    assert sw[0, 0, 1, 2] == 2 * 7 + 3
    dy = fresh.normal(y.shape, dtype)
    dx = kernels.maxpool_backward(dy, sw, (6, 7), *geo[:3])
    with dev.active():
        y_d, sw_d = kernels.maxpool_forward(dev.put(x), *geo)
        dx_d = kernels.maxpool_backward(dev.put(dy), sw_d, (6, 7), *geo[:3])
    np.testing.assert_array_equal(dev.get(sw_d), sw)
    np.testing.assert_array_equal(dev.get(y_d), y)
    np.testing.assert_array_equal(dev.get(dx_d), dx)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["rounds", "large", "overflow"])
def test_lrn_window_after_a_large_channel_is_exact(dev, dtype, case):
    """The window sums are taken afresh for each channel, in double, on both devices: with the running
    sums they replaced, x = [b, 1, 0, 0] (b*b + 1 rounding to b*b) left channel 3's sum at -1 (clamped),
    one channel at 3e5 among channels at 30 left its neighbours' sums 16% off in float32, and a float32
    channel past 1.8e19 squared to inf and zeroed every channel of the pixel."""
    x = np.zeros((1, 4, 2, 2), dtype)
    if case == "rounds":
        b = 2.0 ** 12 if dtype == np.float32 else 2.0 ** 27
        x[:, 0], x[:, 1] = b, 1
        args = (3, 0.5, 0.75, 2.0)
    else:
        x = np.full((1, 10, 2, 2), 30.0, dtype)
        x[:, 0] = 3e5 if case == "large" else 1e20
        args = (5, 1e-4, 0.75, 2.0)
    y, s = kernels.lrn_forward(x, *args)
    if case == "rounds":
        assert s[0, 3, 0, 0] == 2.0
    else:
        from scratchnet.layers.norm import lrn_naive
        assert_close(y, lrn_naive(x.astype(np.float64), *args), dtype, f"lrn y on the CPU, {case}")
    dy = np.ones_like(x)
    dx = kernels.lrn_backward(dy, x, y, s, *args[:3])
    with dev.active():
        y_d, s_d = kernels.lrn_forward(dev.put(x), *args)
        dx_d = kernels.lrn_backward(dev.put(dy), dev.put(x), y_d, s_d, *args[:3])
    np.testing.assert_array_equal(dev.get(s_d), s)
    assert_close(dev.get(y_d), y, dtype, "lrn y")
    assert_close(dev.get(dx_d), dx, dtype, "lrn dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_softmax_xent_of_huge_scores_subtracts_the_row_maximum(dev, fresh, dtype):
    """Scores around +-1000: exp overflows (or underflows to 0) in both precisions unless the
    kernel subtracts each row's maximum first."""
    scores = fresh.normal((4, 300), dtype, 5.0)
    scores[0] += 1000
    scores[1] -= 1000
    scores[2, 7] = 2000                 # one dominant class
    labels = fresh.rng.integers(0, 300, 4)
    loss, d = softmax_cross_entropy(scores, labels)
    assert math.isfinite(loss)
    with dev.active():
        loss_d, d_d = softmax_cross_entropy(dev.put(scores), dev.put(labels))
    assert math.isfinite(loss_d) and abs(loss_d - loss) <= TOL[dtype] * abs(loss), f"loss {loss_d} vs {loss}"
    assert_close(dev.get(d_d), d, dtype, f"dscores {fresh.where}")

