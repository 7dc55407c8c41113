"""Checkpoints: exact resume after SIGTERM/Ctrl-C, device-count changes, damage, refusals.

(SIGKILL at any moment, followed by an exact resume, is tests/test_robustness.py's kill soak.)
Runs that get a signal are real train.py processes; the rest run in this process, most of them from
a copy of the session's reference run (conftest.py) cut back to an earlier epoch.
"""
import json
import signal

import pytest

from flaxcnn import checkpoint, trainer
from flaxcnn.errors import UserError
from tests.conftest import (RUN, STEPS_PER_EPOCH, assert_bit_identical, checkpoint_steps,
                            copy_run, finish, interrupt_twice, latest, launch_train, metrics,
                            metrics_without_timing, train_to_end, wait_for_checkpoint)

S = STEPS_PER_EPOCH


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resumes_bit_identical(reference_run, tfds_dir, tmp_path,
                                                           run_config, capsys):
    # The first chunks of a fresh process are single steps (the first one compiles), so a
    # SIGTERM sent as the first epoch's steps begin stops it after a step or two.
    process = launch_train(tmp_path, tfds_dir, phases=True)
    for line in process.stderr:
        if line.strip() == "flaxcnn-phase: train begin":
            process.send_signal(signal.SIGTERM)
            break
    code, out, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    (step,) = checkpoint_steps(tmp_path)
    assert 0 < step < S  # in the middle of the first epoch
    assert f"saved a checkpoint at step {step} (epoch 0 + {step} steps)" in out
    assert f"resume with: python train.py --config configs/batchnorm.py --workdir {tmp_path}" in out
    assert int(latest(tmp_path)["step"]) == step

    train_to_end(run_config(), tmp_path)
    assert f"step {step}, epoch 0 + {step} steps" in capsys.readouterr().out
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(tmp_path), latest(reference_run))


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_and_keeps_complete_checkpoints(tfds_dir, tmp_path,
                                                                   run_config, capsys):
    process = launch_train(tmp_path, tfds_dir)
    wait_for_checkpoint(tmp_path / "checkpoints" / str(S), process)  # epoch 1's, complete
    interrupt_twice(process)
    code, out, err = finish(process)
    assert code == 130 and "second Ctrl-C" in err
    assert S in checkpoint_steps(tmp_path)
    train_to_end(run_config(), tmp_path)
    assert "resuming from checkpoint" in capsys.readouterr().out
    assert [m["epoch"] for m in metrics(tmp_path)] == list(range(1, RUN["num_epochs"] + 1))


@pytest.mark.slow
def test_checkpoints_move_between_device_counts(reference_run, tfds_dir, tmp_path, run_config):
    copy_run(reference_run, tmp_path, epochs=1)  # saved with 4 devices
    code, out, err = finish(launch_train(tmp_path, tfds_dir, "--config.num_epochs=2", devices=1))
    assert code == 0, err  # restored on 1, saved with 1
    assert json.loads((tmp_path / "run_info.json").read_text())["devices"] == 1
    assert checkpoint_steps(tmp_path)[-1] == 2 * S
    train_to_end(run_config(num_epochs=3), tmp_path)  # restored on 4
    assert json.loads((tmp_path / "run_info.json").read_text())["devices"] == 4
    assert checkpoint_steps(tmp_path)[-1] == 3 * S
    assert [m["epoch"] for m in metrics(tmp_path)] == [1, 2, 3]


# In-process runs (the 4 fake devices of conftest.py) for the rest.


def test_damaged_latest_checkpoint_is_set_aside_and_an_older_one_used(reference_run, run_config,
                                                                       tmp_path, capsys):
    copy_run(reference_run, tmp_path, epochs=2)
    checkpoints = tmp_path / "checkpoints"
    assert checkpoint_steps(tmp_path) == [S, 2 * S]
    for path in (checkpoints / str(2 * S)).rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[:20])  # truncated
    unfinished = checkpoints / f"{3 * S}.orbax-checkpoint-tmp-1234"
    unfinished.mkdir()

    train_to_end(run_config(num_epochs=3), tmp_path)
    err = capsys.readouterr()
    assert f"skipping the unfinished checkpoint {unfinished}" in err.err
    assert f"checkpoint {checkpoints / str(2 * S)} is damaged" in err.err
    assert "resuming from checkpoint" in err.out and f"step {S}, epoch 1" in err.out
    assert len(list((tmp_path / "checkpoints-damaged").iterdir())) == 1  # kept, not deleted
    assert unfinished.is_dir()
    assert [m["epoch"] for m in metrics(tmp_path)] == [1, 2, 3]


