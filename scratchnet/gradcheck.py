"""Gradient checks anyone can run: hand-written backward passes against float64 central differences.

    scratchnet gradcheck                       every layer configuration of the grid, then the paper network
    scratchnet gradcheck --only pool lrn       the configurations whose names contain "pool" or "lrn"
    scratchnet gradcheck --model my_net.npz    a saved network (or squeezenet1_0, efficientnet_lite0) instead
    scratchnet gradcheck --device gpu          the same in float64 on the GPU: the CUDA kernels' backward

    from scratchnet.gradcheck import check_layer      # your own layer: {gradient name: relative error}

The check. For a layer f with parameters theta and a fixed random dy (the shape of f's output), take
L(x, theta) = sum(f(x; theta) * dy). Then backward(dy) must return dL/dx and fill dL/dtheta. Each entry
of each is compared with the central difference (L(v + eps) - L(v - eps)) / (2 eps), in float64, and the
error is max |analytic - numerical| relative to the larger of the two's max |.|. tests/test_layers.py
holds every configuration of ``LAYER_GRID`` to 1e-6; in float64 a correct layer gives 1e-11 to 3e-8
(``scratchnet gradcheck`` prints each), and a mistake shows at its own size (a gradient 1% off: 1e-2).

Where the derivative does not exist the check would compare nonsense, so the inputs keep away from
those points: ReLU inputs are moved at least 0.05 away from 0 (and from 6 for ReLU6), and max-pooling
inputs are distinct values 0.01 apart, so no window has a tie that eps could swap (``make_input``).
Grid entries that chain layers (fire_concat, residual_*, mbconv, conv_pool_lrn_chain) take plain normal
inputs: their inner ReLUs and pools are neither steered nor watched; with their seeds the inner
pre-activations stay at least 1e-4 from a kink, far beyond eps.
Inside a whole network the inputs of the ReLUs and pools cannot be steered, so ``check_network``
watches instead: a central difference whose two passes switch some ReLU or pooling window differently
is tried again at a 100x smaller step, and left out (and counted) if that switches one too.
"""
from __future__ import annotations

import copy

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .layers import (AvgPool2d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear,
                     LocalResponseNorm, MaxPool2d, ReLU, ReLU6, Residual, Sequential)

#: the bound tests/test_layers.py and the command hold every check to
TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# the check itself
# ---------------------------------------------------------------------------------------------
def numerical_grad(f, x, eps=1e-6):
    """d f / d x by central differences, one entry at a time: f() reads x (changed in place, then put
    back) and returns a float. x: a C-contiguous float64 array of any shape, NumPy or CuPy -> a NumPy
    array of its shape."""
    if not x.flags.c_contiguous:
        raise ValueError("numerical_grad: x must be C-contiguous (its entries are changed in place)")
    flat = x.reshape(-1)                   # a view: f sees every change
    g = np.zeros(flat.size)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g.reshape(x.shape)


def rel_error(a, b):
    """max |a - b| relative to the larger of max |a| and max |b| (1e-12 at least); NumPy or CuPy."""
    a, b = to_numpy(a), to_numpy(b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12))


