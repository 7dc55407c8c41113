"""The optimizer: an optax transformation and its learning-rate schedule, with the parameter groups
of fine-tuning (d2l 14.2): a faster final classifier, or a frozen backbone.
"""
from __future__ import annotations

import functools
from typing import Sequence

import optax
from flax import traverse_util

from flaxcnn.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
LR_SCHEDULES = ("constant", "cosine")
FREEZE = ("none", "backbone")  # fine-tuning: train everything, or only the final classifier


def create_optimizer(*, optimizer: str, learning_rate: float, momentum: float = 0.9,
                     weight_decay: float = 0.0, lr_schedule: str = "constant",
                     warmup_epochs: float = 0.0, num_epochs: int = 1, steps_per_epoch: int = 1,
                     head_lr_multiplier: float = 1.0, freeze: str = "none",
                     head_paths: Sequence[str] = ()):
    """Returns `(tx, schedule)`: an optax transformation and its step -> learning-rate function.

    Fine-tuning (d2l 14.2) splits the params in two groups, the final classifier at `head_paths`
    (the registry's `models.head_paths(name)`) and the backbone: the head trains with
    `head_lr_multiplier` times the schedule's learning rate, and `freeze="backbone"` leaves the
    backbone's params unchanged (`optax.set_to_zero`). Each group gets its own copy of the same
    optimizer (`optax.multi_transform`), so both options compose with every optimizer and schedule;
    `schedule` stays the backbone's. Check the options first with `check_finetune_options`.
    """
    if lr_schedule == "constant":
        schedule = optax.constant_schedule(learning_rate)
    elif lr_schedule == "cosine":
        total = max(1, int(num_epochs * steps_per_epoch))
        warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=learning_rate, warmup_steps=warmup, decay_steps=total)
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if freeze not in FREEZE:
        raise ValueError(f"unknown freeze {freeze!r}; use one of {', '.join(FREEZE)}")

    def make(rate):
        return _optimizer(optimizer, rate, momentum=momentum, weight_decay=weight_decay)

    if head_lr_multiplier == 1.0 and freeze == "none":
        return make(schedule), schedule
    groups = {"head": make(lambda step: schedule(step) * head_lr_multiplier),
              "backbone": optax.set_to_zero() if freeze == "backbone" else make(schedule)}
    return optax.multi_transform(groups, functools.partial(param_labels, head_paths=head_paths)), schedule


def _optimizer(optimizer: str, schedule, *, momentum: float, weight_decay: float):
    if optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay)
    tx = optax.sgd(schedule, momentum=momentum if optimizer != "sgd" else None,
                   nesterov=optimizer == "nesterov")
    if weight_decay:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)  # L2 as in torch.optim.SGD
    return tx


def param_labels(params, head_paths: Sequence[str]):
    """The params tree with "head" at every leaf under one of `head_paths` ("/"-separated, e.g.
    "AuxLogits/fc"), "backbone" elsewhere: optax.multi_transform's labels."""
    heads = [tuple(path.split("/")) for path in head_paths]
    return traverse_util.path_aware_map(
        lambda path, _: "head" if any(tuple(path[:len(h)]) == h for h in heads) else "backbone", params)


def check_finetune_options(*, init_from: str, head_lr_multiplier: float, freeze: str) -> None:
    """Raises UserError, one line, for fine-tuning options that make no sense together."""
    if freeze not in FREEZE:
        raise UserError(f"--config.freeze={freeze!r} is not one of: {', '.join(FREEZE)}")
    if not head_lr_multiplier > 0:
        raise UserError(f"--config.head_lr_multiplier={head_lr_multiplier} must be positive (d2l 14.2 uses 10)")
    if not init_from and head_lr_multiplier != 1.0:
        raise UserError("--config.head_lr_multiplier needs --config.init_from: from scratch there is no "
                        "pretrained backbone for the head to outpace")
    if not init_from and freeze != "none":
        raise UserError("--config.freeze=backbone needs --config.init_from: a frozen random backbone "
                        "learns nothing")
