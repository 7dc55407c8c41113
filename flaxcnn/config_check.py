"""The first stage of a run: a config's choices and numbers, refused in one line before any work.

Every field that train.py reads (configs/default.py) is either a choice from a list or a number in a
range; `check_config` says which field is wrong and what it must be, before the workdir, the data
or the devices are touched.
"""
from __future__ import annotations

import math
import numbers

from flaxcnn import augment, models, optimizers, reference
from flaxcnn.errors import UserError

DTYPES = ("float32", "bfloat16")
PIPELINES = ("auto", "device", "stream")


def check_config(config, device_count: int):
    """Refuses unknown choices, impossible sizes and out-of-range numbers (NaN and infinity
    included) with a one-line UserError, before any work starts."""
    if config.model not in models.names():
        raise UserError(f"unknown model {config.model!r}; use one of: {', '.join(models.names())}")
    for field, allowed in (("optimizer", optimizers.OPTIMIZERS),
                           ("lr_schedule", optimizers.LR_SCHEDULES), ("dtype", DTYPES),
                           ("input_pipeline", PIPELINES), ("augment", augment.AUGMENTS),
                           ("normalize", augment.CHOICES_OF_NORMALIZE)):
        if config[field] not in allowed:
            raise UserError(f"unknown {field} {config[field]!r}; use one of: {', '.join(allowed)}")
    optimizers.check_finetune_options(init_from=config.init_from,
                                      head_lr_multiplier=config.head_lr_multiplier,
                                      freeze=config.freeze)
    for field, integer, ok, what in NUMERIC_RANGES:
        value = config[field]
        number = (isinstance(value, numbers.Integral if integer else numbers.Real)
                  and not isinstance(value, bool) and math.isfinite(value))
        if not (number and ok(value)):
            raise UserError(f"--config.{field} must be {what}, got {value!r}")
    reference.check(config)
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % device_count:
            raise UserError(
                f"--config.{field}={config[field]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count}")


# (field, whole number?, the range, the rule in words): checked by check_config.
NUMERIC_RANGES = (
    ("batch_size", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("eval_batch_size", True, lambda v: v >= 0, "a whole number, 0 (= batch_size) or more"),
    ("image_size", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("folder_store_size", True, lambda v: v >= 1, "a whole number of pixels, at least 1"),
    ("device_data_budget_mb", True, lambda v: v >= 0, "a whole number of MiB, 0 or more"),
    ("num_epochs", True, lambda v: v >= 0, "a whole number, 0 or more"),
    ("checkpoint_every_epochs", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("max_checkpoints", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("seed", True, lambda v: v >= 0, "a whole number, 0 or more"),
    ("learning_rate", False, lambda v: v > 0, "a finite number above 0, e.g. 0.1"),
    ("head_lr_multiplier", False, lambda v: v > 0, "a finite number above 0, e.g. 10"),
    ("momentum", False, lambda v: 0 <= v < 1, "a finite number in [0, 1), e.g. 0.9"),
    ("weight_decay", False, lambda v: v >= 0, "a finite number, 0 or more, e.g. 5e-4"),
    ("warmup_epochs", False, lambda v: v >= 0, "a finite number of epochs, 0 or more"),
)
