"""flaxcnn.load_run and `python -m flaxcnn.predict`: a finished run used on image files."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from PIL import Image

import flaxcnn
from flaxcnn import predict
from flaxcnn.datasets import FASHION_MNIST_CLASSES
from flaxcnn.errors import UserError
from flaxcnn.runs import eval_logits
from tests.conftest import REPO, copy_run, sample_test_images


@pytest.fixture(scope="module")
def run(reference_run):
    """The session's finished run (conftest.py); read only."""
    return reference_run


@pytest.fixture(scope="module")
def loaded(run):
    return flaxcnn.load_run(run)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The sample's first test images as files: grey PNG, RGB PNG, RGBA PNG, palette PNG, JPEG."""
    folder = tmp_path_factory.mktemp("images")
    images, _ = sample_test_images()
    grey = [Image.fromarray(images[i, ..., 0], "L") for i in range(5)]
    palette = Image.frombytes("P", (28, 28), images[3].tobytes())
    palette.putpalette([v for v in range(256) for _ in range(3)])  # index i is grey level i
    made = {"grey.png": grey[0], "rgb.png": grey[1].convert("RGB"),
            "rgba.png": grey[2].convert("RGBA"), "palette.png": palette, "photo.jpg": grey[4]}
    for name, image in made.items():
        image.save(folder / name)
    return {name: folder / name for name in made}


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_load_run_restores_the_final_model_and_reproduces_its_test_loss_and_accuracy(
        run, loaded):
    model, variables, info = loaded
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (info.step, info.class_names, info.input_shape) == (last["step"],
                                                              FASHION_MNIST_CLASSES, (28, 28, 1))
    assert (info.normalize, info.augment, info.config["model"]) == ("none", "none", "lenet_bn")
    images, labels = sample_test_images()
    logits = np.asarray(eval_logits(model, variables, info, images))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(np.int32)).mean()
    assert np.mean(logits.argmax(-1) == labels) == pytest.approx(last["test_accuracy"], abs=1e-12)
    assert float(loss) == pytest.approx(last["test_loss"], rel=1e-5)


