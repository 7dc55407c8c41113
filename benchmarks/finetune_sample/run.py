"""Fine-tuning a converted checkpoint vs training from scratch, offline, on the bundled sample.

    /work/venv/bin/python benchmarks/finetune_sample/run.py [--seeds 0,1,2] [--arms finetune,scratch] [--workroot DIR]

ImageNet weights cannot be downloaded everywhere, so this makes its own "pretrained" checkpoint,
the way a user would convert one, and measures d2l 14.2's comparison with it:

1. pretrain flaxcnn's torchvision-layout ResNet-18 (tv_resnet18) from scratch on an image folder of
   the Fashion-MNIST sample's classes 0-4 (PNG files, RGB);
2. convert the run's final variables to torchvision's state_dict names as a .safetensors file (the
   inverse of flaxcnn.pretrained.mappings.to_flax) and check that `pretrained.load` gives back the
   run's variables exactly;
3. train on a second folder, the sample's classes 5-9, once starting from that file
   (configs/finetune.py: init_from, head learning rate x10) and once from scratch
   (configs/finetune.py:scratch), with the same learning rate, epochs, batch and augmentation, for
   each seed; then print a markdown table of final test accuracies. The arm finetune_head_x1
   (--arms) is a diagnostic: the fine-tune with the head at the backbone's learning rate.

Every training is a `train.py` process, as a user would run it. Nothing is written into the
repository: folders, runs and the checkpoint go to --workroot (a fresh temporary folder by default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flax import traverse_util
from PIL import Image
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import flaxcnn  # noqa: E402  (the repository's package, not an installed one)
from flaxcnn import pretrained  # noqa: E402
from flaxcnn.datasets import FASHION_MNIST_CLASSES, SAMPLE_DIR, idx  # noqa: E402
from flaxcnn.pretrained import mappings  # noqa: E402

MODEL = "tv_resnet18"
PRETRAIN_CLASSES, TASK_CLASSES = range(0, 5), range(5, 10)
COMMON = ["--config.model=tv_resnet18", "--config.image_size=32", "--config.folder_store_size=32",
          "--config.batch_size=32", "--config.progress=false", "--config.plots=false",
          "--config.tensorboard=false"]
PRETRAIN = {"epochs": 6, "learning_rate": 0.05, "seed": 0}
TASK = {"epochs": 4, "learning_rate": 0.02}

# name: (table row, config, extra flags); finetune_head_x1 is a diagnostic, not d2l 14.2's setting
ARMS = {"finetune": ("fine-tuned from the converted checkpoint (head lr x10)", "configs/finetune.py",
                     ["--config.init_from={checkpoint}"]),
        "scratch": ("from scratch", "configs/finetune.py:scratch", []),
        "finetune_head_x1": ("fine-tuned, head lr x1 (diagnostic)", "configs/finetune.py",
                             ["--config.init_from={checkpoint}", "--config.head_lr_multiplier=1"])}


def write_folder(root: Path, labels) -> Path:
    """root/train/<class>/<i>.png and root/test/<class>/<i>.png: every sample image of `labels`,
    as RGB PNG files (the grey value in all three channels)."""
    for split in ("train", "test"):
        images, sample_labels = idx.read_split(SAMPLE_DIR, split)
        for label in labels:
            folder = root / split / f"{label}_{FASHION_MNIST_CLASSES[label].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(sample_labels == label):
                Image.fromarray(images[i], "L").convert("RGB").save(folder / f"{i:04d}.png")
    return root


def train(workdir: Path, config: str, folder: Path, epochs: int, learning_rate: float, seed: int,
          extra=()) -> dict:
    """Runs train.py in a fresh `workdir`; returns its last metrics.jsonl record and wall seconds."""
    command = [sys.executable, str(REPO / "train.py"), f"--config={REPO / config}",
               f"--workdir={workdir}", f"--config.dataset=folder:{folder}", *COMMON,
               f"--config.num_epochs={epochs}", f"--config.learning_rate={learning_rate}",
               f"--config.seed={seed}", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"train.py failed ({workdir.name}):\n{finished.stdout[-2000:]}{finished.stderr[-3000:]}")
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {**json.loads(lines[-1]), "wall_s": seconds}


def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    """A flax variable in torch's layout: the inverse of mappings.to_flax for ResNet's kinds."""
    if kind == mappings.CONV:
        return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))  # HWIO -> OIHW
    if kind == mappings.DENSE:
        return np.ascontiguousarray(array.T)
    if kind == "vector":
        return np.ascontiguousarray(array)
    raise ValueError(f"{kind} does not occur in {MODEL}")


def convert(workdir: Path, path: Path) -> dict:
    """Writes the run's final variables as a torchvision-named .safetensors file; returns them."""
    _, variables, info = flaxcnn.load_run(workdir)
    variables = {k: variables[k] for k in ("params", "batch_stats")}
    flat = traverse_util.flatten_dict(variables)
    state = {}
    for p in mappings.placements(MODEL, variables["params"]):
        array = np.asarray(flat[(p.collection, *p.path)], np.float32)
        state[p.torch_name] = to_torch(p.kind, array)
        if state[p.torch_name].shape != mappings.torch_shape(p.kind, array.shape):
            raise AssertionError(f"{p.torch_name}: {state[p.torch_name].shape}")
        if p.torch_name.endswith(".running_var"):  # torchvision's BatchNorm also counts its steps
            state[p.torch_name.replace("running_var", "num_batches_tracked")] = np.array(info.step, np.int64)
    save_file(state, str(path))
    return variables


