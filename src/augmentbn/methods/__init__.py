"""The method registry: one :class:`MethodSpec` per normalization method.

Every other table derives from it: the layer factories of both backends
(:func:`augmentbn.layers.get_norm_layer`, :func:`augmentbn.jittor.get_norm_layer`),
:func:`augmentbn.convert_norm`, :func:`augmentbn.models.create_model` and the Jittor
``create_model``, the training configuration's checks and the CLI's ``--norm`` choices.

>>> from augmentbn.methods import get_method, list_methods
>>> list_methods()
['bn', 'nabn', 'iebn', 'gn', 'in']
>>> get_method("AugmentBN").name
'nabn'
"""

from . import builtin  # noqa: F401  (registers the shipped methods)
from .checks import DEFAULT_THETA, NOISE_TYPES, RUNNING_STATS
from .placement import PLACEMENTS, ROLE_ATTRIBUTE, ROLES, NormPlan, as_norm_plan, resolve_placement
from .registry import (
    canonical_name,
    get_method,
    layer_classes,
    list_methods,
    method_names,
    register_method,
)
from .spec import BACKENDS, MethodSpec, Param

__all__ = [
    "BACKENDS",
    "DEFAULT_THETA",
    "NOISE_TYPES",
    "PLACEMENTS",
    "ROLES",
    "ROLE_ATTRIBUTE",
    "RUNNING_STATS",
    "MethodSpec",
    "NormPlan",
    "Param",
    "as_norm_plan",
    "canonical_name",
    "get_method",
    "layer_classes",
    "list_methods",
    "method_names",
    "register_method",
    "resolve_placement",
]
