"""d2l 14.2's experiment on any image folder: ResNet-18 at 224x224 with 14.2's augmentation.

    python train.py --config configs/finetune.py --config.dataset=folder:PATH

PATH holds train/<class>/* and test/<class>/* (torchvision's ImageFolder layout). d2l's hot-dog
set (1,400 photos of hot dogs and 1,400 of other food; 1,000 of each to train, the rest to test),
where a network exists (URL and SHA-1 from d2l's DATA_HUB entry in the notebook cited below):

    mkdir -p data && curl -L -o data/hotdog.zip http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip
    echo "fba480ffa8aa7e0febbb511d181409f899b9baa5  data/hotdog.zip" | sha1sum -c
    unzip -q data/hotdog.zip -d data    # then --config.dataset=folder:data/hotdog

14.2's settings: batch 128, 5 epochs, SGD with weight decay 0.001, RandomResizedCrop(224) and a
horizontal flip for training, ImageNet's per-channel normalization; its test transform is
Resize([256, 256]) then CenterCrop(224). Until ImageNet weights can be loaded (a separate issue)
this trains from scratch at 14.2's from-scratch learning rate, 5e-4 (fine-tuning used 5e-5, with
10x on the new output layer).

What d2l printed for the hot-dog set after 5 epochs (d2l's PyTorch notebooks,
github.com/d2l-ai/d2l-pytorch-colab, chapter_computer-vision/fine-tuning.ipynb; read in all 50
versions of its history that carry outputs, d2l 0.16.0 of 2021-01-06 to 1.0.3 of 2023-08-18):
from scratch (lr 5e-4) test accuracy 0.779-0.860, 0.850 in the newest (1.0.3, commit f854371);
fine-tuned ImageNet ResNet-18 (lr 5e-5) 0.894-0.950, 0.940 in the newest.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet18"
    config.dataset = "folder:data/hotdog"
    config.image_size = 224
    config.batch_size = 128
    config.num_epochs = 5
    config.optimizer = "sgd"
    config.learning_rate = 5e-4
    config.weight_decay = 0.001
    config.augment = "d2l_finetune"
    config.normalize = "imagenet"
    config.reference_accuracy = 0.850  # d2l 1.0.3's from-scratch ResNet-18 (see above)
    return config