def check_layer(layer, x, train=False, reset=None, seed=1):
    """A layer's backward (dx and every parameter gradient) against central differences of
    L = sum(forward(x) * dy) for a fixed random dy. Returns {"x": error, "<param name>": error, ...}.

    x: the layer's input, float64 (the layer's parameters too: ``layer.astype(np.float64)``), on the
    layer's device (NumPy on the CPU, CuPy on the GPU: then the CUDA kernels are what is checked).
    train: run forward in training mode (dropout masks). ``reset`` restores any randomness before each
    forward, so that every evaluation of L sees the same dropout mask.
    An analytic gradient that is all zero is refused (ValueError): it would match a numerical zero
    and prove nothing (pick an input that reaches the layer's parameters)."""
    if getattr(x, "dtype", None) != np.float64:
        raise TypeError(f"check_layer: central differences need float64 inputs, got {getattr(x, 'dtype', type(x))} "
                        "(and the layer in float64: layer.astype(np.float64))")
    single = [f"{name} ({lay.params[key].dtype})" for name, lay, key in layer.named_params()
              if lay.params[key].dtype != np.float64]
    if single:          # float32 central differences are round-off: a 1e-2 "error" of a correct backward
        raise TypeError(f"check_layer: central differences need the layer in float64, got {', '.join(single)} "
                        "(layer.astype(np.float64))")
    xp = get_array_module(x)
    reset = reset or (lambda: None)
    rng = np.random.default_rng(seed)
    reset()
    y = layer.forward(x, train)
    reset()
    if not bool(xp.array_equal(layer.forward(x, train), y)):    # the cache backward uses: this forward's
        raise ValueError("check_layer: two forward passes of the same input differ (dropout in training "
                         "mode?), so central differences would measure the noise; pass reset=, a function "
                         "that restores the randomness before each forward")
    dy = xp.asarray(rng.standard_normal(tuple(y.shape)))
    dx = layer.backward(dy, "gradient", True, True)

    def loss():
        reset()
        return float((layer.forward(x, train) * dy).sum())

    analytic = {"x": dx}
    analytic.update({name: lay.grads.get(key) for name, lay, key in layer.named_params()})
    want = {"x": x, **{name: lay.params[key] for name, lay, key in layer.named_params()}}
    for name, g in analytic.items():          # a wrong shape would broadcast in the comparison
        if g is None or tuple(g.shape) != tuple(want[name].shape):
            what = "no gradient" if g is None else f"a gradient of shape {tuple(g.shape)}"
            raise ValueError(f"check_layer: backward gave {what} for {name}, expected the shape "
                             f"{tuple(want[name].shape)} of {name}")
    zero = [name for name, g in analytic.items() if not bool(xp.any(g))]
    if zero:
        unset = [name for name, lay, key in layer.named_params() if not bool(xp.any(lay.params[key]))]
        hint = (f"; the parameters {unset} are all zero (layers start at zero): give them values first, e.g. "
                "scratchnet.gradcheck.randomise_params(layer)" if unset and "x" in zero else
                "; choose an input (and dy) that reaches it")
        raise ValueError(f"check_layer: the analytic gradient of {zero} is all zero, so the check would "
                         f"prove nothing{hint}")
    errs = {"x": rel_error(dx, numerical_grad(loss, x))}
    for name, lay, key in layer.named_params():
        errs[name] = rel_error(analytic[name], numerical_grad(loss, lay.params[key]))
    return errs


# ---------------------------------------------------------------------------------------------
# inputs away from the points where the derivative does not exist
# ---------------------------------------------------------------------------------------------
def off_kinks(x, kinks=(0.0,), margin=0.05):
    """Move values within ``margin`` of a kink (ReLU's 0, ReLU6's 6) to ``margin`` away from it (in place)."""
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.sign(x[near] - k + 1e-12) * margin
    return x


