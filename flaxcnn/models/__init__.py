"""The model zoo: `create(name)` builds any network of the chapter by name.

`_REGISTRY` is the one list of models: for each name, the module class and the fields that
make it that model, whether it has BatchNorm (its statistics then sum over the pmap axis
named by the module's `bn_axis_name` field),
whose layout it has (d2l's, or torchvision's, whose published ImageNet weights then load into
it: flaxcnn.pretrained), which of its layers is the final classifier (fine-tuning replaces
it and may train it faster), and, for the networks d2l trains in the chapter, d2l's
experiment setup (image size, model overrides and batch size, as the course's notebooks have
them), which the configs and the benchmark follow (tests/test_bench.py checks the configs).

d2l's and torchvision's ResNet-18/34 differ (d2l's convolutions have biases, its 1x1
shortcut no BatchNorm): `resnet18`, `resnet34` are d2l's, `tv_resnet18`, `tv_resnet34`
torchvision's. The other torchvision layouts are the chapter's own entries: d2l takes
ResNet-50 (in its exercises), ResNeXt-50, Inception-v3 and VGG from torchvision or gives them
in torchvision's form. They equal torchvision's networks exactly (tests/test_pretrained.py
compares logits) at 224x224 pixels (Inception-v3: 299x299), where VGG's adaptive 7x7 average
pooling is the identity; the weight mapping reorders VGG's first dense layer from torchvision's
NCHW flattening to flax's NHWC one.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.alexnet import AlexNet
from flaxcnn.models.batchnorm import LeNetBN
from flaxcnn.models.densenet import DenseNet
from flaxcnn.models.googlenet import GoogLeNet
from flaxcnn.models.inception import InceptionV3
from flaxcnn.models.nin import NiN
from flaxcnn.models.regnet import REGNETX32_ARCH, AnyNet
from flaxcnn.models.resnet import ResNet
from flaxcnn.models.vgg import VGG, VGG11_ARCH, VGG13_ARCH, VGG16_ARCH, VGG19_ARCH


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model. `fields`: the module fields that make it that model (`create`'s
    overrides replace them). `has_batch_norm`: whether it has BatchNorm, whose statistics average
    over the pmap axis named by its field `BATCH_NORM_AXIS_FIELD`.
    `d2l_image_size`, `d2l_overrides`, `d2l_batch_size`: the image size, model overrides and
    batch size with which d2l trains it on Fashion-MNIST (the course's notebooks; RegNetX-32,
    which only the v1.0 edition has, v1.0's); for ResNeXt-50 and Inception-v3, which d2l does
    not train, torchvision's input sizes (224, 299) and batch 128; None and {} for the other
    variants (vgg13, resnet34, lenet_bn_scratch, ...), which the benchmark leaves out.
    `layout`: "d2l", or "torchvision" for the networks that are torchvision's layer for
    layer (see the module docstring). `head`: the params paths ("/"-separated) of the final
    classifier, the layers whose outputs are the classes."""

    module: type[nn.Module]
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    has_batch_norm: bool = False
    layout: str = "d2l"
    head: tuple[str, ...] = ("Dense_0",)
    d2l_image_size: int | None = None
    d2l_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    d2l_batch_size: int = 128


BATCH_NORM_AXIS_FIELD = "bn_axis_name"  # a BatchNorm network's field naming its statistics' pmap axis

_TV = "torchvision"
_RESNET34_ARCH = ((3, 64), (4, 128), (6, 256), (3, 512))
_RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))

