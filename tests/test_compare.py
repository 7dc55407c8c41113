"""flaxcnn.compare on run folders written the way train.py writes them."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from flaxcnn import compare

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, *, model="lenet_bn", dataset="fashion_mnist", reference=(0.518, 0.853, 0.892),
              accuracies=(0.80, 0.86, 0.85), images_per_sec=(1000.0, 4000.0, 5000.0),
              epoch_seconds=(100.0, 50.0, 35.5), params=61_706, flops=429_000.0, run_info=True,
              seconds=200.0):
    folder.mkdir(parents=True)
    config = {"model": model, "dataset": dataset, "image_size": 28, "batch_size": 128,
              "num_epochs": 10, "learning_rate": 0.1, "reference_accuracy": reference,
              "model_overrides": {}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    records = [{"epoch": e, "step": 469 * e, "train_loss": 0.5, "train_accuracy": 0.8,
                "test_loss": 0.4, "test_accuracy": accuracy, "examples_per_sec": speed,
                "epoch_seconds": seconds, "learning_rate": 0.1}
               for e, (accuracy, speed, seconds)
               in enumerate(zip(accuracies, images_per_sec, epoch_seconds), 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if run_info:
        info = {"model": model, "params": params, "batch_stats": 128, "flops_per_image": flops,
                "image_size": 28, "channels": 1, "num_classes": 10, "class_names": list("0123456789"),
                "devices": 1, "device_kind": "cpu"}
        if seconds is not None:  # written at the end of train.py's session
            info["timing"] = {"seconds_since_start": seconds, "seconds_all_sessions": seconds}
        (folder / "run_info.json").write_text(json.dumps(info))
    return folder


def cells(markdown: str) -> list[dict]:
    header, _, *rows = markdown.strip().splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    return [dict(zip(names, (c.strip() for c in row.strip("|").split("|")))) for row in rows]


def test_load_run_numbers(tmp_path):
    run = compare.load_run(write_run(tmp_path / "lenet"))
    assert run.name == "lenet" and run.model == "lenet_bn"
    assert run.final_accuracy == 0.85
    assert run.best_accuracy == 0.86
    assert run.images_per_sec == 4500.0  # the first epoch (compilation) left out
    assert run.total_seconds == 200.0  # train.py's whole time, not the epochs' 185.5
    assert run.epoch_seconds == 185.5
    assert run.params == 61_706
    assert run.reference_accuracy == (0.518, 0.853, 0.892)


def test_one_epoch_run_uses_its_speed(tmp_path):
    run = compare.load_run(write_run(tmp_path / "r", accuracies=[0.7], images_per_sec=[1234.0],
                                     epoch_seconds=[12.0], seconds=None))
    assert run.images_per_sec == 1234.0
    # a run still going (or killed) has no whole time yet: the epochs' own, said to be only that
    assert cells(compare.table([run]))[0]["run time"] == "12.0s (epochs only)"


def test_table_one_row_per_run(tmp_path):
    runs = [compare.load_run(write_run(tmp_path / "lenet")),
            compare.load_run(write_run(tmp_path / "resnet", model="resnet18", reference=(0.669, 0.91, 0.924),
                                       accuracies=(0.88, 0.905), images_per_sec=(900.0, 12345.4),
                                       epoch_seconds=(3600.0, 125.2), params=11_178_378,
                                       flops=1.74e9, seconds=3725.0)),
            compare.load_run(write_run(tmp_path / "sample", dataset="fashion_mnist_sample",
                                       run_info=False))]
    rows = cells(compare.table(runs))

    assert [r["run"] for r in rows] == ["lenet", "resnet", "sample"]
    lenet, resnet, sample = rows
    assert lenet == {"run": "lenet", "model": "lenet_bn", "epochs done/planned": "3/10",
                     "parameters": "61.71 K", "forward FLOPs/image": "429.00 KFLOPs",
                     "final test acc": "0.8500", "best test acc": "0.8600",
                     "train images/s": "4,500", "run time": "3m 20s",
                     "d2l test acc: min–max (median)": "0.518–0.892 (median 0.853)"}
    assert resnet["parameters"] == "11.18 M"
    assert resnet["forward FLOPs/image"] == "1.74 GFLOPs"
    assert resnet["final test acc"] == resnet["best test acc"] == "0.9050"
    assert resnet["train images/s"] == "12,345"
    assert resnet["run time"] == "1h 02m 05s"
    assert resnet["d2l test acc: min–max (median)"] == "0.669–0.924 (median 0.910)"
    # No run_info.json: "?" for its numbers. d2l's band is for the full fashion_mnist only.
    assert sample["parameters"] == sample["forward FLOPs/image"] == "?"
    assert sample["run time"] == "3m 06s (epochs only)"
    assert sample["d2l test acc: min–max (median)"] == "—"


def test_reference_unset_or_a_single_number_from_before_the_band_shows_none(tmp_path):
    for name, value in (("unset", None), ("old", 0.5)):
        run = compare.load_run(write_run(tmp_path / name, reference=value))
        assert run.reference_accuracy is None
        assert cells(compare.table([run]))[0]["d2l test acc: min–max (median)"] == "—"


def test_bad_band_names_the_run_file(tmp_path, capsys):
    bad = write_run(tmp_path / "bad", reference=[0.9, 0.5, 0.6])
    assert compare.main([str(bad), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad / 'config.json'}: its reference_accuracy [0.9, 0.5, 0.6] is not")
    assert err.count("\n") == 1


def test_main_writes_plot_and_table(tmp_path, capsys):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", model="resnet18", accuracies=[0.9])
    out = tmp_path / "out" / "compare"

    assert compare.main([str(a), str(b), "--out", str(out)]) == 0

    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and image.size == compare.COMPARE_SIZE
        image.load()
    markdown = (out / "compare.md").read_text()
    assert capsys.readouterr().out == markdown
    assert [r["run"] for r in cells(markdown)] == ["a", "b"]


def test_main_writes_outside_the_runs_folder_by_default(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "runs" / "a")
    monkeypatch.chdir(tmp_path)
    assert compare.main(["runs/a"]) == 0
    assert sorted(p.name for p in (tmp_path / "compare").iterdir()) == ["compare.md", "compare.png"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]
    captured = capsys.readouterr()
    assert captured.out == (tmp_path / "compare" / "compare.md").read_text()  # the table alone
    assert captured.err == "wrote compare/compare.png and compare/compare.md\n"
    assert a.is_dir()


def test_entries_that_are_not_runs_are_skipped_with_one_line_each(tmp_path, capsys):
    runs = tmp_path / "runs"
    good = write_run(runs / "good")
    (runs / "compare.md").write_text("| an old table |\n")  # compare's output from before
    (runs / "failed").mkdir()  # what a run that failed before training used to leave
    (runs / "failed" / ".flaxcnn-lock").write_text("")
    (runs / "notes").mkdir()
    (runs / "notes" / "config.json").write_text("{}")
    empty = write_run(runs / "empty")
    (empty / "metrics.jsonl").write_text("")

    assert compare.main(sorted(str(p) for p in runs.iterdir()) + ["--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert [r["run"] for r in cells(captured.out)] == ["good"]
    assert captured.err.splitlines() == [
        f"warning: skipping {runs / 'compare.md'}: it is not a folder",
        f"warning: skipping {empty}: it has no finished epoch yet (its metrics.jsonl is empty)",
        f"warning: skipping {runs / 'failed'}: it is not a run folder: it has no config.json",
        f"warning: skipping {runs / 'notes'}: it is not a run folder: it has no metrics.jsonl",
        f"wrote {tmp_path / 'compare.png'} and {tmp_path / 'compare.md'}"]
    assert good.is_dir()


def test_errors_name_the_path(tmp_path, capsys):
    good = write_run(tmp_path / "good")
    bad_json = write_run(tmp_path / "bad_json")
    (bad_json / "metrics.jsonl").write_text("{not json\n")
    (tmp_path / "stray").mkdir()

    for paths, message in (([good, tmp_path / "missing"], f"{tmp_path / 'missing'} does not exist"),
                           ([good, bad_json], f"{bad_json / 'metrics.jsonl'} line 1 is not valid"),
                           ([tmp_path / "stray"], "none of the paths given is a run folder")):
        assert compare.main([str(p) for p in paths] + ["--out", str(tmp_path)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        error = captured.err.splitlines()[-1]
        assert error.startswith(f"error: {message}")
    assert not (tmp_path / "compare.png").exists()


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "no_such_run"
    result = subprocess.run([sys.executable, "-m", "flaxcnn.compare", str(missing)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr == f"error: {missing} does not exist\n"


def test_plots_and_compare_import_no_heavy_modules():
    code = ("import sys, flaxcnn.compare, flaxcnn.plots; "
            "print(sorted(m for m in ('jax', 'tensorflow', 'tensorflow_datasets', 'ml_collections', "
            "'clu', 'flax', 'matplotlib.pyplot') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
