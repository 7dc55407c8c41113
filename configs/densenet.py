"""DenseNet (d2l 8.7) on Fashion-MNIST at 96x96, the course notebook's experiment.

    python train.py --config configs/densenet.py

Settings (plain SGD at lr 0.1, batch 256, images resized to 96, 10 epochs, Xavier-uniform
init) are the course notebook's: d2l's train_ch6 call in chapter_convolutional-modern/densenet.ipynb
of github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST (the band that
curves.png, compare.md and the end-of-run line compare with): min 0.755, median 0.89, max 0.919,
over its 34 builds from 2020-06-02 to 2022-07-10
(benchmarks/d2l_reference/table.md, made by verify.py there).

English v1.0 edition (d2l.Trainer; it prints no accuracy, only curves):
    --config.learning_rate=0.01 --config.batch_size=128
"""
from configs import default

# The :sample variant (see its docstring above): provisional settings, being measured.
SAMPLE = dict(image_size=32, batch_size=32, learning_rate=0.1, num_epochs=3)


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/densenet.py:sample."""
    variant = default.variant("configs/densenet.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "densenet"
    config.image_size = 96
    config.batch_size = 256
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.reference_accuracy = (0.755, 0.89, 0.919)  # d2l's printed min, median, max (see above)
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
