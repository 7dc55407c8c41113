"""Pretrained weights: every torchvision layout loads exactly (logits equal torchvision's), through every reader.

The checkpoints are made here, offline and without torch: the tensors of
fixtures/pretrained_tensors.py under the names and shapes that torchvision 0.28 listed
(fixtures/pretrained/<model>.json), whose evaluation-mode logits torchvision computed
(fixtures/pretrained/<model>_logits.npy; fixtures/make_pretrained_references.py made both). Each
layout goes through one route, each route takes at least one layout (the VGGs' 0.5 GB of weights
make more too slow): safetensors files (tv_resnet18, resnext50, vgg11, vgg16), torch .pth files
read without torch (tv_resnet34, inception_v3, vgg13), torchvision:<name> from a 127.0.0.1 server
(resnet50) and hf-hub:<repo> from the hub's cache in timm's names (vgg19, tv_resnet18).
"""
import functools
import hashlib
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from flaxcnn import models, pretrained, summary
from flaxcnn.errors import UserError
from flaxcnn.pretrained import mappings, readers
from tests.conftest import slow_for_larger_networks
from tests.data_helpers import FileServer
from torch_format import write_pth

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from pretrained_tensors import manifest, reference_input, reference_state  # noqa: E402


def images_compared(name):
    """Both reference images; one for the VGGs, whose 15-20 GFLOPs an image are most of the time."""
    return 1 if name.startswith("vgg") else 2


def logits_of(name, variables, **overrides):
    model = models.create(name, num_classes=1000, **pretrained.model_fields(name), **overrides)
    images = reference_input(manifest(name)["image_size"])[:images_compared(name)]
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images.transpose(0, 2, 3, 1)))


def assert_torchvisions_logits(name, variables):
    reference = np.load(FIXTURES / "pretrained" / f"{name}_logits.npy")[:images_compared(name)]
    # float32 to 1e-4 relative; logits near zero get 1e-4 of the largest one
    np.testing.assert_allclose(logits_of(name, variables), reference, rtol=1e-4,
                               atol=1e-4 * np.abs(reference).max())


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoints") / "resnet18.safetensors"
    save_file(reference_state("tv_resnet18"), str(path))
    return path


@pytest.fixture(scope="module")
def resnet18_variables(resnet18_file):
    return pretrained.load("tv_resnet18", str(resnet18_file))


# ------------------------------------------------------------------------------------------ the routes


def test_safetensors_route_gives_torchvisions_resnet18_logits(resnet18_variables):
    assert_torchvisions_logits("tv_resnet18", resnet18_variables)


@pytest.mark.slow  # test_safetensors_route_gives_torchvisions_resnet18_logits is the quick one
@pytest.mark.parametrize("name", ["resnext50", "vgg11", "vgg16"])
def test_safetensors_route_gives_torchvisions_logits(name, tmp_path):
    path = tmp_path / f"{name}.safetensors"
    save_file(reference_state(name), str(path))
    assert_torchvisions_logits(name, pretrained.load(name, str(path)))


@pytest.mark.parametrize("name", slow_for_larger_networks(["tv_resnet34", "inception_v3", "vgg13"]))
def test_pth_route_without_torch_gives_torchvisions_logits(name, tmp_path, monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda module: None)  # as if torch were absent
    path = tmp_path / f"{name}.pth"
    write_pth(path, reference_state(name))
    assert_torchvisions_logits(name, pretrained.load(name, str(path)))


def test_inception_v3_loads_its_auxiliary_classifier_when_the_model_has_one(tmp_path):
    path = tmp_path / "inception.safetensors"
    state = reference_state("inception_v3")
    save_file(state, str(path))
    variables = pretrained.load("inception_v3", str(path), aux_logits=True)
    np.testing.assert_array_equal(variables["params"]["AuxLogits"]["fc"]["kernel"], state["AuxLogits.fc.weight"].T)


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A 127.0.0.1 server of tmp_path/served as torchvision's URL base; TORCH_HOME in tmp_path."""
    served = tmp_path / "served"
    served.mkdir()
    with FileServer(served) as server:
        monkeypatch.setattr(readers, "TORCHVISION_URL_BASE", server.url)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        yield served


