"""Learning-rate schedules: the rate of each epoch (epochs count from 0).

    step : lr0, times 0.1 at each milestone epoch (default: one drop for the last quarter)
           lr(e) = lr0 * gamma ** (number of milestones <= e)
    log  : geometric from lr0 (first epoch) to lr1 (last epoch), like MatConvNet's logspace
           lr(e) = lr0 * (lr1 / lr0) ** (e / (epochs - 1))
"""
from __future__ import annotations

import math


class StepSchedule:
    def __init__(self, lr0, epochs, milestones=None, gamma=0.1):
        if lr0 <= 0:
            raise ValueError(f"StepSchedule: lr0 must be > 0, got {lr0}")
        if milestones is None:
            milestones = [math.ceil(0.75 * epochs)] if epochs > 1 else []
        self.lr0, self.epochs, self.gamma = float(lr0), int(epochs), float(gamma)
        self.milestones = sorted(int(m) for m in milestones)

    def __call__(self, epoch):
        return self.lr0 * self.gamma ** sum(epoch >= m for m in self.milestones)

    def describe(self):
        return dict(kind="step", lr0=self.lr0, milestones=self.milestones, gamma=self.gamma)


class LogSchedule:
    def __init__(self, lr0, lr1, epochs):
        if lr0 <= 0 or lr1 <= 0:
            raise ValueError(f"LogSchedule: lr0 and lr1 must be > 0, got {lr0}, {lr1}")
        self.lr0, self.lr1, self.epochs = float(lr0), float(lr1), int(epochs)

    def __call__(self, epoch):
        if self.epochs <= 1:
            return self.lr0
        t = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        return self.lr0 * (self.lr1 / self.lr0) ** t

    def describe(self):
        return dict(kind="log", lr0=self.lr0, lr1=self.lr1)


def make_schedule(kind, lr0, epochs, lr1=None, milestones=None):
    """'step' or 'log'; for 'log' lr1 defaults to lr0 / 100."""
    if kind == "step":
        return StepSchedule(lr0, epochs, milestones)
    if kind == "log":
        return LogSchedule(lr0, lr1 if lr1 is not None else lr0 / 100, epochs)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; expected 'step' or 'log'")
