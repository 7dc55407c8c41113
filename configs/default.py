"""The shared base config: every field train.py reads, with its default. Other configs override it.

    python train.py --config configs/default.py --config.dataset=fashion_mnist_sample

trains LeNet with batch normalization (d2l 8.5) on the bundled Fashion-MNIST sample.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    # Model
    config.model = "lenet_bn"                          # a name from flaxcnn.models.names()
    config.model_overrides = ml_collections.ConfigDict()  # extra fields for flaxcnn.models.create
    config.dtype = "float32"                           # compute dtype: float32 or bfloat16 (params stay float32)
    config.sync_batch_stats = True                     # BatchNorm statistics over the global batch (False: per device)

    # Data
    config.dataset = "fashion_mnist"                   # a tfds image-classification dataset, fashion_mnist_sample, or folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)
    config.data_dir = ""                               # tfds data_dir ("" = tfds's default)
    config.idx_dir = ""                                # folder with the 4 official IDX .gz files (fashion_mnist, mnist)
    config.input_pipeline = "auto"                     # device (dataset held on the accelerators), stream (tf.data), auto
    config.image_size = 28                             # images are resized (bilinear) to image_size x image_size
    config.folder_store_size = 256                     # folder:PATH images are kept as squares of the smaller of this side and their median shorter side (shorter side resized, centre crop)
    config.folder_skip_bad = False                     # folder:PATH: skip (and count) unreadable image files instead of stopping
    config.augment = "none"                            # on-device training augmentation: none, flip, crop_flip, d2l_finetune (flaxcnn.augment)
    config.normalize = "auto"                          # per-channel input normalization: none, imagenet (torchvision's mean/std), or auto (imagenet with init_from, else none)

    # Optimisation
    config.batch_size = 128                            # global batch, split over all devices
    config.eval_batch_size = 0                         # 0 = batch_size
    config.num_epochs = 10
    config.optimizer = "sgd"                           # sgd, momentum, nesterov, adamw
    config.learning_rate = 0.1
    config.momentum = 0.9                              # for momentum and nesterov
    config.weight_decay = 0.0
    config.lr_schedule = "constant"                    # constant, or cosine (with warmup_epochs of linear warmup)
    config.warmup_epochs = 0.0
    config.seed = 0                                    # fixes initialisation, data order and dropout

    # Fine-tuning (d2l 14.2; flaxcnn.pretrained)
    config.init_from = ""                              # a fresh run starts from these weights: torchvision:<name>, hf-hub:<repo>, or a .pth/.pt/.safetensors file
    config.head_lr_multiplier = 1.0                    # the final classifier learns this many times faster (d2l: 10)
    config.freeze = "none"                             # none, or backbone: train only the final classifier

    # Checkpoints (<workdir>/checkpoints)
    config.checkpoint_every_epochs = 1
    config.max_checkpoints = 3
    config.restore = True                              # resume from the workdir's latest checkpoint
    config.eval_only = False                           # evaluate the latest checkpoint on the test split, no training

    # Output
    config.progress = True                             # progress bar, when attached to a terminal
    config.plots = True                                # curves.png every epoch; predictions.png, confusion.png at the end
    config.tensorboard = True                          # TensorBoard event files in the workdir
    config.reference_accuracy = ml_collections.config_dict.placeholder(tuple)  # d2l's printed (min, median, max) test acc

    return config


def variant(path: str, name: str, choices) -> str:
    """`name` (what comes after the config file's colon, e.g. configs/resnet.py:sample) if it is one
    of `choices`; else a ValueError naming them, which train.py prints as one line."""
    if name not in choices:
        raise ValueError(f"unknown variant {name!r} of {path}; use "
                         + " or ".join(f"{path}:{choice}" for choice in choices))
    return name


def on_sample(config, *, image_size: int, batch_size: int, learning_rate: float,
              num_epochs: int, optimizer: str = ""):
    """`config` moved to the bundled 1,003-image sample (fashion_mnist_sample) with settings under
    which its model learns there in minutes on a laptop CPU. The course's batch sizes give 4 to 8
    steps an epoch on 1,003 images, too few for any of the chapter's models to learn in 10 epochs;
    a smaller batch gives more steps, a smaller image (where the network accepts it) makes each
    step cheaper, and the deep networks without BatchNorm need Adam (`optimizer`; "" keeps the
    course's plain SGD) to leave their starting plateau in so few steps. d2l's band is for the full
    Fashion-MNIST at the course's settings, so it is unset."""
    config.dataset = "fashion_mnist_sample"
    config.image_size = image_size
    config.batch_size = batch_size
    config.learning_rate = learning_rate
    config.num_epochs = num_epochs
    config.optimizer = optimizer or config.optimizer
    config.reference_accuracy = None
    return config
