"""Network in Network (d2l 8.3) on Fashion-MNIST at 224x224, the course notebook's experiment.

    python train.py --config configs/nin.py

Settings (plain SGD at lr 0.1, batch 128, images resized to 224, 10 epochs, Xavier-uniform
init) are the course notebook's: d2l's train_ch6 call in chapter_convolutional-modern/nin.ipynb
of github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST (the band that
curves.png, compare.md and the end-of-run line compare with): min 0.100, median 0.843, max 0.875,
over its 37 builds from 2020-06-02 to 2022-07-10
(benchmarks/d2l_reference/table.md, made by verify.py there).

The lowest build, 0.100 (chance level), is a run whose training diverged.
English v1.0 edition (d2l.Trainer; it prints no accuracy, only curves):
    --config.learning_rate=0.05
"""
from configs import default

# The :sample variant (see its docstring above): provisional settings, being measured.
SAMPLE = dict(image_size=68, batch_size=32, learning_rate=0.0003, num_epochs=3, optimizer="adamw")


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/nin.py:sample."""
    variant = default.variant("configs/nin.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "nin"
    config.image_size = 224
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.reference_accuracy = (0.1, 0.843, 0.875)  # d2l's printed min, median, max (see above)
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
