"""The network container: forward to unnormalised scores, backward to the image, save and load.

A ``Network`` is a ``Sequential`` of layers plus what a user of a trained classifier needs:
the input shape it expects, its class names, its preprocessing (see ``scratchnet.models.preprocess``)
and, for networks trained here, the training-set mean image.

    scores = net.forward(x, train=False)          x (N, C, H, W) -> scores (N, K), unnormalised
    dx = net.backward(dscores, rule="gradient")   dscores (N, K) -> d/d(input) (N, C, H, W)

``backward`` fills ``layer.grads`` for every parameter unless ``param_grads=False`` (saliency needs
only the image gradient), and skips the image gradient when ``input_grad=False`` (training).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..backend import device_of, get_array_module, to_numpy
from ..layers import LAYER_TYPES, Rule, Sequential, ShapeError
from ..layers.base import Layer, byte_order_hint
# the file readers and writer (NetworkFileError is imported from here by users of load_network)
from .npzfile import (NPZ_DAMAGE, NetworkFileError, atomic_savez, check_values, checked_npz_array,  # noqa: F401
                      npz_member, open_npz)

FORMAT = "scratchnet-network/1"


class NonFiniteInputError(ValueError):
    """The network was given an input holding NaN or Inf (callers that made the input, such as class
    models, can catch it and say why)."""


class Network(Sequential):
    """A classifier: Sequential layers + input shape, class names, preprocessing, mean image."""

    def __init__(self, layers=(), input_shape=(3, 224, 224), class_names=None, preprocess=None,
                 mean_image=None, arch=None, name=None, class_wnids=None):
        super().__init__(layers, name=name)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.class_names = list(class_names) if class_names is not None else None
        self.class_wnids = list(class_wnids) if class_wnids else None   # WordNet ids, when the data had them
        self.preprocess = dict(preprocess or {})
        self.mean_image = mean_image            # (C, H, W) float32 for networks trained here
        self.arch = dict(arch or {})            # how the network was built, e.g. {"builder": "paper_net", ...}

    # -- checked entry points --------------------------------------------------------------
    def check_input(self, x):
        """Raise a clear error unless x is a finite float (N, C, H, W) array this network accepts."""
        xp = get_array_module(x)
        if not hasattr(x, "dtype") or not hasattr(x, "ndim"):
            raise ShapeError(f"network input must be an array (N, C, H, W), got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise ShapeError(f"network input must be float32 or float64, got dtype {x.dtype}{byte_order_hint(x.dtype)}")
        if x.ndim != 4:
            raise ShapeError(f"network input must have shape (N, C, H, W) with C={self.input_shape[0]}, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError(f"network input is an empty batch (shape {tuple(x.shape)}): expected N >= 1")
        if x.shape[1] != self.input_shape[0]:
            raise ShapeError(f"network expects {self.input_shape[0]} colour channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}; NCHW layout expected)")
        here, there = device_of(x), self.device()
        if there is not None and here != there:
            raise ValueError(f"network input is on the {here} ({type(x).__module__}.{type(x).__name__}) but the "
                             f"network is on the {there}: move one of them, e.g. "
                             f"scratchnet.backend.to_device(x, {there!r}) or net.to({here!r})")
        if not bool(xp.isfinite(x).all()):
            raise NonFiniteInputError("network input contains NaN or Inf values")
        try:
            self.output_shape(tuple(x.shape))  # raises ShapeError naming the first layer that does not fit
        except ShapeError as e:
            h, w = self.input_shape[1:]
            if tuple(x.shape[2:]) == (h, w):
                raise
            raise ShapeError(f"network input is {x.shape[2]}x{x.shape[3]} but this network was built for "
                             f"{h}x{w} images (input shape {tuple(x.shape)}); resize them, e.g. with "
                             f"scratchnet.models.preprocess.prepare ({e})") from None

    def checked_input(self, x):
        """x after check_input, in the network's dtype: an input of the other float dtype is converted
        (float64 images on a float32 network run in float32, as its layers ask)."""
        self.check_input(x)
        dtype = self.dtype(default=x.dtype)
        return x if x.dtype == dtype else x.astype(dtype)

    def forward(self, x, train=False):
        """Scores (N, K) of images x (N, C, H, W) (converted to the network's dtype: checked_input)."""
        x = self.checked_input(x)
        return self.kept_output(super().forward(x, train))     # the scores' shape, dtype, device

    def output_shape(self, in_shape):
        """The scores' shape (N, K) for a batch of shape ``in_shape`` (N, C, H, W): the batch size included,
        e.g. ``net.output_shape((1,) + net.input_shape)``."""
        in_shape = tuple(in_shape)
        if len(in_shape) != 1 + len(self.input_shape):
            raise ShapeError(f"output_shape takes a batch's shape (N,) + {tuple(self.input_shape)}, the batch size "
                             f"first, e.g. (1,) + net.input_shape; got {in_shape}")
        return super().output_shape(in_shape)

    def forget_forward(self):
        """Say that the layers' caches no longer hold this network's last forward (a forward through
        some of its layers only, as vis.deconv.forward_to does): backward then asks for a forward."""
        self._out = None

    def backward(self, dscores, rule="gradient", param_grads=True, input_grad=True):
        """dscores (N, K), d(objective)/d(scores) for the images of the last forward -> d/d(input)
        (N, C, H, W) (None when input_grad is False), filling every parameter's gradient unless
        param_grads is False."""
        rule = Rule.parse(rule)
        return super().backward(self._checked_dscores(dscores), rule, param_grads, input_grad)

    def _checked_dscores(self, dscores):
        """dscores as the last forward's scores are: refused unless an array of their shape on their
        device; cast to their dtype (a float64 or integer one-hot on a float32 network)."""
        if self._out is None:
            raise ShapeError("network backward before any forward: call forward(x) first (backward "
                             "uses what that forward kept)")
        want, dtype, device = self._out
        if not hasattr(dscores, "shape") or not hasattr(dscores, "dtype"):
            raise ShapeError(f"dscores must be an array {want} like the last forward's scores, "
                             f"got {type(dscores).__name__}")
        if tuple(dscores.shape) != want:
            raise ShapeError(f"dscores must have the shape {want} of the last forward's scores "
                             f"(N images, K classes), got {tuple(dscores.shape)}")
        if dscores.dtype.kind not in "fiub":
            raise ShapeError(f"dscores must be a real array like the scores, got dtype {dscores.dtype}")
        here = device_of(dscores)
        if here != device:
            raise ShapeError(f"dscores is on the {here} but the last forward's scores are on the "
                             f"{device}: move it, e.g. scratchnet.backend.to_device(dscores, {device!r})")
        return dscores.astype(dtype) if dscores.dtype != dtype else dscores

    @property
    def num_classes(self):
        return self.output_shape((1,) + self.input_shape)[1]

    def dtype(self, default=np.float32):
        """The parameters' dtype; ``default`` for a network without any."""
        for _, layer, key in self.named_params():
            return layer.params[key].dtype
        return np.dtype(default)

    def params_dict(self):
        return {name: layer.params[key] for name, layer, key in self.named_params()}

    # -- save / load -----------------------------------------------------------------------
    def meta(self) -> dict:
        """What a saved network records besides its layers and parameters (the __meta__ JSON)."""
        return dict(format=FORMAT, input_shape=list(self.input_shape), class_names=self.class_names,
                    class_wnids=self.class_wnids, preprocess=self.preprocess, arch=self.arch, name=self.name)

    def saved_arrays(self) -> dict:
        """What save writes: the architecture and meta JSON, and every parameter, statistic and the mean
        image as host arrays."""
        arrays = {"__architecture__": np.array(json.dumps(layer_to_spec(self))),
                  "__meta__": np.array(json.dumps(self.meta()))}
        for name, layer, key in self.named_params():
            arrays["param/" + name] = to_numpy(layer.params[key])
        for path_, layer in self.named_layers():
            for k, v in getattr(layer, "stats", {}).items():
                arrays[f"stat/{path_}.{k}"] = to_numpy(v)
        if self.mean_image is not None:
            arrays["__mean_image__"] = to_numpy(self.mean_image)
        return arrays

    def save(self, path):
        """Write ``saved_arrays()`` (architecture and meta JSON, parameters, BatchNorm statistics, mean
        image) to an .npz, atomically (temp file + rename)."""
        path = Path(path)
        atomic_savez(path, self.saved_arrays())
        return path

    def fingerprint(self) -> str:
        """A SHA-1 hex digest of everything save writes (layers, input shape, preprocessing, classes,
        parameters, statistics, mean image): equal for equal networks, on any device, and changed by any
        change to what the network computes from a photo. Keys caches of its outputs."""
        h = hashlib.sha1()
        for k, a in sorted(self.saved_arrays().items()):
            h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a))               # its bytes (the JSON entries: their UCS-4 text)
        return h.hexdigest()


