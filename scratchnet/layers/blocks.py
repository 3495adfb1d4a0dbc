"""Containers: a chain of layers, parallel branches joined by channel concatenation, residual addition.

Each container is itself a layer. Backward walks the children in reverse, handing the ReLU rule
down unchanged; only the first layer of a chain may skip its input gradient.

    Sequential : y = f_n(... f_1(x))
    Concat     : y = concat_c(b_1(x), ..., b_k(x))     dx = sum_i b_i.backward(dy[:, slice_i])
    Residual   : y = body(x) + shortcut(x)             dx = body.backward(dy) + shortcut.backward(dy)
                 (shortcut = identity when None)
"""
from __future__ import annotations

from ..backend import get_array_module
from .base import Layer, ShapeError


def _child_name(name, taken, who):
    """A child's name: a non-empty string without '.', not taken yet. Parameter paths join names with
    '.', so "x.0" beside a child "x" holding a "0" would name two parameters "x.0.W" alike (a save
    would keep one of them, a load fill one and leave the other at zero)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{who}: a layer name must be a non-empty string without '.', got {name!r}")
    if name in taken:
        raise ValueError(f"{who}: duplicate layer name {name!r}")
    return name


class Sequential(Layer):
    """A chain of named layers. ``Sequential([("conv1", Conv2d(...)), ("relu1", ReLU())])`` or a plain list."""

    def __init__(self, layers=(), name=None):
        super().__init__(name)
        self.layers: list[tuple[str, Layer]] = []
        for i, item in enumerate(layers):
            lname, layer = item if isinstance(item, tuple) else (str(i), item)
            self.add(lname, layer)

    def add(self, name: str, layer: Layer):
        _child_name(name, {n for n, _ in self.layers}, type(self).__name__)
        if layer.name is None:
            layer.name = name
        self.layers.append((name, layer))
        return layer

    def children(self):
        return list(self.layers)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.layers[key][1]
        for n, l in self.layers:
            if n == key:
                return l
        raise KeyError(f"no layer named {key!r}; layers: {[n for n, _ in self.layers]}")

    def __len__(self):
        return len(self.layers)

    def output_shape(self, in_shape):
        for _, layer in self.layers:
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def forward(self, x, train=False):
        for _, layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        """The chain rule, last layer first: each layer turns d/d(its output) into d/d(its input);
        the layers below the first need their input gradient even when the caller does not."""
        for i in reversed(range(len(self.layers))):
            dy = self.layers[i][1].backward(dy, rule, param_grads, input_grad or i > 0)
            self._check_dx(i, dy)
        return dy

    def _check_dx(self, i, dx):
        """Layer i's dx must have the shape of its input, the output of layer i - 1."""
        below = self.layers[i - 1][1]._out if i > 0 else None
        if below is not None and tuple(getattr(dx, "shape", ())) != below[0]:
            raise ShapeError(f"{self.layers[i][1].label()}: backward returned dx of shape "
                             f"{tuple(getattr(dx, 'shape', ()))}, not the shape {below[0]} of its input (the "
                             f"output of {self.layers[i - 1][1].label()})")


class Concat(Layer):
    """Parallel branches on the same input, outputs joined along channels (SqueezeNet's Fire expand)."""

    def __init__(self, branches, name=None):
        super().__init__(name)
        self._sizes = None           # each branch's output channels, from forward
        self.branches: list[tuple[str, Layer]] = []
        for i, item in enumerate(branches):
            bname, b = item if isinstance(item, tuple) else (str(i), item)
            _child_name(bname, {n for n, _ in self.branches}, "Concat")
            if b.name is None:
                b.name = bname
            self.branches.append((bname, b))

    def children(self):
        return list(self.branches)

    def output_shape(self, in_shape):
        shapes = [b.output_shape(in_shape) for _, b in self.branches]
        if len({(s[0],) + tuple(s[2:]) for s in shapes}) != 1:
            raise ShapeError(f"{self.label()}: branch outputs differ in spatial size: {shapes}")
        return (shapes[0][0], sum(s[1] for s in shapes)) + tuple(shapes[0][2:])

    def forward(self, x, train=False):
        xp = get_array_module(x)
        self.output_shape(x.shape)              # branches that do not fit: this error, not NumPy's
        ys = [b.forward(x, train) for _, b in self.branches]
        self._sizes = [y.shape[1] for y in ys]
        return self.kept_output(xp.concatenate(ys, axis=1))

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        dx, start = None, 0
        for (_, b), size in zip(self.branches, self._sizes):
            d = b.backward(dy[:, start:start + size], rule, param_grads, input_grad)
            start += size
            if input_grad:
                dx = d if dx is None else dx + d
        return dx


class Residual(Layer):
    """y = body(x) + shortcut(x); shortcut None means identity (MBConv blocks with equal shapes)."""

    def __init__(self, body: Layer, shortcut: Layer | None = None, name=None):
        super().__init__(name)
        self.body, self.shortcut = body, shortcut
        body.name = body.name or "body"
        if shortcut is not None:
            shortcut.name = shortcut.name or "shortcut"

    def children(self):
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def output_shape(self, in_shape):
        a = self.body.output_shape(in_shape)
        b = self.shortcut.output_shape(in_shape) if self.shortcut is not None else tuple(in_shape)
        if tuple(a) != tuple(b):
            raise ShapeError(f"{self.label()}: body output {a} and shortcut output {b} differ")
        return a

    def forward(self, x, train=False):
        self.output_shape(x.shape)              # y + s would broadcast a 1-channel body over the channels
        y = self.body.forward(x, train)
        s = self.shortcut.forward(x, train) if self.shortcut is not None else x
        return self.kept_output(y + s)

    def backward(self, dy, rule="gradient", param_grads=True, input_grad=True):
        self.check_dy(dy)
        dx = self.body.backward(dy, rule, param_grads, input_grad)
        if self.shortcut is not None:
            ds = self.shortcut.backward(dy, rule, param_grads, input_grad)
        else:
            ds = dy
        return dx + ds if input_grad else None
