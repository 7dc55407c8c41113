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

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/alexnet.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
68x68 images instead of 224 (AlexNet's smallest is 65; its first dense layer then sees 1x1x256, not
6x6x256, so the network has 21,598,922 parameters instead of 46,764,746); batch 32 instead of 128
(32 steps an epoch); Adam at 0.001 instead of plain SGD at 0.01, which left the loss at ln 10 for 2
epochs of the sample in a probe; 3 epochs instead of 10. Measured with that command on the 2-core VM
on 2026-12-07, seeds 0, 1, 2 (`--config.seed`), the VM shared with other work (load average 13-34 on
its 2 cores; a LeNet-BN run on the sample took 11 s at load 1, its :sample command 125-191 s at such
loads, BENCHMARKS.md): 186-846 s in all (the run's own timing), final test accuracy 0.490-0.566
(after the first epoch 0.167-0.277; chance is 0.1). The sample shows that the network learns and
what its curves and mistakes look like; it cannot show the course's accuracy (60 times fewer
training images), so d2l's band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
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
