"""Where a method goes in a network: every norm site declares its *role*, and a :class:`NormPlan`
maps the role to a layer (DESIGN.md 1.1, 1.2). Both backends' models use it.

Roles: ``stem`` (the stem's norm), ``inner`` (a residual block's norms but its last), ``last``
(the last norm of a residual block), ``shortcut`` (the norm of a downsampling shortcut), ``conv``
(the norm of a plain convolution block, such as the U-Net's double convolutions).

``placement="paper"`` puts the method at its paper's roles (:attr:`MethodSpec.paper_roles`: NABN
at stem, last, shortcut and conv; IEBN everywhere but the shortcut) and plain BatchNorm
elsewhere; ``"all"`` puts it at every site. The default is ``"paper"`` for methods that have a
paper placement, ``"all"`` for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import get_method
from .spec import MethodSpec

__all__ = ["PLACEMENTS", "ROLES", "NormPlan", "resolve_placement"]

ROLES = ("stem", "inner", "last", "shortcut", "conv")
PLACEMENTS = ("paper", "all")

ROLE_ATTRIBUTE = "norm_role"
"""The attribute a :class:`NormPlan` sets on each layer it makes: the site's role, which
``convert_norm(placement="paper")`` reads back."""


def resolve_placement(method: str | MethodSpec, placement: str | None) -> str:
    """``placement`` checked against ``method``, ``None`` replaced by the method's default."""
    spec = get_method(method)
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(
            f"placement must be one of {', '.join(PLACEMENTS)} or None, got {placement!r}"
        )
    if placement == "paper" and spec.paper_roles is None:
        papers = ", ".join(n for n in ("nabn", "iebn") if get_method(n).paper_roles is not None)
        raise ValueError(
            f"placement='paper' applies to norms with a paper placement ({papers}); "
            f"norm {spec.name!r} has none: use placement=None or 'all'"
        )
    if placement is None:
        return "paper" if spec.paper_roles is not None else "all"
    return placement


class NormPlan:
    """``plan(num_features, role)`` returns the norm layer of a site.

    Args:
        norm: a registered method's name or alias.
        placement: ``"paper"``, ``"all"`` or ``None`` (the method's default).
        spatial_dims: 1, 2 or 3 (the layers' dimensionality).
        backend: ``"torch"`` or ``"jittor"``.
        **norm_kwargs: arguments of the method's layers (``theta``, ``noise``, ``eps``, ...);
            sites left to plain BatchNorm get its defaults.
    """

    def __init__(
        self,
        norm: str | MethodSpec = "bn",
        placement: str | None = None,
        spatial_dims: int = 2,
        *,
        backend: str = "torch",
        **norm_kwargs: Any,
    ) -> None:
        self.method = get_method(norm)
        self.placement = resolve_placement(self.method, placement)
        self._layer = self.method.layer(backend, spatial_dims, **norm_kwargs)
        self.norm_kwargs = dict(self._layer.keywords)
        self._plain = get_method("bn").layer(backend, spatial_dims)

    @classmethod
    def from_layer(cls, norm_layer: Callable[..., Any]) -> NormPlan:
        """A plan that calls ``norm_layer(num_features)`` at every site (torchvision style)."""
        plan = cls.__new__(cls)
        plan.method, plan.placement, plan.norm_kwargs = None, "all", {}
        plan._layer = plan._plain = norm_layer
        return plan

    def uses_method(self, role: str) -> bool:
        if role not in ROLES:
            raise ValueError(f"unknown norm role {role!r}; expected one of {', '.join(ROLES)}")

        return self.placement == "all" or role in self.method.paper_roles

    def __call__(self, num_features: int, role: str = "conv") -> Any:
        layer = (self._layer if self.uses_method(role) else self._plain)(num_features)
        setattr(layer, ROLE_ATTRIBUTE, role)
        return layer


def as_norm_plan(
    norm_layer: NormPlan | Callable[..., Any] | None, default: Callable[..., Any]
) -> NormPlan:
    """A model's ``norm_layer`` argument as a plan: a :class:`NormPlan` as it is, a callable
    ``num_features -> layer`` at every site, ``None`` as ``default`` (plain BatchNorm)."""
    if isinstance(norm_layer, NormPlan):
        return norm_layer
    return NormPlan.from_layer(norm_layer if norm_layer is not None else default)
