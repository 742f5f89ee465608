"""Fold normalization layers for inference: :func:`fold`.

In evaluation NABN is exactly BatchNorm with its running statistics (no noise, ever), and a
BatchNorm that follows a convolution is an affine map per output channel, which
``torch.nn.utils.fusion.fuse_conv_bn_eval`` folds into the convolution's weight and bias:
``W' = W·γ/sqrt(v + ε)``, ``b' = (b - μ)·γ/sqrt(v + ε) + β``. IEBN never folds: its gate
``sigmoid(w·mean_S(x) + b)`` depends on each input.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .convert import _key, _kind, convert_norm
from .layers import (
    AugmentBatchNorm1d,
    AugmentBatchNorm2d,
    AugmentBatchNorm3d,
    IEBatchNorm1d,
    IEBatchNorm2d,
    IEBatchNorm3d,
)

__all__ = ["fold"]

_NABN = (AugmentBatchNorm1d, AugmentBatchNorm2d, AugmentBatchNorm3d)
_IEBN = (IEBatchNorm1d, IEBatchNorm2d, IEBatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# BatchNorm + drop + activation: the BatchNorm folds, its children (drop, then act) remain.
_NORM_ACT = "timm.layers.norm_act.BatchNormAct2d"


def fold(model: nn.Module) -> nn.Module:
    """Return a folded copy of ``model``, in evaluation mode, for inference and export.

    - Every NABN layer becomes ``nn.BatchNorm`` (timm's ``BatchNormAct2d`` for augmentbn's
      norm-act version), with the same weights and running statistics: exactly the same outputs.
    - Every BatchNorm with running statistics whose input is a convolution's output, used by
      nothing else, is folded into that convolution (``fuse_conv_bn_eval``) and replaced by
      ``nn.Identity`` (by its ``drop`` and ``act`` for timm's ``BatchNormAct2d``). The graph is
      found with ``torch.fx``; a submodule that fx cannot trace is one opaque call, and a model
      whose own forward fx cannot trace keeps its BatchNorm layers, with a warning. Outputs
      agree with ``model.eval()``'s to float rounding.

    ``model`` is left as it is. Raises ``ValueError`` naming the first IEBN layer (whose
    per-instance gate folds into nothing) or NABN layer without running statistics (which
    normalizes by each batch's statistics in evaluation too).
    """
    for name, layer in model.named_modules():
        where = f"layer {name!r}" if name else "the model"
        if isinstance(layer, _IEBN):
            raise ValueError(
                f"fold: {where} is IEBN ({type(layer).__name__}); its per-instance gate "
                "sigmoid(w·mean(x) + b) depends on each input, so it folds neither into "
                "BatchNorm nor into a convolution. Export the model without folding: every "
                "tracer and exporter takes IEBN as it is."
            )
        if isinstance(layer, _NABN) and (layer.running_mean is None or layer.running_var is None):
            raise ValueError(
                f"fold: {where} is NABN ({type(layer).__name__}) without running statistics "
                "(track_running_stats=False): in evaluation it normalizes by each batch's "
                "statistics, which no fixed affine map reproduces. Export it without folding."
            )
    folded = copy.deepcopy(model).eval()
    if any(isinstance(m, _NABN) for m in folded.modules()):
        folded = convert_norm(folded, "bn", filter=lambda name, layer: isinstance(layer, _NABN))
    _fold_into_convolutions(folded)
    return folded


def _foldable_norm(layer: nn.Module) -> bool:
    """A BatchNorm (of a kind convert_norm knows) with running statistics."""
    return (
        isinstance(layer, _BatchNorm)
        and _kind(layer) is not None
        and layer.running_mean is not None
        and layer.running_var is not None
    )


def _foldable_conv(layer: nn.Module) -> bool:
    """A convolution of an exact torch type (a subclass may pad or compute differently)."""
    if type(layer) in _TRANSPOSED:
        return layer.groups == 1  # fuse_conv_bn_eval scales a transposed weight's dim 1 whole
    return type(layer) in _CONVS


class _Tracer(fx.Tracer):
    """fx's tracer, with every BatchNorm kind as one call (timm's BatchNormAct2d is not a
    ``torch.nn`` module, and fx would trace through it), and every submodule that fx cannot
    trace (data-dependent control flow, such as a U-Net's padding) as one opaque call.

    The nodes a failed attempt left in the graph stay: they only add uses, which makes the
    analysis more conservative, never less."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: set[str] = set()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.opaque
            or _foldable_norm(m)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m, forward, args, kwargs):
        depth = len(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            name = self.path_of_module(m)
            if not name:
                raise
            while len(self.module_stack) > depth:  # fx does not unwind it on errors
                self.module_stack.popitem(last=True)
            self.opaque.add(name)
            return super().call_module(m, forward, args, kwargs)


def _fold_into_convolutions(model: nn.Module) -> None:
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # fx cannot trace data-dependent control flow, among others
        warnings.warn(
            f"fold: torch.fx could not trace {type(model).__name__} "
            f"({type(error).__name__}: {str(error).splitlines()[0]}); its BatchNorm layers "
            "stay as they are, unfolded",
            UserWarning,
            stacklevel=3,
        )
        return
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_norm(modules[node.target]):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv, norm = modules[source.target], modules[node.target]
        if not _foldable_conv(conv) or conv.out_channels != norm.num_features:
            continue
        if len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            continue  # the convolution's output is used elsewhere, or a layer is shared
        fused = fuse_conv_bn_eval(conv, norm, transpose=type(conv) in _TRANSPOSED)
        model.set_submodule(source.target, fused)
        model.set_submodule(node.target, _remainder(norm))


def _remainder(norm: nn.Module) -> nn.Module:
    """What is left of a folded BatchNorm: nothing, or timm's drop and activation."""
    if _key(type(norm)) == _NORM_ACT:
        parts = [m for m in (norm.drop, norm.act) if not isinstance(m, nn.Identity)]
        if parts:
            return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    return nn.Identity()
