"""The process a run lives in: JAX's compilation cache, XLA:CPU's threads for collectives and its
convolutions, counting XLA compilations, one clock of where a run's time goes, and the signals
that stop a run cleanly.

These are process-wide settings, so they are explicit calls that train.py (and the notebook, the
benchmark and the tests) make once, before the devices start: importing this module changes nothing.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time

import jax


def default_compilation_cache() -> str:
    """$JAX_COMPILATION_CACHE_DIR, else flaxcnn/jax under the user's cache folder (XDG)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_home, "flaxcnn", "jax")


def use_compilation_cache(directory: str | None):
    """JAX's persistent compilation cache in `directory`, for every compilation however quick, so
    a rerun of the same experiment compiles nothing; None, '' or 'off' turns it off."""
    if not directory or directory == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def reserve_cpu_threads_for_collectives(environ=os.environ) -> int | None:
    """Gives XLA:CPU two threads per device when XLA_FLAGS fakes at least as many CPU devices as
    there are cores; call it before the first use of the devices. Returns the count it set, or None.

    XLA:CPU sizes its thread pools at max(cores, devices). A pmapped psum blocks one pool thread per
    device until every device arrives; with as many threads as devices, the last device can find
    its convolution's work queued behind the blocked threads, and XLA aborts the run after 40 s
    ("Termination timeout for all reduce ... only 3 of them arrived"; seen once in CI with 4
    devices on 2 cores). PJRT_NPROC, read when the CPU client starts, sets the pool size; one
    already in the environment is left alone.
    """
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                        environ.get("XLA_FLAGS", ""))
    devices = int(counts[-1]) if counts else 1  # XLA takes the last
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if devices < 2 or "PJRT_NPROC" in environ or (cores or 1) > devices:
        return None
    environ["PJRT_NPROC"] = str(2 * devices)
    return 2 * devices


# XLA_FLAGS' option that turns XLA:CPU's YNNPACK fusions off; jaxlib 0.8.1 is the first release
# that has it (an option XLA does not know aborts the process, so older ones are left alone).
YNNPACK_OFF = "--xla_cpu_experimental_ynn_fusion_type="
YNNPACK_FIRST_JAXLIB = (0, 8, 1)


def use_xla_cpu_convolutions(environ=os.environ, jaxlib_version: str | None = None) -> bool:
    """Has XLA:CPU compute convolutions and dots itself (Eigen) instead of through YNNPACK, which
    recent jaxlibs use by default and which trains the chapter's models slower (BENCHMARKS.md,
    "CPU: where the time goes"). Call it before the first use of the devices;
    GPUs and TPUs are unaffected. XLA_FLAGS that already choose YNNPACK's fusions are left alone.
    Returns whether it set the option."""
    if jaxlib_version is None:
        import jaxlib.version

        jaxlib_version = jaxlib.version.__version__
    release = tuple(int(part) for part in re.findall(r"\d+", jaxlib_version)[:3])
    flags = environ.get("XLA_FLAGS", "")
    if release < YNNPACK_FIRST_JAXLIB or "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNNPACK_OFF}".strip()
    return True


_compilations = {"programs": 0, "seconds": 0.0, "from_cache": 0}
_counting = False


def count_compilations():
    """From now on, counts this process's XLA compilations (jax.monitoring listeners, installed
    once: they cannot be removed again). `compilations()` reads the counts."""
    global _counting
    if _counting:
        return
    _counting = True

    def on_duration(event, seconds, *args, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            _compilations["programs"] += 1
            _compilations["seconds"] += seconds

    def on_event(event, *args, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            _compilations["from_cache"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)


def compilations() -> dict:
    """Programs compiled since `count_compilations()`, their seconds, and how many of them the
    persistent compilation cache served."""
    return dict(_compilations)


def process_seconds() -> float:
    """Seconds since this process started (Linux), else since flaxcnn.runtime was imported."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


class Chrono:
    """Where one run's time goes: seconds before its first step (start-up, data, model, checkpoint),
    then the seconds of each kind of work (`with chrono.measure("train"): ...`), and the XLA
    compilations of the run (counted inside the others)."""

    KINDS = ("train", "evaluate", "outputs_and_checkpoints")

    def __init__(self):
        count_compilations()
        self._compiled_before = compilations()
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self.first_step_at: float | None = None

    def first_step(self):
        """Marks the first step of the run (only the first call counts)."""
        if self.first_step_at is None:
            self.first_step_at = process_seconds()

    @contextlib.contextmanager
    def measure(self, kind: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - t0

    def report(self) -> dict:
        """The timing record run_info.json keeps (and the last line prints)."""
        now, before = compilations(), self._compiled_before
        return {"seconds_since_start": process_seconds(),
                "seconds_before_first_step": self.first_step_at,
                **{f"{kind}_seconds": seconds for kind, seconds in self.seconds.items()},
                "compilations": {key: now[key] - before[key] for key in now}}


class Signals:
    """While active: SIGTERM or a first Ctrl-C asks for a clean stop; a second Ctrl-C exits at once."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            print("\nsecond Ctrl-C: exiting now (complete checkpoints are untouched)",
                  file=sys.stderr, flush=True)
            os._exit(130)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current steps, then saving a "
              "checkpoint (Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
