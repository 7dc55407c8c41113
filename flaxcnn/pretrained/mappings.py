"""One explicit name mapping per torchvision layout: torch state_dict names -> flaxcnn's variables.

Each layout's walker lists (torch module, flax module path, kind) for the whole network, in the
network's order; `placements` expands every such pair into its tensors: a convolution's weight
(torch OIHW -> flax HWIO, also for grouped convolutions: (out, in / groups, h, w) -> (h, w, in /
groups, out)) and bias if the flax layer has one, a dense layer's weight (transposed) and bias,
BatchNorm's weight, bias (params "scale", "bias"), running_mean and running_var (batch_stats
"mean", "var"); its num_batches_tracked counts steps and is ignored. The expansion reads the flax
model's own variable tree, so every variable of the model has exactly one torch tensor (checked).

VGG's first dense layer is where the layouts differ beyond names: torchvision flattens the final
512 x 7 x 7 map in NCHW order, flax in NHWC order, so its weight's columns are reordered. timm's
VGG checkpoints (hf-hub:timm/vgg16.tv_in1k) hold the same tensors as convolutions
(pre_logits.fc1: 4096 x 512 x 7 x 7, pre_logits.fc2: 4096 x 4096 x 1 x 1, head.fc), which
`timm_vgg_as_torchvision` renames and reshapes back. timm's ResNets and Inception-v3 use
torchvision's names.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from flaxcnn import models

CONV, DENSE, BN, VGG_FC1 = "conv", "dense", "bn", "vgg_fc1"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one torch tensor goes: variables[collection][path...], converted by `kind`."""

    torch_name: str
    collection: str
    path: tuple[str, ...]
    kind: str  # CONV, DENSE, VGG_FC1 for weights; "vector" for biases and BatchNorm's vectors

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


@dataclasses.dataclass(frozen=True)
class Layout:
    """A torchvision layout: its walker, the params path of its first convolution, the image size
    its weights were trained at, the model fields its weights need, its 1000-class head weight's
    torch name, torch names a checkpoint may hold that this model may not use, and whether the
    weights fit only images of `image_size` (VGG's classifier sees the flattened final map)."""

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
}


def placements(name: str, params: Mapping) -> list[Placement]:
    """Every torch tensor of layout `name`, placed into the model whose params tree is `params`."""
    result = []
    for torch_module, path, kind in LAYOUTS[name].walk(name, params):
        layer = params
        for key in path:
            layer = layer[key]
        if kind == BN:
            result += [Placement(f"{torch_module}.weight", "params", path + ("scale",), "vector"),
                       Placement(f"{torch_module}.bias", "params", path + ("bias",), "vector"),
                       Placement(f"{torch_module}.running_mean", "batch_stats", path + ("mean",), "vector"),
                       Placement(f"{torch_module}.running_var", "batch_stats", path + ("var",), "vector")]
            continue
        result.append(Placement(f"{torch_module}.weight", "params", path + ("kernel",), kind))
        if "bias" in layer:
            result.append(Placement(f"{torch_module}.bias", "params", path + ("bias",), "vector"))
    return result


def torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a tensor that becomes a flax variable of `flax_shape`."""
    if kind == CONV:
        height, width, fan_in, fan_out = flax_shape
        return fan_out, fan_in, height, width
    if kind in (DENSE, VGG_FC1):
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def to_flax(kind: str, tensor: np.ndarray) -> np.ndarray:
    """A torch tensor (already checked to have `torch_shape`) in flax's layout."""
    if kind == CONV:
        return np.transpose(tensor, (2, 3, 1, 0))
    if kind == DENSE:
        return tensor.T
    if kind == VGG_FC1:
        fan_out, fan_in = tensor.shape
        channels = 512  # VGG's last convolution; torchvision flattens (channel, row, column)
        side = int(round((fan_in // channels) ** 0.5))
        return np.transpose(tensor.reshape(fan_out, channels, side, side), (2, 3, 1, 0)).reshape(fan_in, fan_out)
    return tensor


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
