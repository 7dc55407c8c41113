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

The :sample variant learns on the bundled 1,003-image sample, offline, on a laptop CPU:

    python train.py --config configs/nin.py:sample

What differs from the course: the bundled 1,003 training images instead of Fashion-MNIST's 60,000;
68x68 images instead of 224 (NiN's smallest is 67); batch 32 instead of 128 (32 steps an epoch);
Adam at 0.0003 instead of plain SGD at 0.1 (in one probe each on the sample, SGD at 0.05 and Adam at
0.001 stayed at one class for 2-3 epochs and Adam at 0.0001 reached 0.20 in 3 epochs at batch 16); 3
epochs instead of 10. NiN learns slowest of the chapter's networks here: expect about twice chance,
not the others' 0.4-0.7. Measured with that command on the 2-core VM on 2026-12-07, seeds 0, 1, 2
(`--config.seed`), the VM shared with other work (load average 19-34 on its 2 cores; a LeNet-BN run
on the sample took 11 s at load 1, its :sample command 125-191 s at such loads, BENCHMARKS.md):
247-486 s in all (the run's own timing), final test accuracy 0.192-0.261 (after the first epoch
0.090-0.176; chance is 0.1). The sample shows that the network learns and what its curves and
mistakes look like; it cannot show the course's accuracy (60 times fewer training images), so d2l's
band is not drawn for it.
"""
from configs import default

# The :sample variant (see the docstring).
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
