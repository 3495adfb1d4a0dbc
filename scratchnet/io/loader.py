"""Mini-batches for SGD: shuffle, augment, normalise, and prefetch the next batch in a thread.

    loader = BatchLoader(images, labels, batch_size=128, shuffle=True, seed=0,
                         augment=Augment(pad=4, flip=True, jitter=16), mean=mean, scale=1/64)
    for x, y in loader.epoch_batches(epoch):   # x (B, 3, H, W) float32, y (B,) int64
        ...

Everything random in an epoch comes from (seed, epoch, batch number), so a run resumed at
epoch e sees exactly the batches it would have seen, whatever thread made them.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from scratchnet import kernels
from scratchnet.checks import check_number


@dataclass
class Augment:
    """Training-time augmentation of a uint8 batch (B, H, W, 3); every part switchable.

    pad    : reflect-pad each image by `pad` pixels, then crop a random H x W window (0 = off)
    flip   : mirror left-right with probability 1/2
    jitter : zero a random rectangle with sides 1..jitter pixels (0 = off).  The rectangle is
             zeroed in the normalised input, i.e. it shows the mean image (cutout-like)
    """
    pad: int = 0
    flip: bool = False
    jitter: int = 0

    def __post_init__(self):
        if self.pad < 0 or self.jitter < 0:
            raise ValueError(f"Augment: pad and jitter must be >= 0, got pad={self.pad}, jitter={self.jitter}")

    def draw(self, B: int, rng: np.random.Generator):
        """The random part of crop_flip for B images, as a 3-tuple (oy, ox, flip): oy, ox (B,) int64 window
        offsets in the padded image (0..2*pad; zeros without pad), flip (B,) bool, drawn from rng in
        crop_flip's order."""
        if self.pad:
            oy = rng.integers(0, 2 * self.pad + 1, size=B)
            ox = rng.integers(0, 2 * self.pad + 1, size=B)
        else:
            oy = ox = np.zeros(B, np.int64)
        flip = rng.random(B) < 0.5 if self.flip else np.zeros(B, bool)
        return oy, ox, flip

    def crop_flip(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random crop after reflect-padding, then random flip.  (B, H, W, 3) uint8 -> same shape.
        (The loader fuses this with the layout change and normalisation: kernels/cpu_augment.py.)"""
        B, H, W, _ = batch.shape
        oy, ox, f = self.draw(B, rng)
        if self.pad:
            p = self.pad
            padded = np.pad(batch, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            rows = oy[:, None] + np.arange(H)                       # (B, H)
            cols = ox[:, None] + np.arange(W)                       # (B, W)
            batch = padded[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.flip:
            batch = np.where(f[:, None, None, None], batch[:, :, ::-1], batch)
        return batch

    def jitter_mask(self, B: int, H: int, W: int, rng: np.random.Generator) -> np.ndarray | None:
        """(B, H, W) bool, True inside each image's random rectangle; None when jitter is off."""
        if not self.jitter:
            return None
        h = rng.integers(1, min(self.jitter, H) + 1, size=B)
        w = rng.integers(1, min(self.jitter, W) + 1, size=B)
        y0 = (rng.random(B) * (H - h + 1)).astype(np.int64)
        x0 = (rng.random(B) * (W - w + 1)).astype(np.int64)
        ys = np.arange(H)[None, :, None]
        xs = np.arange(W)[None, None, :]
        return ((ys >= y0[:, None, None]) & (ys < (y0 + h)[:, None, None])
                & (xs >= x0[:, None, None]) & (xs < (x0 + w)[:, None, None]))


class BatchLoader:
    """Batches (x, y) from uint8 images (N, H, W, 3) (an array or a decode_cache memmap).

    x : (B, 3, H, W) float32 = (image - mean) * scale, NCHW, RGB
    y : (B,) int64
    mean     : None, a scalar, per channel (3,), or a mean image (3, H, W) (see mean_image)
    augment  : Augment(...) or None
    drop_last: drop the last batch when it is smaller than batch_size
    prefetch : batches made ahead by a background thread (0 = make them in the caller's thread)
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augment: Augment | None = None, mean=None, scale: float = 1.0, drop_last: bool = False,
                 prefetch: int = 2):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"BatchLoader: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"BatchLoader: expected integer class labels, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        check_number("BatchLoader", "scale", scale, low=0, low_open=True)
        if labels.shape != (len(images),):
            raise ValueError(f"BatchLoader: expected labels ({len(images)},), got {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.augment, self.scale, self.drop_last, self.prefetch = augment, float(scale), drop_last, int(prefetch)
        self.mean = self._mean_chw(mean, images.shape[1], images.shape[2])
        self._mean_hw = np.ascontiguousarray(np.broadcast_to(self.mean, (3,) + images.shape[1:3]), np.float32)
        self.next_epoch = 0  # what iter(loader) runs next

    @staticmethod
    def _mean_chw(mean, H: int, W: int) -> np.ndarray:
        if mean is None:
            return np.zeros((1, 1, 1), np.float32)
        m = np.asarray(mean, dtype=np.float32)
        if m.ndim == 0:
            return m.reshape(1, 1, 1)
        if m.shape == (3,):
            return m.reshape(3, 1, 1)
        if m.shape == (3, H, W):
            return m
        raise ValueError(f"BatchLoader: mean must be a scalar, (3,) or (3, {H}, {W}), got shape {m.shape}")

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The image indices of an epoch, in batch order, (N,) int64."""
        n = len(self.images)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def make_batch(self, epoch: int, b: int, idx: np.ndarray):
        """Batch number b of an epoch from its image indices idx (B,) -> (x, y): crop, flip, layout
        and normalisation in one Numba pass (kernels/cpu_augment.py), then jitter."""
        rng, batch, y = self._pick(epoch, b, idx)
        B, H, W, _ = batch.shape
        aug = self.augment or Augment()
        if aug.pad >= min(H, W):        # a reflection longer than the image: NumPy's repeated reflection
            return self.make_batch_reference(epoch, b, idx)
        oy, ox, flip = aug.draw(B, rng)
        mask = aug.jitter_mask(B, H, W, rng)
        x = np.empty((B, batch.shape[3], H, W), np.float32)
        kernels.cpu_augment.crop_flip_normalise(batch, oy, ox, flip, aug.pad, self._mean_hw, np.float32(self.scale), x)
        if mask is not None:
            x *= ~mask[:, None]                                     # jitter: the rectangle carries no signal
        return x, y

    def make_batch_reference(self, epoch: int, b: int, idx: np.ndarray):
        """make_batch in NumPy steps (Augment.crop_flip, transpose, cast, mean, scale, jitter): the
        reference the fused kernel is tested against, bit for bit."""
        rng, batch, y = self._pick(epoch, b, idx)
        mask = None
        if self.augment is not None:
            batch = self.augment.crop_flip(batch, rng)
            mask = self.augment.jitter_mask(*batch.shape[:3], rng)
        x = batch.transpose(0, 3, 1, 2).astype(np.float32)          # (B, 3, H, W)
        x -= self.mean
        if self.scale != 1.0:
            x *= self.scale
        if mask is not None:
            x *= ~mask[:, None]
        return x, y

    def _pick(self, epoch: int, b: int, idx: np.ndarray):
        """Batch b's generator (seeded by seed, epoch, b) and its images and labels, read in index order."""
        idx = np.sort(idx)              # read a memory-mapped cache front to back
        return np.random.default_rng([self.seed, epoch, b + 1]), self.images[idx], self.labels[idx]

    def _batches(self, epoch: int, start: int = 0):
        order = self.order(epoch)
        for b in range(start, len(self)):
            yield self.make_batch(epoch, b, order[b * self.batch_size:(b + 1) * self.batch_size])

    def epoch_batches(self, epoch: int, start: int = 0):
        """Iterate the batches of `epoch` from batch number `start` (a resumed run skips the ones it
        has done); the same (seed, epoch) always gives the same batches.

        With prefetch > 0 a daemon thread makes batches ahead into a queue of that depth; it
        stops when the epoch ends, when the loop breaks (the generator is closed), or on error
        (the error is raised here).
        """
        if self.prefetch <= 0:
            yield from self._batches(epoch, start)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for item in self._batches(epoch, start):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    if stop.is_set():
                        return
                item = done
            except BaseException as e:  # handed to the consumer
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass

        thread = threading.Thread(target=produce, name=f"BatchLoader-prefetch-epoch{epoch}", daemon=True)
        self._thread = thread
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def __iter__(self):
        """One epoch: epoch `next_epoch` (0 at first), which then advances."""
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch_batches(epoch)
