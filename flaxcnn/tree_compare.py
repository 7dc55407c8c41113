"""Whether a saved tree (a checkpoint's metadata) fits the tree a run restores into.

Both trees are reduced to {path: shape} over their arrays, with dicts and named tuples (optax's
states) keyed by name, as Orbax's metadata keys them, and tuples and lists by position; empty
containers (optax's EmptyState, an empty dict) hold no arrays to compare.
"""
from __future__ import annotations

from typing import Any


def leaf_shapes(tree: Any, prefix: str = "") -> dict[str, tuple]:
    """{'params/Conv_0/kernel': (5, 5, 1, 6), ...} in the tree's order."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
        items = zip(tree._fields, tree)
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    elif tree is None:
        return {}
    else:
        return {prefix: tuple(getattr(tree, "shape", None) or ())}
    shapes = {}
    for key, value in items:
        shapes.update(leaf_shapes(value, f"{prefix}/{key}" if prefix else str(key)))
    return shapes


def first_difference(saved: Any, target: Any) -> str | None:
    """The first array path where `saved` and `target` differ, in words (parameters before the
    rest of the state); None if they fit."""
    saved_shapes, target_shapes = leaf_shapes(saved), leaf_shapes(target)
    for path, shape in _parameters_first(target_shapes):
        if path not in saved_shapes:
            return f"{path} (shape {shape}) is not in the checkpoint"
        if saved_shapes[path] != shape:
            return f"{path} has shape {saved_shapes[path]} in the checkpoint, {shape} now"
    for path, shape in _parameters_first(saved_shapes):
        if path not in target_shapes:
            return f"the checkpoint's {path} (shape {shape}) is not in the model any more"
    return None


def _parameters_first(shapes: dict[str, tuple]) -> list[tuple[str, tuple]]:
    """The model's parameters first (the path a person recognises), then the rest, in order."""
    return sorted(shapes.items(), key=lambda item: not item[0].startswith("params/"))
