"""ResNet-18 (d2l 8.6) on Fashion-MNIST at 96x96, the course notebook's experiment.

    python train.py --config configs/resnet.py

Settings (plain SGD at lr 0.05, batch 256, images resized to 96, 10 epochs, Xavier-uniform
init) are the course notebook's: d2l's train_ch6 call in chapter_convolutional-modern/resnet.ipynb
of github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST (the band that
curves.png, compare.md and the end-of-run line compare with): min 0.669, median 0.91, max 0.924,
over its 33 builds from 2020-06-02 to 2022-07-10
(benchmarks/d2l_reference/table.md, made by verify.py there).

English v1.0 edition (d2l.Trainer; it prints no accuracy, only curves):
    --config.learning_rate=0.01 --config.batch_size=128
"""
from configs import default

# The :sample variant (see its docstring above): provisional settings, being measured.
SAMPLE = dict(image_size=28, batch_size=32, learning_rate=0.05, num_epochs=3)


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/resnet.py:sample."""
    variant = default.variant("configs/resnet.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "resnet18"
    config.image_size = 96
    config.batch_size = 256
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    config.reference_accuracy = (0.669, 0.91, 0.924)  # d2l's printed min, median, max (see above)
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
