"""One process of tests/test_cluster.py's shard test: joins the cluster, builds the run's stages as
train_and_evaluate does (flaxcnn.trainer) and saves what this process trains on and evaluates.

    python tests/cluster_worker.py OUT.npz DATA_DIR ADDRESS NUM_PROCESSES PROCESS_ID
"""
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from flaxcnn import cluster  # noqa: E402


def main(out, data_dir, address, num_processes, process_id):
    cluster.join(coordinator_address=address, num_processes=int(num_processes),
                 process_id=int(process_id), initialization_timeout=30,
                 heartbeat_timeout_seconds=10)
    import dataclasses

    import jax
    import jax.numpy as jnp

    from configs import batchnorm
    from flaxcnn import replicas, trainer, training

    config = batchnorm.get_config()
    config.update(dataset="fashion_mnist_sample", data_dir=data_dir, batch_size=16)
    dataset = trainer.resolve_dataset(config)
    run = trainer.build_run(config, dataset, resuming=False)
    pipeline = trainer.build_pipeline(config, dataset, run.steps_per_epoch)
    state = replicas.replicate(run.fresh)
    # Which examples each device takes, by the train chunk's own rules (training.example_positions
    # and examples_at): the real ones, without the last batch's padding.
    positions = training.example_positions(config.batch_size // jax.device_count(),
                                           jax.device_count())
    examples = jax.pmap(lambda perm: jax.vmap(lambda i: training.examples_at(perm, positions(i)))(
        jnp.arange(run.steps_per_epoch)), replicas.AXIS)

    def epoch_examples(epoch):
        perm = pipeline.train_data.permutation(state.data_key, epoch)
        indices, mask = (replicas.local_array(a).reshape(-1) for a in examples(perm))
        return indices[mask]

    images, _ = dataset.load_arrays("test")
    whole, _ = dataclasses.replace(dataset, process_index=0, process_count=1).load_arrays("test")
    digest = lambda batch: np.array([hashlib.sha256(x.tobytes()).hexdigest() for x in batch])  # noqa: E731
    np.savez(out, train_epoch0=epoch_examples(0), train_epoch1=epoch_examples(1),
             steps=run.steps_per_epoch, test=digest(images), whole_test=digest(whole),
             data_key=np.asarray(run.fresh.data_key))


if __name__ == "__main__":
    main(*sys.argv[1:])
