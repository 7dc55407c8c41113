"""VGG-11 at a quarter of the width (d2l 8.2) on Fashion-MNIST at 224x224, as d2l trains it.

    python train.py --config configs/vgg.py

Expected: test accuracy 0.894 after 10 epochs (d2l v1.0, JAX edition, published figure).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "vgg11"
    config.model_overrides.width_divisor = 4  # d2l's ratio = 4
    config.image_size = 224
    config.learning_rate = 0.01
    config.reference_accuracy = 0.894
    return config
