"""RegNetX-32 (d2l 8.8, "Designing Convolution Network Architectures") on Fashion-MNIST at 96x96,
with the English v1.0 edition's settings: the course's notebooks have no RegNet section.

    python train.py --config configs/regnet.py

Settings: d2l v1.0's chapter_convolutional-modern/cnn-design.ipynb in
github.com/d2l-ai/d2l-pytorch-colab (2023-08-18, commit f854371): RegNetX32(lr=0.05), plain SGD,
batch size 128, images resized to 96, 10 epochs. That edition trains with d2l.Trainer and prints
no accuracy, only the training curves, so no accuracy is cited here.

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/regnet.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
28x28 images (the sample's own) instead of 96; batch 32 instead of 128 (32 steps an epoch, not 8); 3
epochs instead of 10; the same plain SGD at 0.05. Measured with that command on the 2-core VM on
2026-12-07, seeds 0, 1, 2 (`--config.seed`), the VM shared with other work (load average 24-38 on
its 2 cores; a LeNet-BN run on the sample took 11 s at load 1, its :sample command 125-191 s at such
loads, BENCHMARKS.md): 88-135 s in all (the run's own timing), final test accuracy 0.654-0.706
(after the first epoch 0.323-0.410; chance is 0.1). The sample shows that the network learns and
what its curves and mistakes look like; it cannot show the course's accuracy (60 times fewer
training images), so d2l's band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
SAMPLE = dict(image_size=28, batch_size=32, learning_rate=0.05, num_epochs=3)


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
