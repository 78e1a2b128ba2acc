"""The options layer: options read from settings dataclass fields and their type hints, one parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pytest

from decodesearch.options import Option, options_of, parse, parse_options


@dataclass(frozen=True)
class _Base:
    max_tokens: int = 8
    seed: int | None = None
    hook: Callable | None = None


@dataclass(frozen=True)
class _Settings(_Base):
    n: int = 4
    gamma: float = 2.0
    words: Sequence[str] = ("a",)
    sizes: tuple[int, ...] = (1, 2)
    flag: bool = False
    name: str | None = None
    spec: Any = "text"
    tags: list[str] = field(default_factory=lambda: ["x"])


class _Thing:
    settings_class = _Settings


def test_options_come_from_the_settings_fields_and_their_hints():
    opts = options_of(_Thing)
    assert opts == options_of(_Settings)
    assert list(opts) == ["max_tokens", "seed", "hook", "n", "gamma", "words", "sizes", "flag", "name", "spec", "tags"]
    assert (opts["n"].kind, opts["gamma"].kind, opts["flag"].kind) == (int, float, bool)
    assert (opts["words"].kind, opts["words"].container) == (str, list)
    assert (opts["sizes"].kind, opts["sizes"].container) == (int, tuple)
    assert opts["name"].optional and opts["seed"].optional and opts["seed"].kind is int
    assert opts["spec"].kind is str  # `Any` with a text default: settable as text
    assert opts["tags"].default == ["x"]  # a default_factory's value
    assert not opts["hook"].settable
    with pytest.raises(TypeError, match="neither a strategy class nor a dataclass"):
        options_of(int)


INT, FLOAT, BOOL, STR = (Option("opt", k, None, False, None) for k in (int, float, bool, str))
TUPLE_STR, TUPLE_INT = Option("opt", str, tuple, False, None), Option("opt", int, tuple, False, None)
LIST_STR, TUPLE_FLOAT = Option("opt", str, list, False, None), Option("opt", float, tuple, False, None)


@pytest.mark.parametrize(
    "value, option, expected",
    [
        ("4", INT, 4), (4, INT, 4), (2.0, INT, 2), ("2", FLOAT, 2.0), (2, FLOAT, 2.0),
        ("true", BOOL, True), (False, BOOL, False), ("0", BOOL, False), (1, STR, "1"),
        ("a\\nb", STR, "a\nb"), ("x|y", TUPLE_STR, ("x", "y")), ("1|2|4", TUPLE_INT, (1, 2, 4)),
        (-1, TUPLE_FLOAT, (-1.0,)), ("Wait", LIST_STR, ["Wait"]), (None, INT, None),
    ],
)
def test_parse(value, option, expected):
    got = parse(option, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, option", [("x", INT), (True, INT), (2.5, INT), ("maybe", BOOL), ("x", FLOAT),
                                           ("1|x", TUPLE_INT)])
def test_parse_rejects_naming_the_option_and_the_type(value, option):
    with pytest.raises(ValueError, match=r"^opt=.* is not accepted; expected "):
        parse(option, value)


def test_parse_options_names_unknown_and_unsettable_options():
    assert parse_options(_Thing, {"n": "3", "name": "none"}, owner="thing") == {"n": 3, "name": None}
    with pytest.raises(ValueError, match=r"'bogus' is not an option of thing; its options: flag, gamma, max_tokens"):
        parse_options(_Thing, {"bogus": "1"}, owner="thing")
    with pytest.raises(ValueError, match="'hook' cannot be given as text of thing"):
        parse_options(_Thing, {"hook": "x"}, owner="thing")