def distinct(shape, rng):
    """Values 0.01 apart in random order: no max-pooling ties, even under +-eps."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.01 - n * 0.005).astype(np.float64)


def make_input(kind, shape, rng):
    """An input of ``shape`` for a grid entry: "normal" N(0, 1); "relu" N(0, 1) off the kink at 0;
    "relu6" U(-3, 9) off 0 and 6; "distinct" (max pooling) distinct values; "wide" N(0, 9) (LRN, whose
    normaliser then matters); "dropout" N(0, 1)."""
    if kind == "distinct":
        return distinct(shape, rng)
    if kind == "relu":
        return off_kinks(rng.standard_normal(shape))
    if kind == "relu6":
        return off_kinks(rng.uniform(-3, 9, shape), kinks=(0.0, 6.0))
    if kind == "wide":
        return rng.standard_normal(shape) * 3
    return rng.standard_normal(shape)


def randomise_params(layer, seed=0):
    """Every parameter N(0, 0.5^2) in float64 (and BatchNorm statistics), so that no gradient is
    trivially zero. Returns the layer."""
    rng = np.random.default_rng(seed)
    for _, lay, key in layer.named_params():
        lay.params[key] = rng.standard_normal(lay.params[key].shape).astype(np.float64) * 0.5
    for _, lay in layer.named_layers():
        if isinstance(lay, BatchNorm2d):
            lay.stats = dict(mean=rng.standard_normal(lay.channels), var=rng.random(lay.channels) + 0.5)
    return layer


# ---------------------------------------------------------------------------------------------
# the grid: every layer and configuration
# ---------------------------------------------------------------------------------------------
def with_mode(conv, mode):
    """The same Conv2d, forced to plain or wide im2col columns (see Conv2d.im2col_mode)."""
    conv.im2col_mode = mode
    return conv


def conv_relu(c, o, k, p):
    return Sequential([("conv", Conv2d(c, o, k, padding=p)), ("relu", ReLU())])


#: (name, layer factory, input shape, input kind for make_input). A new layer joins with one line.
LAYER_GRID = [
    ("conv3x3", lambda: Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6), "normal"),
    ("conv3x3_wide", lambda: with_mode(Conv2d(3, 4, 3, padding=1), "wide"), (2, 3, 6, 5), "normal"),
    ("conv3x3_plain", lambda: with_mode(Conv2d(3, 4, 3, padding=1), "plain"), (2, 3, 6, 5), "normal"),
    ("conv_groups_k5_wide", lambda: with_mode(Conv2d(4, 6, 5, padding=(2, 1, 0, 3), groups=2), "wide"), (2, 4, 6, 5),
     "normal"),
    ("conv_stride2", lambda: Conv2d(3, 4, 3, stride=2), (2, 3, 7, 7), "normal"),
    ("conv_pad_asym", lambda: Conv2d(3, 2, 3, stride=2, padding=(0, 1, 1, 2)), (2, 3, 6, 5), "normal"),
    ("conv_same_s2", lambda: Conv2d(3, 4, 3, stride=2, padding="same"), (2, 3, 6, 6), "normal"),
    ("conv_same_k5", lambda: Conv2d(2, 3, 5, stride=2, padding="same"), (1, 2, 7, 8), "normal"),
    ("conv_groups2", lambda: Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5), "normal"),
    ("conv_depthwise", lambda: Conv2d(4, 4, 3, stride=2, padding="same", groups=4), (2, 4, 6, 6), "normal"),
    ("conv_depthwise_k5", lambda: Conv2d(3, 3, 5, padding=2, groups=3), (1, 3, 6, 6), "normal"),
    ("conv1x1", lambda: Conv2d(4, 3, 1), (2, 4, 4, 4), "normal"),
    ("conv_rect_nobias", lambda: Conv2d(2, 3, (2, 3), stride=(1, 2), bias=False), (2, 2, 5, 6), "normal"),
    ("conv_groups2_plain", lambda: with_mode(Conv2d(4, 6, 3, stride=2, padding=1, groups=2), "plain"), (2, 4, 6, 5),
     "normal"),
    ("conv1x1_groups2", lambda: Conv2d(4, 6, 1, groups=2), (2, 4, 3, 4), "normal"),
    ("conv1x1_stride2", lambda: Conv2d(3, 4, 1, stride=2), (2, 3, 5, 6), "normal"),
    ("conv_depthwise_rect", lambda: Conv2d(3, 3, (3, 5), stride=(2, 1), padding=(1, 1, 2, 2), groups=3),
     (1, 3, 7, 6), "normal"),
    ("conv_depthwise_rect_s12", lambda: Conv2d(3, 3, (3, 2), stride=(1, 2), padding=(1, 0, 1, 1), groups=3),
     (1, 3, 5, 7), "normal"),
    ("conv_depthwise_x2", lambda: Conv2d(3, 6, 3, padding=1, groups=3), (2, 3, 5, 5), "normal"),
    ("relu", lambda: ReLU(), (2, 3, 4, 4), "relu"),
    ("relu6", lambda: ReLU6(), (2, 3, 4, 4), "relu6"),
    ("maxpool3s2_ceil", lambda: MaxPool2d(3, 2, ceil_mode=True), (2, 2, 8, 8), "distinct"),
    ("maxpool2s2_floor", lambda: MaxPool2d(2, 2), (2, 2, 7, 7), "distinct"),
    ("maxpool3s2_pad1", lambda: MaxPool2d(3, 2, padding=1), (1, 2, 7, 6), "distinct"),
    ("maxpool3s1", lambda: MaxPool2d(3, 1), (1, 2, 5, 5), "distinct"),
    ("maxpool_rect_asym", lambda: MaxPool2d((2, 3), (1, 2), padding=(0, 1, 1, 0)), (1, 2, 6, 7), "distinct"),
    ("maxpool2s2_ceil_pad1", lambda: MaxPool2d(2, 2, 1, ceil_mode=True), (1, 2, 5, 5), "distinct"),
    ("avgpool2s2", lambda: AvgPool2d(2, 2), (2, 2, 6, 6), "normal"),
    ("avgpool3s2_ceil_pad", lambda: AvgPool2d(3, 2, padding=1, ceil_mode=True), (1, 2, 6, 6), "normal"),
    ("avgpool3s2_floor_pad", lambda: AvgPool2d(3, 2, padding=1), (1, 2, 7, 6), "normal"),
    ("avgpool3s2_ceil", lambda: AvgPool2d(3, 2, ceil_mode=True), (1, 2, 6, 6), "normal"),
    ("avgpool_rect_asym", lambda: AvgPool2d((2, 3), (2, 1), padding=(1, 0, 0, 1)), (1, 2, 5, 6), "normal"),
    ("global_avgpool", lambda: GlobalAvgPool(), (2, 3, 4, 5), "normal"),
    ("lrn5", lambda: LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0), (2, 7, 3, 3), "wide"),
    ("lrn3_beta_half", lambda: LocalResponseNorm(3, alpha=5e-2, beta=0.5, k=1.0), (1, 4, 3, 3), "wide"),
    ("lrn1", lambda: LocalResponseNorm(1, alpha=1e-1, beta=0.75, k=2.0), (1, 4, 3, 3), "wide"),
    ("lrn7_wider_than_channels", lambda: LocalResponseNorm(7, alpha=5e-2, beta=0.6, k=1.5), (1, 5, 3, 3), "wide"),
    ("batchnorm", lambda: BatchNorm2d(3), (2, 3, 3, 3), "normal"),
    ("linear", lambda: Linear(6, 4), (3, 6), "normal"),
    ("linear_nobias", lambda: Linear(6, 4, bias=False), (3, 6), "normal"),
    ("flatten_linear", lambda: Sequential([Flatten(), Linear(12, 3)]), (2, 3, 2, 2), "normal"),
    ("dropout_train", lambda: Dropout(0.5, seed=3), (4, 5), "dropout"),
    ("dropout_p03_train", lambda: Dropout(0.3, seed=3), (4, 5), "dropout"),
    ("fire_concat", lambda: Sequential([("squeeze", conv_relu(4, 2, 1, 0)), ("expand", Concat(
        [("e1", conv_relu(2, 3, 1, 0)), ("e3", conv_relu(2, 3, 3, 1))]))]), (2, 4, 5, 5), "normal"),
    ("residual_identity", lambda: Residual(Sequential([conv_relu(3, 3, 3, 1), Conv2d(3, 3, 1)])),
     (2, 3, 4, 4), "normal"),
    ("residual_projection", lambda: Residual(conv_relu(2, 4, 3, 1), Conv2d(2, 4, 1)), (2, 2, 4, 4), "normal"),
    ("mbconv", lambda: Residual(Sequential([Conv2d(3, 6, 1), ReLU6(), Conv2d(6, 6, 3, padding="same", groups=6),
                                            ReLU6(), Conv2d(6, 3, 1)])), (1, 3, 5, 5), "normal"),
    ("conv_pool_lrn_chain", lambda: Sequential([conv_relu(3, 5, 3, 1), LocalResponseNorm(5, 1e-2, 0.75, 2.0),
                                                MaxPool2d(3, 2, ceil_mode=True)]), (1, 3, 6, 6), "normal"),
]


def check_grid_entry(name, factory, shape, kind, device="cpu"):
    """One grid entry: the layer with random float64 parameters, its input from ``make_input``
    (seed 0), dropout reseeded before every forward, on ``device`` ("cpu", or "gpu" to check the
    CUDA kernels). Returns check_layer's {gradient: error}."""
    rng = np.random.default_rng(0)
    layer = randomise_params(factory()).to(device)
    x = to_device(make_input(kind, shape, rng), device)

    def reseed():
        layer.rng = np.random.default_rng(layer.seed)
    return check_layer(layer, x, train=kind == "dropout", reset=reseed if isinstance(layer, Dropout) else None)


