"""Per-strategy settings: one frozen, self-validating dataclass per strategy, from which the options
(CLI flags, `--opt`, lm-eval model args) and the results-file config are derived."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from decodesearch.engine import GREEDY, Sampler, Stop
from decodesearch.options import options_of
from decodesearch.strategies import IDS, RAIN, STRATEGIES, BeamSearch, BestOfN, BudgetForcing, Greedy
from decodesearch.strategies.base import PromptFormat, StrategySettings


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_has_a_frozen_settings_dataclass(name):
    cls = STRATEGIES[name]
    settings_class = cls.settings_class
    assert dataclasses.is_dataclass(settings_class) and issubclass(settings_class, StrategySettings)
    assert settings_class.__dataclass_params__.frozen
    hints = typing.get_type_hints(settings_class)
    assert all(f.name in hints for f in dataclasses.fields(settings_class))  # every field typed
    strategy = cls()
    assert type(strategy.settings) is settings_class
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.settings.max_tokens = 3
    # the options are exactly the fields: nothing read from constructor signatures
    assert list(options_of(cls)) == [f.name for f in dataclasses.fields(settings_class)]
    # a setting reads through the strategy (except runtime objects built from a spec)
    built = {"step_scorer", "scorer"} if cls is BestOfN or issubclass(cls, BeamSearch) else set()
    built |= {"evaluator"} if cls is RAIN else set()
    for f in dataclasses.fields(settings_class):
        if f.name not in built:
            assert getattr(strategy, f.name) is getattr(strategy.settings, f.name)


def test_cli_flags_are_the_settings_fields():
    from decodesearch.cli import OWN_FLAGS, strategy_flags

    flags = strategy_flags()
    for name, cls in STRATEGIES.items():
        settable = {k for k, o in options_of(cls).items() if o.settable} - set(OWN_FLAGS)
        assert settable == {flag for flag, takers in flags.items() if name in takers}
        assert settable <= cls.settings_class.names()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("sampling", {"n": 0}, r"^n=0 is out of range; accepted: an int >= 1$"),
        ("greedy", {"n": 2}, r"^n=2 is out of range; accepted: 1"),
        ("self_consistency", {"max_tokens": -1}, r"^max_tokens=-1 is out of range; accepted: an int >= 1$"),
        ("best_of_n", {"aggregate": "mean"}, r"^aggregate='mean' is not accepted; choose one of last"),
        ("budget_forcing", {"num_ignore": -1}, r"^num_ignore=-1 is out of range; accepted: an int >= 0$"),
        ("ids", {"gamma": 1.0}, r"^gamma=1.0 is out of range; accepted: a number > 1$"),
        ("ids", {"b0": 9, "max_tokens": 8}, r"^b0=9 is out of range; accepted: 1..max_tokens \(8\)$"),
        ("rain", {"c_puct": -1.0}, r"^c_puct=-1.0 is out of range; accepted: \[0.0, inf\]$"),
        ("beam_search", {"n": 6}, r"^n=6 is out of range; accepted: a multiple of beam_width \(4\)$"),
        ("dvts", {"max_steps": 0}, r"^max_steps=0 is out of range; accepted: an int >= 1$"),
        ("sampling", {"seed": "x"}, r"^seed='x' is out of range; accepted: an int or None$"),
        ("sampling", {"sampler": "hot"}, r"^sampler='hot' is not accepted; expected a decodesearch"),
    ],
)
def test_a_bad_value_names_the_parameter_and_what_is_accepted(name, options, message):
    cls = STRATEGIES[name]
    with pytest.raises(ValueError, match=message):
        cls(**options)
    with pytest.raises(ValueError, match=message):  # the dataclass validates itself
        cls.settings_class(**options)


def test_constructors_take_the_same_keywords_and_fill_defaults():
    ids = IDS(n=4, b0=64)
    assert (ids.n, ids.b0, ids.max_tokens, ids.boundaries) == (4, 64, 1024, [64, 128, 256, 512])
    assert IDS(max_tokens=40).b0 == 10  # b0=None: a quarter of the budget
    assert IDS(trigger_preset="wait").settings.triggers == ["\n\nWait"]
    assert BudgetForcing(max_thinking_tokens=100).max_tokens == 132  # thinking + answer
    assert Greedy().sampler == GREEDY and BudgetForcing().sampler == GREEDY
    assert Greedy(sampler=None).sampler == GREEDY  # None: the strategy's default
    assert RAIN().prompt_format == PromptFormat(instruction=None) and IDS().prompt_format == PromptFormat()
    beam = BeamSearch(scorer="logprob")
    assert beam.settings.scorer == "logprob" and beam.scorer is not None and not isinstance(beam.scorer, str)
    with pytest.raises(TypeError, match="IDS.*'bogus'"):
        IDS(bogus=1)


def test_assigning_a_setting_replaces_the_settings_by_a_validated_copy():
    ids = IDS(n=2, b0=16, max_tokens=128)
    before = ids.settings
    ids.max_tokens = 40
    assert ids.settings is not before and before.max_tokens == 128  # the old settings are untouched
    assert (ids.max_tokens, ids.b0, ids.boundaries) == (40, 16, [16, 32])
    ids.max_tokens = 10  # below b0: b0 follows
    assert (ids.b0, ids.boundaries) == (10, [])
    with pytest.raises(ValueError, match="n=0 is out of range"):
        ids.n = 0
    assert ids.n == 2


def test_the_results_config_is_the_settings():
    from decodesearch.cli import bench_config, build_parser, build_strategy, strategy_options

    args = build_parser().parse_args(["bench", "--strategy", "ids", "--n", "2", "--b0", "8", "--max-tokens", "64",
                                      "--temperature", "0.5", "--dataset", "arith", "--out", "x.jsonl"])
    strategy = build_strategy(args.strategy, strategy_options(args))
    config = bench_config(args, strategy)
    settings = config["settings"]
    assert settings == strategy.settings.as_config() and json.loads(json.dumps(settings)) == settings
    assert list(settings) == [f.name for f in dataclasses.fields(strategy.settings)]
    assert (settings["n"], settings["b0"], settings["max_tokens"], settings["seed"]) == (2, 8, 64, 0)
    assert settings["sampler"] == dataclasses.asdict(Sampler(temperature=0.5))  # the CLI's sampler flags
    assert settings["gamma"] == 2.0 and settings["triggers"] == list(strategy.triggers)
    # the same settings rebuild the same strategy
    again = IDS(**{f.name: getattr(strategy.settings, f.name) for f in dataclasses.fields(strategy.settings)})
    assert again.settings == strategy.settings


def test_as_config_writes_objects_by_name():
    def verifier(text: str) -> float:
        return 0.0

    config = BestOfN(scorer=verifier, stop=Stop(eos_ids=frozenset({3, 1}), strings=("\n",))).settings.as_config()
    assert config["scorer"].endswith("verifier") and config["stop"]["eos_ids"] == [1, 3]
    assert config["stop"]["strings"] == ["\n"]
    json.dumps(config)


def test_capped_ids_copy_keeps_its_triggers_below_the_new_budget():
    from decodesearch.integrations.hf import capped

    ids = IDS(n=2, b0=64, gamma=2.0, max_tokens=512)
    short, tiny = capped(ids, 100), capped(ids, 40)
    assert (ids.max_tokens, ids.b0, list(ids.boundaries)) == (512, 64, [64, 128, 256])  # the original is intact
    assert (short.max_tokens, short.b0, list(short.boundaries)) == (100, 64, [64])
    assert (tiny.b0, list(tiny.boundaries)) == (40, [])


def test_assigning_a_spec_setting_rebuilds_what_is_derived_from_it():
    beam = BeamSearch(n=4, beam_width=2, scorer="logprob")
    first = beam.scorer
    beam.max_steps = 3  # not the scorer's spec: the same scorer object stays
    assert beam.scorer is first
    beam.delimiter = "\n"
    assert beam.scorer is not first and beam.settings.delimiter == "\n"
    ids = IDS(n=2, b0=32, max_tokens=256)
    ids.b0 = 16
    assert list(ids.boundaries) == [16, 32, 64, 128]
    rain = RAIN(evaluator="harmless")
    judge = rain.evaluator
    rain.evaluator = "truthful_yes_no"
    assert rain.evaluator is not judge and rain.context_format == rain.evaluator.context_format
