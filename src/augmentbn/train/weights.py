"""Loading a checkpoint's weights into a model, with an error that describes both."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError

__all__ = ["describe_weights", "load_weights"]


def describe_weights(weights: Mapping[str, torch.Tensor]) -> str:
    """E.g. ``"78,042 parameters in 59 tensors: conv1, bn1, layer1 (1 block), ..., fc"``."""
    count = sum(v.numel() for k, v in weights.items() if v.is_floating_point())
    blocks: dict[str, set[str]] = {}
    for key in weights:
        head, _, rest = key.partition(".")
        index = re.match(r"(\d+)\.", rest)
        blocks.setdefault(head, set())
        if index:
            blocks[head].add(index.group(1))
    parts = [
        f"{name} ({len(b)} block{'s' if len(b) != 1 else ''})" if b else name
        for name, b in blocks.items()
    ]
    return f"{count:,} parameters in {len(weights)} tensors: {', '.join(parts)}"


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path, what: str):
    """``model.load_state_dict(weights)``, or a :class:`CheckpointError` that names the model
    ``what`` describes and the checkpoint's weights, with every mismatch."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        expected = model.state_dict()
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        shapes = [
            f"{k}: {list(weights[k].shape)} in the file, {list(v.shape)} in the model"
            for k, v in expected.items()
            if k in weights and weights[k].shape != v.shape
        ]
        details = [
            f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", shapes),
            )
            if items
        ]
        raise CheckpointError(
            f"the weights in {path} are not those of the model its configuration describes. "
            f"Configured: {what}, {describe_weights(expected)}. In the file: "
            f"{describe_weights(weights)}. Tensors: {'; '.join(details) or str(error)}"
        ) from error