def select_grid(only=None):
    """The grid entries whose names contain one of the strings in ``only`` (all when None or empty).
    An ``only`` that selects nothing is a ValueError naming the entries there are."""
    if not only:
        return list(LAYER_GRID)
    chosen = [g for g in LAYER_GRID if any(s in g[0] for s in only)]
    if not chosen:
        raise ValueError(f"no layer configuration's name contains {' or '.join(map(repr, only))}; the names are: "
                         + ", ".join(g[0] for g in LAYER_GRID))
    return chosen


# ---------------------------------------------------------------------------------------------
# a whole network: the image gradient of a class score (the paper's saliency), and the parameters
# ---------------------------------------------------------------------------------------------
def check_network(net, cls=0, pixels=16, entries=4, seed=0, x=None, eps_image=None, eps_param=1e-5,
                  device="cpu"):
    """A network's backward against central differences, on a float64 copy of it on ``device``:

      * the image gradient of the class score S_cls (backward(rule="gradient") of a one-hot) at
        ``pixels`` input entries: what saliency maps are made of;
      * the gradient of L = sum(scores * dscores) (random dscores) w.r.t. ``entries`` entries of every
        parameter, all computed in one backward pass.

    Half the entries (rounded up) are those with the largest analytic gradient, the rest are drawn at
    random (only random ones would often all be zeros behind dead ReLUs, and zeros agreeing prove
    nothing).

    Inside a network the inputs cannot be kept off the kinks, so each central difference is watched
    instead: if any ReLU's on/off pattern or any max-pooling switch differs between the passes at
    v + eps and v - eps, the difference straddles a point without a derivative. It is then tried
    again with eps / 100, and if that straddles one too, the entry is left out and counted in
    ``kinks``. (A weight of an early layer moves thousands of units at once: in EfficientNet-Lite0
    at 224 px, 2 of 208 entries (8 pixels, 2 of each of 100 parameter arrays) were left out, after the
    retry.)

    x: the input (1, C, H, W); default: random, with a spread of about 50 grey levels in the
    network's input space. eps_image: the step in the input, default 1e-3 grey levels (smaller steps
    lose digits to rounding: the scores are large next to a change of one pixel); eps_param: the
    step in a parameter. Returns dict(image=error, params={name: error}, worst, kinks={"image": n,
    name: n}, checked=number of entries compared, forwards=forward passes it took, ...). An error is
    the largest |analytic - numerical| over the entries compared, relative to the largest |entry| of
    the whole analytic gradient (the image's, or that parameter's) or of the numerical values; None
    where there was nothing to compare: every entry left out, or a gradient that is zero throughout
    and matched by zeros. Cost: about 2 * (pixels + entries * number of parameter arrays) forward
    passes of one image in float64."""
    from .checks import check_int
    from .vis.classmodel import grey_level

    pixels = check_int("check_network", "pixels", pixels, 1)
    entries = check_int("check_network", "entries", entries, 0)
    net64 = copy.deepcopy(net).to(device).astype(np.float64)
    for _, layer, key in net64.named_params():   # contiguous, so that reshape(-1) below is a view of each
        layer.params[key] = get_array_module(layer.params[key]).ascontiguousarray(layer.params[key])
    k = net64.num_classes
    cls = check_int("check_network", "cls (a class index)", cls, 0)
    if cls >= k:
        raise ValueError(f"check_network: class index {cls} is out of range: the network has {k} classes "
                         f"(0..{k - 1})")
    rng = np.random.default_rng(seed)
    shape = (1,) + tuple(net64.input_shape)
    if x is None:
        x = rng.standard_normal(shape) * 50 * grey_level(net64)
    x = to_device(to_numpy(x).astype(np.float64), device)
    net64.check_input(x)
    xp = get_array_module(x)
    if eps_image is None:
        eps_image = 1e-3 * grey_level(net64)
    forwards = 0

    def central(arr, i, d, eps):
        """(L(arr[i] + eps) - L(arr[i] - eps)) / 2 eps with L = sum(scores * d), or None when a ReLU
        pattern or a pooling switch differs between the two passes (tried again at eps / 100)."""
        nonlocal forwards
        old = float(arr[i])
        for e in (eps, eps / 100):
            vals, sigs = [], []
            for step in (e, -e):
                arr[i] = old + step
                vals.append(float((net64.forward(x) * d).sum()))
                sigs.append(branch_pattern(net64))
                forwards += 1
            arr[i] = old
            if same_branches(*sigs):
                return (vals[0] - vals[1]) / (2 * e)
        return None

    def compare(arr, grad, n, d, eps):
        flat_arr, flat_grad = arr.reshape(-1), to_numpy(grad).reshape(-1)   # arr: a view, changed in place
        ana, num = [], []
        for f in _picks(flat_grad, n, rng):
            v = central(flat_arr, int(f), d, eps)
            if v is not None:
                ana.append(flat_grad[f])
                num.append(v)
        skipped = min(n, flat_grad.size) - len(num)
        scale = max(float(np.abs(flat_grad).max()), float(np.abs(np.array(num)).max(initial=0.0)))
        if not num or scale == 0:
            return None, skipped, len(num)
        return float(np.abs(np.array(ana) - np.array(num)).max() / scale), skipped, len(num)

    # the image gradient of S_cls
    onehot = np.zeros((1, k))
    onehot[0, cls] = 1
    onehot = xp.asarray(onehot)
    net64.forward(x)
    g = net64.backward(onehot, rule="gradient", param_grads=False)
    image_err, skipped, checked = compare(x, g, pixels, onehot, eps_image)
    kinks = {"image": skipped}

    # every parameter, a few entries each
    params = {}
    if entries:
        dscores = xp.asarray(rng.standard_normal((1, k)))
        net64.forward(x)
        net64.backward(dscores, input_grad=False)
        for name, layer, key in net64.named_params():
            params[name], kinks[name], n = compare(layer.params[key], layer.grads[key], entries, dscores,
                                                   eps_param)
            checked += n
    errs = [e for e in [image_err, *params.values()] if e is not None]
    return dict(image=image_err, params=params, worst=max(errs) if errs else None, kinks=kinks,
                checked=checked, pixels=pixels, entries=entries, cls=cls, eps_image=eps_image,
                eps_param=eps_param, forwards=forwards, device=device)


