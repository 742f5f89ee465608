"""What the registry knows of a normalization method: :class:`MethodSpec` and its :class:`Param`."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BACKENDS", "MethodSpec", "Param"]

BACKENDS = ("torch", "jittor")
"""``torch``: :mod:`augmentbn.layers`; ``jittor``: :mod:`augmentbn.jittor`."""

_BACKEND_PACKAGES = {
    "torch": "augmentbn.layers",
    "torch-sync": "augmentbn.layers.sync",
    "jittor": "augmentbn.jittor",
}


@dataclass(frozen=True)
class Param:
    """One argument of a method's layers, beside ``nn.BatchNorm``'s own.

    ``default`` is a value, or ``Callable[[dict], value]`` computed from the other resolved
    arguments (NABN's ``theta`` depends on ``noise``). ``check(value, resolved)`` raises
    ``ValueError`` for a bad value. ``choices`` lists the allowed values of a name argument.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any, Mapping[str, Any]], None] | None = None

    def default_for(self, resolved: Mapping[str, Any]) -> Any:
        return self.default(resolved) if callable(self.default) else self.default


@dataclass(frozen=True)
class MethodSpec:
    """A normalization method, once: everything else (the layer factories of both backends,
    ``convert_norm``, ``create_model``, the training configuration, the CLI) derives from it.

    Args:
        name: the canonical name (``"nabn"``).
        title: one line for people (help texts, the README).
        aliases: other accepted names, matched case-insensitively.
        layers: per backend, the ``"module:Class"`` of the 1d, 2d and 3d layers (one path, three
            times, for a layer of any dimensionality); a backend left out lacks the method.
            The key ``"torch-sync"`` holds the synchronized PyTorch layers, which the factory
            gives when the arguments include ``process_group``.
        params: the method's own arguments, in the order the CLI shows them.
        layer_defaults: arguments the factory passes unless told otherwise (InstanceNorm's
            ``affine=True``, so that it stands in for BatchNorm).
        paper_roles: the norm sites (:data:`augmentbn.methods.ROLES`) the method's paper puts it
            in, for ``placement="paper"``; ``None`` where a paper names no placement.
        batchnorm_state: the layers keep ``nn.BatchNorm``'s state dict, so ``convert_norm``
            converts between them.
        batch_statistics: training normalizes with batch statistics (a batch of one fails).
        needs_generator: the layers draw noise and take a ``generator`` attribute.
    """

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    layers: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    layer_defaults: Mapping[str, Any] = field(default_factory=dict)
    paper_roles: frozenset[str] | None = None
    batchnorm_state: bool = False
    batch_statistics: bool = False
    needs_generator: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def resolve(self, kwargs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """``kwargs`` with the method's defaults filled in and its parameters checked.

        Keys that are not the method's parameters (``eps``, ``momentum``, ...) pass through to
        the layer unchanged; ``None`` for a parameter means its default.
        """
        resolved = dict(self.layer_defaults)
        resolved.update(kwargs)
        for param in self.params:
            if resolved.get(param.name) is None:
                resolved[param.name] = param.default_for(resolved)
        for param in self.params:
            value = resolved[param.name]
            if param.choices is not None and value not in param.choices:
                raise ValueError(
                    f"{where or self.name}: unknown {param.name} {value!r}; expected one of "
                    f"{', '.join(map(str, param.choices))}"
                )
            if param.check is not None:
                param.check(value, resolved)
        return resolved

    def has_backend(self, backend: str) -> bool:
        return backend in self.layers

    def layer_class(self, backend: str, spatial_dims: int) -> type:
        """The layer class of ``backend`` for ``spatial_dims`` (1, 2 or 3)."""
        if backend not in (*BACKENDS, "torch-sync"):
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if backend not in self.layers:
            where = ", ".join(_BACKEND_PACKAGES[b] for b in self.layers)
            raise ValueError(
                f"norm {self.name!r} ({self.title}) has no {backend} layer; it exists in {where}"
            )
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        return _load(self.layers[backend][spatial_dims - 1])

    def layer(
        self, backend: str = "torch", spatial_dims: int = 2, **kwargs: Any
    ) -> Callable[[int], Any]:
        """``f(num_features) -> layer`` with ``kwargs`` resolved and checked; with a
        ``process_group`` argument (``None``: the default group), the synchronized layer."""
        if backend == "torch" and "process_group" in kwargs:
            if "torch-sync" not in self.layers:
                raise ValueError(
                    f"norm {self.name!r} ({self.title}) has no synchronized layer; "
                    "process_group applies to the batch-statistics norms"
                )
            backend = "torch-sync"
        cls = self.layer_class(backend, spatial_dims)
        return functools.partial(cls, **self.resolve(kwargs))


@functools.cache
def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
