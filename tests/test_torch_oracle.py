"""PyTorch as an independent oracle for the image gradient under the three backward rules.

The engine's ``class_gradient`` (the path every saliency map takes: ``net.backward(onehot, rule=...,
param_grads=False)``) against PyTorch running the same weights (bench/torch_twin.py's ``to_torch``),
on real photos, in float64, for EfficientNet-Lite0 (ReLU6, depthwise and SAME-padded convolutions,
residuals), SqueezeNet v1.0 (concat, ceil-mode max-pooling) and the paper's network (LRN, dropout,
fully connected; random weights).

On the PyTorch side the rules are written from their definitions (Simonyan et al. 2013, section 4),
as module backward hooks on the twin's ReLU / ReLU6, with no scratchnet code involved:

    gradient  : PyTorch's own autograd, no hook        dx = dy * [0 < x < upper]
    deconvnet : the hook returns clamp(dy, min=0)       dx = dy * [dy > 0]   (x, and ReLU6's clip at 6, ignored)
    guided    : the hook returns clamp(autograd's dx, min=0)
                                                        dx = dy * [0 < x < upper] * [dy > 0]

(upper = inf for ReLU, 6 for ReLU6: scratchnet's definition in layers/activation.py.)
The maps agree to 1e-9 of their largest entry (measured: about 1e-14 or better); each rule's map is
also checked to differ from the other two, so that a rule swapped for another cannot pass.

Kinks and ties on real photos in float64: no ReLU input is exactly 0 (nor a ReLU6 input exactly 6), but
after a ReLU many max-pooling windows are all zero (10-40% of SqueezeNet's and the paper network's
pooled outputs). The gradient and guided rules then block whatever reaches the dead unit at the ReLU
below, so the switch chosen does not matter; the DeconvNet rule (x ignored) passes it on, so its map
depends on which zero is the switch. Both engines take the first maximum in scan order (scratchnet's
kernels/cpu_pool.py, PyTorch's CPU max_pool2d), which is what makes the DeconvNet maps agree exactly:
with ``v >= best`` (the last maximum) in scratchnet's pooling, the DeconvNet maps of SqueezeNet and
the paper network disagree with PyTorch by 60-100% of their largest entry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scratchnet.io.images import load_image
from scratchnet.models import load, paper_net
from scratchnet.models.preprocess import prepare
from scratchnet.vis.saliency import class_gradient

torch = pytest.importorskip("torch")

RULES = ("gradient", "deconvnet", "guided")
TOL = 1e-9            # of the largest |entry| of the map PyTorch gives, float64 throughout


def _twin(net):
    import sys
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from torch_twin import to_torch
    return to_torch(net).double()


def _torch_gradient(tnet, x, cls, rule):
    """d score[cls] / d x in PyTorch with the ReLUs' backward replaced per ``rule`` (see the module
    docstring); x (N, C, H, W) float64 NumPy, cls (N,) ints. Returns (grad, scores) as NumPy."""
    relus = [m for m in tnet.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    assert relus, "the twin has no ReLU modules to hook"

    def deconvnet(module, grad_input, grad_output):
        return (grad_output[0].clamp(min=0),)

    def guided(module, grad_input, grad_output):
        return (grad_input[0].clamp(min=0),)

    hook = dict(gradient=None, deconvnet=deconvnet, guided=guided)[rule]
    handles = [m.register_full_backward_hook(hook) for m in relus] if hook else []
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        scores = tnet(xt)
        scores[torch.arange(len(cls)), torch.as_tensor(cls)].sum().backward()
    finally:
        for h in handles:
            h.remove()
    return xt.grad.numpy(), scores.detach().numpy()


def _compare(net, x, what):
    """The three rules on x: the engine against PyTorch; and each rule's map unlike the others'."""
    assert x.dtype == np.float64
    tnet = _twin(net)
    for p in tnet.parameters():
        p.requires_grad_(False)
    maps = {}
    for rule in RULES:
        ours, cls, scores = class_gradient(net, x, None, rule)     # None: each image's top class
        theirs, tscores = _torch_gradient(tnet, x, cls, rule)
        np.testing.assert_allclose(scores, tscores, rtol=0, atol=TOL * np.abs(tscores).max(), err_msg=what)
        scale = np.abs(theirs).max()
        assert scale > 0, f"{what}, {rule}: PyTorch's map is all zero"
        err = np.abs(ours - theirs).max() / scale
        assert err < TOL, f"{what}, rule {rule}: max |engine - PyTorch| = {err:.3g} of the map's largest entry"
        maps[rule] = theirs
    for a, b in (("gradient", "deconvnet"), ("gradient", "guided"), ("deconvnet", "guided")):
        scale = max(np.abs(maps[a]).max(), np.abs(maps[b]).max())
        assert np.abs(maps[a] - maps[b]).max() > 1e-3 * scale, f"{what}: {a} and {b} maps coincide"
    return maps


def _skimage_photos():
    data = pytest.importorskip("skimage.data")
    return [data.chelsea(), data.coffee()]


def test_efficientnet_image_gradients_match_pytorch():
    """EfficientNet-Lite0 (real weights, batch norms folded, ReLU6): two scikit-image photos at 224."""
    net = load("efficientnet_lite0").astype(np.float64)
    x = prepare(net, _skimage_photos()).astype(np.float64)
    _compare(net, x, "EfficientNet-Lite0")


def test_squeezenet_image_gradients_match_pytorch(shared):
    """SqueezeNet v1.0 (real weights, BGR, ceil-mode pooling, concat): two ILSVRC photos at 227."""
    net = load("squeezenet1_0").astype(np.float64)
    root = shared / "data/imagenet-val-dev/images"
    imgs = [load_image(root / f) for f in ("ILSVRC2012_val_00015540.JPEG", "ILSVRC2012_val_00041028.JPEG")]
    x = prepare(net, imgs).astype(np.float64)
    _compare(net, x, "SqueezeNet v1.0")


def test_paper_net_image_gradients_match_pytorch():
    """The paper's network (conv, ReLU, LRN, ceil-mode max-pooling, dropout, FC) at 64x64, width 1/8,
    He-initialised (paper_net's own initialisation, as scratchnet.train.init_network's 'he'), on
    scikit-image photos centred and scaled."""
    net = paper_net(input_size=64, num_classes=10, width=1 / 8, seed=3, dtype=np.float64)
    net.preprocess = dict(mean=[124.0, 117.0, 104.0], scale=1 / 64)
    x = prepare(net, _skimage_photos()).astype(np.float64)
    _compare(net, x, "paper_net")
