"""AlexNet (d2l 8.1) on Fashion-MNIST at 224x224, the course notebook's experiment.

    python train.py --config configs/alexnet.py

Settings (plain SGD at lr 0.01, batch 128, images resized to 224, 10 epochs, Xavier-uniform
init) are the course notebook's: d2l's train_ch6 call in chapter_convolutional-modern/alexnet.ipynb
of github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST (the band that
curves.png, compare.md and the end-of-run line compare with): min 0.847, median 0.88, max 0.885,
over its 38 builds from 2020-06-02 to 2022-07-10
(benchmarks/d2l_reference/table.md, made by verify.py there).

English v1.0 edition: the same settings (it trains with d2l.Trainer and prints no accuracy).
"""
from configs import default

# The :sample variant (see its docstring above): provisional settings, being measured.
SAMPLE = dict(image_size=68, batch_size=32, learning_rate=0.001, num_epochs=3, optimizer="adamw")


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/alexnet.py:sample."""
    variant = default.variant("configs/alexnet.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "alexnet"
    config.image_size = 224
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.01
    config.reference_accuracy = (0.847, 0.88, 0.885)  # d2l's printed min, median, max (see above)
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