def check_round_trip(path: Path, variables: dict) -> int:
    """pretrained.load of the file equals the run's variables exactly; returns the tensor count."""
    loaded = traverse_util.flatten_dict(pretrained.load(MODEL, str(path)))
    expected = traverse_util.flatten_dict(variables)
    if set(loaded) != set(expected):
        raise AssertionError(f"round trip changed the tree: {sorted(set(loaded) ^ set(expected))[:3]}")
    for key, value in expected.items():
        if loaded[key].dtype != np.float32 or not np.array_equal(loaded[key], np.asarray(value)):
            raise AssertionError(f"round trip changed {'/'.join(key)}")
    return len(expected)


def summary(accuracies: list[float]) -> str:
    return (f"{statistics.mean(accuracies):.4f} ({min(accuracies):.4f}-{max(accuracies):.4f})")


def table(results: dict, seeds: list[int]) -> str:
    head = "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (range) | train.py wall s |"
    rows = [head, "|" + "---|" * (len(seeds) + 3)]
    for arm, runs in results.items():
        accuracies = [r["test_accuracy"] for r in runs]
        rows.append(f"| {arm} | " + " | ".join(f"{a:.4f}" for a in accuracies)
                    + f" | {summary(accuracies)} | {sum(r['wall_s'] for r in runs):.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of every arm")
    parser.add_argument("--arms", default="finetune,scratch",
                        help=f"comma-separated arms, of {', '.join(ARMS)}")
    parser.add_argument("--workroot", default="", help="where folders and runs go (default: a new temp folder)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.workroot or tempfile.mkdtemp(prefix="finetune_sample-"))
    if (root / "pretrain").exists():
        sys.exit(f"{root} holds runs already (train.py would resume them); pass a new --workroot")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = write_folder(root / "classes_0-4", PRETRAIN_CLASSES)
    task = write_folder(root / "classes_5-9", TASK_CLASSES)

    base = train(root / "pretrain", "configs/finetune.py:scratch", source, PRETRAIN["epochs"],
                 PRETRAIN["learning_rate"], PRETRAIN["seed"])
    print(f"pretraining on classes 0-4: test accuracy {base['test_accuracy']:.4f} after "
          f"{PRETRAIN['epochs']} epochs ({base['wall_s']:.0f} s)", flush=True)
    checkpoint = root / "resnet18_classes_0-4.safetensors"
    count = check_round_trip(checkpoint, convert(root / "pretrain", checkpoint))
    print(f"{checkpoint}: {count} variables; pretrained.load gives them back exactly", flush=True)

    arms = {key: ARMS[key] for key in args.arms.split(",")}
    results = {ARMS[key][0]: [] for key in arms}
    for seed in seeds:
        for key, (arm, config, extra) in arms.items():
            extra = [flag.format(checkpoint=checkpoint) for flag in extra]
            name = f"{key}-seed{seed}"
            record = train(root / name, config, task, TASK["epochs"], TASK["learning_rate"], seed, extra)
            results[arm].append(record)
            print(f"{name}: test accuracy {record['test_accuracy']:.4f} ({record['wall_s']:.0f} s)", flush=True)
    print()
    print(table(results, seeds))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; runs in {root}")


if __name__ == "__main__":
    main()
