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

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/resnet.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
28x28 images (the sample's own) instead of 96; batch 32 instead of 256 (32 steps an epoch, not 4); 3
epochs instead of 10; the same plain SGD at 0.05. Measured with that command on the 2-core VM on
2026-12-07, seeds 0, 1, 2 (`--config.seed`), the VM shared with other work (load average 9-39 on its
2 cores; a LeNet-BN run on the sample took 11 s at load 1, its :sample command 125-191 s at such
loads, BENCHMARKS.md): 173-838 s in all (the run's own timing), final test accuracy 0.577-0.752
(after the first epoch 0.318-0.460; chance is 0.1). The sample shows that the network learns and
what its curves and mistakes look like; it cannot show the course's accuracy (60 times fewer
training images), so d2l's band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
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
