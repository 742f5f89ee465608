"""``convert_sync_norm`` and ``revert_sync_norm``: the counterpart of
``nn.SyncBatchNorm.convert_sync_batchnorm`` for every normalization of this library, and back.

The new layer takes over the old one's parameters and buffers themselves (the same tensors, as
``convert_sync_batchnorm`` does, so an optimizer made before the conversion still holds them),
its hyperparameters (``eps``, ``momentum``, NABN's ``theta``, ``noise``, ``noise_std``,
``running_stats`` and ``generator``) and its train/eval mode. A layer shared by several parents
stays shared.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .layers.augment import _AugmentBatchNorm
from .methods import get_method, list_methods

__all__ = ["convert_sync_norm", "revert_sync_norm"]

_SYNC = {
    spec.layer_class("torch", dims): spec.layer_class("torch-sync", dims)
    for spec in map(get_method, list_methods(backend="torch-sync"))
    for dims in (1, 2, 3)
}
"""Each layer class and its synchronized twin, from the method registry."""
_SYNC_BN = tuple(get_method("bn").layer_class("torch-sync", dims) for dims in (1, 2, 3))
_PLAIN = {sync: plain for plain, sync in _SYNC.items()}
_STATE = (
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "weight_readjust",
    "bias_readjust",
)
_NABN_ARGS = (*(p.name for p in get_method("nabn").params), "generator")
_ORIGINAL = "_augmentbn_unsynchronized"  # the class an nn.SyncBatchNorm was converted from


def _rebuild(layer: nn.Module, cls: type[nn.Module], **extra) -> nn.Module:
    """A ``cls`` layer holding ``layer``'s tensors and hyperparameters."""
    kwargs = {}
    if issubclass(cls, _AugmentBatchNorm):
        kwargs = {name: getattr(layer, name) for name in _NABN_ARGS}
    new = cls(
        layer.num_features,
        layer.eps,
        layer.momentum,
        layer.affine,
        layer.track_running_stats,
        **kwargs,
        **extra,
        device="meta",  # every tensor is replaced by layer's own below
    )
    for name in _STATE:
        if name in new._parameters or name in new._buffers:
            setattr(new, name, getattr(layer, name))
    if isinstance(layer, _AugmentBatchNorm) and isinstance(new, _AugmentBatchNorm):
        new.clamped_channels = layer.clamped_channels  # NABN's clamp counter, not a buffer
    if hasattr(layer, "qconfig"):
        new.qconfig = layer.qconfig
    return new.train(layer.training)


def _swap(module: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with every layer for which ``convert`` returns a replacement replaced."""
    done: dict[int, nn.Module] = {}

    def visit(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        new = convert(m)
        if new is None:
            for name, child in list(m._modules.items()):  # every slot, repeats included
                if child is None:
                    continue
                replaced = visit(child)
                if replaced is not child:
                    setattr(m, name, replaced)
            new = m
        done[id(m)] = new
        return new

    return visit(module)


def convert_sync_norm(module: nn.Module, process_group=None) -> nn.Module:
    """Return ``module`` with its normalization layers synchronized over ``process_group``
    (``None``: the default group): NABN and IEBN become :class:`~augmentbn.layers.sync`'s
    ``SyncAugmentBatchNorm{1,2,3}d`` and ``SyncIEBatchNorm{1,2,3}d``; ``nn.BatchNorm{1,2,3}d``
    becomes ``nn.SyncBatchNorm`` where its tensors are on a CUDA device and
    ``SyncBatchNorm{1,2,3}d`` elsewhere (``nn.SyncBatchNorm`` refuses CPU tensors). Children are
    replaced in place; a norm layer itself is converted and returned. Subclasses of these layers
    and layers already synchronized are left alone."""

    def convert(layer: nn.Module) -> nn.Module | None:
        target = _SYNC.get(type(layer))
        if target is None:
            return None
        if target in _SYNC_BN and _on_cuda(layer):
            new = _rebuild(layer, nn.SyncBatchNorm, process_group=process_group)
            setattr(new, _ORIGINAL, type(layer))
            return new
        return _rebuild(layer, target, process_group=process_group)

    return _swap(module, convert)


def revert_sync_norm(module: nn.Module) -> nn.Module:
    """The reverse of :func:`convert_sync_norm`, for saving and exporting: every synchronized
    layer it made becomes its unsynchronized class again, with the same tensors. An
    ``nn.SyncBatchNorm`` made elsewhere does not know its dimensionality and is left alone."""

    def revert(layer: nn.Module) -> nn.Module | None:
        target = _PLAIN.get(type(layer))
        if target is None and type(layer) is nn.SyncBatchNorm:
            target = getattr(layer, _ORIGINAL, None)
        return None if target is None else _rebuild(layer, target)

    return _swap(module, revert)


def _on_cuda(layer: nn.Module) -> bool:
    tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
    return bool(tensors) and tensors[0].device.type == "cuda"
