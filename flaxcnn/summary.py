"""Per-layer shapes, parameter counts and forward FLOPs of the zoo's models.

    python -m flaxcnn.summary --model resnet18 --image-size 96 [--channels 1] [--num-classes 10]
    python -m flaxcnn.summary --model resnet50 --init-from hf-hub:timm/resnet50.tv_in1k

The table is flax's own `nn.tabulate` (output shape and parameters of every layer, less its footer,
whose total adds the BatchNorm statistics to the parameters; they are printed apart below it), the
FLOPs are XLA's cost analysis of the forward pass (evaluation mode, batch of one), counted on the
host CPU whatever the backend (flaxcnn.flops).
Everything runs on abstract shapes, so even the largest models are summarised in seconds.
With --init-from (a source of flaxcnn.pretrained: torchvision:<name>, hf-hub:<repo>, a .pth, .pt or
.safetensors file) it lists instead where each of the checkpoint's tensors goes in the model, or
reports in one line the first tensor that does not fit.
"""
import argparse
import re
import sys
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn import flops, models, pretrained
from flaxcnn.errors import UserError, error_line


def param_count(variables_or_params) -> int:
    """Number of values in a params tree, or in the 'params' collection of a variables dict.
    Works on arrays and on the shape structs of `jax.eval_shape`."""
    if isinstance(variables_or_params, Mapping) and "params" in variables_or_params:
        variables_or_params = variables_or_params["params"]
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables_or_params))


def variable_shapes(model, image_size: int, channels: int = 1) -> dict:
    """The shapes of `model`'s variables for image_size x image_size images (jax.eval_shape)."""
    image = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)


def parameters(name: str, image_size: int, channels: int = 1, num_classes: int = 10,
               **overrides) -> int:
    """The trainable parameters of model `name` at image_size (the size matters where a dense
    layer follows the flattened maps); instant, where model_stats also compiles for the FLOPs."""
    model = models.create(name, num_classes=num_classes, **overrides)
    return param_count(variable_shapes(model, image_size, channels))


def model_stats(name: str, image_size: int, channels: int = 1, num_classes: int = 10, **overrides) -> dict:
    """{'params': trainable parameters, 'batch_stats': BatchNorm statistics values,
    'flops_per_image': forward FLOPs of one image in evaluation mode, 'min_input_size': pixels}."""
    model = models.create(name, num_classes=num_classes, **overrides)
    variables = variable_shapes(model, image_size, channels)
    return {
        "params": param_count(variables["params"]),
        "batch_stats": param_count(variables.get("batch_stats", {})),
        "flops_per_image": flops.forward_flops(model, (image_size, image_size, channels)),
        "min_input_size": model.min_input_size,
    }


def layer_table(name: str, image_size: int, channels: int = 1, num_classes: int = 10, depth: int = 1,
                **overrides) -> str:
    """flax's table of every layer (nested `depth` modules deep) for a batch of one image."""
    model = models.create(name, num_classes=num_classes, **overrides)
    interactive = sys.stdout.isatty()
    tabulate = nn.tabulate(
        model, jax.random.key(0), depth=depth,
        console_kwargs={"force_terminal": interactive, "width": None if interactive else 160},
    )
    table = tabulate(jnp.zeros((1, image_size, image_size, channels)), train=False)
    # flax's footer adds the BatchNorm statistics to the parameters; main prints both apart.
    return re.sub(r"\n[^\n]*Total Parameters:[^\n]*", "", table)


def placement_table(name: str, source: str) -> str:
    """One line per tensor of `source`: torch name and shape -> flax variable and shape."""
    rows = pretrained.describe(name, source)
    width = max(len(torch_name) + len(str(shape)) for torch_name, shape, _, _ in rows) + 1
    lines = [f"{f'{t} {s}':<{width}} -> {flax_name} {flax_shape}" for t, s, flax_name, flax_shape in rows]
    return "\n".join(lines + [f"{len(rows)} tensors of {source} placed into {name}"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flaxcnn.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=models.names(), metavar="NAME",
                        help=f"one of: {', '.join(models.names())}")
    parser.add_argument("--image-size", type=int, default=224, help="height and width in pixels")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--depth", type=int, default=1, help="how many levels of nested modules to list")
    parser.add_argument("--init-from", metavar="SOURCE",
                        help="list where each tensor of this pretrained checkpoint goes instead")
    args = parser.parse_args(argv)
    if args.init_from:
        try:
            print(placement_table(args.model, args.init_from))
        except UserError as e:
            sys.exit(error_line(e))
        return
    min_size = models.create(args.model).min_input_size
    if args.image_size < min_size:
        parser.error(f"{args.model} needs inputs of at least {min_size}x{min_size} pixels, "
                     f"got {args.image_size}x{args.image_size}; pass a larger --image-size")
    shape = dict(image_size=args.image_size, channels=args.channels, num_classes=args.num_classes)
    stats = model_stats(args.model, **shape)
    print(layer_table(args.model, depth=args.depth, **shape))
    print(f"{args.model} on {args.image_size}x{args.image_size}x{args.channels} images, {args.num_classes} classes")
    print(f"parameters: {stats['params']:,} (trainable; the count the README's tables give)")
    print(f"BatchNorm statistics: {stats['batch_stats']:,} (running means and variances, "
          "not trained, not counted above)")
    print(f"forward FLOPs per image: {stats['flops_per_image']:,.0f} ({stats['flops_per_image'] / 1e9:.3f} GFLOPs)")
    print(f"smallest input: {stats['min_input_size']}x{stats['min_input_size']} pixels")


if __name__ == "__main__":
    main()