# In chapter order: `names()` and `chapter_models()` list the models in this order.
_REGISTRY = {
    "alexnet": ModelSpec(AlexNet, d2l_image_size=224, head=("Dense_2",)),
    "vgg11": ModelSpec(VGG, {"conv_arch": VGG11_ARCH}, layout=_TV, head=("Dense_2",),
                       d2l_image_size=224, d2l_overrides={"width_divisor": 4}),
    "vgg13": ModelSpec(VGG, {"conv_arch": VGG13_ARCH}, layout=_TV, head=("Dense_2",)),
    "vgg16": ModelSpec(VGG, {"conv_arch": VGG16_ARCH}, layout=_TV, head=("Dense_2",)),
    "vgg19": ModelSpec(VGG, {"conv_arch": VGG19_ARCH}, layout=_TV, head=("Dense_2",)),
    "nin": ModelSpec(NiN, d2l_image_size=224, head=("NiNBlock_3",)),
    "googlenet": ModelSpec(GoogLeNet, d2l_image_size=96),
    "inception_v3": ModelSpec(InceptionV3, has_batch_norm=True, layout=_TV, head=("fc", "AuxLogits/fc"),
                              d2l_image_size=299),
    "lenet_bn": ModelSpec(LeNetBN, has_batch_norm=True, d2l_image_size=28, d2l_batch_size=256,
                          head=("Dense_2",)),
    "lenet_bn_scratch": ModelSpec(LeNetBN, {"batch_norm_from_scratch": True}, has_batch_norm=True,
                                  head=("Dense_2",)),
    "resnet18": ModelSpec(ResNet, {"arch": _RESNET18_ARCH}, has_batch_norm=True, d2l_image_size=96,
                          d2l_batch_size=256),
    "resnet34": ModelSpec(ResNet, {"arch": _RESNET34_ARCH}, has_batch_norm=True),
    "tv_resnet18": ModelSpec(ResNet, {"arch": _RESNET18_ARCH, "block": "basic"}, has_batch_norm=True,
                             layout=_TV),
    "tv_resnet34": ModelSpec(ResNet, {"arch": _RESNET34_ARCH, "block": "basic"}, has_batch_norm=True,
                             layout=_TV),
    "resnet50": ModelSpec(ResNet, {"arch": _RESNET34_ARCH, "block": "bottleneck"},
                          has_batch_norm=True, layout=_TV),
    "resnext50": ModelSpec(ResNet, {"arch": _RESNET34_ARCH, "block": "bottleneck",
                                    "cardinality": 32, "base_width": 4},
                           has_batch_norm=True, layout=_TV, d2l_image_size=224),
    "densenet": ModelSpec(DenseNet, has_batch_norm=True, d2l_image_size=96, d2l_batch_size=256),
    "regnetx32": ModelSpec(AnyNet, {"arch": REGNETX32_ARCH, "stem_channels": 32},
                           has_batch_norm=True, d2l_image_size=96),
}


def head_paths(name: str) -> tuple[str, ...]:
    """The params paths of `name`'s final classifier (`ModelSpec.head`)."""
    return spec(name).head


def names() -> list[str]:
    """The names `create` accepts, in chapter order."""
    return list(_REGISTRY)


def chapter_models() -> list[str]:
    """The chapter's models with a d2l setup (see `ModelSpec`), in chapter order: the list the
    benchmark runs."""
    return [name for name, entry in _REGISTRY.items() if entry.d2l_image_size is not None]


def spec(name: str) -> ModelSpec:
    """The registry entry of `name` (a copy: changing it changes nothing)."""
    _check_name(name)
    entry = _REGISTRY[name]
    return dataclasses.replace(entry, fields=dict(entry.fields), d2l_overrides=dict(entry.d2l_overrides))


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")


def create(name: str, *, num_classes: int = 10, dtype: Any = jnp.float32, batch_norm_axis: str | None = None,
           **overrides) -> nn.Module:
    """The model called `name`, computing in `dtype` (parameters stay float32), with `overrides`
    replacing its default field values. With `batch_norm_axis`, a network with BatchNorm
    averages its batch statistics over that pmap axis (the global batch); a network without
    BatchNorm is the same either way."""
    _check_name(name)
    entry = _REGISTRY[name]
    valid_fields = [f.name for f in dataclasses.fields(entry.module)
                    if f.name not in ("parent", "name", BATCH_NORM_AXIS_FIELD)]
    for field in overrides:
        if field == BATCH_NORM_AXIS_FIELD and entry.has_batch_norm:
            raise ValueError(f"pass the BatchNorm axis of model {name!r} as batch_norm_axis=, not {field}=")
        if field not in valid_fields:
            raise ValueError(
                f"model {name!r} has no field {field!r}; valid fields: {', '.join(valid_fields)}"
            )
    fields = {**entry.fields, "num_classes": num_classes, "dtype": dtype, **overrides}
    if entry.has_batch_norm:
        fields[BATCH_NORM_AXIS_FIELD] = batch_norm_axis
    return entry.module(**fields)
