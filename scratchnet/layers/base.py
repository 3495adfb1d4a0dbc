"""The contract every layer keeps, and the errors layers raise.

A layer is a small object with
  * ``params``: dict name -> array (e.g. ``{"W": (O, C/groups, kh, kw), "b": (O,)}``)
  * ``grads`` : dict name -> array of the same shapes, *overwritten* (not accumulated, unlike
                PyTorch) by each ``backward`` with ``param_grads=True``; a ``param_grads=False``
                backward leaves them as they were. ``zero_grads`` removes them, so an optimiser
                step without a backward fails loudly instead of reusing old gradients
  * ``forward(x, train=False) -> y``; keeps what backward needs (each layer says what, and why)
  * ``backward(dy, rule="gradient", param_grads=True, input_grad=True) -> dx | None``
      - ``rule`` is the ReLU backward rule ("gradient", "deconvnet", "guided"); it travels as an
        argument through every container down to the ReLU kernels and is ignored elsewhere.
      - ``param_grads=False`` skips weight gradients (saliency needs only d/d(image));
      - ``input_grad=False`` lets the first layer skip d/d(input) (training never needs it).
  * ``spec()``: the constructor arguments as JSON-able values, so a saved file rebuilds the layer.
  * Conv2d and Linear parameters start at zero (a network built by hand outputs zeros): ``init_params(rng)`` on a
    Conv2d or Linear (He, or ``scheme="gaussian", std=...``), ``scratchnet.train.init_network`` on a
    whole network (it also calls ``init_params(rng)`` of a layer of your own that has one), or weights
    loaded from a file.
  * ``backward`` before any ``forward`` is a ShapeError that says so (``saved``).
  * a layer that computes remembers its output's shape and dtype (``return self.kept_output(y)`` in
    forward), and its backward refuses a dy that does not match (``self.check_dy(dy)`` first) before
    any kernel reads it: a Numba loop over a dy larger than what forward kept would read past its
    arrays. A layer of your own does the same, and is registered in ``LAYER_TYPES`` (its class name)
    so that saved networks holding it load; the command line imports the modules named in
    ``$SCRATCHNET_IMPORT`` first.

Containers (``Sequential``, ``Concat``, ``Residual`` in ``blocks.py``) are layers whose
``children()`` are layers; parameters are named by their path, e.g. ``"conv1.W"``.
"""
from __future__ import annotations

from enum import Enum

import numpy as np

from ..backend import device_of, get_array_module


class Rule(str, Enum):
    """How a ReLU routes the signal backwards (Simonyan et al. 2013, section 4).

    GRADIENT  : dx = dy * [x > 0]             (backpropagation: the true derivative)
    DECONVNET : dx = dy * [dy > 0]            (Zeiler & Fergus: the sign of the signal coming back)
    GUIDED    : dx = dy * [x > 0] * [dy > 0]  (Springenberg et al.: both)
    """
    GRADIENT = "gradient"
    DECONVNET = "deconvnet"
    GUIDED = "guided"

    @classmethod
    def parse(cls, rule) -> "Rule":
        if isinstance(rule, Rule):
            return rule
        try:
            return cls(str(rule).lower())
        except ValueError:
            raise ValueError(f"unknown ReLU backward rule {rule!r}; expected one of "
                             f"{[r.value for r in cls]}") from None

    @property
    def code(self) -> int:
        """The integer the kernels take (0 gradient, 1 deconvnet, 2 guided)."""
        return {Rule.GRADIENT: 0, Rule.DECONVNET: 1, Rule.GUIDED: 2}[self]


class ShapeError(ValueError):
    """An input that does not fit a layer: the message names the layer and what it expected."""


