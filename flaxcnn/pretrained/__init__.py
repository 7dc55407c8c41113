"""ImageNet weights from torchvision and timm, loaded exactly into flaxcnn's torchvision layouts;
state_dicts of d2l's PyTorch networks, loaded into flaxcnn's d2l layouts.

    variables = pretrained.load("resnet50", "hf-hub:timm/resnet50.tv_in1k")
    variables = pretrained.fit_to_task("resnet50", variables, fresh_variables)

`load(name, source)` reads a checkpoint (readers.py: `torchvision:<name>`, `hf-hub:<repo>`, or a
local .pth, .pt, .safetensors file), places every tensor into model `name`'s variables (mappings.py)
and checks the correspondence both ways: a tensor the model has no place for, a variable no tensor
fills, or a tensor of the wrong shape is one line naming it. The result is the model as the
checkpoint trained it (its classes, its input channels, `model_fields(name)`): its logits equal
torchvision's (tests/test_pretrained.py). A d2l-layout model (resnet18, densenet, ...) loads a
state_dict of d2l's PyTorch net under d2l's names (mappings.py), e.g. one saved from d2l's code
after training on Fashion-MNIST (1 channel, 10 classes).

`fit_to_task` then makes it the start of a run whose model may differ: with other classes the final
layer (the registry's `head`) is the run's own fresh one, initialised as d2l 14.2 does (Xavier-
uniform weight, flaxcnn's PyTorch-default bias); with other than 3 input channels the first
convolution's RGB kernels are adapted by timm's rule (timm/models/_manipulate.py,
`adapt_input_conv`): summed over RGB for 1 channel; for n > 3, repeated ceil(n / 3) times, cut to n
and scaled by 3 / n. Nothing else may differ. Only this package knows torch's names.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxcnn import models
from flaxcnn.errors import UserError
from flaxcnn.pretrained import mappings, readers
from flaxcnn.pretrained.readers import TORCHVISION_WEIGHTS

__all__ = ["load", "state_dict", "fit_to_task", "model_fields", "describe", "layouts",
           "d2l_layouts", "TORCHVISION_WEIGHTS"]


def layouts() -> list[str]:
    """The registry's models that load torchvision's and timm's weights."""
    return [name for name in mappings.LAYOUTS if models.spec(name).layout == "torchvision"]


def d2l_layouts() -> list[str]:
    """The registry's models that load state_dicts of d2l's PyTorch networks."""
    return [name for name in mappings.LAYOUTS if models.spec(name).layout == "d2l"]


def model_fields(name: str, channels: int = 3) -> dict:
    """Model fields the weights of `name` need (Inception-v3: torchvision's transform_input, which
    takes RGB only): pass them to models.create for the run's model too."""
    fields = dict(_layout(name).model_fields)
    if channels != 3:
        fields.pop("transform_input", None)
    return fields


def _layout(name: str) -> mappings.Layout:
    if name in mappings.LAYOUTS:
        return mappings.LAYOUTS[name]
    raise UserError(f"model {name!r} has no weight mapping; models that load weights: "
                    f"{', '.join(mappings.LAYOUTS)}")


def _check_source_fits(name: str, source: str) -> None:
    if source.startswith("torchvision:"):
        builder = source.removeprefix("torchvision:")
        if builder in TORCHVISION_WEIGHTS and TORCHVISION_WEIGHTS[builder][1] != name:
            raise UserError(f"{source} is torchvision's {builder}, which loads into "
                            f"--config.model={TORCHVISION_WEIGHTS[builder][1]}, not {name}")


def _match(name: str, source: str, **model_overrides):
    """(placements, tensors, abstract variables) of `source` for model `name`, checked one to one."""
    layout = _layout(name)
    _check_source_fits(name, source)
    state = mappings.timm_vgg_as_torchvision(readers.read_source(source))
    if layout.head_weight not in state:
        twin = f"tv_{name}"
        hint = (f" (torchvision's {name} is --config.model={twin}; {name} is d2l's layout)."
                if twin in mappings.LAYOUTS and mappings.LAYOUTS[twin].head_weight in state
                else "; is it a checkpoint of another network?")
        raise UserError(f"{source}: no tensor {layout.head_weight!r}, which every checkpoint of {name} "
                        f"has{hint} It holds {_first_names(state)}")
    model = models.create(name, num_classes=int(state[layout.head_weight].shape[0]),
                          **{**layout.model_fields, **model_overrides})

    def abstract_variables(channels):
        image = jax.ShapeDtypeStruct((1, layout.image_size, layout.image_size, channels), jnp.float32)
        return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)

    abstract = abstract_variables(3)
    placed = mappings.placements(name, abstract["params"])
    first_conv = next(p.torch_name for p in placed if p.path == layout.first_conv + ("kernel",))
    if first_conv in state and np.ndim(state[first_conv]) == 4 and state[first_conv].shape[1] != 3:
        abstract = abstract_variables(int(state[first_conv].shape[1]))  # e.g. d2l's gray images
    wanted = {p.torch_name for p in placed}
    _check_coverage(name, source, state, wanted, layout.optional_prefix)
    flat = traverse_util.flatten_dict(abstract)
    for p in placed:
        expected = mappings.torch_shape(p.kind, flat[(p.collection, *p.path)].shape)
        if tuple(state[p.torch_name].shape) != expected:
            raise UserError(f"{source}: tensor {p.torch_name!r} has shape {tuple(state[p.torch_name].shape)}, "
                            f"but {name}'s {p.flax_name} needs {expected} (in torch's layout)")
    if len({(p.collection, *p.path) for p in placed}) != len(flat):
        raise AssertionError(f"the mapping of {name} leaves some of its variables without a tensor")
    return placed, state, abstract


