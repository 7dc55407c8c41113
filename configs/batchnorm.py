"""LeNet with batch normalization (d2l 8.5) on Fashion-MNIST at 28x28: the course notebook's two
experiments.

    python train.py --config configs/batchnorm.py            # concise: d2l's nn.BatchNorm2d/1d
    python train.py --config configs/batchnorm.py:scratch    # the chapter's from-scratch BatchNorm

Settings (plain SGD at lr 1.0, batch 256, 28 px, 10 epochs, Xavier-uniform init) are the course
notebook's: both d2l train_ch6 calls in chapter_convolutional-modern/batch-norm.ipynb of
github.com/d2l-ai/d2l-pytorch-colab, the version executed up to 2022-07.

d2l's printed test accuracy after those 10 epochs on the full Fashion-MNIST, over the notebook's
39 builds from 2020-06-02 to 2022-07-10 (benchmarks/d2l_reference/table.md, made by verify.py
there): concise min 0.518, median 0.853, max 0.892; from scratch min 0.682, median 0.873,
max 0.894.

English v1.0 edition (d2l.Trainer; it prints no accuracy, only curves):
    --config.learning_rate=0.1 --config.batch_size=128

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/batchnorm.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
batch 32 instead of 256 (32 steps an epoch, not 4); learning rate 0.1 instead of 1.0 (at 0.3, one of
3 seeds swung from 0.72 to 0.43 test accuracy over its last epochs); the same 28x28 images, plain
SGD and 10 epochs. Measured with that command on the 2-core VM on 2026-12-07, seeds 0, 1, 2
(`--config.seed`), the VM shared with other work (load average 27-34 on its 2 cores; a LeNet-BN run
on the sample took 11 s at load 1, its :sample command 125-191 s at such loads, BENCHMARKS.md):
125-191 s in all (the run's own timing), final test accuracy 0.689-0.735 (after the first epoch
0.393-0.550; chance is 0.1). The sample shows that the network learns and what its curves and
mistakes look like; it cannot show the course's accuracy (60 times fewer training images), so d2l's
band is not drawn for it.
"""
from configs import default

# variant -> (model, d2l's printed min, median, max test accuracy; see above)
VARIANTS = {
    "concise": ("lenet_bn", (0.518, 0.853, 0.892)),
    "scratch": ("lenet_bn_scratch", (0.682, 0.873, 0.894)),
    "sample": ("lenet_bn", (0.518, 0.853, 0.892)),
}
# The :sample variant (see the docstring).
SAMPLE = dict(image_size=28, batch_size=32, learning_rate=0.1, num_epochs=10)


def get_config(variant: str = "concise"):
    """`variant` comes after the file name's colon: configs/batchnorm.py:scratch."""
    variant = default.variant("configs/batchnorm.py", variant, tuple(VARIANTS))
    model, band = VARIANTS[variant]
    config = default.get_config()
    config.model = model
    config.image_size = 28
    config.batch_size = 256
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 1.0
    config.reference_accuracy = band
    return default.on_sample(config, **SAMPLE) if variant == "sample" else config
