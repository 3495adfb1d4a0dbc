"""Class model visualisation (Simonyan et al. 2013, section 2).

Find the image that a class scores highest, with an L2 penalty:

    I* = argmax_I  J(I),   J(I) = S_c(I) - lam * ||I / u||^2

  * I (M, C, H, W) lives in the network's input space (the preprocessed, mean-subtracted image);
    u is the size of one grey level there (``net.preprocess["scale"]``: 1 for SqueezeNet's Caffe
    pixels, 1/128 for EfficientNet-Lite0), so ||I / u|| is the image norm in grey levels and one
    value of ``lam`` means the same on every network;
  * S_c is the *unnormalised* class score (not the softmax: that could rise by lowering the others);
  * the weights are fixed; dS_c/dI is one ``net.backward(onehot, rule="gradient", param_grads=False)``;
  * the ascent starts from the zero image (the mean image, once the mean is added back) and runs for
    all requested classes at once, one class per batch row. Beyond the paper, ``start_noise`` starts it
    from seeded Gaussian noise of that many grey levels (rms) instead: for a network whose units are all
    off at the zero image, where the gradient is exactly 0 and the paper's ascent cannot start.

Optimiser (``optimiser=``):
    "normalised" (default):  v <- mu v + g / rms(g);   I <- I + lr_c * u * v
                             each step moves the image by lr_c grey levels (root mean square);
                             with step control (``step_control=True``, the default, when no
                             regulariser below is on) each class c has its own lr_c, starting at
                             ``lr``: x0.9 after a step that lowered its objective J, else x1.05 up
                             to ``lr`` (a gentle "bold driver" rule; ``step_factors``). A fixed
                             length circles the maximum at its own distance: on EfficientNet-Lite0 at
                             the defaults every fixed step of 2 grey levels lowered J (-0.0 -> -25 in
                             100 steps, S_c 14-18) where the controlled steps raise it (mean J 46);
    "plain":                 I <- I + lr * g           (the textbook step; lr in input units per unit of g)
with g = dJ/dI = dS_c/dI - 2 lam I / u^2.

Defaults (``DEFAULTS``), chosen by looking at the class models of SqueezeNet and EfficientNet-Lite0
for the paper's classes, with fixed steps: 100 normalised steps of 2 grey levels, no momentum,
lam = 1e-5 per grey level^2 (the notes after the next paragraph are of fixed steps too).

Step control's factors (``STEP_DOWN``, ``STEP_UP`` = 0.9, 1.05) were chosen later with
``bench/classmodel_steps.py``: of 12 pairs, four ended with a higher mean J than fixed steps on both
networks for goose, ostrich, husky and for dumbbell, cup, lemon, limousine (0.9 / 1.05, 0.85 / 1.05,
0.95 / 1.02, and 0.9 / 1.1, with which some EfficientNet-Lite0 classes still ended below their start),
and 0.9 / 1.05 climbed highest on SqueezeNet for both (EfficientNet-Lite0 46 and 49 vs fixed -23 and
-16; SqueezeNet 421 and 161 vs 325 and 99). Harsher cuts lose on SqueezeNet, whose J dips often on the
way up: 0.5 / 1.1 ended at 281 and 90 there, below fixed steps.

At that lam the image settles at an rms of about 10-17 grey levels (SqueezeNet) or 5
(EfficientNet-Lite0) around the mean; lam = 1e-6 lets EfficientNet's score climb higher but the image
turns into high-frequency noise, and SqueezeNet's class models are already recognisable at 1e-5.
A sweep on EfficientNet-Lite0 (goose, ostrich, husky, dumbbell, cup, lemon, limousine) found nothing better
without regularisers: lam 1e-4 or 1e-3 leaves grey noise (S_c ~ 2 instead of ~ 20), 300 steps of 1 or 2
grey levels (lam 1e-5 or 3e-6) raise S_c to 35-60 but make the images busier, momentum 0.9 changes little.

Opt-in regularisers, all off by default (the paper uses none):
    jitter=j       the gradient is taken at the image rolled by a random (dy, dx) in [-j, j]^2
    blur_every=k   every k steps, blur I with a Gaussian of std ``blur_sigma`` pixels
    clip_pct=p     every step, zero the pixels whose colour-vector norm is below the p-th percentile
    clamp=True     keep every pixel within the grey levels 0..255 once the mean is added back
``REGULARISED`` is the combination the demo shows beside the paper's (EfficientNet-Lite0 needs it:
its plain class models are much less recognisable than SqueezeNet's).

SqueezeNet's class score is the spatial average of a ReLU'd map (conv_final -> ReLU -> average). From
the zero image a class whose map is negative everywhere has S_c = 0 exactly and a zero gradient, so
ascent could never start; for such heads (``score_layer="auto"``) the ascended score is the average of
the map *before* the ReLU, which equals S_c wherever the map is positive. ``scores`` always records the
network's own S_c.

For display the mean is added back (``display.to_pixels``: per-channel mean for imported networks,
the mean image for networks trained here) and each image is stretched from its 1st to its 99th
percentile (``display.stretch``) — a class model is far outside the range of photos, so a fixed
mapping would show a grey square.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_int, check_number
from ..models.network import NonFiniteInputError
from .deconv import backward_from, forward_to, layer_index
from .display import on_net_device, prepare_pixels, resolve_classes, stretch, to_pixels

#: defaults chosen by looking at SqueezeNet and EfficientNet-Lite0 class models (module docstring)
#: step control: the factors of a class's step length after a step that lowered its objective, and after
#: one that did not (capped at lr). ``python bench/classmodel_steps.py`` (goose, ostrich, husky; 100 steps;
#: mean final objective J): 0.9 / 1.05 EfficientNet-Lite0 45.9, SqueezeNet 421.5; fixed steps -22.9, 325.2;
#: 0.85 / 1.05 52.4, 384.6; 0.5 / 1.1 31.4, 281.5; 0.5 / 2.0 -0.1, 383.3. With ``--classes dumbbell cup
#: lemon limousine``: 0.9 / 1.05 49.1, 161.2; fixed -16.3, 98.9; 0.85 / 1.05 54.8, 148.4. With ``--steps
#: 200``: 0.9 / 1.05 66.1, 459.5; fixed -22.0, 393.4. The default lr of 2 grey levels, with these factors:
#: ``--lr 1 --pairs 0.9:1.05`` 44.6, 390.3; ``--lr 4`` 24.1, 393.4 (lr 2 ends highest of the three on both).
STEP_DOWN, STEP_UP = 0.9, 1.05
DEFAULTS = dict(steps=100, lr=2.0, lam=1e-5, optimiser="normalised", momentum=0.0)
#: the opt-in regularisers, off (the paper's ascent), and as the demo's "regularised" class models
#: take them (with a lighter L2)
REGULARISERS_OFF = dict(jitter=0, blur_every=0, blur_sigma=0.5)
REGULARISED = dict(lam=1e-6, jitter=8, blur_every=4, blur_sigma=0.5)


def grey_level(net) -> float:
    """u: the size of one grey level in the network's input space (mean of the preprocessing scale)."""
    pre = net.preprocess
    s = np.mean(np.asarray(pre.get("scale", 1.0), np.float64))
    if "std" in pre:
        s = s / np.mean(np.asarray(pre["std"], np.float64))
    return float(s)


