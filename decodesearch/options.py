"""One options layer: what a strategy can be given as text, and one parser for it.

A strategy's options are its constructor's keyword parameters (its own and its bases', nearest
wins; RAIN lists its `RainSettings` knobs in its signature), typed by their annotations
(`typing.get_type_hints`) or, without one, by their default. `options_of(cls)` gives them as
`Option`s; `parse(option, value)` turns a text (a CLI flag, `--opt KEY=VALUE`, an lm-eval model
arg) or an already-typed value into the option's type, or raises one error format:
``"{name}={value!r} is not accepted; expected {what}"``. Ranges and choices are then checked by the
strategy's constructor (``"{name}=... is out of range; accepted: ..."``). The CLI flags, `--opt`,
lm-eval's model args and the results-file config all come from here.

Text forms: bool ``true/false/1/0/yes/no``; a list or tuple ``a|b|c``; ``\\n`` and ``\\t`` in a
string become a newline and a tab (lm-eval splits model args on commas and shells make newlines
awkward, so texts such as triggers are written this way).
"""

from __future__ import annotations

import inspect
import sys
from collections import abc
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "options_of", "parse", "parse_options"]

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One constructor option: its name, its type (`kind`: bool, int, float or str, or a list or
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


def _from_default(default: Any) -> tuple[type | None, type | None, bool]:
    if type(default) in _SCALARS:
        return type(default), None, False
    if isinstance(default, (list, tuple)) and default:
        kinds = {type(x) for x in default}
        if kinds <= {int, float} and kinds:
            return (float if float in kinds else int), type(default), False
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            return kinds.pop(), type(default), False
    return None, None, default is None


def options_of(cls: type) -> dict[str, Option]:
    """The keyword options of `cls`'s constructor chain, by name (see the module docstring)."""
    out: dict[str, Option] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        module = sys.modules.get(klass.__module__)
        try:
            hints = typing.get_type_hints(init, globalns=vars(module) if module else None)
        except Exception:  # an annotation that does not resolve: fall back to the defaults
            hints = {}
        for name, p in inspect.signature(init).parameters.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in out:
                continue
            hint = hints.get(name, p.annotation)
            if isinstance(hint, str) and module is not None:
                try:
                    hint = eval(hint, vars(typing), dict(vars(module)))  # noqa: S307 (our own annotations)
                except Exception:
                    hint = inspect.Parameter.empty
            kind, container, optional = (_from_hint(hint) if hint is not inspect.Parameter.empty
                                         else _from_default(p.default))
            if kind is None and hint is not inspect.Parameter.empty and type(p.default) in _SCALARS:
                kind = type(p.default)  # e.g. `scorer: Any = "self_judge"`: settable as text
            default = None if p.default is inspect.Parameter.empty else p.default
            out[name] = Option(name, kind, container, optional or p.default is None, default)
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
