"""Swap the normalization layers of any model, as ``SyncBatchNorm.convert_sync_batchnorm`` does.

``placement="paper"`` follows the papers (DESIGN.md 1.1 and 1.2):

- NABN replaces the stem BN, the last BN of every residual block and the shortcut BN;
- IEBN replaces every BN except the shortcut's.

It knows a network by its residual blocks and stems, registered with :func:`register_block`
and :func:`register_stem` (torchvision's ResNet is registered here, by name, so torchvision is
not imported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers.augment import AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d
from .layers.instance_enhance import IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d

__all__ = ["PLACEMENTS", "convert_norm", "paper_placement", "register_block", "register_stem"]

PLACEMENTS = ("all", "paper")

_TARGETS: dict[str, tuple[type[nn.Module], ...]] = {
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "nabn": (AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d),
    "iebn": (IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d),
}
# Every convertible class, by the number of spatial dimensions it normalizes (1d counts as 1).
_SPATIAL_DIMS = {cls: dims + 1 for classes in _TARGETS.values() for dims, cls in enumerate(classes)}
_SHARED_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_GATE_STATE = ("weight_readjust", "bias_readjust")

Filter = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class _BlockRule:
    last: tuple[str, ...]
    shortcut: tuple[str, ...]


_BLOCKS: dict[str, _BlockRule] = {}
_STEMS: dict[str, tuple[str, ...]] = {}


def _key(cls: type | str) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def register_block(
    block_type: type[nn.Module] | str, *, last: Sequence[str], shortcut: Sequence[str] = ()
) -> None:
    """Teach ``placement="paper"`` a residual block.

    Args:
        block_type: the block class, or its ``"module.QualName"`` (subclasses match too).
        last: paths, relative to the block, of the norm layers NABN replaces (the block's last).
        shortcut: paths of the shortcut's norm layers (NABN replaces them; IEBN keeps plain BN).
            A path that does not exist in a block instance (no downsampling) is skipped.
    """
    _BLOCKS[_key(block_type)] = _BlockRule(tuple(last), tuple(shortcut))


def register_stem(model_type: type[nn.Module] | str, names: Sequence[str]) -> None:
    """Teach ``placement="paper"`` the stem norm layer(s) of a network class (NABN takes them)."""
    _STEMS[_key(model_type)] = tuple(names)


register_block("torchvision.models.resnet.BasicBlock", last=["bn2"], shortcut=["downsample.1"])
register_block("torchvision.models.resnet.Bottleneck", last=["bn3"], shortcut=["downsample.1"])
register_stem("torchvision.models.resnet.ResNet", ["bn1"])


def _lookup(registry: dict, module: nn.Module):
    for cls in type(module).__mro__:
        rule = registry.get(_key(cls))
        if rule is not None:
            return rule
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _existing(module: nn.Module, prefix: str, paths: Iterable[str]) -> list[str]:
    found = []
    for path in paths:
        try:
            module.get_submodule(path)
        except AttributeError:
            continue
        found.append(_join(prefix, path))
    return found


def paper_placement(module: nn.Module, to: str) -> set[str]:
    """Qualified names of the norm layers that ``to`` (``"nabn"`` or ``"iebn"``) replaces."""
    stems, lasts, shortcuts, recognized = [], [], [], False
    for prefix, child in module.named_modules():
        stem = _lookup(_STEMS, child)
        if stem is not None:
            stems += _existing(child, prefix, stem)
        block = _lookup(_BLOCKS, child)
        if block is not None:
            recognized = True
            lasts += _existing(child, prefix, block.last)
            shortcuts += _existing(child, prefix, block.shortcut)
    if not recognized:
        known = sorted(k.rsplit(".", 1)[-1] for k in _BLOCKS)
        raise ValueError(
            f"placement='paper' recognizes residual networks built from the registered blocks "
            f"({', '.join(known)}), and {type(module).__name__} contains none of them; use "
            "placement='all', pass a filter, or register the block with "
            "augmentbn.convert.register_block"
        )
    if to == "nabn":
        return set(stems) | set(lasts) | set(shortcuts)
    every = {name for name, m in module.named_modules() if type(m) in _SPATIAL_DIMS}
    return every - set(shortcuts)


def _convert_layer(layer: nn.Module, target: type[nn.Module], layer_kwargs: dict) -> nn.Module:
    reference = layer.running_mean if layer.running_mean is not None else layer.weight
    factory = {}
    if reference is not None:
        factory = {"device": reference.device, "dtype": reference.dtype}
    new = target(
        layer.num_features,
        layer.eps,
        layer.momentum,
        layer.affine,
        layer.track_running_stats,
        **layer_kwargs,
        **factory,
    )
    names = _SHARED_STATE + (_GATE_STATE if hasattr(new, "weight_readjust") else ())
    with torch.no_grad():
        for name in names:
            old, fresh = getattr(layer, name, None), getattr(new, name, None)
            if old is not None and fresh is not None:
                fresh.copy_(old)
                if isinstance(fresh, nn.Parameter):
                    fresh.requires_grad_(old.requires_grad)
    return new.train(layer.training)


def convert_norm(
    module: nn.Module,
    to: str,
    *,
    placement: str = "all",
    filter: Filter | None = None,
    **layer_kwargs,
) -> nn.Module:
    """Return ``module`` with its BatchNorm-family layers replaced by ``to``'s.

    Args:
        module: any ``nn.Module``; a norm layer itself is converted and returned. Children are
            replaced in place.
        to: ``"nabn"``, ``"iebn"``, or ``"bn"`` (back to plain ``nn.BatchNorm``).
        placement: ``"all"`` or ``"paper"`` (the papers' placement, for recognized networks).
        filter: ``(qualified_name, layer) -> bool``; only layers it accepts are converted.
        **layer_kwargs: arguments of the new layers (e.g. ``theta``, ``noise`` for NABN).

    ``nn.BatchNorm{1,2,3}d`` and augmentbn's layers are converted; weights, running statistics,
    ``num_batches_tracked``, device, dtype, ``requires_grad`` and train/eval mode carry over
    (IEBN's gate parameters too, between IEBN layers). Eval outputs are unchanged by
    conversions between BN and NABN. ``nn.SyncBatchNorm`` is left alone.
    """
    if to not in _TARGETS:
        raise ValueError(f"unknown target {to!r}; expected one of {tuple(_TARGETS)}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    if to == "bn" and layer_kwargs:
        raise ValueError(
            f"convert_norm(to='bn') takes no layer arguments, got {sorted(layer_kwargs)}"
        )
    selected = paper_placement(module, to) if placement == "paper" and to != "bn" else None
    converted: dict[int, nn.Module] = {}  # a layer shared by several parents stays shared

    def wanted(name: str, layer: nn.Module) -> bool:
        if type(layer) not in _SPATIAL_DIMS:
            return False
        if selected is not None and name not in selected:
            return False
        return filter is None or filter(name, layer)

    def swap(name: str, layer: nn.Module) -> nn.Module:
        if id(layer) not in converted:
            target = _TARGETS[to][_SPATIAL_DIMS[type(layer)] - 1]
            converted[id(layer)] = _convert_layer(layer, target, layer_kwargs)
        return converted[id(layer)]

    if wanted("", module):
        return swap("", module)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = _join(parent_name, child_name)
            if wanted(qualified, child):
                setattr(parent, child_name, swap(qualified, child))
    return module