def test_import_flaxcnn_imports_no_jax_until_load_run_is_used():
    code = ("import sys, flaxcnn\n"
            "assert 'jax' not in sys.modules\n"
            "assert callable(flaxcnn.load_run) and 'jax' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_files_of_every_kind_get_the_classes_the_runs_evaluation_gives(loaded, files, capsys):
    model, variables, info = loaded
    images, _ = sample_test_images()
    expected = np.asarray(jax.nn.softmax(eval_logits(model, variables, info, images[:5])))
    results = predict.predict(loaded, list(files.values()))
    for (name, path), result, row in zip(files.items(), results, expected):
        classes = [p["class"] for p in result["predictions"]]
        probabilities = [p["probability"] for p in result["predictions"]]
        assert result["file"] == str(path) and len(classes) == 5 == len(set(classes))
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        if name != "photo.jpg":  # PNG is lossless: exactly the test image
            best = np.argsort(-row, kind="stable")[:5]
            assert classes == [FASHION_MNIST_CLASSES[k] for k in best], name
            # float32 round-off: the five images are one batch here, each file its own there
            np.testing.assert_allclose(probabilities, row[best], rtol=1e-5)


def test_read_image_covers_the_shape_then_center_crops(files, tmp_path):
    images, _ = sample_test_images()
    wide = np.concatenate([np.zeros((28, 28), np.uint8), images[0, ..., 0],
                           np.full((28, 28), 255, np.uint8)], axis=1)
    Image.fromarray(wide, "L").convert("RGB").save(tmp_path / "wide.png")
    assert np.array_equal(predict.read_image(tmp_path / "wide.png", (28, 28, 1)), images[0])
    Image.new("RGB", (90, 60), (200, 100, 50)).save(tmp_path / "big.png")
    colour = predict.read_image(tmp_path / "big.png", (32, 32, 3))
    assert colour.shape == (32, 32, 3) and (colour == [200, 100, 50]).all()
    assert predict.read_image(files["grey.png"], (28, 28, 3)).shape == (28, 28, 3)


def test_cli_prints_the_top_classes_and_json_that_parses(run, files, capsys, monkeypatch):
    monkeypatch.chdir(run.parent)  # a relative --workdir, as typed
    assert predict.main(["--workdir", run.name, str(files["grey.png"]), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(files["grey.png"]) and len(lines) == 4
    assert lines[1].split(maxsplit=1)[1] in FASHION_MNIST_CLASSES
    assert predict.main(["--workdir", str(run), "--json", *map(str, files.values())]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in parsed] == [str(p) for p in files.values()]
    assert all(len(r["predictions"]) == 5 for r in parsed)


def test_unreadable_files_get_one_line_each_and_the_others_are_still_predicted(
        run, files, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "cut.png").write_bytes(files["grey.png"].read_bytes()[:60])
    bad = [tmp_path / "notes.png", tmp_path / "cut.png", tmp_path / "missing.jpg"]
    assert predict.main(["--workdir", str(run), "--json", str(files["rgb.png"]),
                         *map(str, bad)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 3
    for line, path in zip(errors, bad):
        assert line.startswith(f"error: cannot read {path} as an image (") and "Traceback" not in line
    parsed = json.loads(captured.out)
    assert len(parsed[0]["predictions"]) == 5 and [("error" in r) for r in parsed] == [False] + [True] * 3


def test_a_folder_that_is_not_a_run_or_has_no_checkpoint_is_one_line(run, files, tmp_path,
                                                                       capsys):
    for name in ("config.json", "run_info.json"):
        shutil.copy(run / name, tmp_path / name)
    cases = {tmp_path: "has no complete checkpoint yet", tmp_path / "nowhere": "does not exist",
             tmp_path / "checkpoints": "has no config.json"}
    (tmp_path / "checkpoints").mkdir()
    for workdir, message in cases.items():
        assert predict.main(["--workdir", str(workdir), str(files["grey.png"])]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    with pytest.raises(UserError, match="has no complete checkpoint"):
        flaxcnn.load_run(tmp_path)


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_in_one_line(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    info = json.loads((workdir / "run_info.json").read_text())
    (workdir / "run_info.json").write_text(json.dumps({**info, "num_classes": 5}))
    with pytest.raises(UserError, match=r"does not fit the model .*params/Dense_2/bias"):
        flaxcnn.load_run(workdir)
    config = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").write_text(json.dumps({**config, "model": "lenet9"}))
    with pytest.raises(UserError, match="holds a run this flaxcnn cannot build .*lenet9"):
        flaxcnn.load_run(workdir)


def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one_and_changes_nothing(
        run, tmp_path, capsys):
    workdir = copy_run(run, tmp_path / "run", epochs=1)
    checkpoints = workdir / "checkpoints"
    (newest,) = [p for p in checkpoints.iterdir() if p.name.isdigit()]
    _, original, _ = flaxcnn.load_run(workdir)
    shutil.copytree(newest, checkpoints / "3")  # an older checkpoint of the same model
    for path in newest.rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[:20])  # truncated
    before = snapshot(workdir)
    _, variables, info = flaxcnn.load_run(workdir)
    assert info.step == 3 and snapshot(workdir) == before
    assert f"checkpoint {newest} cannot be read" in capsys.readouterr().err
    jax.tree.map(np.testing.assert_array_equal, variables, original)


def test_the_books_load_run_example_runs(run, capsys, monkeypatch):
    text = (Path(REPO) / "docs" / "predict-export.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "load_run" in b]
    monkeypatch.chdir(REPO)  # the image path is the checkout's
    exec(example.replace("runs/lenet-files", str(run)), {})  # pylint: disable=exec-used
    name, probability = capsys.readouterr().out.strip().rsplit(" ", 1)
    assert name in FASHION_MNIST_CLASSES and 0.1 <= float(probability) <= 1
