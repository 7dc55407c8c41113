"""Issue 29's measurements: the host stream's throughput, and an image folder's decode in bounded memory.

    python benchmarks/streaming/stream_bench.py make-folder DIR [--images 13000] [--size 300]
    python benchmarks/streaming/stream_bench.py decode DIR --data-dir D [--store 256]
    python benchmarks/streaming/stream_bench.py stream --store 224 --images 6000 --batch 256

`make-folder` writes DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg (10 classes, one image in
13 in test/): smooth random colour fields with noise, JPEG quality 90, so they compress like photos
rather than like flat colour. `decode` decodes the folder into its cache (flaxcnn.datasets.
folder_cache) and prints the seconds and the process's peak anonymous memory (RssAnon sampled every
20 ms). `stream` writes a memory-mapped cache of random uint8 images at the stored size and reads
epochs through the host stream's train_batches and onto the devices (HostStreamPipeline, as the
trainer builds it): one untimed, one with the file's pages dropped from the page cache first
(cold, posix_fadvise DONTNEED), one read again (warm); it prints images/s.
"""
import argparse
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """The peak of RssAnon while the block runs, sampled in a thread."""

    def __enter__(self):
        self.peak, self.done = rss_anon_kib(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss_anon_kib())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_anon_kib())


def make_folder(args):
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(args.dir, i, args.size) for i in range(args.images)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_one, jobs, chunksize=64))
    print(json.dumps({"images": args.images, "size": args.size, "dir": args.dir}))


def _write_one(job):
    from PIL import Image

    root, i, size = job
    split = "test" if i % 13 == 0 else "train"
    label = i % 10
    rng = np.random.default_rng(i)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, np.int16) + rng.integers(-20, 21, (size, size, 3))
    folder = os.path.join(root, split, f"class{label}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def decode(args):
    from flaxcnn.datasets import folder_cache

    with PeakAnon() as peak:
        t0 = time.perf_counter()
        data = folder_cache.load_folder(args.dir, data_dir=args.data_dir, store_size=args.store)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": round(seconds, 1), "images": len(data.train_labels) + len(
        data.test_labels), "peak_anon_mib": round(peak.peak / 1024), "cache_gib": round(
        data.nbytes / 2**30, 3), "cache_dir": data.cache_dir}))


def stream(args):
    import jax
    import jax.numpy as jnp

    from flaxcnn import pipelines, training
    from flaxcnn.datasets.dataset import Examples

    path = os.path.join(args.scratch, f"stream-{args.store}.npy")
    shape = (args.images, args.store, args.store, 3)
    if not os.path.exists(path):
        images = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
        rng = np.random.default_rng(0)
        for first in range(0, args.images, 1000):
            images[first:first + 1000] = rng.integers(0, 256, images[first:first + 1000].shape,
                                                      dtype=np.uint8)
        images.flush()
        del images
    images = np.load(path, mmap_mode="r")
    labels = np.zeros(args.images, np.int32)
    cfg = training.StepConfig(image_size=args.store, dtype=jnp.float32,
                              batch_per_device=args.batch // jax.device_count(),
                              eval_batch_per_device=args.batch // jax.device_count())
    steps = args.images // args.batch
    pipeline = pipelines.HostStreamPipeline(Examples(images, labels), Examples(images, labels),
                                            cfg, steps_per_epoch=steps, num_test=args.images)
    order = np.random.default_rng(1).permutation(args.images)
    results = {"store": args.store, "images": args.images, "batch": args.batch,
               "file_gib": round(os.path.getsize(path) / 2**30, 3)}
    for name in ("first", "cold", "warm"):  # the first pass starts the threads, untimed
        if name == "cold":
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        t0 = time.perf_counter()
        for batch in pipelines.ahead_on_devices(pipeline.train_batches(order, 0)):
            jax.block_until_ready(batch["image"])
        seconds = time.perf_counter() - t0
        if name != "first":
            results[f"{name}_images_per_s"] = round(steps * args.batch / seconds)
    results["read_ahead_mib"] = round(pipeline.read_ahead_bytes(shape[1:]) / 2**20)
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-folder")
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=13000)
    p.add_argument("--size", type=int, default=300)
    p = sub.add_parser("decode")
    p.add_argument("dir")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--store", type=int, default=256)
    p = sub.add_parser("stream")
    p.add_argument("--store", type=int, required=True)
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--scratch", default="/tmp/flaxcnn-stream-bench")
    args = parser.parse_args()
    if args.command == "stream":
        os.makedirs(args.scratch, exist_ok=True)
    {"make-folder": make_folder, "decode": decode, "stream": stream}[args.command](args)


if __name__ == "__main__":
    main()
