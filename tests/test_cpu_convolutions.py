"""How flaxcnn computes convolutions on the CPU. runtime.use_xla_cpu_convolutions (XLA:CPU's own
convolutions instead of YNNPACK's): the option is set as promised, takes effect in a fresh process,
and every convolution of the registered models gives the same outputs and gradients as under XLA's
default (within float32 round-off, and within float64's in float64). Grouped convolutions computed
group by group (flaxcnn.models.convolution) give lax's."""
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from flaxcnn import runtime
from flaxcnn.models import convolution
from flaxcnn.runtime import YNNPACK_OFF
from tests import zoo_convolutions
from tests.conftest import REPO

COUNT = "--xla_force_host_platform_device_count=4"


@pytest.mark.parametrize("flags, jaxlib_version, want", [
    (None, "0.10.2", YNNPACK_OFF),
    (COUNT, "0.12.0", f"{COUNT} {YNNPACK_OFF}"),                     # the user's flags are kept
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot", "0.10.2",
     "--xla_cpu_experimental_ynn_fusion_type=individual_dot"),   # the user's choice stays
    (None, "0.8.1", YNNPACK_OFF),                                   # the first jaxlib with it
    (None, "0.8.0", None),                                          # unknown there: it would abort
    (None, "0.7.2", None),                                          # Colab's
    (None, "0.10.0.dev20260101", YNNPACK_OFF),
])
def test_the_option_is_added_unless_chosen_or_unknown(flags, jaxlib_version, want):
    environ = {} if flags is None else {"XLA_FLAGS": flags}
    set_now = runtime.use_xla_cpu_convolutions(environ, jaxlib_version=jaxlib_version)
    assert environ.get("XLA_FLAGS") == want
    assert set_now == (want != flags)


def fresh_environment(ynnpack: bool) -> dict:
    """This environment without the option conftest set, and with it again unless `ynnpack`."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace(YNNPACK_OFF, "").split()
    env["XLA_FLAGS"] = " ".join(flags if ynnpack else [*flags, YNNPACK_OFF])
    return env


def run_python(code_or_args: list[str], ynnpack: bool) -> str:
    result = subprocess.run([sys.executable, *code_or_args], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=fresh_environment(ynnpack))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_option_takes_convolutions_out_of_ynnpack():
    """XLA's default compiles a ResNet-sized convolution into a YNNPACK fusion (on both stacks CI
    tests; small ones it leaves to XLA); after train.py's call, into XLA's own."""
    code = ("from flaxcnn import runtime\n"
            "print(runtime.use_xla_cpu_convolutions())\n"
            "import jax, jax.numpy as jnp\n"
            "x, w = jnp.ones((8, 24, 24, 64)), jnp.ones((3, 3, 64, 64))\n"
            "conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
            "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "print('__ynn_fusion' in jax.jit(conv).lower(x, w).compile().as_text())\n")
    default = "import jax, jax.numpy as jnp\n" + code.split("import jax, jax.numpy as jnp\n")[1]
    assert run_python(["-c", default], ynnpack=True).split() == ["True"]
    assert run_python(["-c", code], ynnpack=True).split() == ["True", "False"]


@pytest.fixture(scope="module")
def zoo_shapes():
    """The registered models' distinct convolutions (tracing every model takes a few seconds)."""
    return zoo_convolutions.shapes()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, zoo_shapes):
    """Every registered model's convolutions, computed in two fresh processes: XLA's default
    (YNNPACK) and with the option."""
    folder = tmp_path_factory.mktemp("zoo_convolutions")
    convs = zoo_shapes
    (folder / "shapes.json").write_text(json.dumps(convs))
    results = {}
    for ynnpack in (True, False):
        out = folder / f"ynnpack_{ynnpack}.npz"
        run_python(["-m", "tests.zoo_convolutions", str(folder / "shapes.json"), str(out)], ynnpack)
        results[ynnpack] = np.load(out)
    return convs, results[True], results[False]


