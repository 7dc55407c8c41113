"""train.py, the command line: one-line errors and non-zero exits (the run itself is tested through
trainer.train_and_evaluate in test_trainer.py)."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--config.model=lenet5"], "error: unknown model 'lenet5'"),
    (["--config.no_such_field=1"], "error: unknown config field"),
])
def test_cli_errors_are_one_line_and_exit_non_zero(args, message, tfds_dir, tmp_path):
    result = run_cli("--config", "configs/batchnorm.py", f"--workdir={tmp_path}",
                     f"--config.data_dir={tfds_dir}", *args)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr
