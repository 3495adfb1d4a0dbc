"""Layers: one module per family, forward and backward side by side (see base.py for the contract)."""
from .activation import ReLU, ReLU6, relu_backward_reference
from .base import Layer, Rule, ShapeError
from .blocks import Concat, Residual, Sequential
from .conv import Conv2d
from .linear import Dropout, Flatten, Linear
from .loss import log_softmax, softmax_cross_entropy
from .norm import BatchNorm2d, LocalResponseNorm, fold_batchnorm
from .pool import AvgPool2d, GlobalAvgPool, MaxPool2d

#: type name -> class, used to rebuild a network from its saved architecture
LAYER_TYPES = {cls.__name__: cls for cls in (
    Conv2d, ReLU, ReLU6, MaxPool2d, AvgPool2d, GlobalAvgPool, LocalResponseNorm, BatchNorm2d,
    Linear, Flatten, Dropout, Sequential, Concat, Residual)}

__all__ = [n for n in dir() if not n.startswith("_")]
