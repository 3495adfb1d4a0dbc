"""DeconvNet reconstruction and its relation to the gradient (Simonyan et al. 2013, section 4).

Zeiler & Fergus reconstruct the input from one neuron of a layer L: run the network up to L, keep
that neuron (or its feature map) and zero everything else, and send it back to the image through

    conv  -> convolution with the transposed filters       (the same as backpropagation)
    pool  -> "unpooling" to the recorded switches            (the same as backpropagation)
    ReLU  -> rectify the signal coming back: dy * [dy > 0]   (backprop: dy * [x > 0])

Simonyan et al. observe that the first two are exactly the gradient's steps, so the DeconvNet is
the gradient except at ReLU — and with ``rule="gradient"`` the reconstruction *is* the gradient of
the neuron's activation with respect to the image. LRN (and batch norm) has no DeconvNet rule of its
own in either paper; every rule backpropagates its exact Jacobian, so "differs only at ReLU" holds
by construction. The rules agree on any layer with no ReLU below it, and also at relu1 itself: the
seed is the positive activation of a unit that is on, so it passes all three masks, and below it
there is no other ReLU. They part from the first ReLU the signal crosses on its way down (at norm1
only slightly: LRN's cross-channel terms are negative and turn a few dy at relu1 negative).
This module

  * ``forward_to`` / ``backward_from``: run the network's ``layers`` up to a named layer, and back;
  * ``reconstruct``: the reconstruction of the strongest neuron (or a chosen one) under any rule;
  * ``compare_rules``: per layer, the relative differences between the three rules' reconstructions
    (``relative_difference``; ``count_relus`` below each layer);
  * ``pick_neuron`` / ``neuron_seed``: the neuron to reconstruct and the backward pass's seed for it;
    ``layer_index``: a top-level layer's position by name or index; ``saturation``: the clip value of
    a ReLU6 ending a layer (the strongest neuron is sought below it);
  * two independent checks of the claim: ``numerical_gradient`` (float64 central differences of the
    neuron's activation at sampled pixels) and ``reference_backward``, a second backward pass written
    from the definitions — convolution transposes accumulated offset by offset (col2im by hand),
    max-pool switches found by its own forward, its own ReLU masks — sharing no code with the layers;
    ``gradient_check`` / ``reference_check`` run them against ``reconstruct``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_int, is_int
from ..layers import Rule
from .display import on_net_device


# ---------------------------------------------------------------------------------------------
# running part of the network
# ---------------------------------------------------------------------------------------------
def layer_index(net, layer) -> int:
    """Position of a top-level layer given by name (or index) in ``net.layers``."""
    names = [n for n, _ in net.layers]
    if isinstance(layer, (int, np.integer)):
        if not -len(names) <= int(layer) < len(names):
            raise ValueError(f"layer index {layer} out of range: the network has {len(names)} layers")
        return int(layer) % len(names)
    if layer not in names:
        top = str(layer).split(".")[0]
        inside = f"{layer!r} is inside the block {top!r}, whose output is the one to give; " if top in names else ""
        raise ValueError(f"no top-level layer named {layer!r}; {inside}layers: {', '.join(names)}")
    return names.index(layer)


def forward_to(net, x, layer):
    """Run ``net.layers`` up to and including ``layer``: x (N, C, H, W) -> that layer's output."""
    x = net.checked_input(x)
    net.forget_forward()                   # the caches now hold this partial pass: net.backward must not run
    for _, lay in net.layers[:layer_index(net, layer) + 1]:
        x = lay.forward(x, False)
    return x


def backward_from(net, layer, dy, rule="gradient"):
    """Send dy (the shape of ``layer``'s output) back to the image through ``net.layers`` up to
    ``layer`` (after ``forward_to``), under a ReLU rule. Returns (N, C, H, W); weights untouched."""
    rule = Rule.parse(rule)
    layers = net.layers[:layer_index(net, layer) + 1]
    kept = layers[-1][1]._out                   # (shape, dtype, device) of that layer's last output
    if kept is not None and hasattr(dy, "dtype") and dy.dtype != kept[1] and dy.dtype.kind in "fiub":
        dy = dy.astype(kept[1])                 # a float64 seed on a float32 network, as Network.backward
    for _, lay in reversed(layers):
        dy = lay.backward(dy, rule, False, True)
    return dy


