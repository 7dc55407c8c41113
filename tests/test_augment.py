"""flaxcnn.augment: on-device augmentation and normalization, checked against their definitions."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcnn import augment
from flaxcnn.errors import UserError

STATIC = ("image_size", "augment", "normalize", "dtype")
train_images = jax.jit(augment.train_images, static_argnames=STATIC)
eval_images = jax.jit(augment.eval_images, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnums=(1, 2))
def preprocess(images, image_size, dtype):
    """The steps' preprocessing before augmentation existed (pixels / 255, bilinearly resized only
    where the size differs), compiled as the steps ran it (XLA may compute x / 255 as
    x * (1 / 255))."""
    x = images.astype(jnp.float32) / 255.0
    n, h, w, c = x.shape
    if (h, w) != (image_size, image_size):
        x = jax.image.resize(x, (n, image_size, image_size, c), "bilinear")
    return x.astype(dtype)


def test_plain_inputs_are_pixels_over_255_bilinearly_resized():
    images = np.array([[[[0], [255]], [[255], [0]]]], np.uint8)  # 1x2x2x1 checkerboard
    plain = dict(augment="none", normalize="none")
    same = augment.eval_images(images, image_size=2, dtype=jnp.float32, **plain)
    np.testing.assert_array_equal(np.asarray(same)[0, :, :, 0], [[0, 1], [1, 0]])
    bigger = np.asarray(augment.train_images(images, jax.random.PRNGKey(0), image_size=4,
                                             dtype=jnp.bfloat16, **plain))
    assert bigger.shape == (1, 4, 4, 1) and bigger.dtype == jnp.bfloat16
    corners = bigger[0, [0, 0, 3, 3], [0, 3, 0, 3], 0].astype(np.float32)
    np.testing.assert_allclose(corners, [0, 1, 1, 0])  # half-pixel centres keep the corners
    assert 0 < float(bigger[0, 1, 1, 0]) < 1  # and interpolate in between


@functools.partial(jax.jit, static_argnums=(1, 2))
def boxes_of(uniforms, height, width):
    return jax.vmap(lambda u: augment.resized_crop_box(u, height, width))(uniforms)


@functools.lru_cache(maxsize=None)
def batch(n=8, size=24, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


@pytest.mark.parametrize("image_size,dtype", [(24, jnp.float32), (32, jnp.float32),
                                              (16, jnp.bfloat16)])
def test_without_augmentation_the_inputs_are_todays_preprocessing_bit_for_bit(image_size, dtype):
    images = batch()
    today = np.asarray(preprocess(images, image_size, dtype))
    plain = dict(image_size=image_size, normalize="none", dtype=dtype)
    evaluations = ("none", "flip", "crop_flip") if image_size == 32 else ("none",)
    for got in (train_images(images, jax.random.PRNGKey(3), augment="none", **plain),
                *(eval_images(images, augment=name, **plain) for name in evaluations)):
        assert got.dtype == today.dtype
        np.testing.assert_array_equal(np.asarray(got), today)


def test_flip_is_a_mirror_image_drawn_from_the_key():
    images = batch(n=16)
    plain = np.asarray(preprocess(images, 24, jnp.float32))
    kwargs = dict(image_size=24, augment="flip", normalize="none", dtype=jnp.float32)
    out = np.asarray(train_images(images, jax.random.PRNGKey(0), **kwargs))
    flipped = [np.array_equal(o, p[:, ::-1]) for o, p in zip(out, plain)]
    kept = [np.array_equal(o, p) for o, p in zip(out, plain)]
    assert all(f != k for f, k in zip(flipped, kept))  # each example: exactly one of the two
    assert 0 < sum(flipped) < 16
    np.testing.assert_array_equal(np.asarray(train_images(images, jax.random.PRNGKey(0), **kwargs)),
                                  out)
    other = np.asarray(train_images(images, jax.random.PRNGKey(1), **kwargs))
    assert not np.array_equal(other, out)


def test_crop_flip_is_a_window_of_the_zero_padded_image():
    images = batch(n=8, size=16)
    plain = np.asarray(preprocess(images, 16, jnp.float32))
    pad = 2  # 16 / 8
    padded = np.pad(plain, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.asarray(train_images(images, jax.random.PRNGKey(5), image_size=16,
                                  augment="crop_flip", normalize="none", dtype=jnp.float32))
    offsets = []
    for o, p in zip(out, padded):
        windows = [(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)
                   for view in (o, o[:, ::-1]) if np.array_equal(view, p[t:t + 16, l:l + 16])]
        assert windows, "output is no window of the padded image or of its mirror"
        offsets.append(windows[0])
    assert len(set(offsets)) > 1


def test_resized_crop_boxes_follow_torchvisions_rule():
    uniforms = np.random.default_rng(0).random((2000, augment.DRAWS), np.float32)
    for height, width, largest in ((256, 256, 1.0), (60, 100, 0.8)):  # 60 x 80 at ratio 4/3
        boxes = np.asarray(boxes_of(uniforms, height, width))
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= height).all() and (left + w <= width).all()
        # Sides are whole pixels rounded from the drawn area and ratio: allow half a pixel.
        assert ((h + 0.5) * (w + 0.5) >= 0.08 * height * width).all()
        assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
        fraction = h * w / (height * width)
        assert fraction.min() < 0.1 and largest - 0.1 < fraction.max() <= largest  # all scales
        assert len(np.unique(top)) > height // 4 and len(np.unique(left)) > width // 4


def test_a_box_that_never_fits_falls_back_to_torchvisions_centre_crop():
    # 8 x 200: every try's height exceeds 8 rows or its width the ratio allows.
    boxes = np.asarray(boxes_of(np.random.default_rng(1).random((200, augment.DRAWS),
                                                                np.float32), 8, 200))
    fallback = [0, (200 - round(8 * 4 / 3)) // 2, 8, round(8 * 4 / 3)]
    assert any((b == fallback).all() for b in boxes)
    assert augment._fallback_box(100, 20) == (round(20 / 0.75), 20)
    assert augment._fallback_box(30, 35) == (30, 35)


def test_resized_crop_samples_exactly_the_box():
    # Pixel values are the row and column numbers: linear, so bilinear resampling returns the
    # coordinates it sampled at, and they must be the box's pixel centres scaled to image_size.
    rows, cols = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    ramp = jnp.asarray(np.stack([rows, cols], -1), jnp.float32)
    crop = jax.jit(augment.resized_crop, static_argnums=2)
    for top, left, h, w in ((20, 10, 24, 30), (12, 30, 8, 6)):  # smaller, larger than the output
        out = np.asarray(crop(ramp, jnp.array([top, left, h, w]), 12))
        centres = (np.arange(12) + 0.5) / 12
        np.testing.assert_allclose(out[:, 0, 0], top + centres * h - 0.5, atol=0.02)
        np.testing.assert_allclose(out[0, :, 1], left + centres * w - 0.5, atol=0.02)
    whole = crop(ramp[:12, :12], jnp.array([0, 0, 12, 12]), 12)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(ramp[:12, :12]), atol=1e-5)


def test_d2l_finetune_crops_and_flips_each_example_from_its_own_key():
    images = batch(n=6, size=32)
    key = jax.random.PRNGKey(7)
    kwargs = dict(image_size=16, augment="d2l_finetune", normalize="none", dtype=jnp.float32)
    out = np.asarray(train_images(images, key, **kwargs))
    draws = np.asarray(augment.example_draws(key, 6))
    np.testing.assert_array_equal(draws[4], jax.random.uniform(jax.random.fold_in(key, 4),
                                                               (augment.DRAWS,)))
    crops = np.asarray(jax.jit(jax.vmap(lambda image, u: augment.resized_crop(
        image, augment.resized_crop_box(u, 32, 32), 16)))(images.astype(np.float32) / 255, draws))
    flipped = draws[:, -1] < 0.5
    np.testing.assert_allclose(out, np.where(flipped[:, None, None, None], crops[:, :, ::-1],
                                             crops), atol=1e-6)
    assert 0 < flipped.sum() < 6
    # Where an example sits in the global batch fixes its draw, not how the batch is split.
    halves = [train_images(images[:3], key, first_index=0, **kwargs),
              train_images(images[3:], key, first_index=3, **kwargs)]
    np.testing.assert_array_equal(np.concatenate([np.asarray(h) for h in halves]), out)
    assert not np.array_equal(np.asarray(train_images(images, jax.random.PRNGKey(8), **kwargs)),
                              out)


def test_d2l_eval_is_the_centre_224_of_256_and_deterministic():
    images = batch(n=2, size=256, seed=1)
    kwargs = dict(augment="d2l_finetune", normalize="none", dtype=jnp.float32)
    out = np.asarray(eval_images(images, image_size=224, **kwargs))
    expected = images[:, 16:240, 16:240].astype(np.float32) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(eval_images(images, image_size=224, **kwargs)), out)
    # Any image size: the same centre region, resampled. A ramp image (pixel value = column)
    # shows where it sampled: the centres of 56 cells spanning columns 16 .. 240.
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (1, 256, 256, 1))
    small = np.asarray(eval_images(ramp, image_size=56, **kwargs))[0, 28, :, 0] * 255
    np.testing.assert_allclose(small, 16 + (np.arange(56) + 0.5) * 4 - 0.5, atol=1e-3)


def test_imagenet_normalization_uses_torchvisions_mean_and_std():
    images = np.full((1, 4, 4, 3), 200, np.uint8)
    out = np.asarray(eval_images(images, image_size=4, augment="none", normalize="imagenet",
                                 dtype=jnp.float32))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, 0, 0], (200 / 255 - mean) / std, rtol=1e-6)
    key = jax.random.PRNGKey(0)
    trained = train_images(images, key, image_size=4, augment="flip", normalize="imagenet",
                           dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(trained), out, rtol=1e-6)


def test_augment_keys_differ_by_step_and_from_the_epoch_permutation_key():
    data_key = jax.random.PRNGKey(0)
    keys = [np.asarray(augment.augment_key(data_key, step)) for step in range(3)]
    assert len({k.tobytes() for k in keys}) == 3
    assert not np.array_equal(keys[1], np.asarray(jax.random.fold_in(data_key, 1)))


@pytest.mark.parametrize("augment_name,normalize,channels,message", [
    ("mixup", "none", 3, "unknown --config.augment='mixup'; use one of none, flip, crop_flip"),
    ("flip", "cifar", 3, "unknown --config.normalize='cifar'; use one of none, imagenet"),
    ("none", "imagenet", 1, "--config.normalize=imagenet needs RGB images, this dataset has 1"),
])
def test_bad_settings_are_one_line(augment_name, normalize, channels, message):
    with pytest.raises(UserError) as error:
        augment.check_settings(augment_name, normalize, channels)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    augment.check_settings("d2l_finetune", "imagenet", 3)
