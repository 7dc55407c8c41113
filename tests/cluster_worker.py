"""One process of tests/test_cluster.py's shard test: joins the cluster, builds the run as train.py
does (flaxcnn.trainer.Trainer) and saves what this process trains on and evaluates.

    python tests/cluster_worker.py OUT.npz WORKDIR DATA_DIR ADDRESS NUM_PROCESSES PROCESS_ID
"""
import hashlib
import sys
from pathlib import Path

import numpy as np

from flaxcnn import cluster


def main(out, workdir, data_dir, address, num_processes, process_id):
    cluster.join(coordinator_address=address, num_processes=int(num_processes),
                 process_id=int(process_id), initialization_timeout=30,
                 heartbeat_timeout_seconds=10)
    import dataclasses

    from configs import batchnorm
    from flaxcnn import trainer

    config = batchnorm.get_config()
    config.update(dataset="fashion_mnist_sample", data_dir=data_dir, batch_size=16)
    run = trainer.Trainer(config, Path(workdir))
    images, _ = run.dataset.load_arrays("test")
    whole, _ = dataclasses.replace(run.dataset, process_index=0, process_count=1).load_arrays("test")
    digest = lambda batch: np.array([hashlib.sha256(x.tobytes()).hexdigest() for x in batch])  # noqa: E731
    np.savez(out, train_epoch0=run.pipeline.epoch_examples(0),
             train_epoch1=run.pipeline.epoch_examples(1), steps=run.steps_per_epoch,
             test=digest(images), whole_test=digest(whole),
             data_key=np.asarray(run.data_key))
    run.checkpoints.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
