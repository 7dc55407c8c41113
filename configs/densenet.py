"""DenseNet (d2l 8.7) on Fashion-MNIST at 96x96, as d2l trains it.

    python train.py --config configs/densenet.py

Expected: no test accuracy is cited. d2l v1.0 (PyTorch edition) trains this network as
DenseNet(lr=0.01) with plain SGD, batch size 128, images resized to 96, for 10 epochs, and
prints no accuracy, only the training curves; no number read off them is cited here.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "densenet"
    config.image_size = 96
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.01
    return config
