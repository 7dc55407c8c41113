"""Several processes as one run: JAX's multi-controller runtime (`jax.distributed`), for train.py.

One process per host (a TPU pod slice's workers, SLURM tasks, or any machines that can reach
process 0), all devices in one `pmap`. `join` must come before anything touches the devices; with a
single process nothing here starts a coordinator and every helper below is a no-op.

What the processes must agree on, and how:

* the config and the workdir: `check_same_config` gathers every process's copy at the start and
  refuses (one line, on every process) a cluster started with different ones;
* when to stop after a signal that reached only some processes: `any_process(flag)`, a tiny psum
  after every chunk of steps, so every process stops after the same chunk and saves the same step;
* how many steps the next chunk has: `same_as_process_0(n)` (chunks are sized by per-process
  timings, and different sizes would leave one process waiting in a collective forever).

A process that dies (SIGKILL, a crashed host) stops the others within the heartbeat timeout: the
runtime aborts them, and the output filter started by `join` turns its fatal log into one line
that names the lost process. A collective that was half done when its peer died can abort a
process sooner, from inside gloo (the CPU collectives' transport): the filter turns that abort into
the same line. Complete checkpoints are never touched by this.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time

import jax
import numpy as np

from flaxcnn.errors import UserError

# Launches of several processes that jax.distributed detects by itself (SLURM's srun, Open MPI's
# mpirun): (the variable with the process count, variables that its detection also needs).
_LAUNCHERS = (("SLURM_NTASKS", ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                                "SLURM_LOCALID")),
              ("OMPI_COMM_WORLD_SIZE", ("OMPI_MCA_orte_hnp_uri",)))


def requested(distributed: bool | None, coordinator_address: str | None,
              num_processes: int | None, process_id: int | None) -> bool:
    """Whether to join a cluster: --distributed, any explicit cluster flag, or a multi-process
    SLURM / Open MPI launch; --nodistributed never. A lone process on a laptop: False."""
    if distributed is not None:
        return distributed
    if coordinator_address or num_processes is not None or process_id is not None:
        return True
    return any(os.environ.get(size, "1").isdigit() and int(os.environ.get(size, "1")) > 1
               and all(v in os.environ for v in needed) for size, needed in _LAUNCHERS)


def join(*, coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, local_device_ids: list[int | str] | None = None,
         initialization_timeout: int = 60, heartbeat_timeout_seconds: int = 60):
    """`jax.distributed.initialize` with our timeouts, its errors as one-line UserErrors.

    Explicit flags must come as the set --coordinator_address, --num_processes, --process_id;
    without them JAX detects a TPU pod, SLURM or Open MPI itself. `local_device_ids` may be the
    --local_device_ids flag's strings.
    """
    local_device_ids = _device_numbers(local_device_ids)
    explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
                "--process_id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < 3:
        missing = [k for k in explicit if k not in given]
        raise UserError(f"{', '.join(given)} needs {' and '.join(missing)} too (each process: "
                        "--coordinator_address=HOST:PORT of process 0, --num_processes=N, "
                        "--process_id=0..N-1)")
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num_processes must be at least 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} is out of range for --num_processes="
                        f"{num_processes}; give each process a different id from 0 to "
                        f"{num_processes - 1}")
    if coordinator_address is not None and not re.fullmatch(r".+:\d+", coordinator_address):
        raise UserError(f"--coordinator_address={coordinator_address} must be HOST:PORT (process "
                        "0's address, reachable from every process, and a free port)")
    if initialization_timeout < 1 or heartbeat_timeout_seconds < 1:
        raise UserError("--initialization_timeout and --heartbeat_timeout_seconds must be at "
                        "least 1 second")
    where = coordinator_address or "the auto-detected coordinator"
    if process_id == 0:
        not_joined = (f"error: the cluster did not form within {initialization_timeout} s: not all "
                      f"{num_processes} processes joined {where}; start every process, or raise "
                      "--initialization_timeout")
    else:
        not_joined = (f"error: could not join the cluster at {where} within "
                      f"{initialization_timeout} s; start process 0 first and check "
                      "--coordinator_address (HOST:PORT of process 0, reachable from here)")
    others = (f"process {1 - process_id}" if num_processes == 2 and process_id is not None
              else "another process")
    _filter_output(not_joined, others)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes,
            process_id=process_id, local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            # Exiting processes wait this long for the others (process 0 finishes the pictures).
            shutdown_timeout_seconds=max(60, heartbeat_timeout_seconds))
    except (RuntimeError, ValueError, TypeError) as e:  # the runtime itself aborts on timeouts
        raise UserError(f"{not_joined[len('error: '):]} ({' '.join(str(e).split())[:300]})") from None


def _device_numbers(values) -> list[int] | None:
    try:
        return [int(i) for i in values or []] or None
    except ValueError:
        raise UserError(f"--local_device_ids={','.join(map(str, values))} must be device numbers, "
                        "e.g. 0,1") from None


def multiprocess() -> bool:
    return jax.process_count() > 1


def _sum_over_processes(values: list[int]) -> list[int]:
    """Sums small integer vectors over all processes (each process contributes once)."""
    local = np.zeros((jax.local_device_count(), len(values)), np.int32)
    local[0] = values
    return [int(v) for v in np.asarray(_psum()(local).addressable_shards[0].data)[0]]


_PSUM = None


def _psum():
    global _PSUM
    if _PSUM is None:
        from flaxcnn.training import AXIS

        _PSUM = jax.pmap(lambda x: jax.lax.psum(x, AXIS), AXIS)
    return _PSUM


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any. Every process must call it at the same
    point of the run."""
    if not multiprocess():
        return bool(flag)
    return _sum_over_processes([int(bool(flag))])[0] > 0


