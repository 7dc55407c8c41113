"""The smallest image a network accepts, and the check each network runs on its input.

A convolution or pooling window of size k, stride s and padding p turns n pixels into
floor((n + 2p - k) / s) + 1. Running that backwards from one output pixel gives the
smallest input for which no layer's output is empty; smaller inputs would either fail
deep inside XLA or, worse, silently flow through empty feature maps.
"""
from collections.abc import Sequence


def smallest_input(windows: Sequence[tuple[int, int, int]]) -> int:
    """Smallest side length for which every (kernel, stride, padding) window, applied in order, leaves a pixel."""
    size = 1
    for kernel, stride, padding in reversed(windows):
        size = max(1, (size - 1) * stride + kernel - 2 * padding)
    return size


def check_input_size(model_name: str, image_shape: Sequence[int], min_size: int) -> None:
    """Raises ValueError unless an NHWC input's height and width are both at least `min_size`."""
    height, width = image_shape[1], image_shape[2]
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} pixels, "
            f"got {height}x{width}; pass a larger --config.image_size"
        )
