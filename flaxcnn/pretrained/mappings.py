"""One explicit name mapping per layout: torch state_dict names <-> flaxcnn's variables.

Two families of layouts: torchvision's (the chapter's VGGs, ResNet-50, ResNeXt-50, Inception-v3 and
the tv_ ResNets, whose published ImageNet weights load into them) and d2l's (the networks d2l's
PyTorch code builds, named as its nn.Sequential code names them, so a state_dict saved from d2l's
net loads into flaxcnn's and a flaxcnn run exports into d2l's). `to_flax` and `to_torch` convert one
tensor each way.

Each layout's walker lists (torch module, flax module path, kind) for the whole network, in the
network's order; `placements` expands every such pair into its tensors: a convolution's weight
(torch OIHW -> flax HWIO, also for grouped convolutions: (out, in / groups, h, w) -> (h, w, in /
groups, out)) and bias if the flax layer has one, a dense layer's weight (transposed) and bias,
BatchNorm's weight, bias (params "scale", "bias"), running_mean and running_var (batch_stats
"mean", "var"); its num_batches_tracked counts steps and is ignored. The expansion reads the flax
model's own variable tree, so every variable of the model has exactly one torch tensor (checked).

A dense layer after a flattened feature map is where the layouts differ beyond names: torch
flattens the map in NCHW order, flax in NHWC order, so that weight's columns are reordered (VGG's
first dense layer after 512 x 7 x 7 (128 x 7 x 7 at d2l's quarter width), d2l's AlexNet's after
256 x 5 x 5, LeNet's after 16 x 4 x 4). timm's
VGG checkpoints (hf-hub:timm/vgg16.tv_in1k) hold the same tensors as convolutions
(pre_logits.fc1: 4096 x 512 x 7 x 7, pre_logits.fc2: 4096 x 4096 x 1 x 1, head.fc), which
`timm_vgg_as_torchvision` renames and reshapes back. timm's ResNets and Inception-v3 use
torchvision's names.

The d2l names are d2l-zh 2.0's (its PyTorch chapter 7: `net = nn.Sequential(...)`, so
"0.weight", and d2l's ResNet "1.0.conv1.weight"); RegNetX-32, which only d2l v1.0 has (section
8.8), has v1.0's `AnyNet` names ("net.stage1.0.conv2.weight"). d2l's from-scratch BatchNorm
(lenet_bn_scratch) holds gamma and beta as (1, C, 1, 1) or (1, C) parameters and its moving_mean
and moving_var as plain tensor attributes of the same shapes, which torch's state_dict leaves
out: its mapping names them "<module>.moving_mean" and "<module>.moving_var", the attribute
names, so a dict with them carries the whole trained layer (strict load_state_dict in torch takes
only gamma and beta; set the two attributes by name).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from flaxcnn import models

CONV, DENSE, BN, VGG_FC1 = "conv", "dense", "bn", "vgg_fc1"
ALEXNET_FC1, LENET_FC1 = "alexnet_fc1", "lenet_fc1"
SCRATCH_BN_4D, SCRATCH_BN_2D = "scratch_bn_4d", "scratch_bn_2d"  # walker kinds of d2l's scratch layer
VECTOR = "vector"
# a dense layer after a flattened square feature map: the map's side (torchvision's VGG pools it
# to 7 x 7 whatever its channels; d2l's AlexNet and LeNet see 5 x 5 and 4 x 4 at d2l's image sizes)
_FLATTENED_SIDE = {VGG_FC1: 7, ALEXNET_FC1: 5, LENET_FC1: 4}
# the torch shape of one of d2l's scratch BatchNorm vectors (flax's are (C,))
_SCRATCH_SHAPES = {SCRATCH_BN_4D: lambda c: (1, c, 1, 1), SCRATCH_BN_2D: lambda c: (1, c)}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one torch tensor goes: variables[collection][path...], converted by `kind`."""

    torch_name: str
    collection: str
    path: tuple[str, ...]
    kind: str  # CONV, DENSE, a flattened dense layer's for weights; VECTOR for biases and
    # BatchNorm's vectors; SCRATCH_BN_4D or SCRATCH_BN_2D for d2l's scratch BatchNorm's

    @property
    def flax_name(self) -> str:
        return f"{self.collection}/{'/'.join(self.path)}"


