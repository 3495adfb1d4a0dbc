"""The training loop: SGD on mini-batches, validation each epoch, metrics, curves, checkpoints.

    trainer = Trainer(net, (train_images, train_labels), (val_images, val_labels), out="runs/x",
                      config=TrainConfig(epochs=20, lr=0.01))
    summary = trainer.fit()              # or fit(resume=True) to continue from out/checkpoint.npz

Images are uint8 (N, H, W, 3) RGB arrays (a decode_cache memmap); labels (N,) int64.  The network
sees x = (image - mean image) * scale, NCHW float32, where the mean image is the per-pixel mean of
the training images; both are stored in the network (net.mean_image, net.preprocess) so a saved
model classifies raw images the way it was trained.

One step:   scores = net.forward(x, train=True)             x (B, 3, H, W) -> (B, K)
            loss, dscores = softmax_cross_entropy(scores, y)
            net.backward(dscores, input_grad=False)         fills layer.grads
            optimiser.step()                                v = mu v - lr (g + wd w);  w += v

What the run writes under ``out``:
    metrics.jsonl    one JSON object a line: {"kind": "step", ...} every log_every steps,
                     {"kind": "epoch", ...} after each epoch (train loss/top-1, val loss/top-1/top-5)
    curves.png       the training curves (redrawn each epoch)
    checkpoint.npz   the state after the last completed epoch, or after the last completed step
                     when the run was interrupted (Ctrl-C, SIGTERM); see checkpoint.py
    model.npz        the final network (Network.save), loadable with scratchnet.models.load
    config.json      the run's configuration

Determinism: every random choice comes from the seed (initialisation, batch order, augmentation,
dropout), so the same seed gives the same parameters, and a resumed run continues exactly as an
uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backend import numerics, to_device, to_numpy
from ..checks import check_int, check_number
from ..io.datasets import mean_image
from ..io.loader import Augment, BatchLoader
from ..layers import Conv2d, Linear, softmax_cross_entropy
from ..progress import Progress
from ..tempfiles import atomic_write_text
from .checkpoint import dropout_states, load_checkpoint, read_meta, read_state, save_checkpoint, set_dropout_states
from .schedule import make_schedule
from .sgd import SGD


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainConfig:
    """Everything that decides a run (saved to config.json and the checkpoint)."""
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01
    schedule: str = "step"           # "step" (x0.1 at milestones), "log" (geometric lr -> lr_end),
                                     # "piecewise" (lr_points)
    milestones: list | None = None   # step: epochs where lr drops; default the last quarter
    lr_end: float | None = None      # log: the last epoch's rate (default lr / 100)
    lr_points: list | None = None    # piecewise: ["1:0.01", "8:0.001", ...] (first epoch counted from 1 : rate)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    crop_pad: int = 4                # random crop after reflect-padding by this many pixels (0 = off)
    flip: bool = True                # random horizontal flips
    jitter: int = 0                  # zero a random rectangle of up to jitter x jitter pixels (0 = off)
    scale: float = 1 / 64            # x = (image - mean image) * scale
    log_every: int = 50              # steps between "step" lines in metrics.jsonl
    val_batch_size: int = 256
    prefetch: int = 2
    extra: dict = field(default_factory=dict)   # free-form notes (data, architecture) for config.json


def init_network(net, scheme="he", std=0.01, seed=0):
    """Re-initialise every Conv2d / Linear: 'he' = N(0, 2 / fan_in), last layer N(0, 0.01^2) (what
    paper_net already does); 'gaussian' = N(0, std^2) everywhere.  Biases zero. Any other layer with an
    ``init_params(rng)`` method (one of your own) is initialised by it, with the same generator."""
    if scheme not in ("he", "gaussian"):
        raise ValueError(f"init scheme must be 'he' or 'gaussian', got {scheme!r}")
    if scheme == "gaussian":                     # std 0: all-zero weights, whose gradients are all zero too
        check_number("init_network", "std (of the gaussian initialisation)", std, low=0, low_open=True)
    rng = np.random.default_rng(seed)
    layers = [(p, l) for p, l in net.named_layers() if isinstance(l, (Conv2d, Linear))]
    for i, (_, layer) in enumerate(layers):
        last = i == len(layers) - 1
        if scheme == "gaussian" or last:
            layer.init_params(rng, "gaussian", std=std if scheme == "gaussian" else 0.01)
        else:
            layer.init_params(rng, "he")
    for _, layer in net.named_layers():
        if not isinstance(layer, (Conv2d, Linear)) and callable(getattr(layer, "init_params", None)):
            layer.init_params(rng)
    return net


def evaluate(net, images, labels, mean, scale, batch_size=256, device="cpu"):
    """Top-1 / top-5 accuracy and mean loss of ``net`` on uint8 images (N, H, W, 3) with labels (N,)
    int; each batch has ``mean`` (3, H, W) subtracted and is multiplied by ``scale``; no augmentation.
    top5 is None for a network of 5 classes or fewer, where every image would count."""
    loader = BatchLoader(images, labels, batch_size, shuffle=False, mean=mean, scale=scale, prefetch=1)
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    for x, y in loader.epoch_batches(0):
        scores = net.forward(to_device(x, device), train=False)
        loss, _ = softmax_cross_entropy(scores, to_device(y, device))
        s = to_numpy(scores)
        k = min(5, s.shape[1])
        best = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top1 += int((s.argmax(axis=1) == y).sum())
        top5 += int((best == y[:, None]).any(axis=1).sum())
        loss_sum += loss * len(y)
        n += len(y)
    return dict(loss=loss_sum / n, top1=top1 / n, top5=top5 / n if net.num_classes > 5 else None)


def _check_split(what, split, net):
    """(images uint8 (N, H, W, 3), labels integer (N,)) that fit net, or a ValueError naming the problem."""
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(f"{what} data must be a pair (images, labels), got {type(split).__name__}"
                         + (f" of length {len(split)}" if isinstance(split, (tuple, list)) else ""))
    images, labels = split
    H, W = (int(v) for v in net.input_shape[1:])
    if not hasattr(images, "shape") or images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        got = (f"shape {tuple(images.shape)} dtype {images.dtype}" if hasattr(images, "shape")
               else type(images).__name__)
        raise ValueError(f"{what} images must be a uint8 array (N, H, W, 3) of RGB photos, got {got}")
    if tuple(images.shape[1:3]) != (H, W):
        raise ValueError(f"{what} images are {images.shape[1]}x{images.shape[2]}, the network expects {H}x{W}")
    if len(images) == 0:
        raise ValueError(f"{what} data is empty: expected at least one image")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{what} labels must be integer class indices (N,), got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"{what} labels: {len(labels)} for {len(images)} images")
    K = net.num_classes
    if labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"{what} labels span {labels.min()}..{labels.max()}, the network has {K} classes")
    return images, labels


def check_config(c):
    """A ValueError for settings that would train nothing or nonsense, before any work: the Trainer calls
    it first, and `scratchnet train` before it decodes any image (argparse checks the flags' types).
    Returns the learning-rate schedule the settings make."""
    for name, low in (("epochs", 1), ("batch_size", 1), ("val_batch_size", 1), ("log_every", 1),
                      ("crop_pad", 0), ("jitter", 0), ("seed", 0)):
        check_int("TrainConfig", name, getattr(c, name), low)
    check_number("TrainConfig", "lr", c.lr, low=0, low_open=True)
    check_number("TrainConfig", "momentum", c.momentum, low=0, high=1, high_open=True)
    check_number("TrainConfig", "weight_decay", c.weight_decay, low=0)
    check_number("TrainConfig", "scale", c.scale, low=0, low_open=True)
    return make_schedule(c.schedule, c.lr, c.epochs, c.lr_end, c.milestones, c.lr_points)    # its own checks


class RunFolderBusy(ValueError):
    """Another process trains in this run folder."""


_held, _held_lock = {}, threading.Lock()     # run folder -> [owning thread, depth, open lock file]


@contextmanager
def run_folder_lock(out):
    """Hold ``out/.lock`` (an exclusive flock) while a run trains there. Two runs in one folder at once
    (a second `scratchnet train --resume` in another terminal, two new runs started together, both past
    check_run_folder before either wrote a checkpoint) each exited 0, leaving the weights of one run
    beside the config.json of the other and a metrics.jsonl with both runs' epochs. The second is now
    a RunFolderBusy naming the first's pid; so is a second thread of one process. The kernel drops the
    lock when its process ends, however it ends (a kill -9 leaves no stale lock). Re-entrant in one
    thread (the command line takes it before checking the folder, then fit). A folder made here for a
    run that then failed before writing anything is removed again. Where locks cannot be had (not
    POSIX; a file system without them) the run goes on unlocked, with a warning there."""
    out = Path(out)
    key = str(out.resolve())
    me = threading.get_ident()
    with _held_lock:
        entry = _held.get(key)
        if entry is not None:
            if entry[0] != me:
                raise RunFolderBusy(f"{out} is in use by another training run (another thread of this process): "
                                    "wait for it to end, or choose another output folder")
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _held_lock:
                entry[1] -= 1
        return
    try:
        import fcntl
    except ImportError:
        fcntl = None
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fh = _lock_file(out / ".lock", fcntl) if fcntl is not None else None
    with _held_lock:
        if key in _held:                    # another thread of this process got there first
            if fh is not None:
                fh.close()
            raise RunFolderBusy(f"{out} is in use by another training run (another thread of this process): "
                                "wait for it to end, or choose another output folder")
        _held[key] = entry = [me, 1, fh]
    try:
        yield
    finally:
        with _held_lock:
            del _held[key]
        try:
            if made and fh is not None and [p.name for p in out.iterdir()] == [".lock"]:
                (out / ".lock").unlink()    # nothing else written: leave no empty run folder behind
                out.rmdir()
        except OSError:                     # another run came in meanwhile: its folder now
            pass
        if fh is not None:
            fh.close()                      # closing the file releases the lock


def _lock_file(lock, fcntl):
    """The open ``lock`` file, flocked by this process: RunFolderBusy when another process holds it.
    Checks, once locked, that the file is still the one of that name (a run that ended may have just
    removed it; locking the removed one would let a third process lock a new one beside us); None,
    with a warning, where the file system has no locks."""
    for _ in range(10):
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:             # EAGAIN / EWOULDBLOCK: another process holds it
            fh.seek(0)
            who = fh.read().strip()
            fh.close()
            raise RunFolderBusy(f"{lock.parent} is in use by another training run ({who or 'another process'}): "
                                "wait for it to end, or choose another output folder") from None
        except OSError as e:                # ENOLCK, EOPNOTSUPP: no locks on this file system
            fh.close()
            print(f"train: warning: cannot lock {lock} ({e.strerror or e}); training without the lock that "
                  "keeps a second run out of this folder", file=sys.stderr)
            return None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            fh.flush()
            return fh
        fh.close()                          # removed under us: lock the new one
    raise RunFolderBusy(f"{lock.parent}: its lock file keeps changing (other runs starting and ending?)")


def check_run_folder(out, config: TrainConfig, resume: bool, class_names=None):
    """What fit(resume) would refuse about the run folder ``out``, checked on its own (the command line
    calls this before decoding any image): no checkpoint to resume, a checkpoint a new run would
    overwrite, a batch size changed in the middle of an epoch (the checkpoint counts batches, so the
    rest of that epoch would skip or repeat images), or other classes than the checkpoint's (each
    output unit would be trained on as another class)."""
    path = Path(out) / "checkpoint.npz"
    if not resume:
        if path.is_file():
            raise ValueError(f"{out} already holds a checkpoint; continue that run (--resume; fit(resume=True)) "
                             "or choose another output folder")
        return
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path} to continue from")
    state = read_state(path)
    had = read_meta(path).get("class_names")
    if class_names is not None and had is not None and list(had) != list(class_names):
        gone = [c for c in had if c not in class_names]
        new = [c for c in class_names if c not in had]
        what = (f"{len(had)} classes then, {len(class_names)} now" + (f"; not now: {gone[:3]}" if gone else "")
                + (f"; new: {new[:3]}" if new else "") + ("" if gone or new else "; the same, in another order"))
        raise ValueError(f"{path} was trained on other classes than these ({what}): its output units would "
                         "be trained on as other classes; resume with the run's data, or start a new run")
    saved = state.get("config", {}).get("batch_size")
    if state.get("batch", 0) > 0 and saved is not None and saved != config.batch_size:
        raise ValueError(f"{path} was saved in the middle of epoch {state['epoch'] + 1}, after batch "
                         f"{state['batch']} of {saved} images: a batch size of {config.batch_size} would skip or "
                         f"repeat images of that epoch; resume with batch size {saved} (a new one is fine from "
                         "an epoch's start)")


class Trainer:
    """SGD training of ``net`` on (images, labels); see the module docstring.

    The labels are indices; the saved network knows its classes by name only if told: set
    ``net.class_names`` (and ``net.class_wnids``, for wnid lookups) before training, as
    ``scratchnet train`` does from the data set's folders."""

    def __init__(self, net, train, val, out, config: TrainConfig | None = None, device="cpu",
                 callbacks=(), progress=True):
        device = device.lower() if isinstance(device, str) else device
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        there = net.device()
        if there is not None and there != device:       # found here, not at the first step after decoding
            raise ValueError(f"the network's parameters are on the {there} but the trainer was asked for "
                             f"device={device!r}: call net.to({device!r}) first")
        self.net, self.config, self.device = net, config or TrainConfig(), device
        c = self.config
        self.schedule = check_config(c)
        # both splits are checked here, before any work: a bad validation set found after the first
        # epoch would cost that epoch
        self.train_images, self.train_labels = _check_split("training", train, net)
        self.val = None if val is None else _check_split("validation", val, net)
        self.out = Path(out)
        self.callbacks = list(callbacks)
        self.progress = Progress(enabled=progress)
        self.mean = mean_image(self.train_images)                      # (3, H, W) float32, pixel units
        net.mean_image = self.mean
        size = int(net.input_shape[1])            # see scratchnet.models.preprocess for the keys
        net.preprocess = dict(resize=size, crop=size, channel_order="RGB", mean_image=True, scale=float(c.scale))
        augment = Augment(pad=c.crop_pad, flip=c.flip, jitter=c.jitter)
        self.loader = BatchLoader(self.train_images, self.train_labels, c.batch_size, shuffle=True, seed=c.seed,
                                  augment=augment, mean=self.mean, scale=c.scale, prefetch=c.prefetch)
        self.optimiser = SGD(net, c.lr, c.momentum, c.weight_decay)
        # seconds / images: of all training steps; warmup_*: of the first step of each (re)start, which
        # also compiles the Numba kernels on a new machine (or the CUDA ones), left out of the img/s
        self.state = dict(epoch=0, batch=0, step=0, seconds=0.0, images=0, warmup_seconds=0.0, warmup_images=0,
                          sums=dict(loss=0.0, correct=0, seen=0), history=[])
        self._stop_requested = self._stop_now = False
        self._saved_at = None               # (epoch, batch, step) of the checkpoint on disk
        self._consistent = True             # False inside _uninterrupted (a parameter update and its bookkeeping)
        self._step_dropout = None           # the dropout generators' states at the start of the step in flight

    # -- paths ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return self.out / "checkpoint.npz"

    @property
    def metrics_path(self):
        return self.out / "metrics.jsonl"

    # -- the loop ------------------------------------------------------------------------
    def fit(self, resume=False):
        """Train to config.epochs; returns the summary dict (also the CLI's JSON line). The run folder
        is locked meanwhile (run_folder_lock): a second fit or `scratchnet train` on it is refused."""
        with run_folder_lock(self.out):
            return self._fit(resume)

    def _fit(self, resume):
        check_run_folder(self.out, self.config, resume, self.net.class_names)
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.state = load_checkpoint(self.checkpoint_path, self.net, self.optimiser)
            self._saved_at = (self.state["epoch"], self.state["batch"], self.state["step"])
            self._warn_config_changes(self.state.get("config", {}))
            self._note_other_arithmetic(self.state.get("numerics"))
            self._trim_metrics(self.state["step"])
            print(f"train: resumed from {self.checkpoint_path} at {_position(self.state)}", file=sys.stderr)
            if self.state["epoch"] >= self.config.epochs:
                print(f"train: the run already has its {self.state['epoch']} epochs (--epochs "
                      f"{self.config.epochs}); nothing to train: give a larger --epochs to go on", file=sys.stderr)
        else:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
        atomic_write_text(self.out / "config.json", json.dumps(asdict(self.config), indent=2) + "\n")

        restore = self._install_sigint()
        try:
            self._run()
        except KeyboardInterrupt:
            if self._consistent:
                if self._step_dropout is not None:      # stopped inside a step's forward or backward: its
                    set_dropout_states(self.net, self._step_dropout)   # masks are drawn again on resume
                self._consistent = False        # a further Ctrl-C waits for this checkpoint (else the
                self._save()                    # summary printed would be of a checkpoint not written)
                self._consistent = True
                print(f"\ntrain: interrupted; checkpoint at {_position(self.state)} written to "
                      f"{self.checkpoint_path}; continue with --resume", file=sys.stderr)
            else:
                print(f"\ntrain: interrupted during a parameter update; {self.checkpoint_path} keeps the "
                      f"previous checkpoint", file=sys.stderr)
            raise
        finally:
            restore()
        model_path = self.net.save(self.out / "model.npz")
        return self.summary(model_path)

    def _run(self):
        c, st, net, opt = self.config, self.state, self.net, self.optimiser
        steps_per_epoch = len(self.loader)
        warm = True                                             # this process's first step is to come
        while st["epoch"] < c.epochs:
            epoch = st["epoch"]
            opt.lr = self.schedule(epoch)
            t_epoch = time.time()
            self._epoch_start = _counts(st)     # the rate shown is this epoch's, since (re)start
            # the losses since the last logged step, kept by a checkpoint so that a resumed run logs the
            # same averages as one that never stopped
            window = st.get("window", []) if st["batch"] else []
            st["window"] = window
            for x, y in self.loader.epoch_batches(epoch, start=st["batch"]):
                t0 = time.time()
                self._step_dropout = dropout_states(net)      # before this step draws its masks
                scores = net.forward(to_device(x, self.device), train=True)
                labels = to_device(y, self.device)
                loss, dscores = softmax_cross_entropy(scores, labels)
                if not math.isfinite(loss):
                    self._diverged(loss, epoch)
                # read now (one number), while a GPU waits anyway for the loss; backward and update then
                # run on it while this thread fetches the next batch
                correct = int((scores.argmax(axis=1) == labels).sum())
                net.backward(dscores, param_grads=True, input_grad=False)
                with self._uninterrupted():     # the update, the state and metrics.jsonl change together
                    opt.step()
                    self._count_step(loss, correct, len(y), time.time() - t0, warm, window, epoch, steps_per_epoch)
                warm = False
                self._show_progress(epoch, steps_per_epoch)
                for cb in self.callbacks:
                    cb(self, dict(epoch=epoch, batch=st["batch"], step=st["step"], loss=loss))
                if self._stop_requested:
                    raise Stopped(self._stop_requested)
            self._end_epoch(epoch, time.time() - t_epoch)

    def _count_step(self, loss, correct, n, dt, warm, window, epoch, steps_per_epoch):
        """A step's record in the state (called with the update, uninterrupted): the epoch's sums, the
        step and image counts, its seconds (also as warm-up: a (re)start's first step), and every
        log_every steps a "step" line of the mean loss since the last one in metrics.jsonl."""
        c, st = self.config, self.state
        s = st["sums"]
        s["loss"] += loss * n
        s["correct"] += correct
        s["seen"] += n
        st["batch"] += 1
        st["step"] += 1
        st["images"] += n
        st["seconds"] += dt
        if warm:
            st["warmup_images"] = st.get("warmup_images", 0) + n
            st["warmup_seconds"] = st.get("warmup_seconds", 0.0) + dt
        self._step_dropout = None
        window.append(float(loss))
        if st["step"] % c.log_every == 0:
            self._log(dict(kind="step", step=st["step"], epoch=epoch + st["batch"] / steps_per_epoch,
                           lr=self.optimiser.lr, loss=float(np.mean(window))))
            window.clear()

    def _show_progress(self, epoch, steps_per_epoch):
        c, st = self.config, self.state
        s = st["sums"]
        ips = _rate(st, self._epoch_start, warm_too=True)
        self.progress.update(
            f"epoch {epoch + 1}/{c.epochs} {st['batch']}/{steps_per_epoch} loss {s['loss'] / s['seen']:.3f} "
            f"acc {100 * s['correct'] / s['seen']:.1f}% lr {self.optimiser.lr:.2g} {ips:.0f} img/s "
            f"eta {_eta((steps_per_epoch - st['batch']) * c.batch_size / max(ips, 1e-9))}")

    def _end_epoch(self, epoch, wall):
        c, st = self.config, self.state
        s = st["sums"]
        row = dict(kind="epoch", epoch=epoch + 1, step=st["step"], lr=self.optimiser.lr,
                   train_loss=s["loss"] / max(s["seen"], 1), train_top1=s["correct"] / max(s["seen"], 1))
        if self.val is not None:
            row.update({f"val_{k}": v for k, v in
                        evaluate(self.net, *self.val, self.mean, c.scale, c.val_batch_size, self.device).items()})
        # seconds: all training steps so far; wall_seconds: this epoch's, evaluation included;
        # images_per_s: the whole run's rate; epoch_images_per_s: this epoch's (since a resume, if any);
        # both without the first step of each (re)start (warm-up: compiling, first touches of memory),
        # None when that step was all there was
        row.update(seconds=st["seconds"], wall_seconds=wall, images_per_s=_rate(st),
                   epoch_images_per_s=_rate(st, getattr(self, "_epoch_start", None)))
        with self._uninterrupted():     # the epoch's row goes into the state and metrics.jsonl together
            st["history"].append(row)
            st["epoch"], st["batch"], st["sums"] = epoch + 1, 0, dict(loss=0.0, correct=0, seen=0)
            self._log(row)
        self._save()
        from .plot import plot_metrics
        plot_metrics(self.metrics_path, self.out / "curves.png")
        val = (f" val top-1 {100 * row['val_top1']:.1f}%" if "val_top1" in row else "") + (
            f" top-5 {100 * row['val_top5']:.1f}%" if row.get("val_top5") is not None else "")
        self.progress.done(f"epoch {epoch + 1}/{c.epochs}: train loss {row['train_loss']:.3f} "
                           f"top-1 {100 * row['train_top1']:.1f}%{val} ({wall:.0f} s)")

    def _diverged(self, loss, epoch):
        st = self.state
        self._log(dict(kind="diverged", step=st["step"], epoch=epoch, loss=str(loss)))
        saved = self._saved_at
        where = (f"{self.checkpoint_path} (after epoch {saved[0]}, batch {saved[1]}, step {saved[2]})"
                 if saved else "no checkpoint yet")
        raise TrainingDiverged(
            f"training diverged: the loss became {loss} at step {st['step'] + 1} (epoch {epoch + 1}, batch "
            f"{st['batch'] + 1}) with learning rate {self.optimiser.lr:g}; the last good checkpoint is kept: "
            f"{where}. Try a smaller learning rate (--lr)" + self._decay_hint() + self._init_hint() + ".")

    def _init_hint(self):
        """Gaussian weights of a large std make the first scores huge: the loss overflows at once."""
        extra = self.config.extra or {}
        std = extra.get("init_std")
        return (f", or a smaller initial std (--init-std {std:g} with --init gaussian)"
                if extra.get("init") == "gaussian" and std is not None and std > 0.01 else "")

    def _decay_hint(self):
        """Weight decay shrinks every weight by lr * weight_decay a step: near 1 or more, it alone diverges."""
        opt = self.optimiser
        shrink = opt.lr * opt.weight_decay
        return (f" or a smaller weight decay (--weight-decay; lr x weight decay = {shrink:g} a step)"
                if shrink >= 0.1 else "")

    # -- helpers ---------------------------------------------------------------------------
    def _save(self):
        try:
            save_checkpoint(self.checkpoint_path, self.net, self.optimiser,
                            dict(self.state, config=asdict(self.config), numerics=numerics(self.device)))
        except OSError as e:                # a full disk: say what is kept and how to go on
            e_, b_, s_ = self._saved_at if self._saved_at else (None, None, None)
            kept = (f"{self.checkpoint_path} keeps the run at {_position(dict(epoch=e_, batch=b_, step=s_))}: "
                    "make room and continue with --resume" if self._saved_at else "no checkpoint was written yet")
            raise OSError(f"{e}; {kept}") from None
        self._saved_at = (self.state["epoch"], self.state["batch"], self.state["step"])

    def _log(self, row):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _trim_metrics(self, step):
        """Drop metric lines written after ``step`` (by a run that went on past its last checkpoint),
        and a line cut short by a crash (with a warning); the file is rewritten atomically."""
        if not self.metrics_path.is_file():
            return
        keep, torn = [], 0
        for ln in self.metrics_path.read_text().splitlines():
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:
                torn += 1
                continue
            if row.get("step", 0) <= step and row.get("kind") != "diverged":
                keep.append(ln)
        if torn:
            print(f"train: warning: dropped {torn} unreadable line(s) of {self.metrics_path} (a write cut "
                  f"short by the interruption?)", file=sys.stderr)
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in keep))

    def _note_other_arithmetic(self, then):
        """A resume computing with other BLAS kernels, threads or device than the checkpoint's run (its
        backend.numerics, recorded since 4 December 2026) goes on from the same weights and state, but
        rounds its float32 sums otherwise: say so, as "--resume continues exactly" holds only for the same."""
        now = numerics(self.device)
        if isinstance(then, str) and then != now:
            print(f"train: note: the checkpoint's run computed with {then}, this one with {now}: it goes on "
                  f"from the same weights, but its float32 sums round otherwise, so its results will not be "
                  f"the bits of a run straight through (README: Reproducibility)", file=sys.stderr)

    def _warn_config_changes(self, saved):
        """One line naming each setting that differs from the checkpoint's, except those without effect
        on a resumed run (the initialisation; lr under the piecewise schedule, whose rates are its points)."""
        now = asdict(self.config)
        quiet = {"init", "init_std"} | ({"lr"} if now.get("schedule") == "piecewise" else set())
        diff = {k: (saved.get(k), now[k]) for k in now if k != "extra" and k not in quiet and saved.get(k) != now[k]}
        old_extra, new_extra = saved.get("extra") or {}, now.get("extra") or {}
        diff.update({k: (old_extra.get(k), new_extra.get(k)) for k in set(old_extra) | set(new_extra)
                     if k not in quiet and old_extra.get(k) != new_extra.get(k)})   # the data, its classes, ...
        if diff:
            print(f"train: warning: resuming with settings that differ from the checkpoint's "
                  f"(saved, now): {diff}", file=sys.stderr)

    @contextmanager
    def _uninterrupted(self):
        """A block that changes the parameters, the state and metrics.jsonl: a second Ctrl-C (or SIGTERM)
        that lands inside it stops the run as soon as the block is done, so the checkpoint written then
        matches the metrics file (stopped between them, a resumed run missed or repeated a metrics line,
        or averaged its next logged loss over another window). ``_consistent`` is False inside."""
        self._consistent = False
        yield
        self._consistent = True             # not on an exception: the parameters may be half updated
        if self._stop_now:
            raise Stopped(self._stop_now)

    def _install_sigint(self):
        """First Ctrl-C (or SIGTERM, as `timeout` and `kill` send): finish the current step, then stop
        with a checkpoint; a second: stop at once (or, inside a parameter update and its bookkeeping, as
        soon as that is done: see ``_uninterrupted``)."""
        self._stop_requested = self._stop_now = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in signals}

        def handler(signum, frame):
            if self._stop_requested:
                if not self._consistent:        # inside _uninterrupted: stop when it ends
                    self._stop_now = signum
                    return
                raise Stopped(signum)
            self._stop_requested = signum
            print(f"\ntrain: {signal.Signals(signum).name}: stopping after this step (again to stop at once)",
                  file=sys.stderr)

        for s in signals:
            signal.signal(s, handler)

        def restore():
            for s, h in previous.items():
                signal.signal(s, h)
        return restore

    def summary(self, model_path):
        st = self.state
        last = st["history"][-1] if st["history"] else {}
        return dict(epochs=st["epoch"], steps=st["step"], val_top1=last.get("val_top1"), val_top5=last.get("val_top5"),
                    train_loss=last.get("train_loss"), seconds=round(st["seconds"], 1),
                    warmup_seconds=round(st.get("warmup_seconds", 0.0), 2),
                    images_per_s=_round(_rate(st), 1), device=self.device, model=str(model_path),
                    out=str(self.out))


