"""VGG-11 at a quarter of the width (d2l 8.2) on Fashion-MNIST at 224x224, the course
notebook's experiment.

    python train.py --config configs/vgg.py

Settings (plain SGD at lr 0.05, batch 128, images resized to 224, 10 epochs, Xavier-uniform
init) are the course notebook's: d2l's train_ch6 call in chapter_convolutional-modern/vgg.ipynb
of github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST (the band that
curves.png, compare.md and the end-of-run line compare with): min 0.906, median 0.918, max 0.924,
over its 33 builds from 2020-06-02 to 2022-07-10
(benchmarks/d2l_reference/table.md, made by verify.py there).

English v1.0 edition (d2l.Trainer; it prints no accuracy, only curves):
    --config.learning_rate=0.01

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/vgg.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
32x32 images instead of 224 (the smallest VGG takes: five 2x2 poolings; 17,927,498 parameters
instead of 43,093,322); batch 32 instead of 128 (32 steps an epoch); Adam at 0.001 instead of plain
SGD at 0.05, which left the loss at ln 10 for 2 epochs of the sample in a probe; 3 epochs instead of
10. Measured with that command on the 2-core VM on 2026-12-07, seeds 0, 1, 2 (`--config.seed`), the
VM shared with other work (load average 19-31 on its 2 cores; a LeNet-BN run on the sample took 11 s
at load 1, its :sample command 125-191 s at such loads, BENCHMARKS.md): 508-797 s in all (the run's
own timing), final test accuracy 0.321-0.519 (after the first epoch 0.092-0.187; chance is 0.1). The
sample shows that the network learns and what its curves and mistakes look like; it cannot show the
course's accuracy (60 times fewer training images), so d2l's band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
SAMPLE = dict(image_size=32, batch_size=32, learning_rate=0.001, num_epochs=3, optimizer="adamw")


def get_config(variant: str = "course"):
    """`variant` comes after the file name's colon: configs/vgg.py:sample."""
    variant = default.variant("configs/vgg.py", variant, ("course", "sample"))
    config = default.get_config()
    config.model = "vgg11"
    config.model_overrides.width_divisor = 4  # the notebook's ratio = 4
    config.image_size = 224
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    config.reference_accuracy = (0.906, 0.918, 0.924)  # d2l's printed min, median, max (see above)
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
