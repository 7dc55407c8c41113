"""Trains one of the chapter's models on one CPU, one or many GPUs, or a TPU, without changes.

    python train.py --config configs/nin.py [--workdir DIR] [--config.<field>=<value> ...]

The command line only: flags, the config file, the cluster, errors as one line. The run itself is
`flaxcnn.trainer.train_and_evaluate(config, workdir)`; the same --workdir again resumes it.
"""
from __future__ import annotations

import ast
import difflib
import sys
import time
import traceback
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

import jax

from flaxcnn import cluster, runtime, trainer
from flaxcnn.errors import UserError, error_line, first_line

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/nin.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run writes everything; default runs/<config>-<time>.")
# Several processes (the book's docs/several-hosts.md); the names are jax.distributed.initialize's.
flags.DEFINE_bool("distributed", None, "Join a cluster with jax.distributed.initialize()'s "
                  "auto-detection (TPU pod, SLURM, Open MPI); default: join when a cluster flag "
                  "below is given or srun/mpirun launched several processes.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, reachable by all.")
flags.DEFINE_integer("num_processes", None, "How many processes (one per host).")
flags.DEFINE_integer("process_id", None, "This process: 0 .. num_processes-1.")
flags.DEFINE_list("local_device_ids", None, "The devices this process uses, e.g. 0,1.")
flags.DEFINE_integer("initialization_timeout", 60, "Seconds to wait for every process to join.")
flags.DEFINE_integer("heartbeat_timeout_seconds", 60, "A process silent this long is lost: the "
                     "others stop (checkpoints are kept).")
flags.DEFINE_string("compilation_cache", runtime.default_compilation_cache(),
                    "JAX's persistent compilation cache, so that a rerun compiles nothing; "
                    "'off' turns it off.")