def test_torchvision_route_downloads_checks_the_hash_and_caches(weights_server, tmp_path, monkeypatch):
    staged = tmp_path / "staged.pth"
    write_pth(staged, reference_state("resnet50"))
    filename = f"resnet50-{hashlib.sha256(staged.read_bytes()).hexdigest()[:8]}.pth"
    staged.rename(weights_server / filename)
    monkeypatch.setitem(readers.TORCHVISION_WEIGHTS, "resnet50", (filename, "resnet50"))
    assert_torchvisions_logits("resnet50", pretrained.load("resnet50", "torchvision:resnet50"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / filename
    assert cached.is_file() and list(cached.parent.iterdir()) == [cached]
    (weights_server / filename).unlink()  # a second load needs no server
    assert pretrained.load("resnet50", "torchvision:resnet50")["params"]["Dense_0"]["kernel"].shape == (2048, 1000)


def test_torchvision_download_with_a_wrong_hash_is_refused_and_not_kept(weights_server, tmp_path, monkeypatch):
    (weights_server / "resnet18-00000000.pth").write_bytes(b"not the weights")
    monkeypatch.setitem(readers.TORCHVISION_WEIGHTS, "resnet18", ("resnet18-00000000.pth", "tv_resnet18"))
    with pytest.raises(UserError, match=r"resnet18-00000000.pth\) has sha256 [0-9a-f]{64}, expected "
                                        r"00000000\.\.\.; nothing was kept"):
        pretrained.load("tv_resnet18", "torchvision:resnet18")
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def hub_cache(tmp_path, monkeypatch, repo, state):
    """`state` as model.safetensors of `repo` in a hub cache, with the hub offline."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.slow
def test_hf_hub_route_reads_timms_vgg19_names(tmp_path, monkeypatch):
    timm_names = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2", "classifier.6": "head.fc"}
    state = {}
    for key, value in reference_state("vgg19").items():
        module, _, leaf = key.rpartition(".")
        if module in timm_names:  # timm keeps VGG's dense layers as convolutions
            key = f"{timm_names[module]}.{leaf}"
            if leaf == "weight" and module != "classifier.6":
                value = value.reshape(value.shape[0], -1, 7, 7) if module == "classifier.0" else value[:, :, None, None]
        state[key] = value
    hub_cache(tmp_path, monkeypatch, "timm/vgg19.tv_in1k", state)
    assert_torchvisions_logits("vgg19", pretrained.load("vgg19", "hf-hub:timm/vgg19.tv_in1k"))


def test_hf_hub_route_reads_timms_resnet18(tmp_path, monkeypatch, resnet18_variables):
    hub_cache(tmp_path, monkeypatch, "timm/resnet18.tv_in1k", reference_state("tv_resnet18"))
    loaded = pretrained.load("tv_resnet18", "hf-hub:timm/resnet18.tv_in1k")
    jax.tree.map(np.testing.assert_array_equal, loaded, resnet18_variables)


def test_hf_hub_repository_not_in_the_cache_is_one_line(tmp_path, monkeypatch):
    hub_cache(tmp_path, monkeypatch, "timm/resnet18.tv_in1k", {"x": np.zeros(1, np.float32)})
    with pytest.raises(UserError, match="hf-hub:timm/nothing: cannot get model.safetensors"):
        pretrained.load("tv_resnet18", "hf-hub:timm/nothing")


# ------------------------------------------------------------------------------------- the readers


def test_a_file_torch_saved_reads_without_torch(monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda module: None)
    state = readers.read_file(FIXTURES / "pretrained" / "torch_saved.pth")
    base = np.arange(24, dtype=np.float32).reshape(4, 6) / 8
    expected = {"matrix": base, "transposed": base.T, "row_slice": base[1:3], "column": base[:, 2],
                "half": np.linspace(-2, 2, 5).astype(np.float16), "count": np.int64(7)}
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(state[key], value)


def test_a_pickle_that_asks_for_other_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda module: None)
    path = tmp_path / "evil.pth"
    write_pth(path, {}, pickle_bytes=b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.")
    with pytest.raises(UserError, match="refers to os.system, which a file of weights never needs"):
        readers.read_file(path)


def test_a_legacy_or_foreign_pth_without_torch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda module: None)
    (tmp_path / "old.pth").write_bytes(b"\x80\x02legacy")
    with pytest.raises(UserError, match="legacy format needs torch"):
        readers.read_file(tmp_path / "old.pth")


@pytest.mark.parametrize("filename, message", [("missing.pth", "does not exist"),
                                               ("weights.bin", "unknown file type '.bin'")])
def test_bad_local_sources_are_one_line(tmp_path, filename, message):
    if filename == "weights.bin":
        (tmp_path / filename).write_bytes(b"")
    with pytest.raises(UserError, match=message):
        pretrained.load("tv_resnet18", str(tmp_path / filename))


# ----------------------------------------------------------------------------- the mapping's checks


def test_a_swapped_or_transposed_mapping_changes_the_logits(resnet18_variables):
    """The comparison catches the mistakes a mapping can make: two same-shaped convolutions swapped,
    a kernel's height and width transposed."""
    reference = np.load(FIXTURES / "pretrained" / "tv_resnet18_logits.npy")
    block = resnet18_variables["params"]["BasicBlock_0"]
    swapped = jax.tree.map(lambda x: x, resnet18_variables)
    swapped["params"]["BasicBlock_0"]["Conv_0"], swapped["params"]["BasicBlock_0"]["Conv_1"] = (
        block["Conv_1"], block["Conv_0"])
    transposed = jax.tree.map(lambda x: x, resnet18_variables)
    transposed["params"]["BasicBlock_1"]["Conv_0"]["kernel"] = np.swapaxes(
        block["Conv_0"]["kernel"], 0, 1)
    for broken in (swapped, transposed):
        assert np.abs(logits_of("tv_resnet18", broken) - reference).max() > 1e-2 * np.abs(reference).max()


def _edited_checkpoint(tmp_path, edit):
    state = dict(reference_state("tv_resnet18"))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}),
     r"tensor 'layer5.0.conv1.weight' has no place in tv_resnet18"),
    (lambda s: s.pop("layer2.0.downsample.1.running_var"),
     r"no tensor 'layer2.0.downsample.1.running_var', which tv_resnet18 needs"),
    (lambda s: s.update({"layer1.1.conv2.weight": np.zeros((64, 64, 1, 3), np.float32)}),
     r"tensor 'layer1.1.conv2.weight' has shape \(64, 64, 1, 3\), but tv_resnet18's "
     r"params/BasicBlock_1/Conv_1/kernel needs \(64, 64, 3, 3\)"),
])
def test_an_unexpected_missing_or_misshapen_tensor_is_one_line_naming_it(tmp_path, edit, message):
    with pytest.raises(UserError, match=message) as error:
        pretrained.load("tv_resnet18", _edited_checkpoint(tmp_path, edit))
    assert "\n" not in str(error.value)


