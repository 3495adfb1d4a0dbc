"""Learning-rate schedules: the rate of each epoch (epochs count from 0).

    step : lr0, times 0.1 at each milestone epoch (default: one drop for the last quarter)
           lr(e) = lr0 * gamma ** (number of milestones <= e)
    log  : geometric from lr0 (first epoch) to lr1 (last epoch), like MatConvNet's logspace
           lr(e) = lr0 * (lr1 / lr0) ** (e / (epochs - 1))
    piecewise : given rates from given epochs on, e.g. {1: 0.01, 8: 0.001, 10: 0.01} (epochs counted from 1,
           as printed): how a run that was continued with changed schedules is written as one command
"""
from __future__ import annotations

import collections
import math

from ..checks import check_int, check_number, is_int


class StepSchedule:
    def __init__(self, lr0, epochs, milestones=None, gamma=0.1):
        lr0 = check_number("StepSchedule", "lr0", lr0, low=0, low_open=True)
        epochs = check_int("StepSchedule", "epochs", epochs, 1)
        gamma = check_number("StepSchedule", "gamma (the factor at each milestone)", gamma, low=0, high=1,
                             low_open=True)
        if milestones is None:
            # the last quarter, and at least the last epoch (ceil(0.75 * 3) = 3 would never come)
            milestones = [min(math.ceil(0.75 * epochs), epochs - 1)] if epochs > 1 else []
        self.lr0, self.epochs, self.gamma = lr0, epochs, gamma
        self.milestones = sorted(_milestones(milestones))

    def __call__(self, epoch):
        return self.lr0 * self.gamma ** sum(epoch >= m for m in self.milestones)


class LogSchedule:
    def __init__(self, lr0, lr1, epochs):
        self.lr0 = check_number("LogSchedule", "lr0", lr0, low=0, low_open=True)
        self.lr1 = check_number("LogSchedule", "lr1 (the last epoch's rate, --lr-end)", lr1, low=0, low_open=True)
        self.epochs = check_int("LogSchedule", "epochs", epochs, 1)

    def __call__(self, epoch):
        if self.epochs <= 1:
            return self.lr0
        t = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        return self.lr0 * (self.lr1 / self.lr0) ** t


class PiecewiseSchedule:
    def __init__(self, points):
        """points: {first epoch (counted from 1): lr} or "E:LR" strings; must start at epoch 1."""
        if not isinstance(points, dict):
            parsed = [_parse_point(p) for p in points]
            points = dict(parsed)
            if len(points) < len(parsed):
                twice = min(e for e, n in collections.Counter(e for e, _ in parsed).items() if n > 1)
                raise ValueError(f"piecewise schedule: epoch {twice} is given more than one rate")
        for e, v in points.items():
            check_int("piecewise schedule", "an epoch (counted from 1)", e, 1)
            check_number("piecewise schedule", f"the rate from epoch {e}", v, low=0, low_open=True)
        self.points = {int(e): float(v) for e, v in sorted(points.items())}
        if not self.points or min(self.points) != 1:
            raise ValueError(f"piecewise schedule: the first point must be epoch 1, got {sorted(self.points)}")

    def __call__(self, epoch):
        check_int("piecewise schedule", "epoch (counted from 0)", epoch, 0)
        return [v for e, v in self.points.items() if e <= epoch + 1][-1]


def _parse_point(text):
    try:
        e, v = str(text).split(":")
        return int(e), float(v)
    except ValueError:
        raise ValueError(f"piecewise schedule: expected EPOCH:LR (e.g. 8:0.001), got {text!r}") from None


def _milestones(milestones) -> list[int]:
    """A list of distinct integer epochs, or a ValueError saying so."""
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise ValueError(f"milestones (--milestones) must be a list of epochs, got {milestones!r}")
    milestones = list(milestones)
    bad = [m for m in milestones if not is_int(m)]
    if bad:
        raise ValueError(f"milestones (--milestones) must be whole epochs (counted from 0), got {bad}")
    twice = sorted(m for m, n in collections.Counter(milestones).items() if n > 1)
    if twice:
        raise ValueError(f"milestones (--milestones): epoch {twice[0]} is given more than once; give each "
                         f"milestone once (each drops the rate x0.1)")
    return [int(m) for m in milestones]


def make_schedule(kind, lr0, epochs, lr1=None, milestones=None, points=None):
    """'step', 'log' (lr1 defaults to lr0 / 100) or 'piecewise' (``points``). Mind the two counts:
    a step milestone m counts from 0 (the rate drops from epoch m on, 0-based: milestone 6 of 8 epochs
    leaves the last two), a piecewise point E:LR from 1, as printed (LR from the E-th epoch on). A setting that belongs to
    another kind is an error (it would be ignored without a word), and so is a milestone outside
    1..epochs-1 (epochs count from 0: a drop at 0 or before is no drop, one at epochs or later never comes)."""
    owned = (("step", milestones, "milestones (--milestones)"), ("log", lr1, "lr_end (--lr-end)"),
             ("piecewise", points, "lr_points (--lr-points)"))
    given = [(k, flag) for k, v, flag in owned if v is not None and k != kind]
    if given:
        owner, flag = given[0]
        raise ValueError(f"{flag} belongs to the {owner} schedule (--schedule {owner}), but the schedule is {kind!r}")
    epochs = check_int("make_schedule", "epochs", epochs, 1)
    if kind == "step" and milestones is not None:
        milestones = _milestones(milestones)
    if kind == "step" and milestones:
        bad = [m for m in milestones if not 1 <= m <= epochs - 1]
        if bad and epochs == 1:
            raise ValueError(f"milestones (--milestones) drop the rate from a later epoch on, and a 1-epoch run has "
                             f"none: got {bad} (give none, or more --epochs)")
        if bad:
            raise ValueError(f"milestones (--milestones) are the epochs (counted from 0) from which the rate drops "
                             f"x0.1, so each must be within 1..{epochs - 1} for {epochs} epochs; got {bad}")
    if kind == "piecewise":
        if not points:
            raise ValueError("the piecewise schedule needs its points (--lr-points 1:0.01 8:0.001 ...)")
        schedule = PiecewiseSchedule(points)
        late = [e for e in schedule.points if e > epochs]
        if late:
            raise ValueError(f"lr_points (--lr-points) are the epochs (counted from 1) from which a rate holds, so "
                             f"each must be within 1..{epochs} for {epochs} epochs; got {late}")
        return schedule
    if kind == "step":
        return StepSchedule(lr0, epochs, milestones)
    if kind == "log":
        return LogSchedule(lr0, lr1 if lr1 is not None else lr0 / 100, epochs)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; expected 'step', 'log' or 'piecewise'")
