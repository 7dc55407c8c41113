"""Input pipelines: on-device data, evaluation coverage, chunk sizing, the one interface that the
device pipeline and the host stream share (on the bundled sample), and the host stream giving the
device pipeline's steps exactly, each process reading only its devices' part of each step."""
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



@pytest.mark.parametrize("shard_length", [37, 41])  # 41: a process's shard padded to the largest
def test_evaluation_covers_every_example_exactly_once(shard_length):
    images, labels = images_and_labels(37, shape=(28, 28, 1))
    state = lenet_state()
    devices = jax.devices()[:4]
    cfg = training.StepConfig(image_size=28, dtype=jnp.float32, batch_per_device=2,
                              eval_batch_per_device=4)
    test = pipelines.DeviceData(pipelines.padded(images, shard_length),
                                pipelines.padded(labels, shard_length), devices)
    steps = pipelines.eval_steps(shard_length, 4, 4)
    assert steps == 3
    sums, preds = training.make_evaluate(cfg, devices)(
        replicas.replicate(state, devices), test.images, test.labels, test.local_index,
        np.int32(37), steps)
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
    return pipelines.HostStreamPipeline(dataset.examples("train", whole=True),
                                        dataset.examples("test"), cfg, steps_per_epoch=steps,
                                        num_test=dataset.info.num_test)


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


def test_the_host_stream_trains_exactly_as_the_device_pipeline(sample):
    fresh = training.RunState.fresh(lenet_state(lr=0.05), seed=0)
    ends = {}
    for kind in ("device", "stream"):
        pipeline = make_pipeline(kind, sample)
        state = replicas.replicate(fresh)
        for state, step in pipeline.train_chunks(state, epoch=1, start_step=10):
            pass
        ends[kind] = replicas.unreplicate(state)
    for a, b in zip(jax.tree.leaves(ends["device"].train.params),
                    jax.tree.leaves(ends["stream"].train.params)):
        np.testing.assert_array_equal(a, b)
    # steps 10..15 of 16: the last holds the epoch's 43 last examples
    assert replicas.host_sums(replicas.replicate(ends["stream"].totals))["count"] == 5 * 64 + 43


def test_each_process_reads_only_its_devices_part_of_each_step(sample):
    order = np.random.default_rng(0).permutation(1003)
    whole = next(make_pipeline("stream", sample).train_batches(order, start_step=2))
    reads = []
    examples = sample.examples("train", whole=True)
    pipeline = make_pipeline("stream", sample)  # its own: the first one's reads ahead go on
    pipeline.train = type("Counted", (), {"read": lambda self, i: reads.append(i) or
                                          examples.read(i)})()
    pipeline.positions = np.array([2, 3])  # process 1 of 2, two devices each
    half = next(pipeline.train_batches(order, start_step=2))
    assert reads and all(len(indices) == 32 for indices in reads)  # its devices' half, no more
    assert any(np.array_equal(indices, order[2 * 64 + 32: 3 * 64]) for indices in reads)
    np.testing.assert_array_equal(half["image"], whole["image"][2:])
    np.testing.assert_array_equal(half["label"], whole["label"][2:])


@pytest.mark.slow
def test_the_tf_data_stream_trains_and_evaluates_a_tfrecord_dataset(tmp_path):
    """tfds datasets stored as tfrecord are what tf.data is left for: 20 examples, batch 8, so
    3 steps, the last with 4 real examples; every test example evaluated once."""
    from tests.data_helpers import TFDS_TEST_NAME, tfds_test_builder

    tfds_test_builder()(data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
    dataset = datasets.resolve(TFDS_TEST_NAME, data_dir=str(tmp_path))
    assert not hasattr(dataset, "examples")
    cfg = training.StepConfig(image_size=28, dtype=jnp.float32, batch_per_device=2,
                              eval_batch_per_device=2)
    pipeline = pipelines.StreamPipeline(dataset, cfg, steps_per_epoch=3, seed=0)
    state = replicas.replicate(training.RunState.fresh(lenet_state(), seed=0))
    for state, step in pipeline.train_chunks(state, epoch=0, start_step=0):
        pass
    assert step == 3 and replicas.host_sums(state.totals)["count"] == 20
    sums, predictions = pipeline.evaluate(state)
    assert sums["count"] == 20 and predictions.shape == (20,)