def layer_to_spec(layer: Layer) -> dict:
    """{"type", "name", "args", "children"}: enough to rebuild the layer tree."""
    kind = type(layer).__name__
    if isinstance(layer, Network):
        kind = "Sequential"
    d = {"type": kind, "name": layer.name, "args": layer.spec()}
    kids = layer.children()
    if kids:
        d["children"] = [[n, layer_to_spec(c)] for n, c in kids]
    return d


def layer_from_spec(d: dict) -> Layer:
    from ..layers import Concat, Residual
    kind = d.get("type")
    if kind not in LAYER_TYPES:
        raise UnknownLayerType(f"unknown layer type {kind!r} in the saved architecture; known: "
                               f"{sorted(LAYER_TYPES)}. A layer class of your own is registered before loading: "
                               f"scratchnet.layers.LAYER_TYPES[{kind!r}] = {kind}; for the command line, put that "
                               "in a module and name it in $SCRATCHNET_IMPORT (e.g. SCRATCHNET_IMPORT=mylayers)")
    cls = LAYER_TYPES[kind]
    kids = [(n, layer_from_spec(c)) for n, c in d.get("children", [])]
    if cls is Sequential:
        layer = Sequential(kids)
    elif cls is Concat:
        layer = Concat(kids)
    elif cls is Residual:
        k = dict(kids)
        layer = Residual(k["body"], k.get("shortcut"))
    else:
        layer = cls(**d.get("args", {}))
    layer.name = d.get("name")
    return layer


