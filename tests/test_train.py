"""train.py, the command line: one-line errors and non-zero exits, and the compilation cache across
processes (the run itself is tested through trainer.train_and_evaluate in test_trainer.py).

The mistakes run through train.py's own flag parsing and main in this process (conftest.train_here);
one of them, and the cache, which only shows between processes, run as real processes.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, train_here


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_a_mistake_in_a_real_process_is_one_line_and_exit_code_1(tfds_dir, tmp_path):
    result = run_cli("--config", "configs/batchnorm.py", f"--workdir={tmp_path}",
                     f"--config.data_dir={tfds_dir}", "--config.learning_rate=-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --config.learning_rate must be a finite number above 0, e.g. 0.1, got -1.0"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--config.model=lenet5"], "error: unknown model 'lenet5'"),
    (["--config.no_such_field=1"], "error: unknown config field"),
    (["--config.learning_rate=-1"], "error: --config.learning_rate must be a finite number above 0"),
    (["--config.momentum=nan"], "error: --config.momentum must be a finite number in [0, 1)"),
    (["--config.num_epochs=1.5"], "error: flag --config.num_epochs=1.5: invalid literal for int()"),
])
def test_cli_errors_are_one_line_and_exit_non_zero(args, message, tfds_dir, tmp_path, monkeypatch):
    code, out, err = train_here(["train.py", "--config", "configs/batchnorm.py",
                                 f"--workdir={tmp_path}", f"--config.data_dir={tfds_dir}", *args],
                                monkeypatch)
    assert code != 0
    assert err.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("text,message", [
    (None, "error: config file configs/nni.py does not exist; did you mean configs/nin.py?"),
    ("def get_config(:\n", "does not load (SyntaxError: invalid syntax at line 1)"),
    ("import ml_collections\n\ndef get_config():\n    raise RuntimeError('no GPU here')\n",
     "does not load (RuntimeError: no GPU here at line 4)"),
    ("def get_config():\n    return int('x')\n",
     "does not load (ValueError: invalid literal for int() with base 10: 'x' at line 2)"),
    ("import no_such_module\n", "does not load (ModuleNotFoundError: No module named"),
    ("def get_config():\n    pass\n", "returned NoneType, not a ConfigDict"),
])
def test_a_config_file_that_is_missing_or_does_not_load_is_one_line(text, message, tmp_path,
                                                                   monkeypatch):
    path = "configs/nni.py"
    if text is not None:
        path = str(tmp_path / "config.py")
        (tmp_path / "config.py").write_text(text)
    monkeypatch.chdir(REPO)
    code, out, err = train_here(["train.py", "--config", path, f"--workdir={tmp_path / 'run'}"],
                                monkeypatch)
    assert code != 0
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_any_model_field_can_be_set_on_the_command_line(tfds_dir, tmp_path, monkeypatch):
    # configs/regnet.py sets no model field; RegNetX-32 with a third stage (the notebook's
    # exercise), "--flag value" form as well as "--flag=value"
    code, out, err = train_here(
        ["train.py", "--config", "configs/regnet.py:sample", f"--workdir={tmp_path}",
         f"--config.data_dir={tfds_dir}", "--config.num_epochs=0", "--config.plots=False",
         "--config.model_overrides.arch", "((4, 32, 16, 1), (6, 80, 16, 1), (2, 160, 16, 1))",
         "--config.model_overrides.bn_epsilon=1e-3"], monkeypatch)
    assert code == 0, err
    assert "model     regnetx32: 331,930 parameters" in out  # 179,290 with its two stages
    saved = json.loads((tmp_path / "config.json").read_text())["model_overrides"]
    assert saved == {"arch": [[4, 32, 16, 1], [6, 80, 16, 1], [2, 160, 16, 1]], "bn_epsilon": 1e-3}


@pytest.mark.parametrize("args,message", [
    (["--config.model_overrides.depths=(1, 1)"],
     "error: model 'regnetx32' has no field 'depths'; valid fields: arch, stem_channels,"),
    (["--config.model_overrides.arch=3"],  # a field, but not a tuple of stages
     "error: model 'regnetx32' cannot be built with model_overrides {'arch': 3} ("),
    (["--config.model_overrides.arch"], "error: --config.model_overrides.arch needs a value"),
    (["--config.model_overrides.a.b=1"], "error: --config.model_overrides.a.b is not a model field"),
])
def test_a_bad_model_field_is_one_line(args, message, tfds_dir, tmp_path, monkeypatch):
    code, out, err = train_here(["train.py", "--config", "configs/regnet.py:sample",
                                 f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tfds_dir}",
                                 *args], monkeypatch)
    assert code != 0
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert err.strip().startswith(message) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_model_field_the_config_sets_keeps_its_type(tfds_dir, tmp_path, monkeypatch):
    code, _, err = train_here(["train.py", "--config", "configs/vgg.py:sample",
                               f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tfds_dir}",
                               "--config.model_overrides.width_divisor=half"], monkeypatch)
    assert code != 0
    assert err.strip() == ("error: --config.model_overrides.width_divisor=half: the config's "
                           "width_divisor is of type int; give one of that type")
    assert not (tmp_path / "run").exists()


def test_a_config_file_is_executed_once(tmp_path, monkeypatch):
    counter = tmp_path / "loads"
    (tmp_path / "config.py").write_text(
        "from configs import batchnorm\n\n"
        "def get_config():\n"
        f"    with open({str(counter)!r}, 'a') as f:\n"
        "        f.write('x')\n"
        "    return batchnorm.get_config()\n")
    monkeypatch.chdir(REPO)
    code, _, err = train_here(["train.py", "--config", str(tmp_path / "config.py"),
                               "--config.learning_rate=-1", f"--workdir={tmp_path / 'run'}"],
                              monkeypatch)
    assert code == 1 and "learning_rate must be" in err
    assert counter.read_text() == "x"


@pytest.mark.slow
def test_a_rerun_compiles_nothing_with_the_compilation_cache(tfds_dir, tmp_path):
    cache = tmp_path / "cache"
    args = ["--config", "configs/batchnorm.py", "--config.dataset=fashion_mnist_sample",
            "--config.num_epochs=1", "--config.plots=false", f"--config.data_dir={tfds_dir}",
            f"--compilation_cache={cache}"]
    assert run_cli(*args, f"--workdir={tmp_path / 'first'}").returncode == 0
    compiled = sorted(p.name for p in cache.iterdir())
    assert len(compiled) >= 3  # at least the init, the train step and the evaluation
    assert run_cli(*args, f"--workdir={tmp_path / 'second'}").returncode == 0
    assert sorted(p.name for p in cache.iterdir()) == compiled  # every compilation was a hit
    counted = [json.loads((tmp_path / run / "run_info.json").read_text())["timing"]["compilations"]
               for run in ("first", "second")]
    assert counted[0]["from_cache"] == 0 and counted[0]["programs"] >= 3
    assert counted[1]["from_cache"] == counted[1]["programs"] == counted[0]["programs"]
    elsewhere = tmp_path / "env-cache"  # JAX's own variable, which 'off' overrides too
    off = run_cli(*args[:-1], "--compilation_cache=off", f"--workdir={tmp_path / 'third'}",
                  env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(elsewhere)))
    assert off.returncode == 0 and not elsewhere.exists()