def saturation(net, layer) -> float:
    """The clip value of a ReLU6 (6) ending ``layer``, else inf. A neuron sitting at 6 has a zero
    gradient, so "the strongest neuron" means the strongest one below it."""
    from ..layers import Concat, ReLU, Sequential

    def clip(lay):
        if isinstance(lay, ReLU):
            return float(lay.upper)
        if isinstance(lay, Sequential) and lay.layers:
            return clip(lay.layers[-1][1])
        if isinstance(lay, Concat) and lay.branches:
            return min(clip(b) for _, b in lay.branches)
        return float("inf")

    return clip(net.layers[layer_index(net, layer)][1])


def _is_neuron(neuron) -> bool:
    """"max", a channel index (an integer, not a bool or 3.0) or an index tuple of integers."""
    if isinstance(neuron, str):
        return neuron == "max"
    if is_int(neuron):
        return True
    return (not isinstance(neuron, (bytes, dict, set, frozenset)) and hasattr(neuron, "__iter__")
            and all(is_int(v) for v in neuron))


def pick_neuron(act, neuron="max", upper=float("inf"), layer=None):
    """The neuron of each image to reconstruct, as index tuples into act[n] (a (c, i, j) or (f,)).

    act (N, C, H, W) or (N, F). neuron: "max" (the strongest activation below ``upper``), an int
    channel (its strongest position below ``upper``), or an explicit index tuple used for every image.
    """
    if not _is_neuron(neuron):
        raise ValueError(f"neuron must be 'max', a channel index or an index tuple of integers, got {neuron!r}")
    a = to_numpy(act)
    if np.isfinite(upper) and (a < upper).any():
        a = np.where(a < upper, a, -np.inf)
    out = []
    for n in range(a.shape[0]):
        if isinstance(neuron, str):
            out.append(tuple(int(v) for v in np.unravel_index(a[n].argmax(), a[n].shape)))
        elif is_int(neuron):
            if not 0 <= neuron < a.shape[1]:
                raise ValueError(f"channel {neuron} out of range: the layer{f' {layer}' if layer else ''} has "
                                 f"{a.shape[1]} channels (0..{a.shape[1] - 1})")
            m = a[n, int(neuron)]
            out.append((int(neuron),) + tuple(int(v) for v in np.unravel_index(m.argmax(), m.shape)))
        else:
            idx = tuple(int(v) for v in neuron)
            if len(idx) != a.ndim - 1 or any(not 0 <= i < s for i, s in zip(idx, a.shape[1:])):
                raise ValueError(f"neuron index {idx} does not fit the output of shape {a.shape[1:]} of the "
                                 f"layer{f' {layer}' if layer else ''}")
            out.append(idx)
    return out


def neuron_seed(act, neurons, mode="neuron"):
    """dy for the backward pass: zero except the chosen neuron (value 1, ``mode="neuron"``) or, with
    ``mode="map"``, its whole feature map (the activations of channel c, as Zeiler & Fergus)."""
    xp = get_array_module(act)
    dy = xp.zeros_like(act)
    for n, idx in enumerate(neurons):
        if mode == "neuron":
            dy[(n,) + idx] = 1
        elif mode == "map":
            dy[n, idx[0]] = act[n, idx[0]]
        else:
            raise ValueError(f"mode must be 'neuron' or 'map', got {mode!r}")
    return dy


@dataclass
class Reconstruction:
    """images (N, C, H, W) in the network's input space; neurons: index into the layer output per
    image; activations: their values; layer, rule, mode: what was computed."""
    images: np.ndarray
    neurons: list
    activations: np.ndarray
    layer: str
    rule: str
    mode: str


def reconstruct(net, x, layer, rule="gradient", neuron="max", mode="neuron") -> Reconstruction:
    """Reconstruct the input from one neuron (or feature map) of ``layer``; see the module docstring."""
    x = on_net_device(net, x)
    act = forward_to(net, x, layer)
    neurons = pick_neuron(act, neuron, saturation(net, layer), layer)
    a = to_numpy(act)
    vals = np.array([a[(n,) + idx] for n, idx in enumerate(neurons)])
    rec = backward_from(net, layer, neuron_seed(act, neurons, mode), rule)
    name = net.layers[layer_index(net, layer)][0]
    return Reconstruction(to_numpy(rec), neurons, vals, name, Rule.parse(rule).value, mode)


def relative_difference(a, b) -> float:
    """||a - b|| / ||b|| (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    d = np.linalg.norm(a - b)
    return float(d / nb) if nb > 0 else (0.0 if d == 0 else float("inf"))


def count_relus(net, layer) -> int:
    """How many ReLU/ReLU6 layers lie between the image and the output of ``layer``."""
    from ..layers import ReLU
    n = 0
    for _, top in net.layers[:layer_index(net, layer) + 1]:
        n += sum(isinstance(lay, ReLU) for _, lay in top.named_layers())
    return n


def compare_rules(net, x, layers=None, neuron="max", mode="neuron") -> list[dict]:
    """For each layer, the reconstructions under the three rules and their relative differences.

    x (N, C, H, W); layers: names (default: every top-level layer with a 4-D output). Returns one dict
    per layer: layer, relus (ReLUs below it), neuron, activation, norms ({rule: ||reconstruction||}), and
    ||a - b|| / ||b|| for deconvnet vs gradient, guided vs gradient and guided vs deconvnet (norms taken over
    the whole batch array; inf when b is zero).
    With no ReLU below a layer the three are identical; the differences grow with depth.
    """
    x = on_net_device(net, x)
    if isinstance(layers, str):                       # one layer's name, not its letters
        layers = [layers]
    if layers is None:
        shape = (1,) + tuple(net.input_shape)
        layers = []
        for name, lay in net.layers:
            shape = lay.output_shape(shape)
            if len(shape) == 4:
                layers.append(name)
    out = []
    for name in layers:
        act = forward_to(net, x, name)
        neurons = pick_neuron(act, neuron, saturation(net, name), name)
        seed = neuron_seed(act, neurons, mode)
        rec = {r.value: to_numpy(backward_from(net, name, seed, r)) for r in Rule}
        a = to_numpy(act)
        out.append(dict(
            layer=name, relus=count_relus(net, name), neuron=[list(n) for n in neurons],
            activation=[float(a[(i,) + n]) for i, n in enumerate(neurons)],
            norms={r: float(np.linalg.norm(np.asarray(v, np.float64))) for r, v in rec.items()},
            deconvnet_vs_gradient=relative_difference(rec["deconvnet"], rec["gradient"]),
            guided_vs_gradient=relative_difference(rec["guided"], rec["gradient"]),
            guided_vs_deconvnet=relative_difference(rec["guided"], rec["deconvnet"])))
    return out


# ---------------------------------------------------------------------------------------------
# independent check 1: central differences in float64
# ---------------------------------------------------------------------------------------------
def numerical_gradient(net, x, layer, neuron, pixels, eps=None, return_kinks=False, progress=None):
    """d a / d x at the given pixels by float64 central differences, on a float64 copy of the net.

    x (1, C, H, W); neuron: index tuple into the layer output of that image; pixels: list of
    (c, i, j). eps defaults to 1e-2 grey levels. Returns (len(pixels),) float64; with return_kinks,
    also a (len(pixels),) bool array: whether each pixel's two passes (x +- eps) switched some ReLU or
    max-pooling window differently (the difference then straddles a point without a derivative, e.g.
    an input exactly at a ReLU's 0, where the engine's gradient is 0 by convention). progress: None,
    or a callable given (pixels done, pixels) after each pixel.
    """
    from ..gradcheck import branch_pattern, same_branches
    from .classmodel import grey_level
    net64 = copy.deepcopy(net).to("cpu").astype(np.float64)
    x64 = to_numpy(x).astype(np.float64)
    eps = 1e-2 * grey_level(net) if eps is None else eps
    idx = (0,) + tuple(neuron)

    def f(v):
        return float(forward_to(net64, v, layer)[idx]), branch_pattern(net64)

    out, kinks = [], []
    for c, i, j in pixels:
        xp_, xm = x64.copy(), x64.copy()
        xp_[0, c, i, j] += eps
        xm[0, c, i, j] -= eps
        (fp, bp), (fm, bm) = f(xp_), f(xm)
        out.append((fp - fm) / (2 * eps))
        kinks.append(not same_branches(bp, bm))
        if progress is not None:
            progress(len(out), len(pixels))
    return (np.array(out), np.array(kinks, bool)) if return_kinks else np.array(out)


def gradient_check(net, x, layer, neuron="max", n_pixels=8, seed=0, progress=None) -> dict:
    """The paper's claim, checked: the rule="gradient" reconstruction of a neuron equals the gradient
    of its activation. Compares the engine's reconstruction (the net's own dtype) at ``n_pixels``
    pixels (half the largest, half random) with float64 central differences. x (1, C, H, W).

    ``max_error_rel_to_max_grad``: the largest |engine - numerical| over the pixels compared,
    relative to the largest |entry| of either (the engine's whole map, or the numerical values);
    pixels whose central difference straddles a ReLU kink or a pooling switch are left out
    (``kinks`` counts them). None, with ``informative`` False, when nothing is left to compare or
    when both sides are zero throughout (a dead neuron, or an image sitting on every ReLU's kink:
    agreement of zeros shows nothing). progress: as numerical_gradient's."""
    check_int("gradient_check", "n_pixels", n_pixels, 1)
    x = to_numpy(x)[:1]
    rec = reconstruct(net, x, layer, "gradient", neuron)
    g = rec.images[0]
    if n_pixels > g.size:
        raise ValueError(f"gradient_check: n_pixels must be at most the image's {g.size} entries, got {n_pixels}")
    rng = np.random.default_rng(seed)
    flat = np.argsort(np.abs(g).ravel())[::-1][:n_pixels // 2].tolist()
    rest = np.setdiff1d(np.arange(g.size), flat)                  # distinct pixels: none checked twice
    flat += rng.choice(rest, n_pixels - len(flat), replace=False).tolist()
    pixels = [tuple(int(v) for v in np.unravel_index(k, g.shape)) for k in flat]
    num, kinks = numerical_gradient(net, x, layer, rec.neurons[0], pixels, return_kinks=True, progress=progress)
    ana = np.array([g[p] for p in pixels], np.float64)
    keep = ~kinks
    scale = max(float(np.abs(g).max()), float(np.abs(num[keep]).max(initial=0.0)))
    informative = bool(keep.any()) and scale > 0
    err = float(np.abs(ana[keep] - num[keep]).max() / scale) if informative else None
    return dict(layer=rec.layer, neuron=list(rec.neurons[0]), pixels=[list(p) for p in pixels],
                engine=ana.tolist(), numerical=num.tolist(), kinks=int((~keep).sum()), informative=informative,
                max_error_rel_to_max_grad=err)


# ---------------------------------------------------------------------------------------------
# independent check 2: the backward pass written again from the definitions
# ---------------------------------------------------------------------------------------------
def reference_backward(net, x, layer, dy, rule="gradient"):
    """The reconstruction of dy (the shape of ``layer``'s output) written without the layers' code.

    Forward: convolutions as sums of shifted views (no im2col), max pooling with its own switches
    (first maximum in row-major window order wins, like the kernels), its own ReLU masks.
    Backward: a convolution's transpose accumulated kernel offset by kernel offset (col2im by hand),
    unpooling to the switches, and the rule at each ReLU. Float64 NumPy, for small checks.
    Supports Conv2d (any stride/padding/groups), ReLU, ReLU6, MaxPool2d, LocalResponseNorm (its
    Jacobian summed output channel by output channel), GlobalAvgPool, Flatten, Linear, Dropout
    (inference), BatchNorm2d, and Sequential / Concat / Residual containers.
    """
    rule = Rule.parse(rule)
    x = to_numpy(x).astype(np.float64)
    tapes = []
    for _, lay in net.layers[:layer_index(net, layer) + 1]:
        x, tape = _ref_forward(lay, x)
        tapes.append((lay, tape))
    dy = to_numpy(dy).astype(np.float64)
    for lay, tape in reversed(tapes):
        dy = _ref_backward(lay, tape, dy, rule)
    return dy


def reference_check(net, x, layer, neuron="max") -> dict:
    """Engine vs ``reference_backward`` for the three rules: {rule: max |a - b| / max |b|}.

    x (1, C, H, W); the strongest neuron of ``layer`` (or ``neuron``). Raises NotImplementedError for
    a network with a layer the reference does not know."""
    x = on_net_device(net, to_numpy(x)[:1])
    act = forward_to(net, x, layer)
    seed = neuron_seed(act, pick_neuron(act, neuron, saturation(net, layer), layer))
    want = {r.value: reference_backward(net, x, layer, seed, r) for r in Rule}
    out = {}
    for r in Rule:
        forward_to(net, x, layer)
        got = to_numpy(backward_from(net, layer, seed, r))
        out[r.value] = float(np.abs(got - want[r.value]).max() / max(np.abs(want[r.value]).max(), 1e-30))
    return out


def _p(layer, key):
    return to_numpy(layer.params[key]).astype(np.float64)


def _ref_forward(layer, x):
    from ..layers import (BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear,
                          LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential)
    if isinstance(layer, Sequential):
        tapes = []
        for _, lay in layer.layers:
            x, t = _ref_forward(lay, x)
            tapes.append(t)
        return x, tapes
    if isinstance(layer, Concat):
        outs = [_ref_forward(b, x) for _, b in layer.branches]
        return np.concatenate([y for y, _ in outs], axis=1), [(t, y.shape[1]) for y, t in outs]
    if isinstance(layer, Residual):
        y, tb = _ref_forward(layer.body, x)
        if layer.shortcut is None:
            return y + x, (tb, None)
        s, ts = _ref_forward(layer.shortcut, x)
        return y + s, (tb, ts)
    if isinstance(layer, Conv2d):
        n, c, h, w = x.shape
        W = _p(layer, "W")
        o, cg, kh, kw = W.shape
        g = layer.groups
        t, b, l, r = layer.pads_for(h, w)
        sh, sw = layer.stride
        xpad = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
        oh, ow = (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1
        y = np.zeros((n, g, o // g, oh, ow))
        xg = xpad.reshape(n, g, cg, *xpad.shape[2:])
        Wg = W.reshape(g, o // g, cg, kh, kw)
        for i in range(kh):
            for j in range(kw):
                win = xg[:, :, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                y += np.einsum("gok,ngkpq->ngopq", Wg[:, :, :, i, j], win)
        y = y.reshape(n, o, oh, ow)
        if layer.has_bias:
            y = y + _p(layer, "b").reshape(1, o, 1, 1)
        return y, (x.shape, (t, b, l, r), (oh, ow))
    if isinstance(layer, ReLU):
        return np.clip(x, 0, layer.upper), x
    if isinstance(layer, MaxPool2d):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        t, b, l, r = layer.padding
        _, _, oh, ow = layer.output_shape(x.shape)
        # pad with -inf far enough for ceil-mode windows; flat indices refer to the unpadded plane
        hp, wp = max(h + t + b, (oh - 1) * sh + kh), max(w + l + r, (ow - 1) * sw + kw)
        xpad = np.full((n, c, hp, wp), -np.inf)
        xpad[:, :, t:t + h, l:l + w] = x
        best = np.full((n, c, oh, ow), -np.inf)
        switch = np.zeros((n, c, oh, ow), np.int64)
        rows, cols = np.arange(oh)[:, None] * sh, np.arange(ow)[None, :] * sw
        for i in range(kh):
            for j in range(kw):
                v = xpad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                better = v > best                        # strict: the first maximum wins
                best = np.where(better, v, best)
                switch = np.where(better, (rows + i - t) * w + (cols + j - l), switch)
        return best, (x.shape, switch)
    if isinstance(layer, LocalResponseNorm):
        s = np.empty_like(x)                     # s[c] = k + alpha * sum of x^2 over window(c)
        for c in range(x.shape[1]):
            a, b = _lrn_window(c, layer.size, x.shape[1])
            s[:, c] = layer.k + layer.alpha * (x[:, a:b] ** 2).sum(axis=1)
        return x * s ** -layer.beta, (x, s)
    if isinstance(layer, GlobalAvgPool):
        return x.mean(axis=(2, 3)), x.shape
    if isinstance(layer, Flatten):
        return x.reshape(len(x), -1), x.shape
    if isinstance(layer, Linear):
        y = x @ _p(layer, "W").T
        return (y + _p(layer, "b") if "b" in layer.params else y), None
    if isinstance(layer, Dropout):
        return x, None
    if isinstance(layer, BatchNorm2d):
        a = _p(layer, "gamma") / np.sqrt(np.asarray(layer.stats["var"], np.float64) + layer.eps)
        mean = np.asarray(layer.stats["mean"], np.float64)
        return (a.reshape(1, -1, 1, 1) * (x - mean.reshape(1, -1, 1, 1))
                + _p(layer, "beta").reshape(1, -1, 1, 1)), a
    raise NotImplementedError(f"reference_backward does not know layer type {type(layer).__name__} "
                              f"({layer.label()})")


def _lrn_window(c, size, channels):
    """The channels c - size//2 .. c + (size-1)//2 that LRN sums for channel c, clipped: [a, b)."""
    return max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)


def _relu_rule(dy, x, upper, rule):
    """The three rules from their definitions (section 4 of the paper)."""
    inside = (x > 0) & (x < upper)
    if rule is Rule.GRADIENT:
        return dy * inside
    if rule is Rule.DECONVNET:
        return dy * (dy > 0)
    return dy * inside * (dy > 0)


def _ref_backward(layer, tape, dy, rule):
    from ..layers import (BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear,
                          LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential)
    if isinstance(layer, Sequential):
        for (_, lay), t in reversed(list(zip(layer.layers, tape))):
            dy = _ref_backward(lay, t, dy, rule)
        return dy
    if isinstance(layer, Concat):
        dx, start = 0, 0
        for (_, b), (t, size) in zip(layer.branches, tape):
            dx = dx + _ref_backward(b, t, dy[:, start:start + size], rule)
            start += size
        return dx
    if isinstance(layer, Residual):
        tb, ts = tape
        dx = _ref_backward(layer.body, tb, dy, rule)
        return dx + (dy if layer.shortcut is None else _ref_backward(layer.shortcut, ts, dy, rule))
    if isinstance(layer, Conv2d):
        (n, c, h, w), (t, b, l, r), (oh, ow) = tape
        W = _p(layer, "W")
        o, cg, kh, kw = W.shape
        g = layer.groups
        sh, sw = layer.stride
        dxpad = np.zeros((n, g, cg, h + t + b, w + l + r))
        dyg = dy.reshape(n, g, o // g, oh, ow)
        Wg = W.reshape(g, o // g, cg, kh, kw)
        for i in range(kh):                 # the transpose, one kernel offset at a time (col2im)
            for j in range(kw):
                dxpad[:, :, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += \
                    np.einsum("gok,ngopq->ngkpq", Wg[:, :, :, i, j], dyg)
        return dxpad.reshape(n, c, h + t + b, w + l + r)[:, :, t:t + h, l:l + w]
    if isinstance(layer, ReLU):
        return _relu_rule(dy, tape, layer.upper, rule)
    if isinstance(layer, MaxPool2d):
        (n, c, h, w), switch = tape
        dx = np.zeros((n * c, h * w))
        rows = np.repeat(np.arange(n * c), switch[0, 0].size)
        np.add.at(dx, (rows, switch.reshape(-1)), dy.reshape(-1))    # unpooling to the switches
        return dx.reshape(n, c, h, w)
    if isinstance(layer, LocalResponseNorm):
        # y[c'] = x[c'] s[c']^-beta, so dy[c']/dx[c] = [c = c'] s[c']^-beta
        #                                         - 2 alpha beta x[c'] x[c] s[c']^(-beta-1) [c in window(c')]
        x, s = tape
        dx = dy * s ** -layer.beta
        for cp in range(x.shape[1]):
            a, b = _lrn_window(cp, layer.size, x.shape[1])
            g = dy[:, cp] * x[:, cp] * s[:, cp] ** (-layer.beta - 1)
            dx[:, a:b] -= 2 * layer.alpha * layer.beta * x[:, a:b] * g[:, None]
        return dx
    if isinstance(layer, GlobalAvgPool):
        n, c, h, w = tape
        return np.broadcast_to(dy[:, :, None, None] / (h * w), tape).copy()
    if isinstance(layer, Flatten):
        return dy.reshape(tape)
    if isinstance(layer, Linear):
        return dy @ _p(layer, "W")
    if isinstance(layer, Dropout):
        return dy
    if isinstance(layer, BatchNorm2d):
        return dy * tape.reshape(1, -1, 1, 1)
    raise NotImplementedError(type(layer).__name__)
