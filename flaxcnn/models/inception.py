"""Inception-v3 (Szegedy, Vanhoucke, Ioffe, Shlens & Wojna 2016, "Rethinking the Inception
Architecture for Computer Vision"), in torchvision's layout.

Inception-v3 refines GoogLeNet's block (googlenet.py, d2l 8.4): it factorizes large
convolutions into stacks of small ones (a 5x5 into two 3x3s, an nxn into a 1xn and an nx1),
shrinks the grid inside blocks whose strided paths run side by side with a pooling (B, D)
rather than by pooling alone, and adds BatchNorm after every convolution. Every convolution
here is torchvision's BasicConv2d: bias-free convolution, BatchNorm (epsilon 0.001), ReLU.
The module and variable names follow torchvision's (Conv2d_1a_3x3, Mixed_5b, branch1x1, ...).
"""
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.batchnorm import ModuleDef, network_norm
from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool


class BasicConv2d(nn.Module):
    """Bias-free convolution, the network's BatchNorm, ReLU. `padding` is an int or PyTorch's
    (height, width) pair, e.g. (0, 3) for a 1x7 kernel."""

    features: int
    kernel_size: tuple[int, int]
    norm: ModuleDef
    strides: int = 1
    padding: int | tuple[int, int] = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv(x, self.features, self.kernel_size, strides=self.strides, padding=self.padding,
                 use_bias=False, dtype=self.dtype)
        return nn.relu(self.norm()(x))