class Stopped(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT or SIGTERM): ``signum`` says which, so that the command exits
    with 128 + signum as a shell does (130 for Ctrl-C, 143 for `kill` and `timeout`)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    def __reduce__(self):                   # picklable (a fit in a worker process sends it back)
        return Stopped, (self.signum,)


def _round(v, digits):
    return None if v is None else round(v, digits)


def _counts(st):
    """(images, seconds, warm-up images, warm-up seconds) of the training steps so far."""
    return st["images"], st["seconds"], st.get("warmup_images", 0), st.get("warmup_seconds", 0.0)


def _rate(st, since=None, warm_too=False):
    """Images per second of the training steps since ``since`` (a ``_counts``; None: from the start), the
    warm-up steps left out; None if only warm-up steps ran since, unless ``warm_too`` (then theirs)."""
    images, seconds, warm_images, warm_seconds = (a - b for a, b in zip(_counts(st), since or (0, 0.0, 0, 0.0)))
    if images > warm_images:
        images, seconds = images - warm_images, seconds - warm_seconds
    elif not warm_too:
        return None
    return images / max(seconds, 1e-9)


def _position(state):
    """Where a run stands, in the progress lines' numbering (epochs from 1)."""
    e, b, s = state["epoch"], state["batch"], state["step"]
    return (f"step {s}, epoch {e + 1} after {b} of its batches" if b else
            f"step {s}, the start of epoch {e + 1}")


def _eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
