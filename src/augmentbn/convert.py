"""Swap the normalization layers of any model, as ``SyncBatchNorm.convert_sync_batchnorm`` does.

``placement="paper"`` puts the method at its paper's roles (:mod:`augmentbn.methods.placement`):
NABN at the stem BN, the last BN of every residual block and the shortcut BN; IEBN at every BN
except the shortcut's. A layer's role is the one its model declared when it was built
(augmentbn's models ask a :class:`~augmentbn.methods.NormPlan` for each norm by role), or else
the one its residual block and stem say, registered with :func:`register_block` and
:func:`register_stem` for third-party networks (torchvision's and timm's ResNets are registered
here, by name, so neither library is imported).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers._base import BatchNormBase
from .methods import (
    PLACEMENTS,
    ROLE_ATTRIBUTE,
    get_method,
    layer_classes,
    list_methods,
    resolve_placement,
)
from .methods.spec import MethodSpec

__all__ = ["PLACEMENTS", "convert_norm", "paper_placement", "register_block", "register_stem"]


def _convertible_methods() -> list[MethodSpec]:
    """The methods whose PyTorch layers keep ``nn.BatchNorm``'s state (bn, nabn, iebn)."""
    specs = (get_method(name) for name in list_methods(backend="torch"))
    return [spec for spec in specs if spec.batchnorm_state]


def _spatial_dims_of() -> dict[type, int]:
    """Every convertible class, by the number of spatial dimensions it normalizes (1d: 1)."""
    classes = layer_classes("torch", batchnorm_state=True)
    return {cls: i % 3 + 1 for i, cls in enumerate(classes)}


# Other libraries' BatchNorm subclasses that convert_norm knows, by qualified name (so that those
# libraries are not imported here): their spatial dims and their family, whose targets
# _target() gives. A converted layer's children (timm's `drop` and `act`) move to the new one.
_KNOWN_SUBCLASSES: dict[str, tuple[int, str]] = {
    # Its dimensionality is not recorded: taken as 2d, as in image models. The converted layer
    # is not synchronized across processes.
    "torch.nn.modules.batchnorm.SyncBatchNorm": (2, "plain"),
    # timm's BatchNorm + drop + activation, and augmentbn's versions of it.
    "timm.layers.norm_act.BatchNormAct2d": (2, "timm"),
    "augmentbn.integrations.timm.AugmentBatchNormAct2d": (2, "timm"),
    "augmentbn.integrations.timm.IEBatchNormAct2d": (2, "timm"),
}
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
# timm's shortcut is (conv, norm), or (pool, conv, norm) with avg_down.
_TIMM_SHORTCUT = ["downsample.1", "downsample.2"]
register_block("timm.models.resnet.BasicBlock", last=["bn2"], shortcut=_TIMM_SHORTCUT)
register_block("timm.models.resnet.Bottleneck", last=["bn3"], shortcut=_TIMM_SHORTCUT)
register_stem("timm.models.resnet.ResNet", ["bn1"])


def _kind(layer: nn.Module) -> tuple[int, str] | None:
    """``(spatial dims, family)`` of a layer convert_norm knows, else ``None`` (exact types:
    a subclass may behave differently)."""
    dims = _spatial_dims_of().get(type(layer))
    if dims is not None:
        return dims, "plain"
    return _KNOWN_SUBCLASSES.get(_key(type(layer)))


def _target(to: str, dims: int, family: str) -> type[nn.Module]:
    if family == "timm":
        from .integrations.timm import norm_act_targets

        return norm_act_targets()[to]
    return get_method(to).layer_class("torch", dims)


def _lookup(registry: dict, module: nn.Module):
    for cls in type(module).__mro__:
        rule = registry.get(_key(cls))
        if rule is not None:
            return rule
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _existing(module: nn.Module, prefix: str, paths: Iterable[str]) -> list[str]:
    """The qualified names of the ``paths`` that are norm layers convert_norm knows (a path may
    name another module in some instances: timm's shortcut is (conv, norm) or
    (pool, conv, norm))."""
    found = []
    for path in paths:
        try:
            layer = module.get_submodule(path)
        except AttributeError:
            continue
        if _kind(layer) is not None:
            found.append(_join(prefix, path))
    return found


def _site_roles(module: nn.Module) -> dict[str, str]:
    """The role of every convertible norm layer: declared by the model that built it, or else
    given by its registered residual block or stem; a declared role wins over a registered one.
    The other norms of a recognized network are ``inner`` (IEBN takes them, NABN does not);
    an unrecognized network gets no roles."""
    roles: dict[str, str] = {}
    for prefix, child in module.named_modules():
        block = _lookup(_BLOCKS, child)
        if block is not None:
            for name, layer in child.named_modules(prefix=prefix):
                if _kind(layer) is not None and name != prefix:
                    roles.setdefault(name, "inner")
            for role, paths in (("last", block.last), ("shortcut", block.shortcut)):
                for name in _existing(child, prefix, paths):
                    roles[name] = role
        stem = _lookup(_STEMS, child)
        if stem is not None:
            for name in _existing(child, prefix, stem):
                roles[name] = "stem"
    for name, layer in module.named_modules():
        declared = getattr(layer, ROLE_ATTRIBUTE, None)
        if declared is not None and _kind(layer) is not None:
            roles[name] = declared
    if roles:  # a recognized network: its other norms (a deep stem's, say) are inner ones
        for name, layer in module.named_modules():
            if _kind(layer) is not None:
                roles.setdefault(name, "inner")
    return roles