def same_as_process_0(value: int) -> int:
    """Process 0's `value`, on every process (a non-negative int below 2**31)."""
    if not multiprocess():
        return value
    return _sum_over_processes([value if jax.process_index() == 0 else 0])[0]


def sync(name: str):
    """Waits until every process got here."""
    if multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"flaxcnn:{name}")


def check_same_config(config, workdir) -> None:
    """Refuses, on every process, a cluster whose processes got different configs or workdirs."""
    if not multiprocess():
        return
    from jax.experimental import multihost_utils

    mine = json.loads(config.to_json())
    mine["workdir"] = str(workdir)
    payload = np.frombuffer(json.dumps(mine, sort_keys=True).encode(), np.uint8)
    digest = np.frombuffer(hashlib.sha256(payload.tobytes()).digest()[:8], np.int32)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differing = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if not differing:
        return
    # Gather the configs themselves to say which fields differ.
    longest = int(np.max(multihost_utils.process_allgather(np.int32(len(payload)))))
    padded = np.zeros(longest, np.uint8)
    padded[:len(payload)] = payload
    everyone = np.asarray(multihost_utils.process_allgather(padded))
    configs = [json.loads(bytes(row).rstrip(b"\0")) for row in everyone]
    first = configs[differing[0]]
    fields = [f"{k} ({configs[0].get(k)!r} vs {first.get(k)!r})"
              for k in sorted(set(configs[0]) | set(first)) if configs[0].get(k) != first.get(k)]
    raise UserError(f"process{'es' if len(differing) > 1 else ''} "
                    f"{', '.join(map(str, differing))} started with a different config than "
                    f"process 0: {'; '.join(fields)}. Start every process with the same "
                    "--config, --config.* flags and --workdir")


def lost_peer(error: BaseException, wait_seconds: float) -> None:
    """After a failed collective: a peer probably died; the runtime notices within its heartbeat
    timeout and aborts this process (the output filter prints which process was lost). Waits for
    that; returns if it did not happen (the error was something else)."""
    if not multiprocess() or not isinstance(error, jax.errors.JaxRuntimeError):
        return
    time.sleep(wait_seconds)


# ----------------------------------------------------------------------------- the output filter

# gloo's "[Gloo] Rank N is connected to M peer ranks. Expected number of connected peer ranks is :
# M" lines. Its threads write them in pieces, so two may share a line and leave a bare newline
# after it; the piece that ends a message is written whole.
_NOISE = re.compile(r"\[Gloo\] Rank|connected peer ranks| peer ranks\. | is connected to ")
_GLOO_MESSAGE_END = "Expected number of connected peer ranks is :"
_RUNTIME_FATAL = re.compile(r"^[EF]\d{4} .*(coordination_service|client\.h|distributed)")
# gloo throws from its own thread when a peer vanishes mid-collective (its socket reset, or the
# surviving ranks left at different collectives): C++ terminates the process.
_GLOO_ABORT = re.compile(r"^terminate called after throwing an instance of 'gloo::", re.M)