@dataclass
class ClassModel:
    """The result of ``class_model``.

    x (M, C, H, W)        the class models in the network's input space
    classes (M,)          their class indices
    scores (T+1, M)       S_c at every step (row t: before step t; last row: the final image)
    objective (T+1, M)    J = S - lam ||I/u||^2 at the same images, S the score ascended (S_c,
                          or the linear score of ``score_layer``); with ``jitter``, S (in both) is
                          measured at the shifted image the step's gradient was taken at (the
                          last row, after the last step, at the unshifted image)
    pixels (M, H, W, 3)   RGB grey levels with the mean added back (not clipped)
    images (M, H, W, 3)   uint8 for display (percentile stretch)
    settings              the parameters used
    """
    x: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    objective: np.ndarray
    pixels: np.ndarray
    images: np.ndarray
    settings: dict = field(default_factory=dict)


def gaussian_blur(x, sigma):
    """Separable Gaussian blur of (N, C, H, W) over H and W, reflect padding; radius ceil(3 sigma)."""
    xp = get_array_module(x)
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(x.dtype)
    pad = xp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
    y = sum(float(k[i]) * pad[:, :, i:i + x.shape[2]] for i in range(2 * r + 1))
    pad = xp.pad(y, ((0, 0), (0, 0), (0, 0), (r, r)), mode="reflect")
    return sum(float(k[i]) * pad[:, :, :, i:i + x.shape[3]] for i in range(2 * r + 1))


