"""d2l's printed test accuracy as a band (min, median, max over the book's builds), and where a
run lands relative to it.

Why a band and not one number: each build of d2l's notebooks trained afresh and printed a different
test accuracy (benchmarks/d2l_reference/table.md lists them), so the honest reference is their
spread. A config sets `reference_accuracy = (min, median, max)` or leaves it unset; the band applies
only to runs on the full `fashion_mnist`, the dataset d2l measured it on. Standard library only:
the trainer, plots and compare import this without JAX or TensorFlow.
"""
import math
import numbers
from typing import NamedTuple

from flaxcnn.errors import UserError

REFERENCE_DATASET = "fashion_mnist"


class Band(NamedTuple):
    """d2l's printed test accuracies: lowest, median and highest build."""
    low: float
    median: float
    high: float

    def describe(self) -> str:
        """"0.847–0.885 (median 0.880)"."""
        return f"{self.low:.3f}–{self.high:.3f} (median {self.median:.3f})"


def band(value) -> Band | None:
    """`config.reference_accuracy` (a (min, median, max) sequence, or unset) as a Band. Unset is
    None, or what ml_collections makes of `--config.reference_accuracy=()` or `=None`: () and
    (None,). Raises UserError, saying what to write, for anything else."""
    if value is None or (isinstance(value, (tuple, list)) and list(value) in ([], [None])):
        return None
    numbers_ok = (isinstance(value, (tuple, list)) and len(value) == 3
                  and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                          for v in value))
    if not (numbers_ok and 0 <= value[0] <= value[1] <= value[2] <= 1):
        raise UserError(f"--config.reference_accuracy must be d2l's (min, median, max) test accuracy, "
                        f"three numbers with 0 <= min <= median <= max <= 1, e.g. "
                        f"'(0.847, 0.88, 0.885)', or '()' to unset it; got {value!r}")
    return Band(*map(float, value))


def check(config) -> None:
    """The config's reference_accuracy is valid (see `band`); for config_check.check_config."""
    band(config.reference_accuracy)


def for_run(config) -> Band | None:
    """The band a run is compared with: the config's, on the full fashion_mnist only. `config` is a
    ConfigDict or the dict of a run's config.json."""
    if config.get("dataset") != REFERENCE_DATASET:
        return None
    return band(config.get("reference_accuracy"))


def position(test_accuracy: float, reference: Band) -> str:
    """"below", "inside" or "above" the band (its ends count as inside)."""
    if test_accuracy < reference.low:
        return "below"
    return "above" if test_accuracy > reference.high else "inside"


def verdict(test_accuracy: float, reference: Band | None) -> str | None:
    """The end-of-run line comparing the final test accuracy with d2l's band; None without one."""
    if reference is None:
        return None
    return (f"final test acc {test_accuracy:.4f} is {position(test_accuracy, reference)} d2l's "
            f"printed spread {reference.describe()}")