def _filter_output(not_joined: str, others: str):
    """Runs this process's stdout and stderr through a small child process that drops the
    collectives' chatter (gloo's "connected" lines) and turns the runtime's fatal abort (another
    process died) into one line on stderr.

    Forked before the distributed runtime starts any thread. The child ends when every writer of
    the pipes is gone, i.e. after this process ends, however it ends. `not_joined` is the line
    for an abort while joining; `others` names the lost process where the abort does not (a gloo
    abort names no rank): "process 1" in a cluster of two, else "another process".
    """
    if not hasattr(os, "fork"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pipes = {fd: os.pipe() for fd in (1, 2)}
    originals = {fd: os.dup(fd) for fd in (1, 2)}
    if os.fork() == 0:  # the filter: outlives Ctrl-C and SIGTERM, ends when the pipes close
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for read_fd, write_fd in pipes.values():
                os.close(write_fd)
            _run_filter({pipes[fd][0]: originals[fd] for fd in (1, 2)}, originals[2], not_joined,
                        others)
        finally:
            os._exit(0)
    for fd, (read_fd, write_fd) in pipes.items():
        os.close(read_fd)
        os.dup2(write_fd, fd)
        os.close(write_fd)
        os.close(originals[fd])


def _run_filter(routes: dict[int, int], stderr_fd: int, not_joined: str, others: str):
    """Copies each pipe of `routes` (read fd -> output fd) line by line until all are closed."""
    import selectors

    fatal, said_error, partial = [], False, {fd: b"" for fd in routes}
    gloo_newlines_owed = {fd: 0 for fd in routes}  # gloo messages whose newline is still to come
    selector = selectors.DefaultSelector()
    for fd in routes:
        selector.register(fd, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select():
            fd = key.fd
            data = os.read(fd, 65536)
            if not data:
                selector.unregister(fd)
                os.close(fd)
                lines = [partial[fd]] if partial[fd] else []
            else:
                *lines, partial[fd] = (partial[fd] + data).split(b"\n")
                lines = [line + b"\n" for line in lines]
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith("error: "):  # ours: says it all
                    said_error = True
                    os.write(routes[fd], raw)
                elif fatal or _RUNTIME_FATAL.match(line) or _GLOO_ABORT.match(line):
                    fatal.append(line)
                elif _NOISE.search(line):
                    gloo_newlines_owed[fd] = max(
                        0, gloo_newlines_owed[fd] + line.count(_GLOO_MESSAGE_END) - 1)
                elif line == "\n" and gloo_newlines_owed[fd]:
                    gloo_newlines_owed[fd] -= 1
                else:
                    os.write(routes[fd], raw)
    if fatal and not said_error:
        log = "".join(fatal)
        line = not_joined if "RegisterTask" in log else lost_process_message(log, others)
        os.write(stderr_fd, (line + "\n").encode())


def lost_process_message(log: str, others: str) -> str:
    """The runtime's or gloo's fatal log (another process died) -> one line naming the lost
    process; `others` where the log does not name it."""
    lost = []
    unhealthy = re.search(r"stopped sending heartbeats\):\s*\n([\d,\s]+?)\n\s*\D", log)
    if unhealthy:
        lost = [int(p) for p in re.findall(r"\d+", unhealthy.group(1))]
    lost = lost or sorted({int(p) for p in re.findall(r"[Tt]ask:? ?(\d+) heartbeat timeout", log)})
    if lost:
        who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}"
    elif "coordination_service" in log or "CoordinationService" in log:
        who = "process 0 (the coordinator)"
    else:
        who = others
    how = ("a collective with it broke off" if _GLOO_ABORT.search(log) and not lost
           else "no heartbeat within --heartbeat_timeout_seconds")
    return (f"error: lost {who} of the cluster (killed, crashed or unreachable: {how}); this "
            "process stopped too. Complete checkpoints are kept: start every process again with "
            "the same command to resume")
