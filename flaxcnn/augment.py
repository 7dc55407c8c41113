"""Augmentation and normalization on the devices: pure JAX inside the compiled step, from a key.

The data sit on the devices as uint8; every step turns its batch into float inputs with
:func:`train_images` (random, from a key) and every evaluation with :func:`eval_images` (fixed).
With ``augment='none'`` and ``normalize='none'`` both are exactly the step's plain preprocessing:
pixels / 255, bilinearly resized to ``image_size`` only where the size differs.

``augment`` (``--config.augment``):

* ``none``: no augmentation.
* ``flip``: a horizontal flip with probability 1/2 (torchvision's ``RandomHorizontalFlip``).
* ``crop_flip``: the images resized to ``image_size``, zero-padded by ``image_size / 8`` pixels
  on each side, a random ``image_size`` square cut from that, then the flip: the CIFAR-10
  augmentation of He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2
  ("4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded image
  or its horizontal flip"; arXiv:1512.03385), at any image size.
* ``d2l_finetune``: d2l 14.2's training transform, ``RandomResizedCrop(image_size)`` with
  torchvision's defaults (scale (0.08, 1), ratio (3/4, 4/3)) and the flip. The crop's box is drawn
  by torchvision's rule (``RandomResizedCrop.get_params`` in torchvision/transforms/
  transforms.py): up to 10 tries of an area of U(scale) times the image's and an aspect ratio
  exp(U(log ratio)), sides rounded to whole pixels, the first box that fits taken at a uniformly
  random whole-pixel position; if none fits, the centre crop of the image clamped to the ratio
  range. The box is resampled to ``image_size`` with an antialiased bilinear filter
  (``jax.image.scale_and_translate``), which keeps every output shape static.

Evaluation is the plain resize, except for ``d2l_finetune``: 14.2's ``Resize([256, 256])`` then
``CenterCrop(224)``, i.e. the centre 224/256 of the (square, stored) image, resampled to
``image_size`` (exact pixels for a 256-pixel image and image size 224).

``normalize`` (``--config.normalize``): ``none``, or ``imagenet``, torchvision's per-channel
ImageNet mean and standard deviation (d2l 14.2 uses the same), applied after augmentation.

Randomness: the step's key comes from the run's data key and the step number
(:func:`augment_key`), and each example's key from that and the example's position in the global
batch (``first_index``), so a resumed run draws the same crops bit for bit, whatever the number of
devices.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from flaxcnn.errors import UserError

AUGMENTS = ("none", "flip", "crop_flip", "d2l_finetune")
NORMALIZATIONS = ("none", "imagenet")
CHOICES_OF_NORMALIZE = (*NORMALIZATIONS, "auto")  # --config.normalize's: auto follows init_from
# torchvision's ImageNet statistics (torchvision.models docs; d2l 14.2's Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's defaults
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
DRAWS = 2 * CROP_TRIES + 3  # uniform numbers per example: the crop's, then the flip's
EVAL_CROP = 224 / 256  # d2l 14.2's CenterCrop(224) of a 256 x 256 image
PAD_FRACTION = 1 / 8  # crop_flip: 4 pixels for 32 x 32 images
_AUGMENT_STREAM = 0x61756720  # folded into the data key so augmentation draws its own numbers


def resolve_normalize(normalize: str, init_from: str) -> str:
    """--config.normalize as the steps apply it: "auto" is imagenet for a run that starts from
    ImageNet weights (they were trained on such inputs), none otherwise."""
    if normalize == "auto":
        return "imagenet" if init_from else "none"
    return normalize


def check_settings(augment: str, normalize: str, channels: int) -> None:
    """UserError (one line) for an unknown augment/normalize, or imagenet on non-RGB images."""
    if augment not in AUGMENTS:
        raise UserError(f"unknown --config.augment={augment!r}; use one of {', '.join(AUGMENTS)}")
    if normalize not in CHOICES_OF_NORMALIZE:
        raise UserError(f"unknown --config.normalize={normalize!r}; use one of "
                        f"{', '.join(CHOICES_OF_NORMALIZE)}")
    if normalize == "imagenet" and channels != 3:
        raise UserError(f"--config.normalize=imagenet needs RGB images, this dataset has "
                        f"{channels} channel(s); set --config.normalize=none")


def augment_key(data_key, step) -> jax.Array:
    """The key of a training step's augmentation: the run's data key and the step number."""
    return jax.random.fold_in(jax.random.fold_in(data_key, _AUGMENT_STREAM), step)


def train_images(images, key, *, image_size: int, augment: str, normalize: str, dtype,
                 first_index=0) -> jax.Array:
    """uint8 NHWC -> the training inputs (N, image_size, image_size, C) in `dtype`.

    Example e of the batch draws its augmentation from ``fold_in(key, first_index + e)``:
    inside pmap, pass the position of this device's first example in the global batch.
    """
    x = images.astype(jnp.float32) / 255.0
    if augment == "none":
        return _normalize(_resize(x, image_size), normalize).astype(dtype)
    draws = example_draws(key, x.shape[0], first_index)
    if augment == "d2l_finetune":
        x = jax.vmap(lambda image, u: resized_crop(image, resized_crop_box(u, *image.shape[:2]),
                                                   image_size))(x, draws)
    elif augment == "crop_flip":
        x = jax.vmap(_padded_crop)(_resize(x, image_size), draws)
    elif augment == "flip":
        x = _resize(x, image_size)
    else:
        raise ValueError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTS)}")
    flip = draws[:, -1] < 0.5
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return _normalize(x, normalize).astype(dtype)


def example_draws(key, count: int, first_index=0) -> jax.Array:
    """(count, DRAWS) uniform numbers in [0, 1): example e's from ``fold_in(key, first_index + e)``.
    Its crop uses the first ones, its flip the last one (one random call each: XLA:CPU takes
    seconds to compile every further one)."""
    indices = first_index + jnp.arange(count)
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (DRAWS,)))(indices)


def eval_images(images, *, image_size: int, augment: str, normalize: str, dtype) -> jax.Array:
    """uint8 NHWC -> the evaluation inputs (N, image_size, image_size, C) in `dtype`."""
    x = images.astype(jnp.float32) / 255.0
    x = _center_crop(x, image_size) if augment == "d2l_finetune" else _resize(x, image_size)
    return _normalize(x, normalize).astype(dtype)


def resized_crop_box(uniforms, height: int, width: int) -> jax.Array:
    """torchvision's RandomResizedCrop box (top, left, box height, box width), int32, for an
    image of `height` x `width`, from at least ``2 * CROP_TRIES + 2`` uniform numbers in [0, 1)
    (see the module docstring)."""
    u_area, u_ratio = uniforms[:CROP_TRIES], uniforms[CROP_TRIES:2 * CROP_TRIES]
    u_top, u_left = uniforms[2 * CROP_TRIES], uniforms[2 * CROP_TRIES + 1]
    area = height * width * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u_area)
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = jnp.exp(log_low + (log_high - log_low) * u_ratio)
    w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    fallback_h, fallback_w = _fallback_box(height, width)
    h = jnp.where(fits.any(), h[first], fallback_h)
    w = jnp.where(fits.any(), w[first], fallback_w)
    # A uniform whole-pixel position (torchvision: randint(0, height - h + 1)).
    top = jnp.minimum(jnp.floor(u_top * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u_left * (width - w + 1)).astype(jnp.int32), width - w)
    top = jnp.where(fits.any(), top, (height - h) // 2)
    left = jnp.where(fits.any(), left, (width - w) // 2)
    return jnp.stack([top, left, h, w]).astype(jnp.int32)


def _fallback_box(height: int, width: int) -> tuple[int, int]:
    """torchvision's box when no try fits: the whole image, clamped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(CROP_RATIO):
        return int(round(width / min(CROP_RATIO))), width
    if in_ratio > max(CROP_RATIO):
        return height, int(round(height * max(CROP_RATIO)))
    return height, width