def test_resuming_with_a_different_experiment_is_refused_and_writes_nothing(reference_run,
                                                                            run_config, tmp_path):
    copy_run(reference_run, tmp_path, epochs=1)
    # Every file but the workdir lock, which records the last run that opened the workdir.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != ".flaxcnn-lock"}
    with pytest.raises(UserError) as error:
        trainer.train_and_evaluate(run_config(num_epochs=2, image_size=32,
                                              model="lenet_bn_scratch"), tmp_path)
    assert "model (saved 'lenet_bn', now 'lenet_bn_scratch')" in str(error.value)
    assert "image_size (saved 28, now 32)" in str(error.value)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")
            if p.name != ".flaxcnn-lock"} == before
    # Training longer is a safe change.
    train_to_end(run_config(num_epochs=2), tmp_path)


def test_restore_false_refuses_a_workdir_with_checkpoints(reference_run, run_config, tmp_path):
    copy_run(reference_run, tmp_path, epochs=1)
    with pytest.raises(UserError, match="already holds checkpoints and --config.restore=false"):
        trainer.train_and_evaluate(run_config(num_epochs=2, restore=False), tmp_path)
    assert checkpoint_steps(tmp_path) == [S]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(reference_run,
                                                                         run_config, tmp_path):
    copy_run(reference_run, tmp_path, epochs=1)
    with pytest.raises(UserError, match=r"NaN or infinite at step 3\d .*lower --config.learning_rate"):
        # parameters of ~1e35 after the first step: the next one's BatchNorm statistics overflow
        trainer.train_and_evaluate(run_config(num_epochs=2, learning_rate=1e36), tmp_path)
    assert checkpoint.Checkpoints(tmp_path).manager.latest_step() == S


def test_eval_only_evaluates_the_latest_checkpoint(reference_run, run_config, tmp_path, capsys):
    copy_run(reference_run, tmp_path, epochs=1)
    last = metrics(tmp_path)[-1]
    train_to_end(run_config(num_epochs=1, eval_only=True), tmp_path)
    assert "evaluated the checkpoint of epoch 1" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert record["test_accuracy"] == last["test_accuracy"]
    assert record["test_examples"] == 1003 and record["step"] == S and record["epoch"] == 1
    assert checkpoint_steps(tmp_path) == [S]


def test_eval_only_needs_checkpoints(run_config, tmp_path):
    with pytest.raises(UserError, match="eval_only=true needs a workdir with checkpoints"):
        trainer.train_and_evaluate(run_config(eval_only=True), tmp_path)


def test_only_an_unfinished_save_starts_afresh_and_keeps_it(reference_run, run_config, tmp_path,
                                                            capsys):
    unfinished = tmp_path / "checkpoints" / f"{S}.orbax-checkpoint-tmp-99"
    unfinished.mkdir(parents=True)
    train_to_end(run_config(num_epochs=1), tmp_path)
    captured = capsys.readouterr()
    assert f"skipping the unfinished checkpoint {unfinished}" in captured.err
    assert "resuming" not in captured.out
    assert unfinished.is_dir() and checkpoint_steps(tmp_path) == [S]
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)[:1]


def test_rerunning_a_finished_run_trains_nothing_and_returns_its_last_epoch(reference_run,
                                                                           run_config, tmp_path):
    copy_run(reference_run, tmp_path, epochs=1)
    first = metrics(tmp_path)[-1]
    again = train_to_end(run_config(num_epochs=1), tmp_path)
    assert again == first  # the last epoch's record, read back from metrics.jsonl
    assert len(metrics(tmp_path)) == 1
    assert checkpoint_steps(tmp_path) == [S]
