"""The registry of normalization methods: one :class:`MethodSpec` per method, found by any of
its names. Adding a method is one :func:`register_method` call plus its layers."""

from __future__ import annotations

from .spec import MethodSpec

__all__ = [
    "canonical_name",
    "get_method",
    "layer_classes",
    "list_methods",
    "method_names",
    "register_method",
]

_METHODS: dict[str, MethodSpec] = {}
_BY_NAME: dict[str, str] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; its name and aliases must be new (case-insensitively)."""
    taken = [n for n in spec.names if n.lower() in _BY_NAME]
    if taken:
        raise ValueError(f"norm name(s) {taken} already registered")
    _METHODS[spec.name] = spec
    for name in spec.names:
        _BY_NAME[name.lower()] = spec.name
    return spec


def list_methods(*, backend: str | None = None) -> list[str]:
    """Canonical names, in registration order; with ``backend``, only those it has."""
    return [n for n, s in _METHODS.items() if backend is None or s.has_backend(backend)]


def method_names() -> dict[str, str]:
    """Every accepted name (aliases too, lower case) mapped to its canonical name."""
    return dict(_BY_NAME)


def canonical_name(name: str) -> str:
    """The canonical name of ``name`` (an alias or any case); ``ValueError`` if unknown."""
    return get_method(name).name


def get_method(name: str | MethodSpec) -> MethodSpec:
    """The spec of ``name`` (canonical, alias, any case)."""
    if isinstance(name, MethodSpec):
        return name
    if not isinstance(name, str):
        raise ValueError(f"a norm is given by name (a str), got {name!r}")
    key = _BY_NAME.get(name.lower())
    if key is None:
        aliases = ", ".join(f"{a}={n}" for a, n in _BY_NAME.items() if a != n)
        raise ValueError(
            f"unknown norm {name!r}; expected one of {', '.join(_METHODS)} (aliases: {aliases})"
        )
    return _METHODS[key]


def layer_classes(backend: str = "torch", **flags: bool) -> tuple[type, ...]:
    """The 1d/2d/3d layer classes of ``backend`` of every method whose spec has the given
    ``flags`` (e.g. ``needs_generator=True``, ``batchnorm_state=True``)."""
    return tuple(
        spec.layer_class(backend, dims)
        for spec in _METHODS.values()
        if spec.has_backend(backend) and all(getattr(spec, k) == v for k, v in flags.items())
        for dims in (1, 2, 3)
    )
