"""Build the PyTorch twin of a scratchnet network (same layers, same weights) for side-by-side timing
and as a test oracle. Used only in bench/ and optional tests; scratchnet itself never imports torch."""
from __future__ import annotations

import numpy as np


def to_torch(layer):
    """A torch.nn.Module computing what ``layer`` (any scratchnet layer or network) computes,
    in eval mode (dropout off, as scratchnet's forward(train=False)); call .train() to train it."""
    return _build(layer).eval()


def _build(layer):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
    from scratchnet import layers as L

    class Same(tnn.Module):            # TensorFlow "SAME" padding, decided from the input size
        def __init__(self, conv, sn_conv):
            super().__init__()
            self.conv, self.sn = conv, sn_conv

        def forward(self, x):
            t, b, l, r = self.sn.pads_for(x.shape[2], x.shape[3])
            return self.conv(F.pad(x, (l, r, t, b)))

    class Cat(tnn.Module):
        def __init__(self, branches):
            super().__init__()
            self.branches = tnn.ModuleList(branches)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], 1)

    class Res(tnn.Module):
        def __init__(self, body, short):
            super().__init__()
            self.body, self.short = body, short

        def forward(self, x):
            return self.body(x) + (self.short(x) if self.short is not None else x)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    if isinstance(layer, L.Sequential):
        return tnn.Sequential(*[_build(l) for _, l in layer.layers])
    if isinstance(layer, L.Conv2d):
        pad = layer.padding
        sym = pad != "same" and pad[0] == pad[1] and pad[2] == pad[3]
        conv = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                          padding=(pad[0], pad[2]) if sym else 0, groups=layer.groups, bias=layer.has_bias)
        with torch.no_grad():
            conv.weight.copy_(t(layer.params["W"]))
            if layer.has_bias:
                conv.bias.copy_(t(layer.params["b"]))
        if sym:
            return conv
        if pad == "same":
            return Same(conv, layer)
        return tnn.Sequential(tnn.ZeroPad2d((pad[2], pad[3], pad[0], pad[1])), conv)
    if isinstance(layer, L.ReLU6):
        return tnn.ReLU6()
    if isinstance(layer, L.ReLU):
        return tnn.ReLU()
    if isinstance(layer, L.MaxPool2d):
        return tnn.MaxPool2d(layer.kernel, layer.stride, (layer.padding[0], layer.padding[2]), ceil_mode=layer.ceil_mode)
    if isinstance(layer, L.AvgPool2d):
        return tnn.AvgPool2d(layer.kernel, layer.stride, (layer.padding[0], layer.padding[2]), ceil_mode=layer.ceil_mode)
    if isinstance(layer, L.GlobalAvgPool):
        return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
    if isinstance(layer, L.LocalResponseNorm):   # torch divides alpha by size (Caffe's form)
        return tnn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    if isinstance(layer, L.Linear):
        lin = tnn.Linear(layer.in_features, layer.out_features, bias=layer.has_bias)
        with torch.no_grad():
            lin.weight.copy_(t(layer.params["W"]))
            if layer.has_bias:
                lin.bias.copy_(t(layer.params["b"]))
        return lin
    if isinstance(layer, L.Flatten):
        return tnn.Flatten()
    if isinstance(layer, L.Dropout):
        return tnn.Dropout(layer.p)
    if isinstance(layer, L.Concat):
        return Cat([_build(b) for _, b in layer.branches])
    if isinstance(layer, L.Residual):
        return Res(_build(layer.body), _build(layer.shortcut) if layer.shortcut is not None else None)
    if isinstance(layer, L.BatchNorm2d):
        bn = tnn.BatchNorm2d(layer.channels, eps=layer.eps)
        with torch.no_grad():
            bn.weight.copy_(t(layer.params["gamma"]))
            bn.bias.copy_(t(layer.params["beta"]))
            bn.running_mean.copy_(t(np.asarray(layer.stats["mean"], np.float32)))
            bn.running_var.copy_(t(np.asarray(layer.stats["var"], np.float32)))
        return bn.eval()
    raise TypeError(f"no torch twin for {type(layer).__name__}")


def torch_steps(tnet, opt, tx, tl):
    """The three things the benchmarks time, for PyTorch: forward (test mode, no autograd), an SGD
    training step (train mode, cross-entropy, backward, ``opt.step()``) and saliency (d score of the
    labelled class / d image in test mode, no weight gradients). tx (N, C, H, W) images, tl (N,) labels,
    on the device the network is on. Returns {"forward": f, "train_step": f, "saliency": f}."""
    import torch

    def forward():
        tnet.eval()
        with torch.no_grad():
            tnet(tx)

    def train_step():
        tnet.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tnet(tx), tl).backward()
        opt.step()

    def saliency():
        tnet.eval()
        xi = tx.clone().requires_grad_(True)
        for p in tnet.parameters():
            p.requires_grad_(False)
        tnet(xi).gather(1, tl[:, None]).sum().backward()
        for p in tnet.parameters():
            p.requires_grad_(True)

    return dict(forward=forward, train_step=train_step, saliency=saliency)


def torch_available():
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True