def test_d2ls_resnet18_is_refused_naming_torchvisions(resnet18_file):
    with pytest.raises(UserError, match=r"torchvision's resnet18 is --config.model=tv_resnet18"):
        pretrained.load("resnet18", str(resnet18_file))


def test_torchvision_weights_for_another_model_are_refused():
    with pytest.raises(UserError, match="torchvision:resnet18 is torchvision's resnet18, which loads into "
                                        "--config.model=tv_resnet18, not resnet50"):
        pretrained.load("resnet50", "torchvision:resnet18")


def test_every_torchvision_layout_has_a_reference_whose_names_the_mapping_covers():
    assert sorted(pretrained.layouts()) == sorted(p.stem for p in (FIXTURES / "pretrained").glob("*.json"))
    assert {entry[1] for entry in readers.TORCHVISION_WEIGHTS.values()} == set(pretrained.layouts())
    for name in pretrained.layouts():
        assert models.spec(name).layout == "torchvision"


# ----------------------------------------------------------------------------------- fitting the task


def fresh_variables(name, num_classes, channels, size=64):
    """Stand-ins for a run's initial variables: only their shapes matter, and the head's values."""
    model = models.create(name, num_classes=num_classes)
    image = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(1), x, train=False), image)
    return jax.tree.map(lambda s: np.full(s.shape, 0.25, s.dtype), shapes)


