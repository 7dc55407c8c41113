"""Train-step throughput of the chapter's models: the code train.py runs, timed on synthetic data.

    python -m flaxcnn.bench [--models all] [--batch-size N] [--dtype bfloat16] [--e2e]

For each model at d2l's image size and batch size (the registry's, flaxcnn.models: 128, 256 for
LeNet-BN, ResNet-18 and DenseNet, unless --batch-size sets one for all): compile seconds, ms
per step, images/s, TFLOP/s (XLA's cost analysis of one train step) and the fraction of the
card's bf16 peak. With --e2e, also one full
epoch through the real input pipeline (uint8 dataset on the devices, permutation, gather, resize,
train steps, then the whole test-set evaluation), timed after a warm-up epoch, so the
end-to-end/step-only ratio shows what the pipeline costs. Writes a table and JSON.

Imports neither TensorFlow nor ml_collections: it runs where only jax, flax and optax are.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn import flops, models, optimizers, pipelines, replicas, runtime, training

FASHION_MNIST = {"train": 60_000, "test": 10_000, "shape": (28, 28, 1), "classes": 10}
# Dense (no structured sparsity) bf16 tensor-core/MXU peaks per chip in TFLOP/s, from the vendors'
# datasheets, by a substring of jax's device_kind; the first match wins, so specific names come
# first. NVIDIA quotes "with sparsity" figures: the dense peak is half of those.
# "of peak" in the bench table is against these datasheet figures (like MFU). On the H200 the brief
# reports ~790 TFLOP/s as the largest bf16 matmul rate actually measured there, so about 80% of the
# datasheet peak is the practical ceiling; the table keeps the datasheet number.
# Cards without bf16 tensor cores (V100, T4) are left out: no bf16 peak to compare with.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,    # H100 datasheet, PCIe: 1,513 with sparsity
    "H100 NVL": 835.0,     # H100 datasheet, NVL: 1,671 with sparsity
    "H100": 989.0,         # H100 datasheet, SXM: 1,979 with sparsity
    "H200": 989.0,         # H200 datasheet, SXM: 1,979 with sparsity (same tensor cores as H100)
    "A100": 312.0,         # A100 datasheet: 312 dense, 624 with sparsity
    "L4": 121.0,           # L4 datasheet: 242 with sparsity
    "TPU v4": 275.0,       # Cloud TPU docs, v4: 275 bf16 per chip
    "TPU v5 lite": 197.0,  # Cloud TPU docs, v5e ("TPU v5 lite" in jax): 197 bf16 per chip
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,      # Cloud TPU docs, v5p: 459 bf16 per chip
    "TPU v5": 459.0,       # v5p as jax names it ("TPU v5"), after the v5e names
    "TPU v6": 918.0,       # Cloud TPU docs, v6e Trillium ("TPU v6 lite"): 918 bf16 per chip
}


def bf16_peak(device_kind: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in device_kind), None)


def synthetic(n: int, shape, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            rng.integers(0, classes, n).astype(np.int32))


def fashion_mnist_arrays(train_examples: int | None):
    """The real Fashion-MNIST when it is here (downloaded IDX files, or prepared by tfds); else
    synthetic uint8 of its shape."""
    try:
        from flaxcnn import datasets  # numpy only, unless tfds prepared it (then tfds)

        if datasets.is_prepared("fashion_mnist"):
            dataset = datasets.resolve("fashion_mnist")
            train, test = (dataset.load_arrays(split) for split in ("train", "test"))
            source = "fashion_mnist"
        else:
            raise LookupError
    except (ImportError, LookupError):
        train = synthetic(FASHION_MNIST["train"], FASHION_MNIST["shape"], 10, seed=0)
        test = synthetic(FASHION_MNIST["test"], FASHION_MNIST["shape"], 10, seed=1)
        source = "synthetic uint8 in Fashion-MNIST's shape"
    if train_examples:
        train = (train[0][:train_examples], train[1][:train_examples])
        test = (test[0][:max(train_examples // 6, 1)], test[1][:max(train_examples // 6, 1)])
    return train, test, source


def step_flops(state, cfg: training.StepConfig, channels: int) -> float:
    """FLOPs of one global train step (every device's share), counted on the host CPU on every
    backend (flaxcnn.flops says why)."""
    return flops.train_step_flops(state, cfg.step_kwargs, cfg.batch_per_device,
                                  (cfg.image_size, cfg.image_size, channels)) * jax.device_count()


def d2l_setup(name: str) -> tuple[int, dict]:
    """(image size, model overrides) of d2l's experiment with `name` (the registry's; 224 and no
    overrides for the variants d2l does not train); its batch size is
    models.spec(name).d2l_batch_size."""
    spec = models.spec(name)
    return spec.d2l_image_size or 224, spec.d2l_overrides


def bench_model(name: str, *, batch_size: int, dtype: str, steps: int, e2e: bool,
                image_size: int | None, train_examples: int | None, device_loop: bool | None):
    size, overrides = d2l_setup(name)
    size = image_size or size
    devices = jax.local_device_count()
    if batch_size % devices:
        raise SystemExit(f"error: --batch-size {batch_size} is not divisible by the {devices} "
                         "devices")
    compute_dtype = getattr(jnp, dtype)
    tx, _ = optimizers.create_optimizer(optimizer="sgd", learning_rate=0.01)
    channels = FASHION_MNIST["shape"][-1]
    state = training.create_train_state(name, tx, input_shape=(size, size, channels),
                                        dtype=compute_dtype, model_overrides=overrides)
    cfg = training.StepConfig(image_size=size, dtype=compute_dtype,
                              batch_per_device=batch_size // devices,
                              eval_batch_per_device=batch_size // devices,
                              **({} if device_loop is None else {"device_loop": device_loop}))
    flops = step_flops(state, cfg, channels)

    train_arrays, test_arrays, source = fashion_mnist_arrays(train_examples)
    steps = max(1, min(steps, len(train_arrays[0]) // batch_size - 2))
    compile_seconds, seconds_per_step = bench_steps(state, cfg, train_arrays, steps)
    result = {
        "model": name, "image_size": size, "batch_size": batch_size, "dtype": dtype,
        "device_loop": cfg.device_loop, "compile_seconds": compile_seconds,
        "ms_per_step": 1e3 * seconds_per_step, "images_per_sec": batch_size / seconds_per_step,
        "tflops_per_sec": flops / seconds_per_step / 1e12, "flops_per_step": flops,
    }
    peak = bf16_peak(jax.devices()[0].device_kind)
    result["fraction_of_bf16_peak"] = (result["tflops_per_sec"] / (peak * devices)
                                       if peak and dtype == "bfloat16" else None)

    if e2e:
        result.update(bench_epoch(state, cfg, train_arrays, test_arrays, batch_size))
        result["e2e_data"] = source
        result["e2e_over_step_only"] = result["e2e_images_per_sec"] / result["images_per_sec"]
    return result


def bench_steps(state, cfg, train_arrays, steps: int) -> tuple[float, float]:
    """(compile seconds, seconds per step) of `steps` train steps on data already on the devices."""
    train_data = pipelines.DeviceData(*train_arrays)
    chunk = training.make_train_chunk(cfg)
    replicated = replicas.replicate(training.RunState.fresh(state, seed=0))
    perm = train_data.permutation(replicated.data_key, 0)
    seconds = []
    for start, n in ((0, 1), (1, 1), (2, steps)):  # compiles; warm; timed
        t0 = time.perf_counter()
        replicated = chunk(replicated, train_data.images, train_data.labels, perm, start, n)
        jax.block_until_ready(replicated.totals)
        seconds.append(time.perf_counter() - t0)
    return max(seconds[0] - seconds[1], 0.0), seconds[2] / steps


def bench_epoch(state, cfg, train_arrays, test_arrays, batch_size: int) -> dict:
    """One warm-up epoch, then one timed epoch with evaluation, through train.py's device pipeline
    (its epoch: every training example once, the last batch partial)."""
    num_train = len(train_arrays[0])
    steps_per_epoch = math.ceil(num_train / batch_size)
    pipeline = pipelines.DevicePipeline(train_arrays, test_arrays, cfg,
                                        steps_per_epoch=steps_per_epoch,
                                        num_test=len(test_arrays[0]))
    replicated = replicas.replicate(training.RunState.fresh(state, seed=0))
    seconds = []
    for epoch in range(2):
        t0 = time.perf_counter()
        for replicated, _ in pipeline.train_chunks(replicated, epoch=epoch, start_step=0):
            pass
        pipeline.evaluate(replicated)
        seconds.append(time.perf_counter() - t0)
    return {"e2e_epoch_seconds": seconds[1], "e2e_train_examples": num_train,
            "e2e_test_examples": len(test_arrays[0]),
            "e2e_images_per_sec": num_train / seconds[1]}


def table(results: list[dict]) -> str:
    header = ("model", "size", "batch", "dtype", "compile s", "ms/step", "images/s", "TFLOP/s",
              "of peak", "e2e images/s", "e2e/step")
    rows = [header]
    for r in results:
        peak = r.get("fraction_of_bf16_peak")
        rows.append((r["model"], str(r["image_size"]), str(r["batch_size"]), r["dtype"],
                     f"{r['compile_seconds']:.1f}", f"{r['ms_per_step']:.2f}",
                     f"{r['images_per_sec']:,.0f}", f"{r['tflops_per_sec']:.2f}",
                     f"{peak:.1%}" if peak is not None else "—",
                     f"{r['e2e_images_per_sec']:,.0f}" if "e2e_images_per_sec" in r else "—",
                     f"{r['e2e_over_step_only']:.2f}" if "e2e_over_step_only" in r else "—"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flaxcnn.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all",
                        help=f"comma-separated names, or all ({', '.join(models.chapter_models())})")
    parser.add_argument("--batch-size", type=int,
                        help="global batch for every model (default: each model's d2l batch size)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--e2e", action="store_true", help="also time a full epoch end to end")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per model")
    parser.add_argument("--image-size", type=int, help="override d2l's image size (smoke tests)")
    parser.add_argument("--train-examples", type=int,
                        help="use only this many training examples (smoke tests)")
    parser.add_argument("--device-loop", choices=("auto", "on", "off"), default="auto",
                        help="steps in an on-device loop (default: on except on CPU)")
    parser.add_argument("--json", default="runs/bench.json",
                        help="where to write the results (default: runs/bench.json)")
    args = parser.parse_args(argv)
    names = models.chapter_models() if args.models == "all" else args.models.split(",")
    unknown = [n for n in names if n not in models.names()]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; use any of: {', '.join(models.names())}")
    device_loop = {"auto": None, "on": True, "off": False}[args.device_loop]
    runtime.reserve_cpu_threads_for_collectives()
    runtime.use_xla_cpu_convolutions()
    device = jax.devices()[0]
    print(f"{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}",
          file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "device_kind": device.device_kind,
              "platform": device.platform, "devices": jax.device_count(),
              "jax": jax.__version__, "python": platform.python_version(),
              "command": " ".join(["python -m flaxcnn.bench", *(argv or sys.argv[1:])]),
              "results": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    for name in names:
        report["results"].append(bench_model(
            name, batch_size=args.batch_size or models.spec(name).d2l_batch_size,
            dtype=args.dtype, steps=args.steps, e2e=args.e2e,
            image_size=args.image_size, train_examples=args.train_examples,
            device_loop=device_loop))
        print(f"{name}: {report['results'][-1]['images_per_sec']:,.0f} images/s",
              file=sys.stderr, flush=True)
        write_report(report, args.json)  # after each model: a run cut short keeps what it measured
    print(table(report["results"]))
    return 0


def write_report(report: dict, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