def step_control_applies(optimiser, jitter=0, blur_every=0, clip_pct=0.0) -> bool:
    """Whether step control can run with these settings: only for normalised steps without a
    regulariser (with jitter, blur or clipping the objective is that of a moved image)."""
    return optimiser == "normalised" and not (jitter or blur_every or clip_pct)


def class_model(net, classes, steps=DEFAULTS["steps"], lr=DEFAULTS["lr"], lam=DEFAULTS["lam"],
                optimiser=DEFAULTS["optimiser"], momentum=DEFAULTS["momentum"],
                jitter=REGULARISERS_OFF["jitter"], blur_every=REGULARISERS_OFF["blur_every"],
                blur_sigma=REGULARISERS_OFF["blur_sigma"], clip_pct=0.0, clamp=False, score_layer="auto", seed=0,
                progress=None, progress_every=20, start_noise=0.0, step_control=True,
                step_factors=(STEP_DOWN, STEP_UP), batch_size=None) -> ClassModel:
    """Gradient ascent of J(I) = S_c(I) - lam ||I/u||^2 from the zero image; see the module docstring.

    classes: M classes (indices, wnids or names); one batch row per class, ``batch_size`` classes a pass
    (None: all M; a pass holds every layer's activations for its batch, some 70 MB a class for
    SqueezeNet). ``score_layer``: "auto", None (the network's
    output) or a top-level layer name whose channel c, averaged over space, is the score ascended.
    ``progress``: a stream (e.g. sys.stderr) for a line every ``progress_every`` steps, or None.
    ``step_factors``: (down, up), step control's factors: a class's step is multiplied by ``down``
    (0 < down < 1) after a step that lowered its objective, else by ``up`` (>= 1) up to ``lr``;
    ``bench/classmodel_steps.py`` compares pairs.
    The same call gives the same bits every time; a class's image computed with other classes beside it
    differs from the one computed alone by BLAS rounding (the batch changes the order of the sums), which
    the ascent can amplify: 1e-4 of the image after 40 plain steps, visibly with jitter or blur.
    """
    if optimiser not in ("normalised", "plain"):
        raise ValueError(f"optimiser must be 'normalised' or 'plain', got {optimiser!r}")
    for name, v in (("steps", steps), ("jitter", jitter), ("blur_every", blur_every), ("seed", seed)):
        check_int("class_model", name, v, 0)
    check_number("class_model", "lr (a step up the class score)", lr, low=0, low_open=True)
    check_number("class_model", "momentum", momentum, low=0, high=1, high_open=True)
    check_number("class_model", "lam", lam, low=0)
    if blur_every:
        check_number("class_model", "blur_sigma (with blur_every set)", blur_sigma, low=0, low_open=True)
    check_number("class_model", "clip_pct", clip_pct, low=0, high=100, high_open=True)
    check_number("class_model", "start_noise (grey levels rms)", start_noise, low=0)
    try:
        if isinstance(step_factors, (str, bytes, set, frozenset, dict)):    # unordered, or not numbers
            raise TypeError
        down, up = step_factors
    except (TypeError, ValueError):
        raise ValueError(f"class_model: step_factors must be two numbers (down, up), got {step_factors!r}") from None
    down = check_number("class_model", "step_factors[0] (the step's factor after a fall)", down, low=0, high=1,
                        low_open=True, high_open=True)
    up = check_number("class_model", "step_factors[1] (the step's factor after a rise)", up, low=1)
    cls = np.atleast_1d(resolve_classes(net, classes))
    K = net.num_classes
    if cls.ndim != 1 or len(cls) == 0:
        raise ValueError(f"classes must be a non-empty list of classes (indices 0..{K - 1}, wnids or "
                         f"names), got {np.asarray(classes).tolist()}")
    u = grey_level(net)
    score_at = linear_score_layer(net) if score_layer == "auto" else score_layer
    # step control (normalised steps, no regulariser; see the module docstring): a class whose
    # objective fell at a step shortens its step (x STEP_DOWN), else lengthens it (x STEP_UP) up to lr
    regularised = bool(jitter or blur_every or clip_pct)   # the objective is then that of a moved image
    controlled = step_control and step_control_applies(optimiser, jitter, blur_every, clip_pct)
    M = len(cls)
    batch = M if batch_size is None else check_int("class_model", "batch_size", batch_size, 1)
    # The classes go batch_size at a time (the memory of a pass grows with its batch). The start images
    # are drawn batch after batch from one generator (the numbers one draw for all would give), and
    # every batch's jitter comes from the generator's state after all of them, as in one batch.
    starts, after_starts = np.random.default_rng(seed), np.random.default_rng(seed)
    if start_noise:
        for g0 in range(0, M, batch):
            after_starts.standard_normal((min(batch, M - g0),) + tuple(net.input_shape))
    xp = get_array_module(on_net_device(net, np.zeros(1, net.dtype())))
    lo = hi = None
    if clamp:                                   # the input-space values of grey levels 0 and 255
        h, w = net.input_shape[1:]
        lo, hi = (prepare_pixels(net, np.full((h, w, 3), level, np.uint8)) for level in (0, 255))
        lo, hi = xp.minimum(lo, hi), xp.maximum(lo, hi)

    def penalty(img):
        return lam * to_numpy((img * img).sum(axis=(1, 2, 3))) / u ** 2

    results = []                                # per batch: (x, scores, objective, step, falls) on the host
    warned_zero = False
    for g0 in range(0, M, batch):
        part = cls[g0:g0 + batch]
        if progress is not None and batch < M:
            print(f"  classes {g0 + 1}-{g0 + len(part)} of {M}", file=progress, flush=True)
        shape = (len(part),) + tuple(net.input_shape)
        start = (starts.standard_normal(shape) * (start_noise * u) if start_noise else np.zeros(shape))
        shifts = copy.deepcopy(after_starts)    # the jitter
        x = on_net_device(net, start.astype(net.dtype()))
        rows, cols = xp.arange(len(part)), xp.asarray(part)
        onehot = xp.zeros((len(part), K), x.dtype)
        onehot[rows, cols] = 1
        v = xp.zeros_like(x)
        scores, objective = [], []
        step = np.full(len(part), float(lr))        # each class's step, grey levels (rms)
        falls = np.zeros(len(part), np.int64)
        for t in range(steps + 1):
            dy, dx = (shifts.integers(-jitter, jitter + 1, 2) if jitter and t < steps else (0, 0))
            xj = xp.roll(x, (int(dy), int(dx)), axis=(2, 3)) if (dy or dx) else x
            try:
                out, z = _forward(net, xj, score_at, part)
            except NonFiniteInputError:
                if t == 0:
                    raise
                raise _diverged(t, steps, scores[-1], lr, lam, u, optimiser) from None
            s = to_numpy(out[rows, cols])
            ascended = s if z is None else to_numpy(z[rows, cols].mean(axis=(1, 2)))
            scores.append(s)
            objective.append(ascended - penalty(x))
            if controlled and t > 0:
                fell = objective[-1] < objective[-2]
                step = np.where(fell, step * down, np.minimum(step * up, lr))
                falls += fell
            if progress is not None and (t % progress_every == 0 or t == steps):
                print(f"  class model step {t}/{steps}: mean S_c {s.mean():.3f}, "
                      f"mean objective {objective[-1].mean():.3f}", file=progress, flush=True)
            if t == steps:
                break
            if z is None:
                g = net.backward(onehot, rule="gradient", param_grads=False)
            else:                                   # d mean_ij z_c / dI: seed 1/(H W) on channel c
                dz = xp.zeros_like(z)
                dz[rows, cols] = 1.0 / (z.shape[2] * z.shape[3])
                g = backward_from(net, score_at, dz, "gradient")
            if t == 0 and not warned_zero and not bool(xp.any(g)):     # said once, not once a batch
                warned_zero = True
                _warn_zero_gradient(start_noise)
            if dy or dx:
                g = xp.roll(g, (-int(dy), -int(dx)), axis=(2, 3))
            x, v = _ascent_step(x, g, v, step, lr, lam, u, optimiser, momentum)
            if blur_every and (t + 1) % blur_every == 0:
                x = gaussian_blur(x, blur_sigma)
            if clip_pct:
                norm = xp.sqrt((x * x).sum(axis=1, keepdims=True))          # (M, 1, H, W)
                cut = xp.asarray(np.percentile(to_numpy(norm).reshape(len(part), -1), clip_pct, axis=1))
                x = x * (norm >= cut.reshape(-1, 1, 1, 1))
            if clamp:
                x = xp.minimum(xp.maximum(x, lo), hi)
        results.append((to_numpy(x), np.array(scores), np.array(objective), step, falls))
    x_np = np.concatenate([r[0] for r in results])
    scores, objective = (np.concatenate([r[i] for r in results], axis=1) for i in (1, 2))
    step, falls = np.concatenate([r[3] for r in results]), np.concatenate([r[4] for r in results])
    fell = [int(c) for c, first, last in zip(cls, objective[0], objective[-1]) if steps and last < first]
    if fell:
        _warn_objective_fell(fell, regularised, controlled, step, lr, lam, optimiser)
    pixels = to_pixels(net, x_np)
    settings = dict(steps=steps, lr=lr, lam=lam, optimiser=optimiser, momentum=momentum, jitter=jitter,
                    blur_every=blur_every, blur_sigma=blur_sigma, clip_pct=clip_pct, clamp=clamp,
                    score_layer=score_at, seed=seed, start_noise=start_noise, step_control=controlled,
                    step_factors=[down, up] if controlled else None,
                    final_steps=step.tolist() if controlled else None,
                    falls=falls.tolist() if controlled else None, batch_size=batch,
                    grey_level=u, display="per-image 1st..99th percentile stretch, mean added back")
    return ClassModel(x_np, cls, scores, objective, pixels, stretch(pixels, 1, 99), settings)


