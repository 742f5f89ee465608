"""Which normalization each norm site of a Jittor network gets (DESIGN.md 1.1, 1.2).

The PyTorch models build plain BatchNorm and then ``convert_norm`` swaps the layers the paper
names. The Jittor models build the final layers directly: every norm site declares its *role*
and a :class:`NormPlan` maps the role to a layer.

Roles: ``"stem"`` (the stem's BN), ``"inner"`` (a block's BNs but its last), ``"last"`` (the
last BN of a block), ``"shortcut"`` (the BN of the downsampling shortcut).
``placement="paper"``: NABN at ``stem``, ``last`` and ``shortcut``; IEBN everywhere but
``shortcut``; the other sites keep plain BatchNorm. ``placement="all"``: every site.
"""

from __future__ import annotations

from typing import Any

import jittor as jt

from ..layers import get_norm_layer

__all__ = ["PLACEMENTS", "ROLES", "NormPlan"]

ROLES = ("stem", "inner", "last", "shortcut")
PLACEMENTS = ("paper", "all")
_PAPER_ROLES = {
    "nabn": frozenset({"stem", "last", "shortcut"}),
    "iebn": frozenset({"stem", "inner", "last"}),
}
_ALIASES = {"batchnorm": "bn", "augmentbn": "nabn", "gaubatchnorm": "nabn", "ban": "iebn"}


class NormPlan:
    """``plan(role, num_features)`` returns the norm layer of a site.

    Args:
        norm: ``"bn"``, ``"nabn"`` or ``"iebn"``.
        placement: ``"paper"`` (the default for NABN and IEBN) or ``"all"`` (the only choice,
            and the default, for ``"bn"``).
        spatial_dims: 1, 2 or 3 (the layers' dimensionality).
        **norm_kwargs: arguments of the NABN/IEBN layers (``theta``, ``noise``, ``eps``, ...);
            plain BatchNorm sites get the defaults, as ``convert_norm`` leaves them.
    """

    def __init__(
        self,
        norm: str = "bn",
        placement: str | None = None,
        spatial_dims: int = 2,
        **norm_kwargs: Any,
    ) -> None:
        key = _ALIASES.get(norm.lower(), norm.lower())
        if placement is not None and placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS} or None, got {placement!r}")
        if key == "bn" and placement == "paper":
            raise ValueError(
                "placement='paper' applies to norm='nabn' or 'iebn' only, got norm='bn'; "
                "use placement=None or 'all'"
            )
        self.norm = key
        self.placement = placement or ("paper" if key in _PAPER_ROLES else "all")
        self._layer = get_norm_layer(key, spatial_dims, **norm_kwargs)
        self._plain = get_norm_layer("bn", spatial_dims)

    def __call__(self, role: str, num_features: int) -> jt.nn.Module:
        if role not in ROLES:
            raise ValueError(f"unknown norm role {role!r}; expected one of {ROLES}")
        if self.placement == "all" or role in _PAPER_ROLES[self.norm]:
            return self._layer(num_features)
        return self._plain(num_features)
