"""RegNetX-32 (d2l 8.8, "Designing Convolution Network Architectures") on Fashion-MNIST at 96x96,
with the English v1.0 edition's settings: the course's notebooks have no RegNet section.

    python train.py --config configs/regnet.py

Settings: d2l v1.0's chapter_convolutional-modern/cnn-design.ipynb in
github.com/d2l-ai/d2l-pytorch-colab (2023-08-18, commit f854371): RegNetX32(lr=0.05), plain SGD,
batch size 128, images resized to 96, 10 epochs. That edition trains with d2l.Trainer and prints
no accuracy, only the training curves, so no accuracy is cited here.
"""
from configs import default

# The :sample variant (see its docstring above): provisional settings, being measured.
SAMPLE = dict(image_size=32, batch_size=32, learning_rate=0.05, num_epochs=10)


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/regnet.py:sample."""
    variant = default.variant("configs/regnet.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "regnetx32"
    config.image_size = 96
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