def test_other_classes_get_the_runs_fresh_head_and_keep_the_rest(resnet18_variables):
    fresh = fresh_variables("tv_resnet18", 2, 3)
    fitted = pretrained.fit_to_task("tv_resnet18", resnet18_variables, fresh)
    np.testing.assert_array_equal(fitted["params"]["Dense_0"]["kernel"], fresh["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(fitted["params"]["Conv_0"]["kernel"], resnet18_variables["params"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(fitted["batch_stats"]["BatchNorm_0"]["var"],
                                  resnet18_variables["batch_stats"]["BatchNorm_0"]["var"])


def test_one_channel_sums_the_rgb_kernels_so_gray_images_give_the_rgb_features(resnet18_variables):
    fitted = pretrained.fit_to_task("tv_resnet18", resnet18_variables, fresh_variables("tv_resnet18", 1000, 1))
    gray = jnp.asarray(np.random.default_rng(3).standard_normal((1, 64, 64, 1), np.float32))
    apply = jax.jit(functools.partial(models.create("tv_resnet18", num_classes=1000).apply, train=False))
    np.testing.assert_allclose(apply(fitted, gray), apply(resnet18_variables, jnp.tile(gray, (1, 1, 1, 3))),
                               rtol=1e-4, atol=1e-4)


def test_more_channels_repeat_the_rgb_kernels_scaled_as_timm_does():
    kernel = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    adapted = pretrained.adapt_input_conv(kernel, 5)
    np.testing.assert_allclose(adapted, np.concatenate([kernel, kernel[:, :, :2]], axis=2) * 3 / 5, rtol=1e-6)


def test_vgg_at_another_image_size_is_refused_naming_224(tmp_path):
    loaded = {"params": {"Dense_0": {"kernel": np.zeros((25088, 4096), np.float32)}}}
    fresh = {"params": {"Dense_0": {"kernel": np.zeros((2048, 4096), np.float32)}}}
    with pytest.raises(UserError, match=r"params/Dense_0/kernel is \(25088, 4096\) in the checkpoint but "
                                        r"\(2048, 4096\) in the run's vgg16; .*--config.image_size=224"):
        pretrained.fit_to_task("vgg16", loaded, fresh)


def test_inception_needs_transform_input_only_for_rgb():
    assert pretrained.model_fields("inception_v3") == {"transform_input": True}
    assert pretrained.model_fields("inception_v3", channels=1) == {}
    assert pretrained.model_fields("tv_resnet18") == {}


# ---------------------------------------------------------------------------------------- the summary


def test_summary_lists_where_each_tensor_goes(resnet18_file, capsys):
    summary.main(["--model", "tv_resnet18", "--init-from", str(resnet18_file)])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("layer2.0.downsample.0.weight (128, 64, 1, 1)") for line in lines)
    assert any(line.startswith("layer1.0.conv1.weight (64, 64, 3, 3)") and
               line.endswith("-> params/BasicBlock_0/Conv_0/kernel (3, 3, 64, 64)") for line in lines)
    counted = [key for key, _, _ in manifest("tv_resnet18")["state_dict"] if not key.endswith("num_batches_tracked")]
    assert lines[-1] == f"{len(counted)} tensors of {resnet18_file} placed into tv_resnet18"


def test_summary_reports_the_first_mismatch_in_one_line(resnet18_file):
    with pytest.raises(SystemExit, match=r"^error: .*torchvision's resnet18 is --config.model=tv_resnet18"):
        summary.main(["--model", "resnet18", "--init-from", str(resnet18_file)])


# ------------------------------------------------------------------------------------ d2l's layouts