def _ascent_step(x, dS, v, step, lr, lam, u, optimiser, momentum):
    """One step up J = S_c - lam ||I / u||^2, whose gradient is g = dS/dI - 2 lam I / u^2. "plain":
    I + lr g. "normalised": v = momentum v + g / rms(g), then I + step_c u v, where step_c (a class's
    step, in grey levels u) comes from the step control. x, dS, v (M, C, H, W); step (M,). Returns
    (x, v)."""
    xp = get_array_module(x)
    g = dS - (2 * lam / u ** 2) * x
    if optimiser == "plain":
        return x + lr * g, v
    rms = xp.sqrt((g * g).mean(axis=(1, 2, 3), keepdims=True))
    v = momentum * v + g / xp.maximum(rms, 1e-30)
    return x + xp.asarray((step * u).astype(x.dtype)).reshape(-1, 1, 1, 1) * v, v


def _diverged(t, steps, last_scores, lr, lam, u, optimiser):
    """The error for an image that stopped being finite at step t."""
    # a plain step multiplies the image by 1 - lr 2 lam / u^2 (besides adding lr dS/dI): below -1 it
    # grows without bound
    shrink = lr * 2 * lam / u ** 2
    why = (f": a plain step scales the image by 1 - lr * 2 * lam / u^2 = {1 - shrink:.3g}, which must stay "
           f"above -1 (u = {u:.3g}, one grey level); lower lr or lam"
           if optimiser == "plain" and shrink >= 2 else "; lower lr")
    return ValueError(f"class_model: the ascent diverged at step {t} of {steps} (the image is no "
                      f"longer finite; the scores before it: {last_scores.tolist()}){why}")


