"""Real image folders for the tests, made from the bundled Fashion-MNIST sample: PNG and JPEG files,
grey, RGB, RGBA and palette, of mixed sizes, in torchvision's ImageFolder layout."""
import os

import numpy as np
from PIL import Image

from flaxcnn.datasets import SAMPLE_DIR, idx

CLASSES = {1: "Trouser", 7: "Sneaker", 8: "Bag"}  # sample labels -> folder names (unsorted)
KINDS = ["grey.png", "rgb.png", "rgb.jpg", "grey.jpg", "palette.png", "rgba.png", "wide.png",
         "tall.jpg"]


def sample_images(per_class=11) -> dict:
    """{label: [28x28 uint8 images]} of CLASSES, the first `per_class` of each in the sample."""
    images, labels = idx.read_split(SAMPLE_DIR, "train")
    return {label: [images[i] for i in np.flatnonzero(labels == label)[:per_class]]
            for label in CLASSES}


def write_image(path, pixels, kind):
    """Writes a 28x28 grey sample image as one of several kinds of file."""
    grey = Image.fromarray(pixels, "L")
    rgb = Image.merge("RGB", (grey, grey.point(lambda v: v // 2), grey))
    images = {
        "grey.png": grey, "rgb.png": rgb, "rgb.jpg": rgb, "grey.jpg": grey,
        "palette.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": Image.merge("RGBA", (*rgb.split(), grey)),
        "wide.png": rgb.resize((42, 28)), "tall.jpg": grey.resize((28, 50)),
    }
    images[kind].save(f"{path}.{kind.split('.')[-1]}")


def make_folder(root, sample, *, kinds=None, eval_split="test", per_class=(8, 3)):
    """root/train/<class>/<i>.<ext> and root/<eval_split>/<class>/...: file i of a class folder
    is of kinds[i % len(kinds)]; the evaluation images are the sample's from the ninth on."""
    kinds = kinds or KINDS
    for split, count, offset in (("train", per_class[0], 0), (eval_split, per_class[1], 8)):
        for label, name in CLASSES.items():
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(count):
                write_image(root / split / name / f"{i:02d}", sample[label][offset + i],
                            kinds[i % len(kinds)])
    return root
