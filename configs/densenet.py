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

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/densenet.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
32x32 images instead of 96 (DenseNet's smallest is 29); batch 32 instead of 256 (32 steps an epoch,
not 4); 3 epochs instead of 10; the same plain SGD at 0.1. Measured with that command on the 2-core
VM on 2026-12-07, seeds 0, 1, 2 (`--config.seed`), the VM shared with other work (load average 25-38
on its 2 cores; a LeNet-BN run on the sample took 11 s at load 1, its :sample command 125-191 s at
such loads, BENCHMARKS.md): 484-716 s in all (the run's own timing), final test accuracy 0.519-0.672
(after the first epoch 0.220-0.455; chance is 0.1). The sample shows that the network learns and
what its curves and mistakes look like; it cannot show the course's accuracy (60 times fewer
training images), so d2l's band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
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