def paper_placement(module: nn.Module, to: str) -> set[str]:
    """Qualified names of the norm layers that ``to``'s paper placement replaces."""
    spec = get_method(to)
    resolve_placement(spec, "paper")
    roles = _site_roles(module)
    if not roles:
        known = sorted(k.rsplit(".", 1)[-1] for k in _BLOCKS)
        raise ValueError(
            f"placement='paper' needs to know the role of each norm layer: it recognizes "
            f"augmentbn's models and networks built from the registered blocks "
            f"({', '.join(known)}), and {type(module).__name__} has none of them; use "
            "placement='all', pass a filter, or register the block with "
            "augmentbn.convert.register_block"
        )
    return {name for name, role in roles.items() if role in spec.paper_roles}


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
    role = getattr(layer, ROLE_ATTRIBUTE, None)
    if role is not None:
        setattr(new, ROLE_ATTRIBUTE, role)
    with torch.no_grad():
        for name in names:
            old, fresh = getattr(layer, name, None), getattr(new, name, None)
            if old is not None and fresh is not None:
                fresh.copy_(old)
                if isinstance(fresh, nn.Parameter):
                    fresh.requires_grad_(old.requires_grad)
    for name, child in layer.named_children():  # timm's drop and act
        setattr(new, name, child)
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
        to: a registered method that keeps BatchNorm's state: ``"nabn"``, ``"iebn"``, or
            ``"bn"`` (back to plain ``nn.BatchNorm``), or an alias of one.
        placement: ``"all"`` or ``"paper"`` (the paper's placement, for recognized networks).
        filter: ``(qualified_name, layer) -> bool``; only layers it accepts are converted.
        **layer_kwargs: arguments of the new layers (e.g. ``theta``, ``noise`` for NABN),
            checked by the registry.

    ``nn.BatchNorm{1,2,3}d``, augmentbn's layers and the BatchNorm subclasses it knows are
    converted, by exact type: ``nn.SyncBatchNorm`` (as a 2d layer; the new one is not
    synchronized) and timm's ``BatchNormAct2d`` (into augmentbn's ``AugmentBatchNormAct2d`` or
    ``IEBatchNormAct2d``, which keep its ``drop`` and ``act``, and back). Weights, running
    statistics, ``num_batches_tracked``, device, dtype, ``requires_grad``, train/eval mode and
    the declared role carry over (IEBN's gate parameters too, between IEBN layers). Eval outputs
    are unchanged by conversions between BN and NABN. A call that converts nothing warns, naming
    the norm layers it does not know.
    """
    spec = get_method(to)
    if not spec.batchnorm_state:
        convertible = ", ".join(s.name for s in _convertible_methods())
        raise ValueError(
            f"convert_norm converts between layers that keep BatchNorm's state ({convertible}); "
            f"norm {spec.name!r} does not: build the model with it instead "
            "(augmentbn.models.create_model(..., norm=...) or get_norm_layer)"
        )
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    layer_kwargs = spec.resolve(layer_kwargs, f"convert_norm(to={spec.name!r})")
    if spec.name == "bn" and layer_kwargs:
        raise ValueError(
            f"convert_norm(to='bn') takes no layer arguments, got {sorted(layer_kwargs)}"
        )
    selected = paper_placement(module, spec.name) if placement == "paper" else None
    converted: dict[int, nn.Module] = {}  # a layer shared by several parents stays shared

    def wanted(name: str, layer: nn.Module) -> bool:
        if _kind(layer) is None:
            return False
        if selected is not None and name not in selected:
            return False
        return filter is None or filter(name, layer)

    def swap(layer: nn.Module) -> nn.Module:
        if id(layer) not in converted:
            target = _target(spec.name, *_kind(layer))
            converted[id(layer)] = _convert_layer(layer, target, layer_kwargs)
        return converted[id(layer)]

    if wanted("", module):
        return swap(module)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = _join(parent_name, child_name)
            if wanted(qualified, child):
                setattr(parent, child_name, swap(child))
    if not converted:
        warnings.warn(_nothing_converted(module, spec.name), UserWarning, stacklevel=2)
    return module


def _nothing_converted(module: nn.Module, to: str) -> str:
    """Why a convert_norm call converted nothing, for its warning."""
    what = f"convert_norm(to={to!r}) converted no layer of {type(module).__name__}"
    known = [m for m in module.modules() if _kind(m) is not None]
    if known:
        return f"{what}: placement or filter excluded all of its {len(known)} BatchNorm layers"
    unknown = sorted(
        {_key(type(m)) for m in module.modules() if isinstance(m, (_BatchNorm, BatchNormBase))}
    )
    if unknown:
        return (
            f"{what}: it has BatchNorm-like layers of types it does not convert "
            f"({', '.join(unknown)}); it converts nn.BatchNorm1d/2d/3d, nn.SyncBatchNorm, timm's "
            "BatchNormAct2d and augmentbn's layers, by exact type"
        )
    return f"{what}: it has no BatchNorm layer"
