"""d2l 14.2's experiment on any image folder: ResNet-18 at 224x224 with 14.2's augmentation.

    python train.py --config configs/finetune.py --config.dataset=folder:PATH

PATH holds train/<class>/* and test/<class>/* (torchvision's ImageFolder layout). d2l's hot-dog
set (1,400 photos of hot dogs and 1,400 of other food; 1,000 of each to train, the rest to test),
where a network exists (URL and SHA-1 from d2l's DATA_HUB entry in the notebook cited below):

    mkdir -p data && curl -L -o data/hotdog.zip http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip
    echo "fba480ffa8aa7e0febbb511d181409f899b9baa5  data/hotdog.zip" | sha1sum -c
    unzip -q data/hotdog.zip -d data    # then --config.dataset=folder:data/hotdog

14.2's settings: torchvision's ImageNet ResNet-18 with a new 2-class output layer, batch 128,
5 epochs, SGD with weight decay 0.001 at learning rate 5e-5 and 10x that on the output layer,
RandomResizedCrop(224) and a horizontal flip for training, ImageNet's per-channel normalization;
its test transform is Resize([256, 256]) then CenterCrop(224). The weights come from
torchvision's URL (a network is needed once; then from torch.hub's cache folder). 14.2's
baseline, the same network from scratch at learning rate 5e-4, is

    python train.py --config configs/finetune.py:scratch --config.dataset=folder:PATH

(flaxcnn's initialisation, d2l's Xavier-uniform, stands in for torchvision's default one there).

What d2l printed for the hot-dog set after 5 epochs (d2l's PyTorch notebooks,
github.com/d2l-ai/d2l-pytorch-colab, chapter_computer-vision/fine-tuning.ipynb; read in all 50
versions of its history that carry outputs, d2l 0.16.0 of 2021-01-06 to 1.0.3 of 2023-08-18):
fine-tuned ImageNet ResNet-18 (lr 5e-5) test accuracy 0.894-0.950, 0.940 in the newest (1.0.3,
commit f854371); from scratch (lr 5e-4) 0.779-0.860, 0.850 in the newest.
"""
from configs import default


def get_config(variant: str = ""):
    if variant not in ("", "scratch"):
        raise ValueError(f"unknown variant {variant!r} of configs/finetune.py; use "
                         "configs/finetune.py or configs/finetune.py:scratch")
    config = default.get_config()
    config.model = "tv_resnet18"  # torchvision's layout, which its ImageNet weights load into
    config.dataset = "folder:data/hotdog"
    config.image_size = 224
    config.batch_size = 128
    config.num_epochs = 5
    config.optimizer = "sgd"
    config.weight_decay = 0.001
    config.augment = "d2l_finetune"
    config.normalize = "imagenet"
    if variant == "scratch":
        config.learning_rate = 5e-4
    else:
        config.init_from = "torchvision:resnet18"
        config.learning_rate = 5e-5
        config.head_lr_multiplier = 10.0
    return config
