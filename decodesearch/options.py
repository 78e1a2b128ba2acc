"""One options layer: what a strategy can be given as text, and one parser for it.

A strategy's options are the fields of its settings dataclass (`Strategy.settings_class`, see
`decodesearch.strategies.base`), typed by their hints (`typing.get_type_hints`); a field hinted
`Any` with a text default (a spec such as ``scorer="self_judge"``) takes text. Any other dataclass
(e.g. `Sampler`) has options the same way. `options_of(cls)` gives them as `Option`s;
`parse(option, value)` turns a text (a CLI flag, `--opt KEY=VALUE`, an lm-eval model arg) or an
already-typed value into the option's type, or raises one error format:
``"{name}={value!r} is not accepted; expected {what}"``. Ranges and choices are then checked by the
settings' `__post_init__` (``"{name}=... is out of range; accepted: ..."``). The CLI flags, `--opt`
and lm-eval's model args come from here; results headers record `settings.as_config()`.

Text forms: bool ``true/false/1/0/yes/no``; a list or tuple ``a|b|c``; ``\\n`` and ``\\t`` in a
string become a newline and a tab (lm-eval splits model args on commas and shells make newlines
awkward, so texts such as triggers are written this way).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import abc
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "options_of", "parse", "parse_options"]

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One option: its name, its type (`kind`: bool, int, float or str, or a list or
    tuple of one of them; None when it cannot be given as text: objects, callables), whether None
    is accepted, and its default."""

    name: str
    kind: type | None
    container: type | None
    optional: bool
    default: Any

    @property
    def settable(self) -> bool:
        return self.kind is not None

    def describe(self) -> str:
        if self.kind is None:
            return "an object (from Python only)"
        what = self.kind.__name__ if self.container is None else f"|-separated {self.kind.__name__}s"
        return what + (" or none" if self.optional else "")


def _from_hint(hint: Any) -> tuple[type | None, type | None, bool]:
    """(kind, container, optional) of a resolved type hint."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return None, None, optional
        hint, origin = args[0], typing.get_origin(args[0])
    if hint in _SCALARS:
        return hint, None, optional
    if origin in (list, tuple, abc.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(set(args)) == 1 and args[0] in _SCALARS:
            return args[0], (tuple if origin is tuple else list), optional
    return None, None, optional


def options_of(cls: type) -> dict[str, Option]:
    """The options of a strategy class (its `settings_class`'s fields) or of a dataclass, by name,
    in field order (see the module docstring)."""
    target = getattr(cls, "settings_class", cls)
    if not dataclasses.is_dataclass(target):
        raise TypeError(f"{cls!r} is neither a strategy class nor a dataclass")
    hints = typing.get_type_hints(target)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(target):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, container, optional = _from_hint(hints[f.name])
        if kind is None and type(default) in _SCALARS:
            kind = type(default)  # e.g. `scorer: Any = "self_judge"`: settable as text
        out[f.name] = Option(f.name, kind, container, optional or default is None, default)
    return out


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _scalar(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ValueError
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return value if isinstance(value, int) else int(str(value).strip())
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    return _unescape(value) if isinstance(value, str) else str(value)


def parse(option: Option, value: Any) -> Any:
    """`value` (a text, or a value already typed) as `option`'s type. Raises ValueError
    ``"{name}={value!r} is not accepted; expected {what}"``."""
    if not option.settable:
        raise ValueError(f"{option.name} cannot be given as text ({option.describe()})")
    if value is None or (option.optional and isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    what = option.describe()
    try:
        if option.container is None:
            return _scalar(value, option.kind)
        if isinstance(value, str):
            items = [v for v in value.split("|") if v != ""]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return option.container(_scalar(v, option.kind) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{option.name}={value!r} is not accepted; expected {what}") from None


def parse_options(cls: type, values: dict[str, Any], *, owner: str) -> dict[str, Any]:
    """Each of `values` parsed as `cls`'s option of that name. An unknown or unsettable name raises
    ValueError naming it, `owner` (e.g. "strategy 'ids'") and the options that exist."""
    options = options_of(cls)
    out = {}
    for name, value in values.items():
        option = options.get(name)
        if option is None or not option.settable:
            settable = ", ".join(sorted(k for k, o in options.items() if o.settable))
            why = "cannot be given as text" if option is not None else "is not an option"
            raise ValueError(f"{name!r} {why} of {owner}; its options: {settable}")
        out[name] = parse(option, value)
    return out
