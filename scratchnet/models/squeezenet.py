"""SqueezeNet v1.0 (Iandola et al. 2016) built from scratchnet layers, with the Deep-Compression weights.

The architecture is the Caffe ``SqueezeNet_deploy.prototxt`` of the weight release, layer by layer:

    input 227x227 BGR, mean (104, 117, 123) subtracted, no scaling
    conv1 7x7/2, 96 ............................ 227 -> 111        ReLU
    pool1 max 3x3/2 (ceil) ..................... 111 -> 55
    fire2 .. fire4 ............................. 55               (fire4: 256 channels)
    pool4 max 3x3/2 (ceil) ..................... 55 -> 27
    fire5 .. fire8 ............................. 27               (fire8: 512 channels)
    pool8 max 3x3/2 (ceil) ..................... 27 -> 13
    fire9 ...................................... 13
    drop9 (0.5, training only)
    conv_final 1x1, 1000, **pad 1** ............ 13 -> 15         ReLU
    pool_final global average .................. 15x15 -> 1000 scores

A Fire module is a 1x1 "squeeze" convolution (+ ReLU) feeding two parallel "expand" convolutions,
1x1 and 3x3 pad 1 (each + ReLU), whose outputs are concatenated along channels:

    squeeze / expand sizes:  fire2 16/64  fire3 16/64  fire4 32/128  fire5 32/128
                             fire6 48/192 fire7 48/192 fire8 64/256  fire9 64/256

The pad 1 of conv_final is in the prototxt: the 1x1 convolution sees a zero ring, so the border of
its 15x15 output is ReLU(bias), and the global average includes it. Caffe pools in ceil mode.

Every layer is fully convolutional up to the global average, so the network accepts any input of at
least 21x21 (below that, the last ceil-mode pool gets a 1x1 input, too small for even one of its 3x3,
stride-2 windows); the saliency tests use small inputs.
"""
from __future__ import annotations

import numpy as np

from ..layers import Concat, Conv2d, Dropout, GlobalAvgPool, MaxPool2d, ReLU, Sequential
from . import register
from .network import Network

#: (name, squeeze channels, expand channels) of the eight Fire modules, in order
FIRES = [("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
         ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256)]

#: Caffe preprocessing of the release: BGR channel order, per-channel mean in that (B, G, R) order.
#: "resize"/"crop": the usual evaluation of an arbitrary photo (shorter side 256, centre 227).
PREPROCESS = {"resize": 256, "crop": 227, "channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "scale": 1.0}


def fire(in_channels, squeeze, expand) -> Sequential:
    """x (N, in, H, W) -> (N, 2 * expand, H, W): squeeze 1x1 + ReLU, then [expand 1x1 + ReLU | expand 3x3 + ReLU]."""
    return Sequential([
        ("squeeze1x1", Conv2d(in_channels, squeeze, 1)), ("squeeze_relu", ReLU()),
        ("expand", Concat([
            ("expand1x1", Sequential([("conv", Conv2d(squeeze, expand, 1)), ("relu", ReLU())])),
            ("expand3x3", Sequential([("conv", Conv2d(squeeze, expand, 3, padding=1)), ("relu", ReLU())])),
        ])),
    ])


def squeezenet_layers(num_classes=1000):
    """The (name, layer) list of SqueezeNet v1.0; weights all zero."""
    def pool():
        return MaxPool2d(3, 2, ceil_mode=True)

    layers = [("conv1", Conv2d(3, 96, 7, stride=2)), ("relu_conv1", ReLU()), ("pool1", pool())]
    c = 96
    for name, s, e in FIRES:
        layers.append((name, fire(c, s, e)))
        c = 2 * e
        if name in ("fire4", "fire8"):
            layers.append(("pool" + name[-1], pool()))
    layers += [("drop9", Dropout(0.5)), ("conv_final", Conv2d(c, num_classes, 1, padding=1)),
               ("relu_conv_final", ReLU()), ("pool_final", GlobalAvgPool())]
    return layers


def _conv_of(net: Network, file_name: str) -> Conv2d:
    """The Conv2d that the weight file's layer ``file_name`` (e.g. 'fire2/expand3x3') fills."""
    if "/" not in file_name:
        return net[file_name]
    fire_name, part = file_name.split("/")
    f = net[fire_name]
    if part == "squeeze1x1":
        return f["squeeze1x1"]
    return dict(f["expand"].branches)[part]["conv"]


def load_squeezenet_weights(net: Network, path) -> Network:
    """Copy the 26 decoded layers of ``compressed_SqueezeNet.net`` into ``net`` (shapes checked)."""
    from ..io.squeezenet_file import read_squeezenet_net
    weights = read_squeezenet_net(path)
    for file_name, (W, b) in weights.items():
        conv = _conv_of(net, file_name)
        if conv.params["W"].shape != W.shape or conv.params["b"].shape != b.shape:
            raise ValueError(f"{path}: layer {file_name} has W {W.shape}, b {b.shape}; the network expects "
                             f"W {conv.params['W'].shape}, b {conv.params['b'].shape}")
        conv.params["W"] = np.ascontiguousarray(W, dtype=np.float32)
        conv.params["b"] = np.ascontiguousarray(b, dtype=np.float32)
    return net


@register("squeezenet1_0")
def squeezenet1_0(weights=None, pretrained=True) -> Network:
    """SqueezeNet v1.0 with the Deep-Compression ILSVRC-2012 weights.

    weights: path to ``compressed_SqueezeNet.net``; None looks where ``find_squeezenet_weights`` looks
    ($SCRATCHNET_SQUEEZENET, then ../shared/models/squeezenet1.0-deep-compression/).
    pretrained=False builds the architecture with zero weights (no file needed).
    Input (N, 3, 227, 227) BGR minus the mean (see ``PREPROCESS``) -> scores (N, 1000).
    """
    from ..io.classnames import imagenet_class_names
    net = Network(squeezenet_layers(), input_shape=(3, 227, 227), class_names=imagenet_class_names(),
                  preprocess=dict(PREPROCESS), arch=dict(builder="squeezenet1_0"), name="squeezenet1_0")
    if pretrained:
        from ..io.squeezenet_file import find_squeezenet_weights
        path = find_squeezenet_weights(weights)
        load_squeezenet_weights(net, path)
        net.arch["weights"] = str(path)
    return net
