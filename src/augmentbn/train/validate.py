"""Checks of configuration values by their type hint, range and choices.

Every error names the key, the value, where it came from (a preset file, the command line, a
checkpoint) and what is allowed, e.g. ``preset mine.yaml: epochs='two' is invalid; epochs must
be an integer >= 0``.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MAX_IMAGE_SIZE", "check_values"]

MAX_IMAGE_SIZE = 512
"""The largest ``image_size``. The papers train at 32 and 224 px; digits or CIFAR upscaled to
1000 px would need gigabytes before the first step."""

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class InvalidValueError(ValueError):
    """A value that breaks a rule; the message says what is allowed."""


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` (``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``X | None``);
    an int is a float, and so is text that reads as one (YAML reads ``1e-3`` as text)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _coerce(value, inner)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise InvalidValueError
        return [_coerce(v, args[0]) for v in value]
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise InvalidValueError from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise InvalidValueError
    if hint is int and isinstance(value, bool):
        raise InvalidValueError
    if not isinstance(value, hint):
        raise InvalidValueError
    return value


def describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = (a for a in args if a is not type(None))
        return f"{describe_type(inner)} or null"
    if origin is list:
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


Rule = Callable[[Any], str | None]
"""Returns what is allowed when ``value`` breaks the rule, else ``None``."""


def at_least(low: float, *, finite: bool = True) -> Rule:
    def rule(value):
        bad = math.isnan(value) or value < low or (finite and math.isinf(value))
        return f">= {low}" + ("" if finite else " (inf allowed)") if bad else None

    return rule


def above(low: float) -> Rule:
    def rule(value):
        return f"> {low} and finite" if not (math.isfinite(value) and value > low) else None

    return rule


def between(low: float, high: float) -> Rule:
    def rule(value):
        return f"between {low} and {high}" if not low <= value <= high else None

    return rule


def one_of(choices: Callable[[], Any] | tuple[str, ...]) -> Rule:
    def rule(value):
        valid = tuple(choices() if callable(choices) else choices)
        return f"one of {', '.join(map(str, valid))}" if value not in valid else None

    return rule


def each(rule: Rule) -> Rule:
    def check(values):
        for v in values:
            if (allowed := rule(v)) is not None:
                return f"a list of values each {allowed}"
        return None

    return check


def check_values(
    values: Mapping[str, Any],
    hints: Mapping[str, Any],
    rules: Mapping[str, Rule],
    source: str,
) -> dict[str, Any]:
    """``values`` checked against their fields' type ``hints`` and ``rules``; the coerced values.

    Raises:
        ConfigError: the first bad value, naming key, value, ``source`` and what is allowed.
    """
    from .config import ConfigError

    checked = {}
    for key, value in values.items():
        hint = hints[key]
        try:
            checked[key] = _coerce(value, hint)
        except InvalidValueError:
            raise ConfigError(
                f"{source}: {key}={value!r} is invalid; {key} must be {describe_type(hint)}"
            ) from None
        rule = rules.get(key)
        allowed = rule(checked[key]) if rule is not None and checked[key] is not None else None
        if allowed is not None and allowed.startswith("one of "):
            valid = allowed.removeprefix("one of ")
            raise ConfigError(f"{source}: unknown {key} {value!r}; valid: {valid}")
        if allowed is not None:
            raise ConfigError(f"{source}: {key}={value!r} is invalid; {key} must be {allowed}")
    return checked