def d2l_variables(name):
    """The abstract variables of d2l-layout model `name` as d2l trains it (gray images, 10 classes)."""
    size = mappings.LAYOUTS[name].image_size
    image = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    return jax.eval_shape(lambda x: models.create(name).init(jax.random.key(0), x, train=False), image)


@pytest.mark.parametrize("name", models.names())
def test_every_mapping_names_each_tensor_of_the_pytorch_network_once(name):
    """Against the names and shapes of the PyTorch networks of the gradient references (d2l's code,
    torchvision's; fixtures/make_gradient_references.py) at the model's image size."""
    manifest = json.loads((FIXTURES / "gradients" / f"{name}.json").read_text())
    size = manifest["image_size"]
    model = models.create(name, **models.spec(name).d2l_overrides)
    image = jax.ShapeDtypeStruct((1, size, size, manifest["channels"]), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
    flat = traverse_util.flatten_dict(variables)
    placed = {p.torch_name: mappings.torch_shape(p.kind, flat[(p.collection, *p.path)].shape)
              for p in mappings.placements(name, variables["params"])}
    assert placed == {key: tuple(shape) for key, shape, dtype in manifest["tensors"] if dtype != "int64"}


def test_every_d2l_layout_places_each_variable_of_its_model_once():
    assert sorted(pretrained.d2l_layouts()) == sorted(n for n in models.names() if models.spec(n).layout == "d2l")
    for name in pretrained.d2l_layouts():
        variables = d2l_variables(name)
        placed = mappings.placements(name, variables["params"])
        flat = ["/".join(key) for key in traverse_util.flatten_dict(variables)]
        assert sorted(p.flax_name for p in placed) == sorted(flat), name
        assert len({p.torch_name for p in placed}) == len(placed), name


@pytest.mark.parametrize("kind, flax_shape", [
    (mappings.CONV, (3, 5, 4, 6)), (mappings.DENSE, (7, 3)), (mappings.VECTOR, (5,)),
    (mappings.VGG_FC1, (512 * 49, 3)), (mappings.VGG_FC1, (128 * 49, 3)),
    (mappings.ALEXNET_FC1, (256 * 25, 3)), (mappings.LENET_FC1, (16 * 16, 3)),
    (mappings.SCRATCH_BN_4D, (6,)), (mappings.SCRATCH_BN_2D, (84,)),
])
def test_to_torch_gives_torchs_shape_and_to_flax_undoes_it(kind, flax_shape):
    array = np.random.default_rng(0).standard_normal(flax_shape)
    tensor = mappings.to_torch(kind, array)
    assert tensor.shape == mappings.torch_shape(kind, flax_shape)
    np.testing.assert_array_equal(mappings.to_flax(kind, tensor), array)


def test_flattened_dense_weights_follow_torchs_channel_first_flattening():
    """Column c * side**2 + row * side + column of torch's weight reads the map's (row, column, c)."""
    side, channels, fan_out = 5, 256, 2
    torch_weight = np.random.default_rng(1).standard_normal((fan_out, channels * side * side))
    feature_map = np.random.default_rng(2).standard_normal((side, side, channels))
    torch_out = torch_weight @ feature_map.transpose(2, 0, 1).reshape(-1)
    flax_out = feature_map.reshape(-1) @ mappings.to_flax(mappings.ALEXNET_FC1, torch_weight)
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-12)


@pytest.mark.parametrize("name", ["resnet18", "lenet_bn_scratch"])
def test_a_d2l_state_dict_loads_into_its_layout_and_exports_back(name, tmp_path):
    variables = d2l_variables(name)
    flat = traverse_util.flatten_dict(variables)
    rng = np.random.default_rng(3)
    values = {key: rng.standard_normal(value.shape).astype(np.float32) for key, value in flat.items()}
    state = {p.torch_name: mappings.to_torch(p.kind, values[(p.collection, *p.path)])
             for p in mappings.placements(name, variables["params"])}
    path = tmp_path / f"{name}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    loaded = traverse_util.flatten_dict(pretrained.load(name, str(path)))
    assert set(loaded) == set(values)
    for key, value in values.items():
        np.testing.assert_array_equal(loaded[key], value)