def load_network(path) -> Network:
    """Rebuild a network saved by ``Network.save``; clear errors for files that are not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no network file at {path}")
    if not path.is_file():
        raise NetworkFileError(f"{path} is not a scratchnet network: expected an .npz file, got a directory or "
                               f"another non-file")
    with open_npz(path, "network", "Network.save", NetworkFileError) as z:
        if "__architecture__" not in z.files or "__meta__" not in z.files:
            raise NetworkFileError(f"{path} is an .npz but not a scratchnet network file "
                                   f"(no __architecture__/__meta__ entries; found {z.files[:5]}...)")
        try:
            return _network_from_npz(z, path)
        except NetworkFileError:
            raise
        except UnknownLayerType as e:           # not a damaged file: a layer class not registered here
            raise NetworkFileError(f"{path}: {e}") from None
        except NPZ_DAMAGE as e:
            raise NetworkFileError(f"{path} cannot be read as a scratchnet network (a damaged file, or one "
                                   f"written by another version): {type(e).__name__}: {e}") from None


class UnknownLayerType(ValueError):
    """A saved architecture names a layer class that scratchnet.layers.LAYER_TYPES does not hold."""


def _network_from_npz(z, path) -> Network:
    """The body of load_network: z an open scratchnet .npz; its own findings are NetworkFileErrors."""
    meta = json.loads(str(z["__meta__"]))
    if meta.get("format") != FORMAT:
        raise NetworkFileError(f"{path}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}")
    body = layer_from_spec(json.loads(str(z["__architecture__"])))
    net = Network(body.layers, input_shape=meta["input_shape"], class_names=meta.get("class_names"),
                  preprocess=meta.get("preprocess"), arch=meta.get("arch"), name=meta.get("name"),
                  class_wnids=meta.get("class_wnids"))
    want = {name: (layer, key) for name, layer, key in net.named_params()}
    have = {k[len("param/"):] for k in z.files if k.startswith("param/")}
    missing, extra = sorted(set(want) - have), sorted(have - set(want))
    if missing or extra:
        raise NetworkFileError(f"{path}: parameters do not match the recorded architecture "
                               f"(missing {missing[:5]}, unexpected {extra[:5]})")
    dtypes = set()
    for name, (layer, key) in want.items():
        arr = npz_member(z, "param/" + name, path)
        if arr.shape != layer.params[key].shape:
            raise NetworkFileError(f"{path}: parameter {name} has shape {arr.shape}, "
                                   f"the architecture expects {layer.params[key].shape}")
        check_values(arr, f"parameter {name}", path)
        dtypes.add(arr.dtype)
        layer.params[key] = arr
    if len(dtypes) > 1:
        raise NetworkFileError(f"{path}: parameters mix dtypes {sorted(d.name for d in dtypes)}; "
                               f"expected one (float32 or float64)")
    for path_, layer in net.named_layers():
        for k, now in getattr(layer, "stats", {}).items():
            layer.stats[k] = checked_npz_array(z, f"stat/{path_}.{k}", np.shape(now), path)
    if "__mean_image__" in z.files:
        net.mean_image = checked_npz_array(z, "__mean_image__", (net.input_shape[0],), path, trailing_ok=True)
    for what, names in (("class_names", net.class_names), ("class_wnids", net.class_wnids)):
        if names is not None and len(names) != net.num_classes:
            raise NetworkFileError(f"{path}: __meta__ lists {len(names)} {what}, but the network has "
                                   f"{net.num_classes} outputs (one name per class expected)")
    return net