def resized_crop(image, box, image_size: int) -> jax.Array:
    """The box (top, left, height, width) of one HWC float image, resampled (antialiased
    bilinear) to image_size x image_size."""
    top, left, h, w = (box[k].astype(jnp.float32) for k in range(4))
    scale = jnp.stack([image_size / h, image_size / w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(image, (image_size, image_size, image.shape[-1]), (0, 1),
                                         scale, translation, method="linear", antialias=True)


def _center_crop(x, image_size: int) -> jax.Array:
    """The centre EVAL_CROP of the shorter side of NHWC images, resampled to image_size."""
    n, height, width, channels = x.shape
    side = EVAL_CROP * min(height, width)
    scale = jnp.array([image_size / side, image_size / side], jnp.float32)
    translation = image_size / 2 - jnp.array([height / 2, width / 2], jnp.float32) * scale
    return jax.image.scale_and_translate(x, (n, image_size, image_size, channels), (1, 2), scale,
                                         translation, method="linear", antialias=True)


def _resize(x, image_size: int) -> jax.Array:
    """The step's plain preprocessing: bilinear resize only where the size differs."""
    n, height, width, channels = x.shape
    if (height, width) != (image_size, image_size):
        x = jax.image.resize(x, (n, image_size, image_size, channels), "bilinear")
    return x


def _padded_crop(image, uniforms) -> jax.Array:
    size = image.shape[0]
    pad = max(1, int(round(size * PAD_FRACTION)))
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top, left = jnp.minimum(jnp.floor(uniforms[:2] * (2 * pad + 1)), 2 * pad).astype(jnp.int32)
    return lax.dynamic_slice(padded, (top, left, 0), image.shape)


def _normalize(x, normalize: str) -> jax.Array:
    if normalize == "none":
        return x
    if normalize != "imagenet":
        raise ValueError(f"unknown normalize {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
    return (x - jnp.array(IMAGENET_MEAN, x.dtype)) / jnp.array(IMAGENET_STD, x.dtype)