@pytest.mark.slow
def test_the_zoo_has_every_kind_of_convolution(zoo_shapes):
    convs = zoo_shapes
    models = {name for conv in convs for name in conv["models"]}
    assert {"alexnet", "googlenet", "inception_v3", "lenet_bn", "resnext50", "densenet",
            "regnetx32", "tv_resnet18", "vgg19"} <= models
    kernels = {tuple(conv["rhs"][:2]) for conv in convs}
    assert {(11, 11), (7, 7), (5, 5), (3, 3), (1, 1), (1, 7), (7, 1)} <= kernels
    assert any(conv["groups"] > 1 for conv in convs)            # ResNeXt's and RegNet's
    assert any(conv["strides"] == [4, 4] for conv in convs)     # AlexNet's first


def terms_per_sum(conv: dict, part: str) -> int:
    """How many products each value of `part` adds up (float32's round-off grows with its root)."""
    kh, kw, per_group, out = conv["rhs"]
    if part == "y":
        return kh * kw * per_group
    if part == "dx":
        return kh * kw * out // conv["groups"]
    batch, (h, w) = conv["lhs"][0], conv["lhs"][1:3]
    return batch * h * w  # at most the output's positions


@pytest.mark.slow
def test_every_zoo_convolution_matches_xla_default_within_round_off(zoo):
    """float32: every convolution; float64: one of each kind (zoo_convolutions.kinds)."""
    convs, default, ours = zoo
    worst, in_float64 = 0.0, 0
    for i, conv in enumerate(convs):
        for part in ("y", "dx", "dw"):
            if f"{i}/float64/{part}" in default:
                reference = default[f"{i}/float64/{part}"]
                scale = np.max(np.abs(reference))
                np.testing.assert_allclose(ours[f"{i}/float64/{part}"], reference, rtol=0,
                                           atol=1e-13 * scale, err_msg=f"{part} of {conv}")
                in_float64 += 1
            reference, yours = default[f"{i}/float32/{part}"], ours[f"{i}/float32/{part}"]
            error = np.max(np.abs(yours - reference)) / np.max(np.abs(reference))
            bound = 4 * np.finfo(np.float32).eps * np.sqrt(terms_per_sum(conv, part))
            assert error <= bound, f"{part} of {conv}: {error:.1e} > {bound:.1e}"
            worst = max(worst, error)
    assert in_float64 == 3 * len(zoo_convolutions.kinds(convs)) >= 3 * 15
    assert 0 < worst  # the two really are different computations


@pytest.mark.slow
def test_grouped_convolutions_group_by_group_match_lax(zoo_shapes):
    """flaxcnn.models.convolution computes every grouped convolution of the models (ResNeXt-50's
    and RegNetX-32's) as separate convolutions: lax's outputs and gradients within round-off
    (float32: all of them; float64: one of each kind)."""
    grouped = [conv for conv in zoo_shapes if conv["groups"] > 1]
    assert {name for conv in grouped for name in conv["models"]} == {"resnext50", "regnetx32"}
    in_float64 = zoo_convolutions.kinds(grouped)  # lax's grouped float64 path is the slowest
    for dtype, tolerance in ((np.float32, 4 * np.finfo(np.float32).eps), (np.float64, 1e-13)):
        with jax.enable_x64(dtype == np.float64):
            for i, conv in enumerate(grouped):
                if dtype == np.float64 and i not in in_float64:
                    continue
                x, w, _ = zoo_convolutions.inputs(conv, i, dtype)

                def values(convolve, x=x, w=w, conv=conv):
                    y, vjp = jax.vjp(lambda x, w: convolve(conv, x, w), x, w)
                    g = np.random.default_rng(i).normal(size=y.shape).astype(dtype)
                    return (y, *vjp(g))

                ours = values(functools.partial(
                    zoo_convolutions.convolve,
                    conv_general_dilated=convolution.conv_general_dilated))
                for part, mine, reference in zip(("y", "dx", "dw"), ours,
                                                 values(zoo_convolutions.convolve)):
                    assert mine.dtype == dtype
                    scale = np.max(np.abs(reference))
                    bound = tolerance * np.sqrt(terms_per_sum(conv, part))
                    assert np.max(np.abs(mine - reference)) <= bound * scale, f"{part} of {conv}"

