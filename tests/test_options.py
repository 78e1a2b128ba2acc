"""The options layer: options read from constructor signatures and type hints, one parser."""

from __future__ import annotations

from typing import Callable, Sequence

import pytest

from decodesearch.options import Option, options_of, parse, parse_options


class _Base:
    def __init__(self, *, max_tokens: int = 8, seed: int | None = None, hook: Callable | None = None):
        pass


class _Thing(_Base):
    def __init__(self, n: int = 4, gamma: float = 2.0, words: Sequence[str] = ("a",), sizes: tuple[int, ...] = (1, 2),
                 flag: bool = False, name: str | None = None, untyped="text", **kwargs):
        super().__init__(**kwargs)


def test_options_come_from_the_constructor_chain_and_its_hints():
    opts = options_of(_Thing)
    assert list(opts) == ["n", "gamma", "words", "sizes", "flag", "name", "untyped", "max_tokens", "seed", "hook"]
    assert (opts["n"].kind, opts["gamma"].kind, opts["flag"].kind) == (int, float, bool)
    assert (opts["words"].kind, opts["words"].container) == (str, list)
    assert (opts["sizes"].kind, opts["sizes"].container) == (int, tuple)
    assert opts["name"].optional and opts["seed"].optional and opts["seed"].kind is int
    assert opts["untyped"].kind is str  # no annotation: typed by its default
    assert not opts["hook"].settable


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