def _picks(grad, n, rng):
    """Flat indices of n entries of ``grad`` (fewer if it is smaller): the (n + 1) // 2 largest |grad|,
    then distinct random others."""
    flat = np.abs(np.asarray(grad)).reshape(-1)
    n = min(n, flat.size)
    top = np.argsort(flat, kind="stable")[::-1][:(n + 1) // 2]
    rest = np.setdiff1d(np.arange(flat.size), top)
    return np.concatenate([top, rng.choice(rest, n - len(top), replace=False)]).astype(np.int64)


def branch_pattern(net):
    """What the last forward pass decided at the points without a derivative: each ReLU's pattern of
    units in their linear part (0 < y < upper) and each max pool's switches, as a list of arrays (on
    the network's device). Two passes with equal patterns ran through the same linear pieces, so a
    central difference between them has no kink inside."""
    out = []
    for _, layer in net.named_layers():
        if isinstance(layer, ReLU) and layer._y is not None:
            out.append((layer._y > 0) & (layer._y < layer.upper))
        elif isinstance(layer, MaxPool2d) and layer._cache is not None:
            out.append(layer._cache.copy())          # the switches (NumPy or CuPy)
    return out


def same_branches(p, q):
    """Whether two ``branch_pattern``s are equal: the two passes took the same linear pieces."""
    xp = get_array_module(*p[:1]) if p else np
    return len(p) == len(q) and all(bool(xp.array_equal(a, b)) for a, b in zip(p, q))


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def register(sub, ev_sub):
    from .cli import add_device_arg, nonnegative_int, positive_int, positive_number

    p = sub.add_parser(
        "gradcheck",
        help="every layer's backward, and a whole network's, against float64 central differences",
        description="Checks the hand-written backward passes against float64 central differences: each "
                    "layer configuration of the grid (scratchnet.gradcheck.LAYER_GRID; the same checks "
                    "tests/test_layers.py runs), then a whole network's image gradient of a class score "
                    "and a few entries of every parameter gradient. Exit status 1 when a check fails.")
    p.add_argument("--only", nargs="+", metavar="TEXT", default=None,
                   help="only the layer configurations whose names contain one of these strings")
    p.add_argument("--no-layers", action="store_true", help="skip the layer grid")
    p.add_argument("--no-network", action="store_true", help="skip the whole-network check")
    p.add_argument("--model", default="paper",
                   help="the network checked as a whole: 'paper' (the default: the paper's network at 32 px, "
                        "width 1/16, 5 classes), squeezenet1_0, efficientnet_lite0 or a saved network (.npz)")
    p.add_argument("--class", dest="cls", default="0", metavar="C",
                   help="the class whose score's image gradient is checked: an index, a wnid or a name, as "
                        "in the other commands (default 0)")
    p.add_argument("--pixels", type=positive_int, default=16,
                   help="input entries checked in the whole network (default 16)")
    p.add_argument("--entries", type=nonnegative_int, default=4,
                   help="entries checked of every parameter of the whole network (default 4; 0 skips them)")
    p.add_argument("--tol", type=positive_number, default=TOLERANCE,
                   help="largest relative error that passes (default %(default)g)")
    add_device_arg(p)
    p.set_defaults(func=cmd_gradcheck)


def _network_for_check(model):
    """'paper': the paper's network at 32 px, width 1/16, 5 classes (every layer type it has, small
    enough to check in seconds); else a name or path for scratchnet.models.load."""
    if model == "paper":
        from .models import paper_net
        return paper_net(input_size=32, num_classes=5, width=1 / 16, seed=1, dtype=np.float64)
    from .models import load
    return load(model)


def _fmt(e):
    return "n/a (nothing to compare)" if e is None else f"{e:.1e}"


def cmd_gradcheck(args):
    import sys
    import time

    from .cli import emit_json

    if args.no_layers and args.no_network:
        raise ValueError("--no-layers and --no-network together leave nothing to check")
    layers = [] if args.no_layers else select_grid(args.only)
    net = None if args.no_network else _network_for_check(args.model)     # bad names and classes: before any work
    if net is not None:
        from .vis.display import resolve_class
        try:
            args.cls = resolve_class(net, args.cls)
        except ValueError as e:
            raise ValueError(f"--class: {e}") from None
    out = dict(command="gradcheck", tolerance=args.tol, device=args.device, layers=[], network=None)
    failed = []
    if layers:
        print(f"{'layer configuration':<28}{'input':<16}{'worst error':>12}  gradients (relative error)")
    for name, factory, shape, kind in layers:
        errs = check_grid_entry(name, factory, shape, kind, device=args.device)
        worst = max(errs.values())
        ok = worst <= args.tol
        if not ok:
            failed.append(name)
        detail = "  ".join(f"{k} {v:.1e}" for k, v in errs.items())
        print(f"{name:<28}{'x'.join(map(str, shape)):<16}{worst:>12.1e}  {detail}{'' if ok else '  FAIL'}",
              flush=True)
        out["layers"].append(dict(name=name, input_shape=list(shape), errors=errs, ok=ok))
    if net is not None:
        label = "paper_net(32 px, width 1/16, 5 classes)" if args.model == "paper" else args.model
        print(f"\nwhole network {label}, float64: image gradient of class {args.cls}'s score at {args.pixels} "
              f"entries, {args.entries} entries of every parameter", flush=True)
        t = time.perf_counter()
        res = check_network(net, cls=args.cls, pixels=args.pixels, entries=args.entries, device=args.device)
        ok = res["worst"] is not None and res["worst"] <= args.tol
        if not ok:
            failed.append("network")
        left_out = sum(res["kinks"].values())
        blank = [name for name, e in res["params"].items() if e is None]
        worst_param = max((e for e in res["params"].values() if e is not None), default=None)
        params = ("no parameter entries asked for" if not args.entries else
                  f"parameters: worst {_fmt(worst_param)} over {len(res['params']) - len(blank)} arrays"
                  + (f" ({len(blank)} with nothing to compare: a zero gradient, or every entry at a kink)"
                     if blank else ""))
        print(f"  image gradient {_fmt(res['image'])}; {params}; {res['checked']} entries compared"
              + (f", {left_out} left out (a ReLU or pooling switch flips within +-eps)" if left_out else "")
              + f" ({res['forwards']} forward passes, {time.perf_counter() - t:.1f} s){'' if ok else '  FAIL'}")
        for pname, e in res["params"].items():
            if e is not None and e > args.tol:
                print(f"    {pname}: {e:.1e}  FAIL")
        out["network"] = dict(model=args.model, ok=ok, **res)
    n = len(out["layers"]) + (out["network"] is not None)
    print(f"\n{n - len(failed)} of {n} checks within {args.tol:g}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr if failed else sys.stdout)
    out["failed"] = failed
    emit_json(out)
    return 1 if failed else 0