def _resnet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    block = models.spec(name).fields["block"]
    block_class, main_convs = {"basic": ("BasicBlock", 2), "bottleneck": ("Bottleneck", 3)}[block]
    yield "conv1", ("Conv_0",), CONV
    yield "bn1", ("BatchNorm_0",), BN
    index = 0
    for stage, (num_blocks, _) in enumerate(models.spec(name).fields["arch"]):
        for position in range(num_blocks):
            flax_block, torch_block = f"{block_class}_{index}", f"layer{stage + 1}.{position}"
            for conv in range(main_convs):
                yield f"{torch_block}.conv{conv + 1}", (flax_block, f"Conv_{conv}"), CONV
                yield f"{torch_block}.bn{conv + 1}", (flax_block, f"BatchNorm_{conv}"), BN
            if f"Conv_{main_convs}" in params[flax_block]:  # the projection shortcut
                yield f"{torch_block}.downsample.0", (flax_block, f"Conv_{main_convs}"), CONV
                yield f"{torch_block}.downsample.1", (flax_block, f"BatchNorm_{main_convs}"), BN
            index += 1
    yield "fc", ("Dense_0",), DENSE


def _vgg(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # torchvision's `features` numbers every layer: each convolution and its ReLU, then the pooling
    layer = 0
    for block, (num_convs, _) in enumerate(models.spec(name).fields["conv_arch"]):
        for conv in range(num_convs):
            yield f"features.{layer}", (f"VGGBlock_{block}", f"Conv_{conv}"), CONV
            layer += 2
        layer += 1
    # classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    yield "classifier.0", ("Dense_0",), VGG_FC1
    yield "classifier.3", ("Dense_1",), DENSE
    yield "classifier.6", ("Dense_2",), DENSE


def _inception(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # inception.py names every module as torchvision does; each BasicConv2d holds conv and bn
    def basic_convs(tree, path):
        for key, child in tree.items():
            if set(child) == {"Conv_0", "BatchNorm_0"}:
                yield path + (key,)
            elif key != "fc":
                yield from basic_convs(child, path + (key,))

    for path in basic_convs(params, ()):
        torch_module = ".".join(path)
        yield f"{torch_module}.conv", path + ("Conv_0",), CONV
        yield f"{torch_module}.bn", path + ("BatchNorm_0",), BN
    if "AuxLogits" in params:
        yield "AuxLogits.fc", ("AuxLogits", "fc"), DENSE
    yield "fc", ("fc",), DENSE


def _d2l_alexnet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # d2l's Sequential: Conv, ReLU, MaxPool, Conv, ReLU, MaxPool, 3 x (Conv, ReLU), MaxPool, Flatten,
    # then Linear, ReLU, Dropout twice and the final Linear
    for index, layer in enumerate((0, 3, 6, 8, 10)):
        yield f"{layer}", (f"Conv_{index}",), CONV
    yield "14", ("Dense_0",), ALEXNET_FC1
    yield "17", ("Dense_1",), DENSE
    yield "20", ("Dense_2",), DENSE


def _d2l_nin(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # nin_block, MaxPool, nin_block, MaxPool, nin_block, MaxPool, Dropout, nin_block, ...; each
    # nin_block a Sequential of three (Conv, ReLU)
    for block, layer in enumerate((0, 2, 4, 7)):
        for conv in range(3):
            yield f"{layer}.{2 * conv}", (f"NiNBlock_{block}", f"Conv_{conv}"), CONV


_D2L_INCEPTION_CONVS = ("p1_1", "p2_1", "p2_2", "p3_1", "p3_2", "p4_2")  # in flax's creation order


def _d2l_googlenet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # net = Sequential(b1, b2, b3, b4, b5, Linear); b1 = (Conv, ReLU, MaxPool), b2 = (Conv, ReLU,
    # Conv, ReLU, MaxPool), b3-b5 Inception blocks (then a MaxPool, or b5's pooling and Flatten)
    yield "0.0", ("Conv_0",), CONV
    yield "1.0", ("Conv_1",), CONV
    yield "1.2", ("Conv_2",), CONV
    index = 0
    for stage, blocks in ((2, 2), (3, 5), (4, 2)):
        for position in range(blocks):
            for conv, torch_conv in enumerate(_D2L_INCEPTION_CONVS):
                yield f"{stage}.{position}.{torch_conv}", (f"Inception_{index}", f"Conv_{conv}"), CONV
            index += 1
    yield "5", ("Dense_0",), DENSE


def _d2l_lenet_bn(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # Conv, BN, Sigmoid, AvgPool, Conv, BN, Sigmoid, AvgPool, Flatten, Linear, BN, Sigmoid,
    # Linear, BN, Sigmoid, Linear; the from-scratch net has d2l's own BatchNorm in the BN places
    scratch = models.spec(name).fields.get("batch_norm_from_scratch", False)
    norm_4d, norm_2d = (SCRATCH_BN_4D, SCRATCH_BN_2D) if scratch else (BN, BN)
    yield "0", ("Conv_0",), CONV
    yield "1", ("BatchNorm_0",), norm_4d
    yield "4", ("Conv_1",), CONV
    yield "5", ("BatchNorm_1",), norm_4d
    yield "9", ("Dense_0",), LENET_FC1
    yield "10", ("BatchNorm_2",), norm_2d
    yield "12", ("Dense_1",), DENSE
    yield "13", ("BatchNorm_3",), norm_2d
    yield "15", ("Dense_2",), DENSE


def _d2l_resnet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # net = Sequential(b1, b2, ..., AdaptiveAvgPool2d, Flatten, Linear); b1 = (Conv, BN, ReLU,
    # MaxPool); each later b a Sequential of Residual(conv1, conv2, conv3 on the shortcut, bn1, bn2)
    arch = models.spec(name).fields["arch"]
    yield "0.0", ("Conv_0",), CONV
    yield "0.1", ("BatchNorm_0",), BN
    index = 0
    for stage, (num_blocks, _) in enumerate(arch):
        for position in range(num_blocks):
            flax_block, torch_block = f"Residual_{index}", f"{stage + 1}.{position}"
            for conv in range(2):
                yield f"{torch_block}.conv{conv + 1}", (flax_block, f"Conv_{conv}"), CONV
                yield f"{torch_block}.bn{conv + 1}", (flax_block, f"BatchNorm_{conv}"), BN
            if "Conv_2" in params[flax_block]:  # the 1x1 shortcut
                yield f"{torch_block}.conv3", (flax_block, "Conv_2"), CONV
            index += 1
    yield f"{len(arch) + 3}", ("Dense_0",), DENSE


def _d2l_densenet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # net = Sequential(b1, DenseBlock, transition_block, ..., DenseBlock, BN, ReLU,
    # AdaptiveAvgPool2d, Flatten, Linear); a DenseBlock's `net` holds conv_blocks (BN, ReLU, Conv),
    # a transition_block is (BN, ReLU, Conv, AvgPool)
    yield "0.0", ("Conv_0",), CONV
    yield "0.1", ("BatchNorm_0",), BN
    num_blocks = len(models.spec(name).fields.get("arch", (4, 4, 4, 4)))
    layer = 1
    for block in range(num_blocks):
        dense_block = params[f"DenseBlock_{block}"]
        for conv in range(sum(key.startswith("Conv_") for key in dense_block)):
            yield f"{layer}.net.{conv}.0", (f"DenseBlock_{block}", f"BatchNorm_{conv}"), BN
            yield f"{layer}.net.{conv}.2", (f"DenseBlock_{block}", f"Conv_{conv}"), CONV
        layer += 1
        if block != num_blocks - 1:
            yield f"{layer}.0", (f"TransitionBlock_{block}", "BatchNorm_0"), BN
            yield f"{layer}.2", (f"TransitionBlock_{block}", "Conv_0"), CONV
            layer += 1
    yield f"{layer}", ("BatchNorm_1",), BN
    yield f"{layer + 4}", ("Dense_0",), DENSE


def _d2l_anynet(name: str, params: Mapping) -> Iterator[tuple[str, tuple[str, ...], str]]:
    # d2l v1.0's AnyNet: self.net = Sequential(stem (Conv, BN, ReLU), stage1, stage2, ...,
    # head (AdaptiveAvgPool2d, Flatten, Linear)); each stage a Sequential of ResNeXtBlock(conv1,
    # conv2, conv3, bn1, bn2, bn3, and conv4, bn4 on the first block's shortcut)
    yield "net.0.0", ("Conv_0",), CONV
    yield "net.0.1", ("BatchNorm_0",), BN
    index = 0
    for stage, (depth, *_) in enumerate(models.spec(name).fields["arch"]):
        for position in range(depth):
            flax_block, torch_block = f"ResNeXtBlock_{index}", f"net.stage{stage + 1}.{position}"
            for conv in range(4 if "Conv_3" in params[flax_block] else 3):
                yield f"{torch_block}.conv{conv + 1}", (flax_block, f"Conv_{conv}"), CONV
                yield f"{torch_block}.bn{conv + 1}", (flax_block, f"BatchNorm_{conv}"), BN
            index += 1
    yield "net.head.2", ("Dense_0",), DENSE


@dataclasses.dataclass(frozen=True)
class Layout:
    """A layout: its walker, the params path of its first convolution, the image size its weights
    were trained at (torchvision's ImageNet size, d2l's Fashion-MNIST size), the model fields its
    weights need, its head weight's torch name, torch names a checkpoint may hold that this model
    may not use, and whether the weights fit only images of `image_size` (a dense layer sees the
    flattened final map)."""

    walk: Callable[[str, Mapping], Iterator[tuple[str, tuple[str, ...], str]]]
    first_conv: tuple[str, ...]
    image_size: int = 224
    model_fields: dict = dataclasses.field(default_factory=dict)
    head_weight: str = "fc.weight"
    optional_prefix: str | None = None
    fixed_image_size: bool = False


_VGG = Layout(_vgg, ("VGGBlock_0", "Conv_0"), head_weight="classifier.6.weight", fixed_image_size=True)
LAYOUTS = {
    "tv_resnet18": Layout(_resnet, ("Conv_0",)),
    "tv_resnet34": Layout(_resnet, ("Conv_0",)),
    "resnet50": Layout(_resnet, ("Conv_0",)),
    "resnext50": Layout(_resnet, ("Conv_0",)),
    # torchvision builds inception_v3 with transform_input=True for its weights; they include the
    # auxiliary classifier, which a model without it (aux_logits=False) leaves unused
    "inception_v3": Layout(_inception, ("Conv2d_1a_3x3", "Conv_0"), 299, {"transform_input": True},
                           optional_prefix="AuxLogits."),
    "vgg11": _VGG, "vgg13": _VGG, "vgg16": _VGG, "vgg19": _VGG,
    # d2l's layouts, at d2l's image sizes (d2l trains them on 1-channel Fashion-MNIST)
    "alexnet": Layout(_d2l_alexnet, ("Conv_0",), 224, head_weight="20.weight", fixed_image_size=True),
    "nin": Layout(_d2l_nin, ("NiNBlock_0", "Conv_0"), 224, head_weight="7.4.weight"),
    "googlenet": Layout(_d2l_googlenet, ("Conv_0",), 96, head_weight="5.weight"),
    "lenet_bn": Layout(_d2l_lenet_bn, ("Conv_0",), 28, head_weight="15.weight", fixed_image_size=True),
    "lenet_bn_scratch": Layout(_d2l_lenet_bn, ("Conv_0",), 28, head_weight="15.weight",
                               fixed_image_size=True),
    "resnet18": Layout(_d2l_resnet, ("Conv_0",), 96, head_weight="7.weight"),
    "resnet34": Layout(_d2l_resnet, ("Conv_0",), 96, head_weight="7.weight"),
    "densenet": Layout(_d2l_densenet, ("Conv_0",), 96, head_weight="12.weight"),
    "regnetx32": Layout(_d2l_anynet, ("Conv_0",), 96, head_weight="net.head.2.weight"),
}


def placements(name: str, params: Mapping) -> list[Placement]:
    """Every torch tensor of layout `name`, placed into the model whose params tree is `params`."""
    result = []
    for torch_module, path, kind in LAYOUTS[name].walk(name, params):
        layer = params
        for key in path:
            layer = layer[key]
        if kind == BN:
            result += [Placement(f"{torch_module}.weight", "params", path + ("scale",), VECTOR),
                       Placement(f"{torch_module}.bias", "params", path + ("bias",), VECTOR),
                       Placement(f"{torch_module}.running_mean", "batch_stats", path + ("mean",), VECTOR),
                       Placement(f"{torch_module}.running_var", "batch_stats", path + ("var",), VECTOR)]
            continue
        if kind in _SCRATCH_SHAPES:
            result += [Placement(f"{torch_module}.gamma", "params", path + ("scale",), kind),
                       Placement(f"{torch_module}.beta", "params", path + ("bias",), kind),
                       Placement(f"{torch_module}.moving_mean", "batch_stats", path + ("mean",), kind),
                       Placement(f"{torch_module}.moving_var", "batch_stats", path + ("var",), kind)]
            continue
        result.append(Placement(f"{torch_module}.weight", "params", path + ("kernel",), kind))
        if "bias" in layer:
            result.append(Placement(f"{torch_module}.bias", "params", path + ("bias",), VECTOR))
    return result


def torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a tensor that becomes a flax variable of `flax_shape`."""
    if kind == CONV:
        height, width, fan_in, fan_out = flax_shape
        return fan_out, fan_in, height, width
    if kind == DENSE or kind in _FLATTENED_SIDE:
        return tuple(reversed(flax_shape))
    if kind in _SCRATCH_SHAPES:
        return _SCRATCH_SHAPES[kind](flax_shape[0])
    return tuple(flax_shape)


def _flattened_map(kind: str, fan_in: int) -> tuple[int, int]:
    """(channels, side) of the square feature map a flattened dense layer of `kind` sees."""
    side = _FLATTENED_SIDE[kind]
    return fan_in // (side * side), side


def to_flax(kind: str, tensor: np.ndarray) -> np.ndarray:
    """A torch tensor (already checked to have `torch_shape`) in flax's layout."""
    if kind == CONV:
        return np.transpose(tensor, (2, 3, 1, 0))
    if kind == DENSE:
        return tensor.T
    if kind in _FLATTENED_SIDE:  # torch flattens (channel, row, column), flax (row, column, channel)
        fan_out, fan_in = tensor.shape
        channels, side = _flattened_map(kind, fan_in)
        return np.transpose(tensor.reshape(fan_out, channels, side, side), (2, 3, 1, 0)).reshape(fan_in, fan_out)
    if kind in _SCRATCH_SHAPES:
        return tensor.reshape(-1)
    return tensor


def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    """A flax variable in torch's layout (of `torch_shape(kind, array.shape)`): `to_flax`'s inverse."""
    if kind == CONV:
        return np.transpose(array, (3, 2, 0, 1))
    if kind == DENSE:
        return array.T
    if kind in _FLATTENED_SIDE:
        fan_in, fan_out = array.shape
        channels, side = _flattened_map(kind, fan_in)
        return np.transpose(array.reshape(side, side, channels, fan_out), (3, 2, 0, 1)).reshape(fan_out, fan_in)
    if kind in _SCRATCH_SHAPES:
        return array.reshape(_SCRATCH_SHAPES[kind](array.shape[0]))
    return array


_TIMM_VGG_NAMES = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}


def timm_vgg_as_torchvision(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm's VGG tensors under torchvision's names and shapes (other checkpoints unchanged)."""
    renamed = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in _TIMM_VGG_NAMES:
            key = f"{_TIMM_VGG_NAMES[module]}.{leaf}"
            value = value.reshape(value.shape[0], -1) if leaf == "weight" else value
        renamed[key] = value
    return renamed