def _same_size_avg_pool(x):
    # PyTorch's F.avg_pool2d(x, 3, stride=1, padding=1), which counts the padding in the average
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _grid_max_pool(x):
    return max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """Outputs 64 + 64 + 96 + pool_features channels at the input's size."""

    pool_features: int
    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        branch1x1 = c(64, (1, 1), name="branch1x1")(x)
        branch5x5 = c(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = c(64, (5, 5), padding=2, name="branch5x5_2")(branch5x5)
        branch3x3dbl = c(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = c(96, (3, 3), padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = c(96, (3, 3), padding=1, name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = c(self.pool_features, (1, 1), name="branch_pool")(_same_size_avg_pool(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction: 384 + 96 + input channels (768 for 288 in) at half the size (3x3, stride 2, unpadded)."""

    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        branch3x3 = c(384, (3, 3), strides=2, name="branch3x3")(x)
        branch3x3dbl = c(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = c(96, (3, 3), padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = c(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _grid_max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    """7x7 convolutions factorized into 1x7 and 7x1, `channels_7x7` wide: outputs 4 * 192 = 768
    channels at the input's size."""

    channels_7x7: int
    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        c7 = self.channels_7x7
        branch1x1 = c(192, (1, 1), name="branch1x1")(x)
        branch7x7 = c(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        branch7x7dbl = c(c7, (1, 1), name="branch7x7dbl_1")(x)
        branch7x7dbl = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = c(192, (1, 1), name="branch_pool")(_same_size_avg_pool(x))
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction: 320 + 192 + input channels (1280 for 768 in) at half the size (3x3, stride 2, unpadded)."""

    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        branch3x3 = c(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = c(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = c(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = c(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _grid_max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """3x3 convolutions whose outputs split into a 1x3 and a 3x1 side by side: outputs
    320 + 2 * 384 + 2 * 384 + 192 = 2048 channels at the input's size."""

    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        branch1x1 = c(320, (1, 1), name="branch1x1")(x)
        branch3x3 = c(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                                     c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
        branch3x3dbl = c(448, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = c(384, (3, 3), padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
                                        c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl)], axis=-1)
        branch_pool = c(192, (1, 1), name="branch_pool")(_same_size_avg_pool(x))
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionAux(nn.Module):
    """The auxiliary classifier on Mixed_6e's 17x17x768 output: 5x5 stride-3 average pooling,
    1x1 convolution to 128, 5x5 convolution to 768, global average pooling, dense layer."""

    num_classes: int
    norm: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = partial(BasicConv2d, norm=self.norm, dtype=self.dtype)
        x = nn.avg_pool(x, (5, 5), strides=(3, 3))
        x = c(128, (1, 1), name="conv0")(x)
        x = c(768, (5, 5), name="conv1")(x)
        return dense(x.mean(axis=(1, 2)), self.num_classes, dtype=self.dtype, name="fc")


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalization, per RGB channel
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_to_inception_input(x):
    """torchvision's Inception3._transform_input: (x * std + mean - 0.5) / 0.5 per RGB channel of
    an ImageNet-normalized NHWC batch, as torchvision computes it (x * (std / 0.5) + (mean - 0.5) / 0.5)."""
    if x.shape[-1] != 3:
        raise ValueError(f"transform_input needs RGB images (3 channels), got {x.shape[-1]}; "
                         "leave transform_input off for other channel counts")
    scale = jnp.asarray([s / 0.5 for s in IMAGENET_STD], x.dtype)
    shift = jnp.asarray([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], x.dtype)
    return x * scale + shift


# the stem's windows, through Mixed_6a (which leaves 17x17 of a 299x299 image): (kernel, stride, padding)
_TO_MIXED_6 = [(3, 2, 0), (3, 1, 0), (3, 1, 1), (3, 2, 0), (1, 1, 0), (3, 1, 0), (3, 2, 0), (3, 2, 0)]


class InceptionV3(nn.Module):
    """torchvision's Inception3: stem, Mixed_5b-5d (A), 6a (B), 6b-6e (C), 7a (D), 7b-7c (E), global average
    pooling, dropout, dense layer.

    `aux_logits=False` (the default) has no auxiliary classifier. With `aux_logits=True` the
    network has torchvision's InceptionAux after Mixed_6e, and needs 299x299 inputs (where the
    auxiliary classifier sees a 17x17 grid). It runs, as in torchvision, only in training; the
    network still returns just the logits, so the trainer's `apply(..., train=True)` is unchanged,
    and sows the auxiliary logits into the "intermediates" collection: to add torchvision's
    auxiliary loss, apply with mutable=["batch_stats", "intermediates"] and read
    variables["intermediates"]["aux_logits"][0]. Applied without "intermediates" mutable, the
    head still updates its BatchNorm statistics, but its logits go nowhere and its parameters
    get no gradient. `bn_axis_name`: the pmap axis to sum the batch statistics over (None:
    each device's own batch); `mask` (N,): the real examples of a padded batch.

    `transform_input=True` is torchvision's option that its ImageNet weights (Google's, trained
    on pixels scaled to [-1, 1]) are loaded with: it takes RGB images normalized with ImageNet's
    mean and std and turns them back into (pixels - 0.5) / 0.5 before the stem."""

    num_classes: int = 10
    aux_logits: bool = False
    transform_input: bool = False
    dropout_rate: float = 0.5
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the stem and the grid reductions of Mixed_6a and 7a (3x3, stride 2, unpadded); the
        # auxiliary classifier's 5x5 stride-3 average pooling and 5x5 convolution after Mixed_6e
        size = smallest_input(_TO_MIXED_6 + [(3, 2, 0)])
        if self.aux_logits:
            size = max(size, smallest_input(_TO_MIXED_6 + [(5, 3, 0), (5, 1, 0)]))
        return size

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        if self.transform_input:
            x = imagenet_to_inception_input(x)
        norm = network_norm(self, train, mask)
        c = partial(BasicConv2d, norm=norm, dtype=self.dtype)
        x = c(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = c(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _grid_max_pool(x)
        x = c(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = c(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _grid_max_pool(x)
        x = InceptionA(32, norm, self.dtype, name="Mixed_5b")(x)
        x = InceptionA(64, norm, self.dtype, name="Mixed_5c")(x)
        x = InceptionA(64, norm, self.dtype, name="Mixed_5d")(x)
        x = InceptionB(norm, self.dtype, name="Mixed_6a")(x)
        x = InceptionC(128, norm, self.dtype, name="Mixed_6b")(x)
        x = InceptionC(160, norm, self.dtype, name="Mixed_6c")(x)
        x = InceptionC(160, norm, self.dtype, name="Mixed_6d")(x)
        x = InceptionC(192, norm, self.dtype, name="Mixed_6e")(x)
        # initialization creates the auxiliary head's variables, also in evaluation mode
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(self.num_classes, norm, self.dtype, name="AuxLogits")(x)
            if not self.is_initializing():
                self.sow("intermediates", "aux_logits", aux)
        x = InceptionD(norm, self.dtype, name="Mixed_7a")(x)
        x = InceptionE(norm, self.dtype, name="Mixed_7b")(x)
        x = InceptionE(norm, self.dtype, name="Mixed_7c")(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(x, self.num_classes, dtype=self.dtype, name="fc")
