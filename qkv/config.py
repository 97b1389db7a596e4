"""Helpers shared by qkv's config dataclasses: building from dicts, checking fields, parsing overrides.

Every config is a dataclass whose ``__post_init__`` validates it; an invalid value raises
:class:`~qkv.errors.QkvError` naming the field, so ``TransformerConfig(d_model=500, h=8)`` says which
field to change and how.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, ClassVar, TypeVar

from qkv.errors import QkvError, shown

__all__ = [
    "ConfigBase",
    "check",
    "config_from_dict",
    "config_to_dict",
    "field_names",
    "parse_override_value",
    "typed_value",
    "unknown_field",
]

C = TypeVar("C")


def check(condition: bool, section: str, name: str, value: Any, requirement: str) -> None:
    """Raise a QkvError naming ``section.name`` unless ``condition`` holds."""
    if not condition:
        raise QkvError(f"invalid {section}.{name}={shown(value)}: {requirement}")


def field_names(cls: type) -> list[str]:
    """Names of a config dataclass's fields."""
    return [f.name for f in dataclasses.fields(cls)]


def _unknown(name: str, known: list[str], section: str) -> QkvError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(known)}"
    return QkvError(f"unknown {section} field {shown(name)}: {hint}")


def unknown_field(name: str, sections: dict[str, list[str]], section: str | None = None) -> QkvError:
    """The error for a field ``name`` that no section has (or, with ``section``, that section lacks),
    suggesting the closest field of any section: ``did you mean 'd_model' (model.d_model)?``."""
    qualified = {f"{s}.{f}": f for s, fields in sections.items() for f in fields}
    close = difflib.get_close_matches(name, list(set(qualified.values())), n=1, cutoff=0.6)
    names = ", ".join(sections)
    where = f"{section} field {shown(name)}" if section else f"field {shown(name)} (no section of {names} has it)"
    if not close:
        return QkvError(f"unknown {where}: write KEY=VALUE with a field of {names} (see --print-config)")
    owners = [q for q, f in qualified.items() if f == close[0]]
    return QkvError(f"unknown {where}: did you mean '{close[0]}' ({' or '.join(owners)})?")


def typed_value(tp: Any, value: Any, where: str) -> Any:
    """``value`` as a value of type ``tp`` (ints become floats where a float is asked for), or a QkvError:
    no float or bool where an int is asked for, no number where a string is."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is float and type(value) in (int, float):
        return float(value)
    if typing.get_origin(tp) is tuple and isinstance(value, list | tuple):
        return tuple(typed_value(a, v, where) for a, v in zip(typing.get_args(tp), value, strict=False))
    if tp in (int, bool, str) and type(value) is tp:
        return value
    kind = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))
    raise QkvError(f"invalid {where}={shown(value)}: must be {kind}")


def config_from_dict(cls: type[C], data: dict[str, Any], section: str) -> C:
    """Build ``cls`` from a dict (as stored in config.json), rejecting unknown keys with a hint and values
    of the wrong type (an int written as 128.0, a bool as an int), then validating the values."""
    if not isinstance(data, dict):
        raise QkvError(f"the {section} section must be an object of field: value (got {shown(data)})")
    known = field_names(cls)
    for key in data:
        if key not in known:
            raise _unknown(key, known, section)
    hints = typing.get_type_hints(cls)
    return cls(**{k: typed_value(hints[k], v, f"{section}.{k}") for k, v in data.items()})


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def parse_override_value(cls: type, name: str, text: str, section: str) -> Any:
    """Parse the string ``text`` for field ``name`` of ``cls`` by the field's type."""
    known = field_names(cls)
    if name not in known:
        raise _unknown(name, known, section)
    tp = _field_type(cls, name)
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in args if a is not type(None))
    try:
        if tp is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if typing.get_origin(tp) is tuple:
            return tuple(float(x) for x in text.strip("()").split(","))
        return text
    except ValueError:
        kind = getattr(tp, "__name__", str(tp))
        raise QkvError(f"{section}.{name}={shown(text)} is not a valid {kind}") from None


def replace(cfg: C, section: str, **changes: Any) -> C:
    """A copy of ``cfg`` with ``changes`` applied and validated."""
    known = field_names(type(cfg))
    for key in changes:
        if key not in known:
            raise _unknown(key, known, section)
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


class ConfigBase:
    """Shared by qkv's config dataclasses: ``from_dict`` (unknown fields rejected with a hint) and
    ``from_name`` (a named preset with overrides). Subclasses set ``SECTION`` and ``KIND`` and return
    their presets from ``presets()``."""

    SECTION: ClassVar[str] = "model"
    KIND: ClassVar[str] = "model"

    @classmethod
    def presets(cls) -> dict[str, Any]:
        """Named presets of this config."""
        return {}

    def reads(self) -> tuple[str, ...]:
        """The fields that take effect with this config's other values (all of them unless a subclass
        says otherwise); setting one that does not is refused rather than silently ignored."""
        return tuple(field_names(type(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build from a dict (as stored in config.json), rejecting unknown fields."""
        return config_from_dict(cls, data, cls.SECTION)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Any:
        """A named preset with ``overrides`` applied."""
        presets = cls.presets()
        if name not in presets:
            raise QkvError(f"unknown {cls.KIND} preset {shown(name)}: choose one of {', '.join(presets)}")
        return replace(presets[name], cls.SECTION, **overrides)
