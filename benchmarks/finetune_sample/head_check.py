"""What a fine-tuned run of run.py starts from: does it keep the checkpoint's classifier, and how
well does that start do on the task's test images?

    /work/venv/bin/python benchmarks/finetune_sample/head_check.py WORKROOT

WORKROOT is a finished run.py --workroot. The checkpoint has 5 classes, like the task, and
`pretrained.fit_to_task` replaces the head only where the shapes differ, so the fine-tuned runs
start from the classifier of classes 0-4 rather than from d2l 14.2's fresh one. The evaluation
transform is the runs': the stored 32x32 image (PIL bilinear, like the folder reader's resize of
these 28x28 squares), then d2l_finetune's centre crop and ImageNet normalization. On classes 0-4
it gives the pretraining run's own final test accuracy.
"""
import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flaxcnn import augment, models, pretrained  # noqa: E402

MODEL, SIZE = "tv_resnet18", 32


def test_set(folder: Path):
    images, labels = [], []
    for label, class_folder in enumerate(sorted((folder / "test").iterdir())):
        for path in sorted(class_folder.iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)))
            labels.append(label)
    x = augment.eval_images(jnp.asarray(np.stack(images)), image_size=SIZE, augment="d2l_finetune",
                            normalize="imagenet", dtype=jnp.float32)
    return x, np.array(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workroot", type=Path)
    root = parser.parse_args().workroot
    loaded = pretrained.load(MODEL, str(root / "resnet18_classes_0-4.safetensors"))
    model = models.create(MODEL, num_classes=5)
    fresh = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
    start = pretrained.fit_to_task(MODEL, loaded, dict(fresh))
    kept = all(np.array_equal(start["params"]["Dense_0"][k], loaded["params"]["Dense_0"][k])
               for k in ("kernel", "bias"))
    print(f"fit_to_task keeps the checkpoint's classifier: {kept}")
    for name in ("classes_0-4", "classes_5-9"):
        x, labels = test_set(root / name)
        for tag, variables in (("fine-tuning's start", start), ("fresh network, seed 0", fresh)):
            log_probs = np.asarray(jax.nn.log_softmax(model.apply(variables, x, train=False)))
            loss = -np.take_along_axis(log_probs, labels[:, None], 1).mean()
            accuracy = (log_probs.argmax(1) == labels).mean()
            print(f"{name} test, {tag}: loss {loss:.3f}, accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
