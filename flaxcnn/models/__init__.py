"""The model zoo: `create(name)` builds any network of the chapter by name."""
import dataclasses

import flax.linen as nn

from flaxcnn.models.alexnet import AlexNet
from flaxcnn.models.batchnorm import LeNetBN
from flaxcnn.models.googlenet import GoogLeNet
from flaxcnn.models.nin import NiN
from flaxcnn.models.resnet import ResNet
from flaxcnn.models.vgg import VGG, VGG11_ARCH, VGG13_ARCH, VGG16_ARCH, VGG19_ARCH

# name -> (module class, the fields that make it that model)
_REGISTRY = {
    "alexnet": (AlexNet, {}),
    "vgg11": (VGG, {"conv_arch": VGG11_ARCH}),
    "vgg13": (VGG, {"conv_arch": VGG13_ARCH}),
    "vgg16": (VGG, {"conv_arch": VGG16_ARCH}),
    "vgg19": (VGG, {"conv_arch": VGG19_ARCH}),
    "nin": (NiN, {}),
    "googlenet": (GoogLeNet, {}),
    "lenet_bn": (LeNetBN, {}),
    "lenet_bn_scratch": (LeNetBN, {"batch_norm_from_scratch": True}),
    "resnet18": (ResNet, {"arch": ((2, 64), (2, 128), (2, 256), (2, 512))}),
    "resnet34": (ResNet, {"arch": ((3, 64), (4, 128), (6, 256), (3, 512))}),
    "resnet50": (ResNet, {"arch": ((3, 64), (4, 128), (6, 256), (3, 512)), "bottleneck": True}),
}


def names() -> list[str]:
    """The names `create` accepts."""
    return list(_REGISTRY)


def create(name: str, *, num_classes: int = 10, batch_norm_axis=None, **overrides) -> nn.Module:
    """The model called `name`, with `overrides` replacing its default field values."""
    if batch_norm_axis is not None and "bn_axis_name" in [f.name for f in dataclasses.fields(_REGISTRY[name][0])]:  # TEMP shim until the models branch lands
        overrides["bn_axis_name"] = batch_norm_axis
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")
    module_class, fields = _REGISTRY[name]
    valid_fields = [f.name for f in dataclasses.fields(module_class) if f.name not in ("parent", "name")]
    for field in overrides:
        if field not in valid_fields:
            raise ValueError(
                f"model {name!r} has no field {field!r}; valid fields: {', '.join(valid_fields)}"
            )
    return module_class(**{**fields, "num_classes": num_classes, **overrides})
