"""ResNet-18 (d2l 8.6) on Fashion-MNIST at 96x96, as d2l trains it.

    python train.py --config configs/resnet.py

Expected: test accuracy 0.907 after 10 epochs (d2l v1.0, JAX edition, published figure).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet18"
    config.image_size = 96
    config.learning_rate = 0.01
    config.reference_accuracy = 0.907
    return config
