"""Input pipelines: on-device data, evaluation coverage, chunk sizing, and the one interface that the
device pipeline and the tf.data stream share (on the bundled sample)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcnn import datasets, pipelines, replicas, training
from tests.conftest import images_and_labels, lenet_state


def test_epoch_order_depends_only_on_the_key_and_epoch():
    images, labels = images_and_labels(50)
    four = pipelines.DeviceData(images, labels, jax.devices()[:4])
    one = pipelines.DeviceData(images, labels, jax.devices()[:1])

    def key(seed, devices):  # the data key as it travels in a replicated RunState
        return replicas.replicate(jax.random.PRNGKey(seed), devices)

    p0 = np.asarray(four.permutation(key(3, jax.devices()[:4]), 0))
    assert p0.shape == (4, 50)
    assert all((p0[i] == p0[0]).all() for i in range(4))  # the same order on every device
    assert sorted(p0[0]) == list(range(50))
    np.testing.assert_array_equal(np.asarray(one.permutation(key(3, jax.devices()[:1]), 0))[0],
                                  p0[0])
    assert not (np.asarray(four.permutation(key(3, jax.devices()[:4]), 1))[0] == p0[0]).all()
    assert not (np.asarray(four.permutation(key(4, jax.devices()[:4]), 0))[0] == p0[0]).all()



def test_evaluation_covers_every_example_exactly_once():
    images, labels = images_and_labels(37, shape=(28, 28, 1))
    state = lenet_state()
    devices = jax.devices()[:4]
    cfg = training.StepConfig(image_size=28, dtype=jnp.float32, batch_per_device=2,
                              eval_batch_per_device=4)
    test = pipelines.DeviceData(images, labels, devices)
    steps = pipelines.eval_steps(37, 4, 4)
    assert steps == 3
    sums, preds = training.make_evaluate(cfg, devices)(
        replicas.replicate(state, devices), test.images, test.labels, test.local_index, steps)
    sums, preds = replicas.unreplicate(sums), pipelines.gather_predictions(preds, 37)
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                         images.astype(np.float32) / 255, train=False)
    expected = np.argmax(np.asarray(logits), -1)
    np.testing.assert_array_equal(preds, expected)
    assert sums["count"] == 37
    assert sums["correct"] == int((expected == labels).sum())



def test_chunk_timer_sizes_chunks_to_the_target():
    timer = pipelines.ChunkTimer(target_seconds=1.0)
    assert timer.next_size(100) == 1
    timer.record(1, 30.0)  # the compiling call: ignored
    assert timer.next_size(100) == 1
    timer.record(1, 0.05)
    assert timer.next_size(100) == 20
    assert timer.next_size(7) == 7


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return datasets.resolve(datasets.SAMPLE_NAME, data_dir=str(tmp_path_factory.mktemp("tfds")))


def make_pipeline(kind, dataset, batch=64):
    cfg = training.StepConfig(image_size=28, dtype=jnp.float32, batch_per_device=batch // 4,
                              eval_batch_per_device=batch // 4)
    steps = dataset.train_batches_per_epoch(batch)
    if kind == "device":
        return pipelines.DevicePipeline(dataset.load_arrays("train"), dataset.load_arrays("test"),
                                        cfg, steps_per_epoch=steps, num_test=dataset.info.num_test)
    return pipelines.StreamPipeline(dataset, cfg, steps_per_epoch=steps, seed=0)


@pytest.mark.parametrize("kind", ["device", "stream"])
def test_both_pipelines_train_evaluate_and_preview_alike(kind, sample):
    pipeline = make_pipeline(kind, sample)
    state = replicas.replicate(training.RunState.fresh(lenet_state(lr=0.05), seed=0))
    chunk_ends = []
    for state, step in pipeline.train_chunks(state, epoch=0, start_step=3):
        chunk_ends.append(step)
    # ceil(1,003 / 64) = 16 steps, the last with 43 examples; the first chunk compiles
    assert chunk_ends[0] == 4 and chunk_ends[-1] == 16
    assert chunk_ends == sorted(set(chunk_ends))
    sums = replicas.host_sums(state.totals)
    assert sums["count"] == 12 * 64 + 43 and sums["bad_step"] == -1
    assert int(replicas.unreplicate(state.train.step)) == 13
    test_sums, predictions = pipeline.evaluate(state)
    assert test_sums["count"] == 1003 and predictions.shape == (1003,)
    images, indices, labels = pipeline.preview(18, 10)
    test_images, test_labels = sample.load_arrays("test")
    assert images.shape == (18, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, test_labels)
    np.testing.assert_array_equal(images, test_images[indices])
    assert sorted(labels[indices[:10]]) == list(range(10))  # every class first
    assert test_sums["correct"] == int((predictions == labels).sum())
