"""Training: one model by one loop (``loop``: nanoGPT's shape, a reader sees it whole), or
the seeds of one configuration as one vmapped ensemble (``ensemble``), and checkpoints.

Imports: objectives, networks, cases, the time laws; never the theory, the check or a
study.
"""

from mfverify.train.loop import (DTYPES, LR_SCHEDULES, OPTIMIZERS, TrainConfig, TrainResult, build_model, checkpoint,
                                 load_checkpoint, objective_options, optimizer, resolve_device, save_checkpoint, train)

__all__ = ["TrainConfig", "TrainResult", "train", "checkpoint", "save_checkpoint", "load_checkpoint", "resolve_device",
           "build_model", "objective_options", "optimizer", "DTYPES", "OPTIMIZERS", "LR_SCHEDULES"]
