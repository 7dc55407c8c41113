"""Every convolution the registered models compute, and their outputs and gradients on fixed inputs.

`shapes()` traces each model of flaxcnn.models (at d2l's image size, else 224; three input channels
for torchvision's layouts, one otherwise) and collects the distinct `conv_general_dilated` calls:
input and kernel shapes, strides, padding, dilations and groups. Run as a script in a fresh
process, it computes each one's output and its gradients with respect to the input and the kernel
(cotangent: fixed normal values) in float32, and one of each kind in float64, under whatever
XLA_FLAGS the process has, and saves them: `python -m tests.zoo_convolutions SHAPES.json OUT.npz`.
"""
import json
import sys
from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np


def _conv_equations(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _conv_equations(inner)


def shapes() -> list[dict]:
    """The distinct convolutions as the models ask lax for them (grouped ones grouped, though the
    CPU computes those group by group: flaxcnn.models.convolution)."""
    from flaxcnn import bench, models
    from flaxcnn.models import convolution

    with mock.patch.object(convolution, "jax", SimpleNamespace(default_backend=lambda: "lax")):
        return _traced_shapes(bench, models)


def _traced_shapes(bench, models) -> list[dict]:
    found = {}
    for name in models.names():
        size, overrides = bench.d2l_setup(name)
        channels = 3 if models.spec(name).layout else 1
        model = models.create(name, **overrides)
        x = jnp.zeros((1, size, size, channels))
        variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                        rngs={"dropout": jax.random.PRNGKey(0)}))(
            variables, x)
        for eqn in _conv_equations(jaxpr.jaxpr):
            p = eqn.params
            conv = {"lhs": list(eqn.invars[0].aval.shape),
                    "rhs": list(eqn.invars[1].aval.shape),
                    "strides": list(p["window_strides"]),
                    "padding": [list(q) for q in p["padding"]],
                    "lhs_dilation": list(p["lhs_dilation"]),
                    "rhs_dilation": list(p["rhs_dilation"]),
                    "groups": p["feature_group_count"],
                    "dimension_numbers": [list(d) for d in p["dimension_numbers"]]}
            found.setdefault(json.dumps(conv, sort_keys=True), {**conv, "models": []})
            entry = found[json.dumps(conv, sort_keys=True)]
            if name not in entry["models"]:
                entry["models"].append(name)
    return list(found.values())


def convolve(conv: dict, x, w, conv_general_dilated=jax.lax.conv_general_dilated):
    """`conv` on x and w, by lax's `conv_general_dilated` or another with its signature."""
    dn = jax.lax.ConvDimensionNumbers(*(tuple(d) for d in conv["dimension_numbers"]))
    return conv_general_dilated(
        x, w, conv["strides"], [tuple(q) for q in conv["padding"]], conv["lhs_dilation"],
        conv["rhs_dilation"], dn, feature_group_count=conv["groups"])


def inputs(conv: dict, index: int, dtype):
    rng = np.random.default_rng(index)
    x = rng.normal(size=conv["lhs"]).astype(dtype)
    w = (rng.normal(size=conv["rhs"]) / np.sqrt(np.prod(conv["rhs"][:-1]))).astype(dtype)
    return x, w, rng


def outputs_and_gradients(convs: list[dict], dtype) -> list[tuple[np.ndarray, ...]]:
    """(output, input gradient, kernel gradient) of every convolution, in one compiled program."""
    args = []
    for i, conv in enumerate(convs):
        x, w, rng = inputs(conv, i, dtype)
        y = jax.eval_shape(lambda x, w, conv=conv: convolve(conv, x, w), x, w)
        args.append((x, w, rng.normal(size=y.shape).astype(dtype)))

    def every_convolution(args):
        results = []
        for conv, (x, w, g) in zip(convs, args):
            y, vjp = jax.vjp(lambda x, w, conv=conv: convolve(conv, x, w), x, w)
            results.append((y, *vjp(g)))
        return results

    return jax.tree.map(np.asarray, jax.jit(every_convolution)(args))


def kinds(convs: list[dict]) -> list[int]:
    """One convolution of each kind (window, strides, padding, dilations, grouped or not), the one
    with the smallest input: float64 convolutions take XLA:CPU's Eigen path several times longer."""
    smallest = {}
    for i, conv in enumerate(convs):
        kind = json.dumps([conv["rhs"][:2], conv["strides"], conv["padding"], conv["lhs_dilation"],
                           conv["rhs_dilation"], conv["groups"] > 1])
        if kind not in smallest or np.prod(conv["lhs"]) < np.prod(convs[smallest[kind]]["lhs"]):
            smallest[kind] = i
    return sorted(smallest.values())


def main(shapes_json: str, out_npz: str) -> None:
    """Every convolution in float32, one of each kind (`kinds`) in float64."""
    jax.config.update("jax_enable_x64", True)
    with open(shapes_json) as f:
        convs = json.load(f)
    results = {}
    for dtype, chosen in ((np.float32, range(len(convs))), (np.float64, kinds(convs))):
        values = outputs_and_gradients([convs[i] for i in chosen], dtype)
        for i, parts in zip(chosen, values):
            for part, value in zip(("y", "dx", "dw"), parts):
                results[f"{i}/{np.dtype(dtype).name}/{part}"] = value
    np.savez(out_npz, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