def _first_names(state) -> str:
    names = list(state)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_coverage(name, source, state, wanted, optional_prefix) -> None:
    unused = [k for k in state if k not in wanted and not k.endswith("num_batches_tracked")
              and not (optional_prefix and k.startswith(optional_prefix))]
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise UserError(f"{source}: tensor {unused[0]!r}{more} has no place in {name}; "
                        "is it a checkpoint of another network?")
    missing = [k for k in sorted(wanted) if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: no tensor {missing[0]!r}{more}, which {name} needs")


def load(name: str, source: str, **model_overrides) -> dict:
    """The variables ({"params", "batch_stats"}, float32 numpy arrays) of model `name` from the
    checkpoint `source`, for the model as the checkpoint has it: `models.create(name,
    num_classes=<the checkpoint's>, **model_fields(name), **model_overrides)` on images with the
    first convolution's input channels."""
    placed, state, abstract = _match(name, source, **model_overrides)
    flat = {}
    for p in placed:
        flat[(p.collection, *p.path)] = mappings.to_flax(p.kind, np.asarray(state[p.torch_name], np.float32))
    return traverse_util.unflatten_dict(flat)


def state_dict(name: str, variables: dict, *, batches_tracked: int) -> dict[str, np.ndarray]:
    """`load`'s inverse: model `name`'s variables as the state_dict of its PyTorch layout
    ({torch name: float32 array}, each BatchNorm's num_batches_tracked = `batches_tracked`, int64),
    through the same mapping, checked one to one. The BatchNorm statistics are written as stored."""
    if name not in mappings.LAYOUTS:
        raise UserError(f"model {name!r} has no PyTorch layout; models that have one: "
                        f"{', '.join(mappings.LAYOUTS)}")
    placed = mappings.placements(name, variables["params"])
    flat = traverse_util.flatten_dict(variables)
    if ({(p.collection, *p.path) for p in placed} != set(flat)
            or len({p.torch_name for p in placed}) != len(placed)):
        raise AssertionError(f"the mapping of {name} is not one to one with its variables")
    state = {}
    for p in placed:
        state[p.torch_name] = np.ascontiguousarray(
            mappings.to_torch(p.kind, np.asarray(flat[(p.collection, *p.path)], np.float32)))
        if p.kind == mappings.VECTOR and p.torch_name.endswith(".running_var"):
            module = p.torch_name.removesuffix(".running_var")
            state[f"{module}.num_batches_tracked"] = np.asarray(batches_tracked, np.int64)
    return state


def describe(name: str, source: str, **model_overrides) -> list[tuple[str, tuple, str, tuple]]:
    """(torch name, torch shape, flax variable, flax shape) of every tensor `load` places."""
    placed, state, abstract = _match(name, source, **model_overrides)
    flat = traverse_util.flatten_dict(abstract)
    return [(p.torch_name, tuple(state[p.torch_name].shape), p.flax_name,
             tuple(flat[(p.collection, *p.path)].shape)) for p in placed]


def adapt_input_conv(kernel: np.ndarray, channels: int) -> np.ndarray:
    """An HWIO kernel trained on RGB for `channels` input channels (timm's rule, see above)."""
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeat = math.ceil(channels / 3)
    return np.tile(kernel, (1, 1, repeat, 1))[:, :, :channels] * (3 / channels)


def fit_to_task(name: str, loaded: dict, fresh: dict) -> dict:
    """The variables a run starts from: `loaded` (from `load`), with the run's fresh head where its
    classes differ and the first convolution adapted where its channels differ. `fresh`: the run's
    model's initial variables (any dtype of arrays; the result has fresh's dtypes)."""
    layout = _layout(name)
    heads = [tuple(h.split("/")) for h in models.head_paths(name)]
    loaded_flat, fresh_flat = traverse_util.flatten_dict(loaded), traverse_util.flatten_dict(fresh)
    if set(loaded_flat) != set(fresh_flat):
        extra = sorted(set(loaded_flat) ^ set(fresh_flat))[0]
        raise UserError(f"the loaded weights and the run's {name} have different layers ({'/'.join(extra)}); "
                        "load with the run's model overrides")
    result = {}
    for key, fresh_value in fresh_flat.items():
        value = loaded_flat[key]
        collection, path = key[0], key[1:]
        if value.shape == fresh_value.shape:
            pass
        elif collection == "params" and any(path[:len(h)] == h for h in heads):
            value = fresh_value  # a new classifier for the run's classes (d2l 14.2)
        elif path == layout.first_conv + ("kernel",) and value.shape[:2] + value.shape[3:] == (
                fresh_value.shape[:2] + fresh_value.shape[3:]):
            value = adapt_input_conv(np.asarray(value), fresh_value.shape[2])
        else:
            size_hint = (f"; {name}'s pretrained weights need {layout.image_size}x{layout.image_size} images "
                         f"(--config.image_size={layout.image_size})" if layout.fixed_image_size else "")
            raise UserError(f"{'/'.join(key)} is {tuple(value.shape)} in the checkpoint but "
                            f"{tuple(fresh_value.shape)} in the run's {name}{size_hint}")
        result[key] = jnp.asarray(value, fresh_value.dtype)
    return traverse_util.unflatten_dict(result)