def main(argv) -> int:
    logging.set_verbosity(logging.WARNING)  # Orbax and tfds log every step of a save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    runtime.reserve_cpu_threads_for_collectives()
    runtime.use_xla_cpu_convolutions()
    runtime.use_compilation_cache(FLAGS.compilation_cache)
    try:
        join_cluster()  # before anything touches the devices
        config = FLAGS.config
        if config is None:
            raise UserError("pass --config configs/<name>.py (see the configs/ folder)")
        config_file = config_flags.get_config_filename(FLAGS["config"])
        if cluster.multiprocess() and not FLAGS.workdir:
            raise UserError("pass --workdir=DIR, one folder every process sees (a shared file "
                            "system or a bucket), when training on several processes")
        workdir = Path(FLAGS.workdir or
                       f"runs/{Path(config_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        trainer.train_and_evaluate(config, workdir)
        return 0
    except trainer.Interrupted as stop:
        if jax.process_index() == 0:
            print(f"{stop}\nresume with: python train.py --config {config_file} --workdir "
                  f"{workdir}", flush=True)
        return stop.exit_code
    except UserError as e:
        sys.exit(error_line(e))
    except Exception as e:  # a collective failed: another process probably died
        cluster.lost_peer(e, wait_seconds=FLAGS.heartbeat_timeout_seconds + 10)
        raise


def join_cluster():
    """Joins the processes' cluster when asked (see flaxcnn.cluster.requested)."""
    if cluster.requested(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id):
        cluster.join(coordinator_address=FLAGS.coordinator_address,
                     num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                     local_device_ids=FLAGS.local_device_ids,
                     initialization_timeout=FLAGS.initialization_timeout,
                     heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)


def parse_flags(argv):
    """absl flag parsing, with config mistakes as one-line errors instead of tracebacks."""
    path = config_file_argument(argv)
    if path is not None and not Path(path).is_file():
        sys.exit(missing_config_file(path))
    argv, model_fields = model_field_arguments(argv)
    if model_fields:
        sys.argv = argv  # ml_collections reads its --config.* overrides from sys.argv
    logging.set_verbosity(logging.ERROR)  # ml_collections' own warnings would add a second line
    try:
        parsed = FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except  # anything in the user's file
        sys.exit(parse_error_line(e, path, argv))
    if path is not None and not isinstance(FLAGS.config, ml_collections.ConfigDict):
        sys.exit(f"error: get_config() in {path} returned {type(FLAGS.config).__name__}, not a "
                 "ConfigDict; return the config (see configs/default.py)")
    if model_fields and FLAGS.config is not None:
        set_model_fields(FLAGS.config, model_fields)
    return parsed


MODEL_FIELD_FLAG = "--config.model_overrides."


def model_field_arguments(argv):
    """argv without its --config.model_overrides.<field>[=]<value> arguments, and those as
    [(flag, field, text)]. ml_collections would take only the fields the config already has;
    these set any field of the model (the trainer refuses one the model does not have)."""
    rest, fields, i = [argv[0]], [], 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(MODEL_FIELD_FLAG):
            flag, has_value, text = arg.partition("=")
            if not has_value:
                if i + 1 == len(argv):
                    sys.exit(f"error: {flag} needs a value, e.g. {flag}=2")
                text, i = argv[i + 1], i + 1
            fields.append((flag, flag[len(MODEL_FIELD_FLAG):], text))
        else:
            rest.append(arg)
        i += 1
    return rest, fields


def set_model_fields(config, model_fields):
    """Puts each (flag, field, text) into config.model_overrides: text read as a Python literal
    (2, 0.5, (1, 2), True; true/false as absl reads them), else as a string."""
    for flag, field, text in model_fields:
        if not field.isidentifier():
            sys.exit(f"error: {flag} is not a model field; use {MODEL_FIELD_FLAG}<field>=<value>")
        value = {"true": True, "false": False}.get(text.lower(), text)
        if isinstance(value, str):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
        try:
            with config.unlocked():
                config.model_overrides[field] = value
        except (TypeError, ValueError):  # the config's own field, of another type
            kind = type(config.model_overrides[field]).__name__
            sys.exit(f"error: {flag}={text}: the config's {field} is of type {kind}; give one "
                     "of that type")


def parse_error_line(error: Exception, path: str | None, argv) -> str:
    """The one line for a failure of flag parsing: the --config file failing to load (an error
    raised in it, found along the exception's causes), a bad flag value, or an unknown field."""
    cause, here = error, Path(path or ".").resolve()
    while path is not None and cause is not None:
        lines = [f.lineno for f in traceback.extract_tb(cause.__traceback__)
                 if Path(f.filename).resolve() == here]
        if isinstance(cause, SyntaxError) and Path(cause.filename or ".").resolve() == here:
            lines.append(cause.lineno)
        if lines:
            reason = (f"SyntaxError: {cause.msg}" if isinstance(cause, SyntaxError)
                      else first_line(cause, with_type=True))
            return (f"error: config file {path} does not load ({reason} at line {lines[-1]}); "
                    "fix it, or start from configs/default.py")
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, (AttributeError, KeyError)):
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        return (f"error: unknown config field {error} (in {', '.join(bad)}); the fields are in "
                "configs/default.py")
    return error_line(error)


def config_file_argument(argv) -> str | None:
    """The file of --config (--config=PATH[:ARG] or --config PATH[:ARG]), the last one if repeated."""
    path = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1]
    return path.partition(":")[0] if path is not None else None


def missing_config_file(path: str) -> str:
    """The one line for a --config that is not a file, with the closest config's name."""
    here = Path(__file__).parent
    known = [str(p.relative_to(here)) for p in sorted(here.glob("configs/*.py"))
             if p.stem != "__init__"]
    close = difflib.get_close_matches(path, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    problem = "is not a file" if Path(path).exists() else "does not exist"
    return (f"error: config file {path} {problem}; {hint}the configs are in configs/ "
            "(e.g. --config configs/nin.py)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
