"""A test-only hook: where a run is, printed on stderr, so a test can kill it inside a phase.

With FLAXCNN_TEST_PHASES=1 in the environment the trainer prints `flaxcnn-phase: <name> begin` and
`flaxcnn-phase: <name> end` around its phases: `train` (the steps of an epoch), `eval`, `plot`
(curves.png and the final pictures) and `checkpoint` (the start of a save, whose writing then goes
on in the background). Without the variable nothing is printed. tests/test_robustness.py's kill
soak reads these lines.
"""
from __future__ import annotations

import contextlib
import os
import sys

ENV = "FLAXCNN_TEST_PHASES"


@contextlib.contextmanager
def phase(name: str):
    enabled = os.environ.get(ENV) == "1"
    if enabled:
        print(f"flaxcnn-phase: {name} begin", file=sys.stderr, flush=True)
    yield
    if enabled:
        print(f"flaxcnn-phase: {name} end", file=sys.stderr, flush=True)