def _warn_zero_gradient(start_noise):
    where = "the start image" if start_noise else "the zero image"
    print(f"class_model: warning: the class score's gradient at {where} is exactly 0, so the "
          "ascent cannot leave it (every unit on the way is off there, e.g. a network with zero biases); "
          "the class models will stay blank" + ("" if start_noise else
                                                "; start from noise instead: start_noise=10 "
                                                "(scratchnet classmodel --start-noise 10)"),
          file=sys.stderr)


def _warn_objective_fell(fell, regularised, controlled, step, lr, lam, optimiser):
    if regularised:
        why = ("the regularisers (jitter, blur, clipping) move the image as well as the ascent; the "
               "objective is that of the moved image")
    else:
        lengths = (f" (step control brought the steps down to {', '.join(f'{v:.2g}' for v in step)} grey "
                   "levels: more steps may get past it)" if controlled else "")
        why = (f"the L2 penalty (lam {lam:g}) outweighs this network's score gradient at steps of {lr:g}"
               f"{' grey levels' if optimiser == 'normalised' else ''}{lengths}; try a smaller lam (e.g. "
               "0) or lr")
    print(f"class_model: warning: the objective ended below where it started for class(es) {fell}: {why}",
          file=sys.stderr)


def linear_score_layer(net):
    """The layer before a final ReLU -> global average (SqueezeNet's conv_final), else None.

    SqueezeNet's class score is mean_ij ReLU(z_c[i, j]). At the zero image a class whose map z_c is
    negative everywhere scores exactly 0 with a zero gradient, and ascent would never start. Its
    linear score mean_ij z_c[i, j] equals S_c wherever z_c > 0, and always has a gradient."""
    from ..layers import GlobalAvgPool, ReLU
    names = [n for n, _ in net.layers]
    kinds = [lay for _, lay in net.layers]
    k = len(kinds)
    while k and type(kinds[k - 1]).__name__ in ("Dropout", "Flatten"):
        k -= 1
    if k >= 3 and isinstance(kinds[k - 1], GlobalAvgPool) and isinstance(kinds[k - 2], ReLU):
        return names[k - 3]
    return None


