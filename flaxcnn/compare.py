"""Compares finished or running training runs: an overlay of their test-accuracy curves and a table.

    python -m flaxcnn.compare runs/* [--out DIR]

writes DIR/compare.png and DIR/compare.md and prints the table. DIR is `compare/` in the current
folder by default: outside runs/, so that `runs/*` next time does not pick it up. Entries that are
not runs (a stray file, a folder a failed run left behind, a run with no finished epoch yet) are
skipped with one line each naming them; a path that does not exist is an error (a typo).
images/s is the mean over the epochs after the first, whose time includes compilation (the first
epoch's value when there is only one). The run time is train.py's whole time, start-up and
compilation included, over all its sessions (a resumed run adds up); for a run still going, or one
that was killed, only the epochs' own time is known, and the cell says so. d2l's printed test accuracy (the band of the config's
reference_accuracy: lowest to highest build, and the median) is shown for runs on the full
fashion_mnist only: it was measured there. Runs written before the band, whose config.json holds a
single number there, show none: that number had no source.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from flaxcnn import plots, reference
from flaxcnn.errors import UserError, error_line, warn

COMPARE_SIZE = (800, 500)           # compare.png's width, height in pixels
METRICS_KEYS = ("epoch", "test_accuracy", "examples_per_sec", "epoch_seconds")
COLUMNS = ("run", "model", "epochs done/planned", "parameters", "forward FLOPs/image",
           "final test acc", "best test acc", "train images/s", "run time",
           "d2l test acc: min–max (median)")
DEFAULT_OUT = "compare"


@dataclass(frozen=True)
class RunFolder:
    """One workdir of train.py: its config.json, metrics.jsonl rows and run_info.json (None if absent)."""
    path: Path
    config: dict
    records: list[dict]
    info: dict | None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def model(self) -> str:
        return self.config.get("model") or (self.info or {}).get("model") or "?"

    @property
    def params(self) -> int | None:
        return (self.info or {}).get("params")

    @property
    def flops_per_image(self) -> float | None:
        return (self.info or {}).get("flops_per_image")

    @property
    def final_accuracy(self) -> float:
        return self.records[-1]["test_accuracy"]

    @property
    def best_accuracy(self) -> float:
        return max(r["test_accuracy"] for r in self.records)

    @property
    def images_per_sec(self) -> float:
        after_first = self.records[1:] or self.records
        return sum(r["examples_per_sec"] for r in after_first) / len(after_first)

    @property
    def total_seconds(self) -> float | None:
        """train.py's whole time over all the run's sessions; None when no session has finished."""
        return ((self.info or {}).get("timing") or {}).get("seconds_all_sessions")

    @property
    def epoch_seconds(self) -> float:
        return sum(r["epoch_seconds"] for r in self.records)

    @property
    def reference_accuracy(self) -> reference.Band | None:
        if not isinstance(self.config.get("reference_accuracy"), (list, tuple)):
            return None  # unset, or a single number from before the band
        try:
            return reference.for_run(self.config)
        except UserError:
            raise UserError(f"{self.path / 'config.json'}: its reference_accuracy "
                            f"{self.config['reference_accuracy']!r} is not d2l's (min, median, max) "
                            "test accuracy; fix or remove it") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def read_metrics(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not valid JSON") from None
        missing = [key for key in METRICS_KEYS if key not in record]
        if missing:
            raise UserError(f"{path} line {number} lacks {', '.join(missing)}")
        records.append(record)
    return records


class NotARun(UserError):
    """A path given to compare that is not a run with a finished epoch; `reason` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} {reason}")
        self.reason = reason


def load_run(path) -> RunFolder:
    """Reads the run in folder `path`; raises NotARun, naming the folder, if it is not a run or has
    no finished epoch yet, and UserError for a file of the run that cannot be read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if not path.is_dir():
        raise NotARun(path, "is not a folder")
    for required in ("config.json", "metrics.jsonl"):
        if not (path / required).is_file():
            raise NotARun(path, f"is not a run folder: it has no {required}")
    records = read_metrics(path / "metrics.jsonl")
    if not records:
        raise NotARun(path, "has no finished epoch yet (its metrics.jsonl is empty)")
    info_path = path / "run_info.json"
    info = read_json(info_path) if info_path.is_file() else None
    return RunFolder(path, read_json(path / "config.json"), records, info)


def format_count(value: float | None) -> str:
    """11184138 -> "11.18 M"; None -> "?"."""
    if value is None:
        return "?"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def format_flops(value: float | None) -> str:
    """1.74e9 -> "1.74 GFLOPs"; None -> "?"."""
    if value is None:
        return "?"
    count = format_count(value)
    return count + ("FLOPs" if count[-1].isalpha() else " FLOPs")


def format_duration(seconds: float) -> str:
    """42.31 -> "42.3s", 185 -> "3m 05s", 3725 -> "1h 02m 05s"."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def row(run: RunFolder) -> list[str]:
    band = run.reference_accuracy
    num_epochs = run.config.get("num_epochs")
    return [run.name, run.model,
            f"{run.records[-1]['epoch']}/{num_epochs if num_epochs is not None else '?'}",
            format_count(run.params), format_flops(run.flops_per_image),
            f"{run.final_accuracy:.4f}", f"{run.best_accuracy:.4f}",
            f"{run.images_per_sec:,.0f}",
            format_duration(run.total_seconds) if run.total_seconds is not None
            else f"{format_duration(run.epoch_seconds)} (epochs only)",
            "—" if band is None else band.describe()]


def table(runs: list[RunFolder]) -> str:
    """The markdown table: a header and one row per run, in order."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row(run)) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def overlay(runs: list[RunFolder], path) -> None:
    """Draws every run's test accuracy against the epoch in one axes; writes a PNG of COMPARE_SIZE."""
    figure = plots.new_figure(COMPARE_SIZE)
    axes = figure.add_subplot()
    for run in runs:
        epochs = [r["epoch"] for r in run.records]
        axes.plot(epochs, [r["test_accuracy"] for r in run.records], marker=plots.epoch_marker(epochs),
                  markersize=3, label=f"{run.name} ({run.model})")
    plots.epoch_axis(axes, [r["epoch"] for run in runs for r in run.records])
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    plots.save_png(figure, path)


def load_runs(paths) -> list[RunFolder]:
    """The runs among `paths`; the others are skipped with a warning each. A path that does not
    exist, a run file that cannot be read, or no run at all is a UserError."""
    runs = []
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"{path} does not exist")
        try:
            runs.append(load_run(path))
        except NotARun as e:
            warn(f"skipping {path}: it {e.reason}")
    if not runs:
        raise UserError("none of the paths given is a run folder with a finished epoch; pass "
                        "train.py's --workdir folders")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flaxcnn.compare",
                                     description="Overlay the test accuracy of runs and tabulate them.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py --workdir folders")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for compare.png and compare.md (default: {DEFAULT_OUT}/ in "
                             "the current folder)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
        out = Path(args.out)
        text = table(runs)
        try:
            out.mkdir(parents=True, exist_ok=True)
            overlay(runs, out / "compare.png")
            (out / "compare.md").write_text(text)
        except OSError as e:
            raise UserError(f"cannot write into {out}: {e.strerror}") from None
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        return 1
    print(text, end="", flush=True)  # the table is whole on stdout before the next line
    print(f"wrote {out / 'compare.png'} and {out / 'compare.md'}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
