"""ReLU and ReLU6, with the backward rule as an argument.

This is the only place where backpropagation, the DeconvNet and guided backpropagation differ
(Simonyan et al. 2013, section 4):

    gradient  : dx = dy * [x > 0]             ReLU6: dy * [0 < x < 6]
    deconvnet : dx = dy * [dy > 0]            (the sign of the signal coming back; x ignored)
    guided    : dx = dy * [x > 0] * [dy > 0]  ReLU6: dy * [0 < x < 6] * [dy > 0]

Forward keeps its output y, since [x > 0] == [y > 0] and [0 < x < 6] == [0 < y < 6]. When the next
layer keeps its input (LRN, Linear, a 1x1 stride-1 unpadded conv) that is the same array and costs
nothing; before any other conv (which keeps its columns or a padded copy), a max-pool or dropout, y is
a float where a 1-byte mask would do, kept so that one kernel signature serves CPU and GPU and forward
writes one array, not two.

The masks compose per ReLU: at each ReLU the guided mask is the product of the other two, but the
guided map of a whole network is not the gradient map times the DeconvNet one (the signals reaching
the lower ReLUs already differ).

Each rule is its own kernel (relu_bwd_gradient, relu_bwd_deconvnet, relu_bwd_guided, on CPU and GPU),
so a profile says which rule ran; the rule still travels as an argument down to the choice of kernel.
"""
from __future__ import annotations

import math

from .base import Layer, Rule, check_input
from scratchnet import kernels


class ReLU(Layer):
    """y = max(x, 0); x, y any shape."""

    upper = math.inf

    def __init__(self, name=None):
        super().__init__(name)
        self._y = None

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, x, train=False):
        check_input(self, x)
        self._y = kernels.relu_forward(x, self.upper)
        return self.kept_output(self._y)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        if not input_grad:
            return None
        return kernels.relu_backward(dy, self._y, Rule.parse(rule).code, self.upper)


class ReLU6(ReLU):
    """y = min(max(x, 0), 6), as in MobileNet / EfficientNet-Lite."""

    upper = 6.0


def relu_backward_reference(dy, x, rule, upper=math.inf):
    """The three rules written out in array code, straight from their definitions (for tests). It
    multiplies by the mask, so a NaN dy at a blocked unit stays NaN here; the kernels select, giving 0."""
    rule = Rule.parse(rule)
    inside = (x > 0) & (x < upper)
    if rule is Rule.GRADIENT:
        return dy * inside
    if rule is Rule.DECONVNET:
        return dy * (dy > 0)
    return dy * (inside & (dy > 0))
