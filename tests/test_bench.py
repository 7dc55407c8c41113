"""flaxcnn.bench at a tiny size: the table and JSON it promises, on this machine's 4 CPU devices."""
import importlib
import json
import subprocess
import sys

import pytest

from flaxcnn import bench, models
from tests.conftest import CHAPTER_CONFIGS, REPO


@pytest.mark.slow
def test_bench_times_steps_and_a_whole_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the JSON goes to runs/bench.json by default
    out = tmp_path / "runs" / "bench.json"
    assert bench.main(["--models", "lenet_bn", "--steps", "3", "--image-size", "16",
                       "--batch-size", "8", "--train-examples", "96", "--e2e",
                       "--device-loop", "on"]) == 0
    report = json.loads(out.read_text())
    assert report["devices"] == 4 and report["platform"] == "cpu" and report["date"]
    (result,) = report["results"]
    assert result["model"] == "lenet_bn" and result["device_loop"] is True
    assert result["images_per_sec"] == pytest.approx(8 / (result["ms_per_step"] / 1e3))
    assert result["flops_per_step"] > 3 * 8 * 30_000  # forward+backward of LeNet at 16 px, 8 images
    assert result["tflops_per_sec"] > 0 and result["fraction_of_bf16_peak"] is None  # no CPU peak
    assert result["e2e_train_examples"] == 96 and result["e2e_test_examples"] == 16
    assert result["e2e_over_step_only"] > 0
    assert "| lenet_bn | 16" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_keeps_each_models_result_when_a_later_one_fails(tmp_path, monkeypatch):
    """A device call cut short (time limit, out of memory) still returns what it measured."""
    measured = bench.bench_model

    def second_fails(name, **kwargs):
        if name == "nin":
            raise MemoryError("out of device memory")
        return measured(name, **kwargs)

    monkeypatch.setattr(bench, "bench_model", second_fails)
    out = tmp_path / "bench.json"
    with pytest.raises(MemoryError):
        bench.main(["--models", "lenet_bn,nin", "--steps", "2", "--image-size", "16",
                    "--batch-size", "8", "--train-examples", "96", f"--json={out}"])
    assert [r["model"] for r in json.loads(out.read_text())["results"]] == ["lenet_bn"]
    assert not (tmp_path / "bench.json.tmp").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], {"lenet_bn": 256, "alexnet": 128, "resnet18": 256}),  # the course's, from the registry
    (["--batch-size", "64"], {"lenet_bn": 64, "alexnet": 64, "resnet18": 64}),
])
def test_bench_batch_is_each_models_d2l_batch_unless_given(tmp_path, monkeypatch, argv, expected):
    batches = {}

    class Measured(Exception):
        pass

    def record_batch(name, *, batch_size, **kwargs):
        batches[name] = batch_size
        if len(batches) == len(expected):
            raise Measured  # stops main before its table, which needs real results
        return {"model": name, "images_per_sec": 1.0}

    monkeypatch.setattr(bench, "bench_model", record_batch)
    with pytest.raises(Measured):
        bench.main(["--models", ",".join(expected), f"--json={tmp_path / 'bench.json'}", *argv])
    assert batches == expected


def test_bench_refuses_unknown_models(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--models", "lenet7"])
    assert "unknown model lenet7" in capsys.readouterr().err


@pytest.mark.parametrize("name", CHAPTER_CONFIGS)
def test_bench_uses_the_configs_settings(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model in models.chapter_models()  # so `--models all` benches it
    size, overrides = bench.d2l_setup(config.model)
    assert (size, overrides) == (config.image_size, config.model_overrides.to_dict())
    assert config.batch_size == models.spec(config.model).d2l_batch_size


def test_bench_and_models_import_without_tensorflow():
    blocked = "tensorflow tensorflow_datasets ml_collections clu".split()
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "import flaxcnn.bench, flaxcnn.models, flaxcnn.training, flaxcnn.summary\n"
            "print(flaxcnn.bench.fashion_mnist_arrays(60)[2])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout
