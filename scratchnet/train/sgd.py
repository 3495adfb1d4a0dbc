"""Mini-batch SGD with momentum and weight decay, on the ``layer.params`` / ``layer.grads`` dicts.

For every parameter w with gradient g (the mean-over-the-batch gradient of the loss), one step is

    v <- mu * v - lr * (g + wd * w)        wd = weight_decay for weights, 0 for biases
    w <- w + v

with v = 0 before the first step.  This is the Krizhevsky / Caffe / MatConvNet form with the decay
folded into the gradient (an L2 penalty wd/2 * |w|^2 on the weights).  The learning rate multiplies
the whole bracket, so changing lr mid-run does not rescale the velocity already accumulated
(PyTorch's SGD instead keeps v' = mu v' + g and steps w -= lr v'; the two agree for a constant lr).
On the CPU these are NumPy array operations; on the GPU one fused kernel (kernels/sgd.cu), both
behind ``kernels.sgd_update``.

Which parameters decay: keys named "W" (conv and fully connected weights).  Biases ("b") and
any other per-channel parameters (batch-norm gamma/beta) do not.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import device_of, get_array_module, to_device, to_numpy
from ..checks import check_number

DECAYED_KEYS = ("W",)


def decays(key: str) -> bool:
    """True when a parameter named ``key`` gets weight decay (weights yes, biases no)."""
    return key in DECAYED_KEYS


class SGD:
    """SGD with momentum ``mu`` and weight decay ``wd``; see the module docstring for the formula.

    net          : a Network (anything with named_params())
    lr           : the learning rate of the next step (a schedule sets it each epoch)
    velocity     : {param path: array like the param}, the momentum buffers (checkpointed)
    """

    def __init__(self, net, lr=0.01, momentum=0.9, weight_decay=5e-4):
        self.net = net
        self.lr = check_number("SGD", "lr", lr, low=0, low_open=True)
        self.momentum = check_number("SGD", "momentum", momentum, low=0, high=1, high_open=True)
        self.weight_decay = check_number("SGD", "weight_decay", weight_decay, low=0)
        self.velocity = {}

    def step(self):
        """Update every parameter in place from its gradient in ``layer.grads``."""
        mu, lr = self.momentum, self.lr
        for path, layer, key in self.net.named_params():
            w = layer.params[key]
            g = layer.grads.get(key)
            if g is None:
                raise RuntimeError(f"SGD: parameter {path} has no gradient; run net.backward(..., "
                                   f"param_grads=True) before optimiser.step()")
            if g.shape != w.shape:
                raise ValueError(f"SGD: gradient of {path} has shape {tuple(g.shape)}, the parameter "
                                 f"{tuple(w.shape)}")
            if device_of(g) != device_of(w):
                raise ValueError(f"SGD: the gradient of {path} is on the {device_of(g)}, the parameter on the "
                                 f"{device_of(w)}: run backward on the network where its parameters are")
            v = self.velocity.get(path)
            if v is None:
                v = self.velocity[path] = get_array_module(w).zeros_like(w)
            elif device_of(v) != device_of(w) or v.dtype != w.dtype:    # net.to() or net.astype() since
                v = self.velocity[path] = to_device(v, device_of(w)).astype(w.dtype, copy=False)
            wd = self.weight_decay if decays(key) else 0.0
            kernels.sgd_update(w, g, v, lr, mu, wd)     # v = mu v - lr (g + wd w); w += v, in place

    # -- checkpointing -----------------------------------------------------------------
    def state_arrays(self):
        """{param path: velocity as a NumPy array}."""
        return {p: to_numpy(v) for p, v in self.velocity.items()}

    def checked_state_arrays(self, arrays):
        """Momentum buffers saved by state_arrays, checked against the parameters and put on their device
        and dtype: {param path: array}; a ValueError, and nothing changed, when they do not fit."""
        params = {path: layer.params[key] for path, layer, key in self.net.named_params()}
        unknown = sorted(set(arrays) - set(params))
        if unknown:
            raise ValueError(f"SGD: checkpoint has momentum for parameters this network lacks: {unknown[:5]}")
        out = {}
        for path, v in arrays.items():
            w = params[path]
            if v.shape != w.shape:
                raise ValueError(f"SGD: momentum of {path} has shape {v.shape}, the parameter {tuple(w.shape)}")
            out[path] = to_device(np.asarray(v, dtype=w.dtype), device_of(w))
        return out

    def load_state_arrays(self, arrays):
        """Restore momentum buffers saved by state_arrays (on the parameters' device)."""
        self.velocity = self.checked_state_arrays(arrays)
