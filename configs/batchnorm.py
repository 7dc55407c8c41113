"""LeNet with batch normalization, flax.linen.BatchNorm (d2l 8.5) on Fashion-MNIST at 28x28, as d2l trains it.

    python train.py --config configs/batchnorm.py

Expected: test accuracy 0.885 after 10 epochs (d2l v1.0, JAX edition, published figure).
The chapter's from-scratch batch normalization: add --config.model=lenet_bn_scratch.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "lenet_bn"
    config.image_size = 28
    config.learning_rate = 0.1
    config.reference_accuracy = 0.885
    return config
