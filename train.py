"""Trains one of the chapter's models on one CPU, one or many GPUs, or a TPU, without changes.

    python train.py --config configs/nin.py [--workdir DIR] [--config.<field>=<value> ...]

This file is the command line only: flags, config loading, errors as one line. The run itself is
`flaxcnn.trainer.train_and_evaluate(config, workdir)`, which the notebook and the tests call too.
Run it again with the same --workdir to resume. What it writes is listed in the README.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from flaxcnn import trainer, training
from flaxcnn.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/nin.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run writes everything; default runs/<config>-<time>.")
flags.DEFINE_string("compilation_cache", training.default_compilation_cache(),
                    "JAX's persistent compilation cache, so that a rerun compiles nothing; "
                    "'off' turns it off.")


def main(argv) -> int:
    logging.set_verbosity(logging.WARNING)  # Orbax and tfds log every step of a save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    training.use_compilation_cache(FLAGS.compilation_cache)
    try:
        config = FLAGS.config
        if config is None:
            raise UserError("pass --config configs/<name>.py (see the configs/ folder)")
        config_file = config_flags.get_config_filename(FLAGS["config"])
        workdir = Path(FLAGS.workdir or
                       f"runs/{Path(config_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        trainer.train_and_evaluate(config, workdir)
        return 0
    except trainer.Interrupted as stop:
        print(f"{stop}\nresume with: python train.py --config {config_file} --workdir {workdir}",
              flush=True)
        return stop.exit_code
    except UserError as e:
        sys.exit(f"error: {e}")


def parse_flags(argv):
    """absl flag parsing, with config mistakes as one-line errors instead of tracebacks."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        sys.exit(f"error: unknown config field {e} (in {', '.join(bad)}); the fields are in "
                 "configs/default.py")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
