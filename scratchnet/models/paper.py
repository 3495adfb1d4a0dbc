"""The network of Simonyan, Vedaldi & Zisserman (2013), section 2.

The paper gives the weight layers and their widths only:
    conv64 - conv256 - conv256 - conv256 - conv256 - full4096 - full4096 - full1000
The rest follows Krizhevsky et al. / Zeiler & Fergus, the networks the paper builds on:

  * ReLU after every hidden layer;
  * local response normalisation (size 5, alpha 1e-4, beta 0.75, k 2) after the ReLUs of conv1 and conv2;
  * 3x3 stride-2 max pooling, ceil mode, after conv1, conv2 and conv5;
  * dropout 0.5 on the inputs of full6 and full7 (torchvision's AlexNet placement; Krizhevsky and
    Caffe drop the outputs of full6 and full7 instead: either way two dropout layers among the
    three fully connected ones).

Kernel sizes (our choice, documented here because the paper is silent):

  input 224:  conv1 7x7 stride 2           224 -> 109 -> pool 54
              conv2 5x5 stride 2 pad 1      54 ->  26 -> pool 13
              conv3..5 3x3 pad 1            13 ->  13 -> pool 6        full6 sees 6x6x256 (1.49 GFLOP / image)
  input < 128 (sizes for 64):
              conv1 5x5 stride 2 pad 2      64 ->  32 -> pool 16
              conv2 5x5 stride 1 pad 2      16 ->  16 -> pool 8
              conv3..5 3x3 pad 1             8 ->   8 -> pool 4        full6 sees 4x4x256 (~0.5 GFLOP / image)

``width`` scales every hidden width (for cheap tests and CPU training); the class layer keeps
``num_classes``. Initialisation: He normal for hidden layers, N(0, 0.01^2) for the class layer,
zero biases (without batch norm, the default PyTorch initialisation leaves this network at chance).
"""
from __future__ import annotations

import numpy as np

from ..checks import check_int, check_number
from ..layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU, ShapeError
from .network import Network


def paper_net(input_size=224, num_classes=1000, width=1.0, seed=0, dtype=np.float32, dropout=0.5,
              class_names=None) -> Network:
    """Build the paper's network for square ``input_size`` inputs; see the module docstring."""
    input_size = check_int("paper_net", "input_size (pixels)", input_size, 1)   # plain ints and floats:
    num_classes = check_int("paper_net", "num_classes", num_classes, 1)         # the arch record is JSON
    width = check_number("paper_net", "width (it scales every hidden width)", width, low=0, low_open=True)
    dropout = check_number("paper_net", "dropout", dropout, low=0, high=1, high_open=True)
    seed = check_int("paper_net", "seed", seed, 0)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"paper_net: dtype must be float32 or float64, got {np.dtype(dtype)}")
    if input_size >= 128:
        c1 = dict(kernel_size=7, stride=2, padding=0)
        c2 = dict(kernel_size=5, stride=2, padding=1)
    else:
        c1 = dict(kernel_size=5, stride=2, padding=2)
        c2 = dict(kernel_size=5, stride=1, padding=2)

    def w(n):
        return max(1, int(round(n * width)))

    C = [w(64), w(256), w(256), w(256), w(256)]
    F = w(4096)

    def lrn():
        return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)

    def pool():
        return MaxPool2d(3, 2, ceil_mode=True)

    layers = [
        ("conv1", Conv2d(3, C[0], **c1)), ("relu1", ReLU()), ("norm1", lrn()), ("pool1", pool()),
        ("conv2", Conv2d(C[0], C[1], **c2)), ("relu2", ReLU()), ("norm2", lrn()), ("pool2", pool()),
        ("conv3", Conv2d(C[1], C[2], 3, 1, 1)), ("relu3", ReLU()),
        ("conv4", Conv2d(C[2], C[3], 3, 1, 1)), ("relu4", ReLU()),
        ("conv5", Conv2d(C[3], C[4], 3, 1, 1)), ("relu5", ReLU()), ("pool5", pool()),
        ("flatten", Flatten()),
    ]
    # features into full6: follow the shapes through the convolutional stack
    probe = Network(layers, input_shape=(3, input_size, input_size))
    try:
        feat = probe.output_shape((1, 3, input_size, input_size))[1]
    except ShapeError as e:
        smallest = next(n for n in range(input_size + 1, 129) if _fits(probe, n))
        raise ShapeError(f"paper_net: input_size {input_size} is too small for its convolutions and poolings "
                         f"({e}); the smallest that fits is {smallest}") from None
    # each dropout layer its own generator, and no two seeds' networks one in common (seed + 6 and
    # seed + 7 gave seed 1's drop6 the masks of seed 0's drop7); seed 0 keeps its 6 and 7
    layers += [
        ("drop6", Dropout(dropout, seed=2 * seed + 6)), ("fc6", Linear(feat, F)), ("relu6", ReLU()),
        ("drop7", Dropout(dropout, seed=2 * seed + 7)), ("fc7", Linear(F, F)), ("relu7", ReLU()),
        ("fc8", Linear(F, num_classes)),
    ]
    net = Network(layers, input_shape=(3, input_size, input_size), class_names=class_names,
                  arch=dict(builder="paper_net", input_size=input_size, num_classes=num_classes,
                            width=width, seed=seed),
                  name=f"paper_net{input_size}")
    rng = np.random.default_rng(seed)
    for name, layer in net.named_layers():
        if hasattr(layer, "init_params"):
            if name == "fc8":
                layer.init_params(rng, "gaussian", std=0.01)
            else:
                layer.init_params(rng, "he")
    if dtype != np.float32:
        net.astype(dtype)
    return net


def _fits(net, n):
    try:
        net.output_shape((1, 3, n, n))
        return True
    except ShapeError:
        return False


def flops_per_layer(net, input_shape):
    """Multiply-adds x 2 of each Conv2d / Linear for one image of ``input_shape`` (C, H, W), no batch
    dimension (e.g. net.input_shape): list of (name, GFLOP)."""
    out = []
    shape = (1,) + tuple(input_shape)
    for name, layer in net.layers:
        nxt = layer.output_shape(shape)
        if isinstance(layer, Conv2d):
            k = layer.params["W"][0].size
            out.append((name, 2 * k * int(np.prod(nxt[1:])) / 1e9))
        elif isinstance(layer, Linear):
            out.append((name, 2 * layer.in_features * layer.out_features / 1e9))
        shape = nxt
    return out