class Layer:
    """Base class; see the module docstring for the contract."""

    def __init__(self, name: str | None = None):
        self.name = name
        self.params: dict[str, object] = {}
        self.grads: dict[str, object] = {}

    # -- the two directions -------------------------------------------------------------
    def forward(self, x, train: bool = False):
        raise NotImplementedError

    def backward(self, dy, rule="gradient", param_grads: bool = True, input_grad: bool = True):
        raise NotImplementedError

    _out = None      # (shape, dtype, "cpu" | "gpu") of the last forward's output, for check_dy

    def kept_output(self, y):
        """Remember y's shape, dtype and device for backward's check of dy; returns y."""
        self._out = (tuple(y.shape), y.dtype, device_of(y))
        return y

    def check_dy(self, dy):
        """dy if it is an array of the last forward output's shape and dtype on its device, else a
        ShapeError that says what was expected (a backward before any forward says that instead)."""
        shape, dtype, where = self.saved(self._out)
        if not hasattr(dy, "shape") or not hasattr(dy, "dtype"):
            raise ShapeError(f"{self.label()}: dy must be an array of shape {shape} like forward's output, "
                             f"got {type(dy).__name__}")
        if tuple(dy.shape) != shape:
            raise ShapeError(f"{self.label()}: dy must have the shape {shape} of forward's output, "
                             f"got {tuple(dy.shape)}")
        if dy.dtype != dtype:
            raise ShapeError(f"{self.label()}: dy must have the dtype {dtype} of forward's output, "
                             f"got {dy.dtype}")
        if device_of(dy) != where:
            raise ShapeError(f"{self.label()}: dy must be on the {where} like forward's output, "
                             f"got {type(dy).__module__}.{type(dy).__name__}")
        return dy

    # -- structure ----------------------------------------------------------------------
    def spec(self) -> dict:
        """Constructor keyword arguments (JSON-able)."""
        return {}

    def children(self):
        """(name, layer) pairs of sub-layers; empty for leaf layers."""
        return []

    def output_shape(self, in_shape: tuple) -> tuple:
        """Shape of forward's output for an input of ``in_shape`` (raises ShapeError if it does not fit)."""
        raise NotImplementedError

    def named_layers(self, prefix: str = ""):
        """Yield (path, layer) for this layer and every descendant, depth first."""
        yield prefix, self
        for cname, child in self.children():
            yield from child.named_layers(f"{prefix}.{cname}" if prefix else cname)

    def named_params(self, prefix: str = ""):
        """Yield (path, layer, key): the parameter is ``layer.params[key]``, its gradient ``layer.grads[key]``."""
        for path, layer in self.named_layers(prefix):
            for key in layer.params:
                yield (f"{path}.{key}" if path else key), layer, key

    def zero_grads(self):
        for _, layer, key in self.named_params():
            layer.grads.pop(key, None)

    def to(self, device: str):
        """Move parameters (and any gradients) to 'cpu' or 'gpu' in place; returns self."""
        from ..backend import to_device
        for _, layer in self.named_layers():
            for k in list(layer.params):
                layer.params[k] = to_device(layer.params[k], device)
            for k in list(layer.grads):
                layer.grads[k] = to_device(layer.grads[k], device)
            layer._moved(device)
            layer._out = None               # what forward kept is on the old device: forward again
        return self

    def device(self) -> str | None:
        """'cpu' or 'gpu': where the parameters are (see ``to``); None for a layer without any."""
        from ..backend import is_gpu_array
        for _, layer, key in self.named_params():
            return "gpu" if is_gpu_array(layer.params[key]) else "cpu"
        return None

    def _moved(self, device: str):
        """Hook for layers that hold device arrays other than params (e.g. masks)."""

    def astype(self, dtype):
        """Cast parameters (and fixed statistics such as BatchNorm2d's mean/var) to ``dtype`` in place
        (float64 for gradient checks); returns self."""
        for _, layer in self.named_layers():
            for k in list(layer.params):
                layer.params[k] = layer.params[k].astype(dtype)
            stats = getattr(layer, "stats", None)
            for k in list(stats or {}):
                stats[k] = stats[k].astype(dtype)
            layer.grads.clear()
            layer._out = None               # what forward kept has the old dtype: forward again
        return self

    def label(self) -> str:
        return self.name or type(self).__name__

    def saved(self, kept):
        """What forward kept for backward, or a ShapeError when backward comes before any forward."""
        if kept is None:
            raise ShapeError(f"{self.label()}: backward before forward: call forward(x) first (backward uses "
                             "what forward kept)")
        return kept

    def __repr__(self):
        """The constructor call; a container lists its children, one a line, indented."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items())
        kids = self.children()
        if not kids:
            return f"{type(self).__name__}({args})"
        inner = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in kids)
        return f"{type(self).__name__}({args}{', ' if args else ''}{inner}\n)"


def byte_order_hint(dtype) -> str:
    """For float32 or float64 in the other byte order (a big-endian file read on a little-endian
    machine), how to make it native, to add to an error message; "" for any other dtype."""
    swapped = dtype.kind == "f" and dtype.newbyteorder() in (np.float32, np.float64)
    return " (the other byte order: x.astype(x.dtype.newbyteorder()) makes it native)" if swapped else ""


def check_input(layer: Layer, x, ndim: int | None = None, channels: int | None = None, params=None):
    """Raise a ShapeError naming ``layer`` unless ``x`` is a float array of rank ``ndim`` with ``channels`` channels
    and, given ``params`` (the layer's weight array), on its device and of its dtype (float32 weights on a
    float64 input gave float64 on one path and float32 on another)."""
    xp = get_array_module(x)
    if not isinstance(x, (np.ndarray,)) and xp is np:
        raise ShapeError(f"{layer.label()}: expected an array, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):      # (float16 and other-byte-order floats have no kernels)
        raise ShapeError(f"{layer.label()}: expected a floating-point array (float32 or float64), got dtype "
                         f"{x.dtype}{byte_order_hint(x.dtype)}")
    if ndim is not None and x.ndim != ndim:
        want = {4: "(N, C, H, W)", 2: "(N, features)"}.get(ndim, f"rank {ndim}")
        raise ShapeError(f"{layer.label()}: expected input of shape {want}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{layer.label()}: expected {channels} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if params is not None and device_of(x) != device_of(params):
        raise ShapeError(f"{layer.label()}: the input is on the {device_of(x)} but the parameters are on the "
                         f"{device_of(params)}: move one (scratchnet.backend.to_device(x, {device_of(params)!r}), "
                         f"or layer.to({device_of(x)!r}))")
    if params is not None and x.dtype != params.dtype:
        raise ShapeError(f"{layer.label()}: the input is {x.dtype} but the parameters are {params.dtype}: convert "
                         f"one (x.astype(np.{params.dtype}), or layer.astype(np.{x.dtype}); a Network converts "
                         f"its input to its own dtype)")
