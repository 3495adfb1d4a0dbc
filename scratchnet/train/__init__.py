"""Training from scratch: SGD with momentum and weight decay, schedules, the loop, checkpoints.

    sgd.py         SGD: v = mu v - lr (g + wd w); w += v   (weights decay, biases do not)
    schedule.py    step (x0.1 at milestones), log-spaced and piecewise (epoch:rate points) learning rates
    trainer.py     Trainer / TrainConfig: batches, validation, metrics.jsonl, checkpoints, Ctrl-C, divergence
    checkpoint.py  the checkpoint file (params, momentum, RNG states, progress), written atomically
    plot.py        the training curves as a PNG (PIL only)
    cli.py         `scratchnet train`
"""
from .schedule import LogSchedule, PiecewiseSchedule, StepSchedule, make_schedule
from .sgd import SGD
from .trainer import TrainConfig, Trainer, TrainingDiverged, evaluate, init_network

__all__ = ["SGD", "StepSchedule", "LogSchedule", "PiecewiseSchedule", "make_schedule", "Trainer", "TrainConfig", "TrainingDiverged",
           "evaluate", "init_network"]
