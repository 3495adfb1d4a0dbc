"""The Numba depthwise-convolution kernels (kernels/cpu_depthwise.py) against the array-code reference
in scratchnet/layers/conv.py and the six-loop definition ``conv2d_naive``."""
from __future__ import annotations

import numpy as np
import pytest

from scratchnet import kernels
from scratchnet.layers import Conv2d
from scratchnet.layers.conv import _depthwise_backward, _depthwise_forward, conv2d_naive

CASES = [  # (N, C, Hp, Wp, (kh, kw), (sh, sw)); the kernels branch on sw == 1, so both strides vary
    (2, 3, 9, 9, (3, 3), (1, 1)), (2, 4, 12, 11, (5, 5), (2, 2)), (1, 5, 8, 10, (3, 3), (2, 2)),
    (3, 2, 7, 7, (5, 5), (1, 1)), (2, 3, 9, 11, (3, 3), (1, 2)), (2, 3, 11, 13, (3, 5), (2, 3)),
    (1, 2, 10, 9, (5, 3), (3, 1))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, hp, wp, k, s", CASES)
def test_depthwise_kernels_match_the_array_code(n, c, hp, wp, k, s, dtype):
    rng = np.random.default_rng(0)
    (kh, kw), (sh, sw) = k, s
    xpad = rng.standard_normal((n, c, hp, wp)).astype(dtype)
    W = rng.standard_normal((c, 1, kh, kw)).astype(dtype)
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    y = kernels.depthwise_forward(xpad, W, s, (oh, ow))             # the Numba kernel on the CPU
    np.testing.assert_array_equal(y, _depthwise_forward(xpad, W, s, (oh, ow)))   # same order of adds
    np.testing.assert_allclose(y, conv2d_naive(xpad, W, None, s, groups=c), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dW_ref, dx_ref = _depthwise_backward(dy, xpad, W, s, True, True)
    dW, dx = kernels.depthwise_backward(dy, xpad, W, s, True, True)
    np.testing.assert_array_equal(dx, dx_ref)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dW, dW_ref, rtol=tol, atol=tol)


def test_conv2d_depthwise_layer_uses_the_kernel_and_agrees_with_naive():
    rng = np.random.default_rng(1)
    conv = Conv2d(6, 6, 5, stride=2, padding="same", groups=6)
    conv.params["W"] = rng.standard_normal(conv.params["W"].shape).astype(np.float32)
    conv.params["b"] = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((2, 6, 16, 16)).astype(np.float32)
    y = conv.forward(x)
    pads = conv.pads_for(16, 16)
    np.testing.assert_allclose(y, conv2d_naive(x, conv.params["W"], conv.params["b"], (2, 2), pads, 6),
                               rtol=1e-5, atol=1e-5)
    assert conv._cache[0] == "depthwise"
