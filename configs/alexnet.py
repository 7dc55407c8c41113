"""AlexNet (d2l 8.1) on Fashion-MNIST at 224x224, as d2l trains it.

    python train.py --config configs/alexnet.py

Expected: test accuracy 0.882 after 10 epochs (d2l v1.0, JAX edition, published figure).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "alexnet"
    config.image_size = 224
    config.learning_rate = 0.01
    config.reference_accuracy = 0.882
    return config