def _forward(net, x, score_at, cls):
    """The network's scores (M, K classes) and, when ``score_at`` names a layer, that layer's output
    (checked to have a channel for each class in ``cls``)."""
    if score_at is None:
        return net.forward(x), None
    z = forward_to(net, x, score_at)       # a pass by hand: backward goes through backward_from
    if z.ndim != 4 or z.shape[1] <= int(cls.max()):
        raise ValueError(f"class_model: the score of class c is the spatial mean of channel c of score_layer "
                         f"{score_at!r}, so its output must be (M, C, H, W) with C > {int(cls.max())}, the "
                         f"largest class asked for; it is {tuple(z.shape)} (score_layer=None ascends the "
                         f"network's output)")
    out = z
    for _, lay in net.layers[layer_index(net, score_at) + 1:]:
        out = lay.forward(out, False)
    return out, z


def objective_value(net, x, classes, lam, score_layer="auto"):
    """J(I) = S(I) - lam ||I/u||^2 for images x (M, C, H, W) and classes (M,) (or one class for all):
    the documented objective (S: the class score, or the linear score of ``score_layer``, as in
    ``class_model``). Returns (M,) NumPy values."""
    check_number("objective_value", "lam", lam, low=0)
    cls = resolve_classes(net, classes)
    if not hasattr(x, "shape") or len(x.shape) != 4 or cls.shape not in ((), (1,), (x.shape[0],)):
        raise ValueError(f"objective_value: expected images (M, C, H, W) and one class for all or one per image "
                         f"(M,), got {getattr(x, 'shape', type(x).__name__)} and classes of shape {cls.shape}")
    cls = np.broadcast_to(cls.reshape(-1), (x.shape[0],))
    u = grey_level(net)
    score_at = linear_score_layer(net) if score_layer == "auto" else score_layer
    x = on_net_device(net, x)
    out, z = _forward(net, x, score_at, cls)
    rows, cols = np.arange(len(x)), cls
    s = to_numpy(out)[rows, cols] if z is None else to_numpy(z)[rows, cols].mean(axis=(1, 2))
    return s - lam * to_numpy((x * x).sum(axis=(1, 2, 3))) / u ** 2
