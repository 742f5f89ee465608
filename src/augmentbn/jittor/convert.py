"""Weights between PyTorch and Jittor models: ``from_torch_state_dict``, ``to_torch_state_dict``.

The Jittor layers and models keep the PyTorch names (``layer1.0.bn2.running_var``, ...) and
shapes, so conversion is a straight key mapping. The one difference is Jittor's: it has no 0-d
Var, so a scalar such as ``num_batches_tracked`` has shape ``(1,)`` in Jittor and ``()`` in
PyTorch; values are reshaped when their sizes agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jittor as jt
import numpy as np
import torch

__all__ = ["IncompatibleKeys", "from_torch_state_dict", "to_torch_state_dict"]


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, jt.Var):
        return value.numpy()
    return np.asarray(value)


def from_torch_state_dict(
    module: jt.nn.Module, state_dict: Mapping[str, Any], strict: bool = True
) -> IncompatibleKeys:
    """Load a PyTorch ``state_dict`` (tensors or arrays) into the Jittor ``module``, in place.

    Every key of ``state_dict`` must name a Var of ``module`` with the same number of elements
    (and, with ``strict=True``, every Var of ``module`` must be given). Values are cast to the
    Var's dtype; parameters stay trainable and running statistics ``stop_grad``.

    Raises:
        KeyError: with ``strict=True``, keys missing on either side, all listed.
        ValueError: a value whose size differs from its Var's.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(
            f"from_torch_state_dict: state dict does not match {type(module).__name__}: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    for key in sorted(set(own) & set(state_dict)):
        var, value = own[key], _to_numpy(state_dict[key])
        if value.size != var.numel():
            raise ValueError(
                f"from_torch_state_dict: {key!r} has shape {tuple(value.shape)} in the state dict "
                f"but {tuple(var.shape)} in the model"
            )
        var.update(jt.array(value.reshape(tuple(var.shape))).cast(var.dtype))
    jt.sync(list(own.values()))
    return IncompatibleKeys(missing, unexpected)


def to_torch_state_dict(module: jt.nn.Module) -> dict[str, torch.Tensor]:
    """The Jittor ``module``'s Vars as a PyTorch state dict (CPU tensors).

    One-element ``num_batches_tracked`` becomes a 0-d tensor, as in ``torch.nn.BatchNorm``, so
    ``torch_model.load_state_dict(to_torch_state_dict(jittor_model))`` works with ``strict=True``.
    """
    state = {}
    for key, var in module.state_dict().items():
        value = torch.from_numpy(np.ascontiguousarray(var.numpy()))
        if key.rsplit(".", 1)[-1] == "num_batches_tracked":
            value = value.reshape(())
        state[key] = value
    return state
