"""Strategies on tiny random models: schedules, policies, aggregation, seeds, zero recompute, APIs."""

import copy

import pytest
import torch

from conftest import ByteTokenizer, tiny_model
from decodesearch import custom_generate, generate
from decodesearch.engine import Engine, Sampler, Stop
from decodesearch.strategies import (
    IDS, BestOfN, BudgetForcing, PromptFormat, Sample, Sampling, SelfConsistency, make_strategy,
)
from decodesearch.strategies.ids import DEFAULT_TRIGGERS, budget_boundaries, segment_boundaries
from decodesearch.strategies.independent_samples import vote
from decodesearch.strategies.trace import AnswerEvent, CommitEvent, Event, ForkEvent, TriggerEvent

PLAIN = PromptFormat(instruction=None, chat=False)
NO_EOS = Stop(eos_ids=())


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), ByteTokenizer()


def test_segment_boundaries_are_geometric():
    assert segment_boundaries(128, 2.0, 1024) == [128, 384, 896]
    assert segment_boundaries(4, 1.5, 30) == [4, 10, 19]  # 4, +6, +9, (+13.5 -> 14 would pass 30)
    assert segment_boundaries(10, 2.0, 10) == []
    # The paper's reading: cumulative budgets b0 * gamma^k (the default schedule).
    assert budget_boundaries(128, 2.0, 1024) == [128, 256, 512]
    assert budget_boundaries(4, 1.5, 30) == [4, 6, 9, 14, 20]
    assert budget_boundaries(1, 1.2, 5) == [1, 2, 3, 4]  # rounding never repeats a boundary
    assert IDS(max_tokens=64).b0 == 16 and IDS().b0 == 128  # a default b0 adapts to a short budget


@pytest.mark.parametrize("schedule, positions", [("budget", [4, 8, 16]), ("segments", [4, 12])])
def test_ids_triggers_follow_schedule_and_nothing_is_forwarded_twice(llama, schedule, positions):
    model, tok = llama
    engine = Engine(model, tok)
    ids = IDS(n=3, b0=4, gamma=2.0, max_tokens=20, stop=NO_EOS, prompt_format=PLAIN, seed=1, schedule=schedule)
    res = ids.run(engine, ["What is 2+3?"])[0]
    prompt_len = len(tok.encode("What is 2+3?"))
    triggers = [e for e in res.trace if e.event == "trigger"]
    trigger_len = len(tok.encode(DEFAULT_TRIGGERS[0]))
    for i in range(3):
        assert [e.position for e in triggers if e.sample == i] == positions
        assert res.samples[i].tokens_generated == 20
        assert res.samples[i].tokens_forced == len(positions) * trigger_len
        assert len(res.samples[i].answers_before_triggers) == len(positions)
    trig_tokens = sum(len(tok.encode(e.trigger)) for e in triggers)
    # One prefill of the prompt, then each sampled or trigger token exactly once.
    assert res.tokens_forwarded == prompt_len + 3 * 20 + trig_tokens
    assert res.tokens_generated == 60
    assert engine.live_branches == []  # everything released


def test_ids_count_triggers_spends_the_budget_on_trigger_tokens_too(llama):
    model, tok = llama
    trigger = "\nW\n"  # 3 tokens of the byte tokenizer
    ids = IDS(n=2, b0=4, gamma=2.0, max_tokens=20, stop=NO_EOS, prompt_format=PLAIN, seed=1, triggers=[trigger],
              count_triggers=True)
    res = ids.run(Engine(model, tok), ["Q"])[0]
    for s in res.samples:
        assert s.tokens_generated + s.tokens_forced == 20
        # boundaries 4, 8, 16 on sampled + forced tokens: 4 sampled, +3 forced, 1 sampled, +3, 5 sampled, +3, 1
        assert s.tokens_forced == 9 and s.tokens_generated == 11


class _SpaceTokenizer(ByteTokenizer):
    """Id 1 (every character below "!") decodes to a space, so texts with spaces round-trip."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(" " if i == 1 else chr(32 + i) for i in ids if not (skip_special_tokens and i == 0))


def test_ids_answers_never_come_from_triggers(llama):
    """A trigger that states an answer ("the final answer is 42") is never an answer: not the
    final one, not one before a trigger (the model stated none), not a vote."""
    model, _ = llama
    tok = _SpaceTokenizer()
    leaky = " make sure the final answer is 42. "
    ids = IDS(n=2, b0=3, gamma=2.0, max_tokens=12, stop=NO_EOS, prompt_format=PLAIN, seed=1, triggers=[leaky])
    res = ids.run(Engine(model, tok), ["Q"])[0]
    assert leaky.strip() in res.samples[0].text  # the trigger went in
    from decodesearch.scoring.answers import extract_answer

    assert extract_answer(res.samples[0].text) == "42"  # what reading the whole text would give
    for s in res.samples:
        assert s.answer not in ("correct", "correct 42", "42")
        assert all(a is None for a in s.answers_before_triggers)
    assert res.answer not in ("correct", "correct 42", "42")


def test_explicit_answers_before_a_trigger(llama):
    from decodesearch.scoring.answers import extract_answer

    assert extract_answer("so 3 + 4 = 7", explicit=True) is None
    assert extract_answer("so 3 + 4 = 7") == "7"
    assert extract_answer("thus \\boxed{7} and more 9", explicit=True) == "7"
    assert extract_answer("The final answer is 7.", explicit=True) == "7"


class _LinesTokenizer(ByteTokenizer):
    """Ids 1..12 decode to a newline, so lines end often in random text."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("\n" if 1 <= i <= 12 else chr(32 + i) for i in ids if not (skip_special_tokens and i == 0))


def test_ids_line_alignment_never_splits_a_line(llama):
    model, _ = llama
    tok = _LinesTokenizer()
    ids = IDS(n=6, b0=3, gamma=2.0, max_tokens=40, stop=NO_EOS, prompt_format=PLAIN, seed=2, align="line",
              align_max_tokens=4, triggers=["W"], sampler=Sampler(temperature=1.5))
    res = ids.run(Engine(model, tok), ["Q"])[0]
    triggers = [e for e in res.trace if e.event == "trigger"]
    assert triggers
    ended_at_newline = 0
    for i, s in enumerate(res.samples):
        mine = [e.position for e in triggers if e.sample == i]
        for k, pos in enumerate(mine):
            boundary = ids._next_stop(mine[k - 1] if k else 0)
            assert boundary <= pos <= boundary + 4  # at most align_max_tokens extra, counted as sampled
            own = s.token_ids[: pos + k]  # k one-token triggers precede this one
            if pos < boundary + 4:
                assert tok.decode(own).endswith("\n")  # stopped early only at a line end
                ended_at_newline += 1
    assert ended_at_newline > 0

def test_ids_options_and_presets():
    with pytest.raises(ValueError, match="align="):
        IDS(align="word")
    with pytest.raises(ValueError, match="trigger_preset="):
        IDS(trigger_preset="nope")
    assert IDS(trigger_preset="wait").triggers == ["\n\nWait"]
    with pytest.raises(ValueError, match="not both"):
        IDS(trigger_preset="wait", triggers=["x"])


def test_ids_policies_on_early_finish(llama):
    model, tok = llama
    probe = Engine(model, tok)
    greedy = probe.decode([probe.prefill(tok.encode("Q"))], 12, stop=NO_EOS)[0]
    cut = max(j for j in range(2, 12) if greedy[j] not in greedy[:j])
    stop = Stop(eos_ids={greedy[cut]})
    common = dict(n=1, b0=50, max_tokens=60, stop=stop, prompt_format=PLAIN, sampler=Sampler(temperature=0.0))
    accepted = IDS(policy="accept", **common).run(Engine(model, tok), ["Q"])[0]
    assert accepted.samples[0].tokens_generated == cut
    assert not [e for e in accepted.trace if e.event == "trigger"]
    forced = IDS(policy="force", **common).run(Engine(model, tok), ["Q"])[0]
    first = [e for e in forced.trace if e.event == "trigger"][0]
    assert first.reason == "early_stop" and first.position == cut
    assert forced.samples[0].tokens_generated > cut
    trigger = tok.decode(tok.encode(DEFAULT_TRIGGERS[0]))
    assert forced.samples[0].text.startswith(tok.decode(greedy[:cut]) + trigger)


def test_vote_and_best_of_n_aggregation(llama):
    mk = lambda a: Sample(text=f"\\boxed{{{a}}}", answer=a, tokens_generated=1)
    assert vote([mk("1"), mk("2"), mk("2"), mk("1"), mk("3")]) == 0  # a 2:2 tie goes to the earliest group
    assert vote([mk("1"), mk("2"), mk("2")]) == 1
    assert vote([Sample(text="", answer=None, tokens_generated=0)] * 2) == 0
    model, tok = llama
    res = BestOfN(n=4, scorer=len, max_tokens=10, prompt_format=PLAIN, seed=3).run(Engine(model, tok), ["hi"])[0]
    assert res.text == max((s.text for s in res.samples), key=len)
    assert [e.event for e in res.trace].count("score") == 4
    sc = SelfConsistency(n=5, max_tokens=10, prompt_format=PLAIN, seed=3).run(Engine(model, tok), ["hi"])[0]
    assert sc.text == sc.samples[vote(sc.samples)].text


@pytest.mark.parametrize("make", [
    lambda seed: Sampling(n=3, max_tokens=12, prompt_format=PLAIN, seed=seed),
    lambda seed: IDS(n=3, b0=3, max_tokens=12, prompt_format=PLAIN, seed=seed, trigger_order="random"),
], ids=["sampling", "ids"])
def test_determinism_by_seed(llama, make):
    model, tok = llama
    run = lambda seed: [s.text for s in make(seed).run(Engine(model, tok), ["abc"])[0].samples]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_budget_forcing_suppresses_the_first_end(llama):
    model, tok = llama
    probe = Engine(model, tok)
    greedy = probe.decode([probe.prefill(tok.encode("Q"))], 12, stop=NO_EOS)[0]
    cut = max(j for j in range(2, 12) if greedy[j] not in greedy[:j])
    bf = BudgetForcing(max_thinking_tokens=40, num_ignore=1, ignore="Wait", max_answer_tokens=5,
                       stop=Stop(eos_ids={greedy[cut]}), prompt_format=PLAIN)
    res = bf.run(Engine(model, tok), ["Q"])[0]
    trig = [e for e in res.trace if e.event == "trigger"]
    assert len(trig) == 1 and trig[0].position == cut
    assert res.text.startswith(tok.decode(greedy[:cut]) + "Wait")
    assert tok.decode(tok.encode("Final Answer: \\boxed{")) in res.text


def test_generate_api_and_hf_custom_generate(llama):
    model, tok = llama
    results = generate(model, tok, ["hello", "abc"], strategy="greedy", max_tokens=8, prompt_format=PLAIN)
    assert len(results) == 2 and all(r.tokens_generated <= 8 for r in results)
    # HF route: left-padded batch, sequences = input + the chosen tokens.
    rows = [tok.encode("hello"), tok.encode("abc")]
    width = max(map(len, rows))
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    seqs = model.generate(input_ids=input_ids, attention_mask=mask,
                          custom_generate=custom_generate("greedy", tok, max_tokens=8, prompt_format=PLAIN))
    for i, r in enumerate(results):
        assert seqs[i, :width].tolist() == input_ids[i].tolist()
        assert seqs[i, width: width + len(r.token_ids)].tolist() == r.token_ids
    out = model.generate(input_ids=input_ids, attention_mask=mask, return_dict_in_generate=True,
                         custom_generate=custom_generate(IDS(n=2, b0=2, max_tokens=6, prompt_format=PLAIN), tok))
    assert out.sequences.shape[0] == 2 and len(out.results) == 2
    assert any(e.event == "trigger" for e in out.results[0].trace)
    # a passed engine is reused across generate calls (and must be over the same model)
    engine = Engine(model, tok)
    forwarded = []
    for _ in range(2):
        again = model.generate(input_ids=input_ids, attention_mask=mask,
                               custom_generate=custom_generate("greedy", tok, engine=engine, max_tokens=8, prompt_format=PLAIN))
        assert torch.equal(again, seqs)
        forwarded.append(engine.stats.tokens_forwarded)
    assert forwarded[0] > 0 and forwarded[1] == 2 * forwarded[0]
    assert engine.stats.peak_rows == 4  # both rows of the batch searched at once (root + sample each)
    with pytest.raises(ValueError, match="another model"):
        model.generate(input_ids=input_ids, attention_mask=mask,
                       custom_generate=custom_generate("greedy", tok, engine=Engine(copy.deepcopy(model), tok), max_tokens=8))


def test_bad_input():
    for kwargs, name in [(dict(n=0), "n="), (dict(gamma=1.0), "gamma="), (dict(b0=600, max_tokens=512), "b0="),
                         (dict(triggers=[]), "triggers"), (dict(policy="x"), "policy="),
                         (dict(aggregate="x"), "aggregate=")]:
        with pytest.raises(ValueError, match=name):
            IDS(**kwargs)
    with pytest.raises(ValueError, match="n="):
        Sampling(n=0)
    with pytest.raises(ValueError, match="unknown strategy 'beam'.*greedy"):
        make_strategy("beam")
    with pytest.raises(ValueError, match="min_thinking_tokens="):
        BudgetForcing(min_thinking_tokens=10, max_thinking_tokens=5)


@pytest.mark.parametrize("name,opts", [
    ("greedy", {}),
    ("sampling", {"n": 2}),
    ("best_of_n", {"n": 2}),
    ("self_consistency", {"n": 3}),
    ("budget_forcing", {"max_thinking_tokens": 24, "max_answer_tokens": 8}),
    ("ids", {"n": 2, "b0": 8}),
])
def test_smollm2_end_to_end(smollm2, name, opts):
    model, tok = smollm2
    engine = Engine(model, tok)
    strategy = make_strategy(name, max_tokens=24, seed=0, **opts) if name != "budget_forcing" \
        else make_strategy(name, seed=0, **opts)
    prompt = "What is 12 + 30?"
    res = strategy.run(engine, [prompt])[0]
    assert res.strategy == name and res.text.strip() and res.wall_s > 0
    assert res.text == tok.decode(res.token_ids, skip_special_tokens=True)
    prompt_len = len(strategy.prompt_format.encode(tok, prompt))
    new_tokens = sum(len(s.token_ids) for s in res.samples)
    if name == "budget_forcing":  # a rewound end-of-thinking string was forwarded once, then dropped
        assert res.tokens_forwarded >= prompt_len + new_tokens
        assert "Wait" in res.text or res.samples[0].tokens_generated >= 24
    else:
        assert res.tokens_forwarded == prompt_len + new_tokens  # one prefill; every other token once
    if name == "ids":
        assert [e.position for e in res.trace if e.event == "trigger" and e.sample == 0][:1] in ([], [8])
    assert engine.live_branches == []


@pytest.mark.parametrize("make", [
    lambda: IDS(n=2, b0=4, max_tokens=64, policy="force", stop=NO_EOS, prompt_format=PLAIN, seed=0),
    lambda: BudgetForcing(max_thinking_tokens=60, max_answer_tokens=8, num_ignore=3, ignore="Wait",
                          stop=Stop(eos_ids=(5, 6, 7)), prompt_format=PLAIN, seed=0),
], ids=["ids", "budget_forcing"])
def test_near_the_context_limit_stops_with_reason_context(llama, make):
    """Prompts a few tokens short of max_position_embeddings (256): every search ends, none raises, and a
    sample cut by the limit says so (stop reason "context"); the engine stays usable."""
    model, tok = llama
    engine = Engine(model, tok)
    strat = make()
    prompts = ["y" * k for k in (150, 200, 215, 225, 232, 240, 250, 254)]
    results = strat.run(engine, prompts)
    for p, r in zip(prompts, results):
        assert all(s.stop_reason in ("eos", "stop_string", "length", "context") for s in r.samples)
        assert len(p) + max(len(s.token_ids) for s in r.samples) <= 256
    assert all(s.stop_reason == "context" for r in results[-3:] for s in r.samples)
    assert not engine.live_branches


def test_hf_custom_generate_caps_by_max_new_tokens_and_warns_on_sampling_settings(llama):
    """`generate(max_new_tokens=...)` caps the strategy's budget; a sampling setting the strategy
    overrides is named in a warning (no warning when none is given)."""
    model, tok = llama
    ids = torch.tensor([tok.encode("a prompt of some length")])
    with pytest.warns(UserWarning, match=r"'temperature': 0.3.*not used"):
        out = model.generate(input_ids=ids, max_new_tokens=5, temperature=0.3, do_sample=True,
                             return_dict_in_generate=True,
                             custom_generate=custom_generate("sampling", tok, n=2, max_tokens=40, stop=NO_EOS,
                                                             prompt_format=PLAIN))
    assert [s.tokens_generated for s in out.results[0].samples] == [5, 5]
    assert out.sequences.shape[1] == ids.shape[1] + 5
    ids_strategy = IDS(n=2, b0=2, max_tokens=40, stop=NO_EOS, prompt_format=PLAIN)
    out = model.generate(input_ids=ids, max_new_tokens=7, return_dict_in_generate=True,
                         custom_generate=custom_generate(ids_strategy, tok))
    res = out.results[0]
    assert [s.tokens_generated for s in res.samples] == [7, 7]
    assert sorted({e.position for e in res.trace if e.event == "trigger"}) == [2, 4]
    assert ids_strategy.max_tokens == 40  # the caller's strategy is not changed
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="decodesearch")
        model.generate(input_ids=ids, max_new_tokens=3, custom_generate=custom_generate("greedy", tok, prompt_format=PLAIN))


# ------------------------------------------------------------------ IDS on reasoning models (<think> ... </think>)

class _ThinkTokenizer(ByteTokenizer):
    """ByteTokenizer in which id `open_id` is the one token `<think>` and id `close_id` the one
    token `</think>` (both encode from and decode to their tags), as in a reasoning model's vocabulary."""

    def __init__(self, open_id: int = 127, close_id: int = 126):
        self.open_id, self.close_id = open_id, close_id

    def encode(self, text, add_special_tokens=False):
        import re

        out = []
        for part in re.split(r"(</?think>)", text):
            if part in ("<think>", "</think>"):
                out.append(self.open_id if part == "<think>" else self.close_id)
            elif part:
                out.extend(super().encode(part))
        return out

    def decode(self, ids, skip_special_tokens=True):
        tags = {self.open_id: "<think>", self.close_id: "</think>"}
        return "".join(tags[i] if i in tags else super(_ThinkTokenizer, self).decode([i], skip_special_tokens)
                       for i in ids)


def _think_greedy(model, prompt="<think>Q", avoid=("W",)):
    """A tokenizer whose `</think>` is the token the tiny model greedily writes first at position
    `cut` (>= 4) after `prompt`, the greedy tokens, and `cut`."""
    tok = _ThinkTokenizer()
    probe = Engine(model, tok)
    greedy = probe.decode([probe.prefill(tok.encode(prompt))], 40, stop=NO_EOS)[0]
    bad = {tok.open_id} | {tok.encode(a)[0] for a in avoid}
    cut = min(j for j in range(4, 40) if greedy[j] not in greedy[:j] and greedy[j] not in bad)
    return _ThinkTokenizer(close_id=greedy[cut]), list(greedy), cut


def test_ids_think_accept_puts_no_trigger_after_the_end_of_thinking(llama):
    """A sample that closes its thinking before its first boundary has finished thinking: it writes
    its answer and the boundaries it passes while answering get no trigger (without thinking tags,
    or with `think="off"`, or after a prompt that closed the span, they do)."""
    model, _ = llama
    tok, greedy, cut = _think_greedy(model)
    from decodesearch.strategies.ids import think_tag_ids

    assert think_tag_ids(tok) == (tok.open_id, tok.close_id) and think_tag_ids(ByteTokenizer()) is None
    common = dict(n=1, b0=cut + 3, gamma=2.0, max_tokens=40, stop=NO_EOS, prompt_format=PLAIN,
                  sampler=Sampler(temperature=0.0), triggers=["W"])
    res = IDS(**common).run(Engine(model, tok), ["<think>Q"])[0]
    s = res.samples[0]
    assert not [e for e in res.trace if e.event == "trigger"]
    assert s.token_ids == greedy[:40] and s.tokens_generated == 40 and s.tokens_forced == 0
    assert [e.position for e in res.trace if e.event == "think_end"] == [cut + 1]
    assert res.trace[0].think is True
    assert "</think>" in s.text and "W" not in s.text.split("</think>", 1)[1]
    # The same boundaries trigger after the tag when the span is not used.
    off = IDS(think="off", **common).run(Engine(model, tok), ["<think>Q"])[0]
    boundaries = IDS(**common).boundaries
    assert boundaries[0] == cut + 3 and len(boundaries) >= 2
    assert [e.position for e in off.trace if e.event == "trigger"] == boundaries
    closed = IDS(**common).run(Engine(model, tok), ["<think></think>Q"])[0]
    assert closed.trace[0].think is False
    assert [e.position for e in closed.trace if e.event == "trigger"] == boundaries


def test_ids_think_force_replaces_an_early_end_of_thinking(llama):
    """policy="force": an early `</think>` is dropped and replaced by the trigger (as s1 does), while
    a boundary is still ahead; a kept `</think>` is never followed by a trigger."""
    model, _ = llama
    tok, greedy, cut = _think_greedy(model)
    ids = IDS(n=1, b0=cut + 3, gamma=2.0, max_tokens=40, stop=NO_EOS, prompt_format=PLAIN,
              sampler=Sampler(temperature=0.0), triggers=["W"], policy="force")
    res = ids.run(Engine(model, tok), ["<think>Q"])[0]
    s = res.samples[0]
    triggers = [e for e in res.trace if e.event == "trigger"]
    assert triggers[0].reason == "think_end" and triggers[0].position == cut + 1
    assert s.token_ids[: cut + 1] == greedy[:cut] + tok.encode("W")  # the tag's place holds the trigger
    assert s.text.startswith(tok.decode(greedy[:cut]) + "W")
    replaced = sum(e.reason == "think_end" for e in triggers)
    # A dropped tag counts as sampled: it was generated (and forwarded once).
    assert s.tokens_generated == len(s.token_ids) - s.tokens_forced + replaced
    assert res.tokens_forwarded == 2 + len(s.token_ids) + replaced
    kept = [e.position for e in res.trace if e.event == "think_end"]
    for pos in kept:  # a kept </think>: no boundary ahead any more, and no trigger after it
        assert not any(p > pos for p in ids.boundaries) or any(
            t.position == pos - 1 for t in triggers)  # or it came right after a trigger
        assert not [t for t in triggers if t.position >= pos]
    for t in triggers[1:]:
        if t.reason == "think_end":
            assert any(p > t.position for p in ids.boundaries)


@pytest.mark.parametrize("align", ["none", "line"])
def test_ids_think_triggers_only_inside_the_thinking_span(llama, align):
    """Sampled samples that close their thinking at random points: every trigger of a sample lies
    before its `</think>`; the boundaries after it get none."""
    model, _ = llama
    tok = _ThinkTokenizer(close_id=46)  # a token this model often samples at temperature 1
    trigger = "WAIT"
    ids = IDS(n=8, b0=2, gamma=1.5, max_tokens=30, stop=NO_EOS, prompt_format=PLAIN, seed=3, align=align,
              align_max_tokens=2, triggers=[trigger], sampler=Sampler(temperature=1.0))
    res = ids.run(Engine(model, tok), ["<think>Q"])[0]
    closed_early = 0
    for i, s in enumerate(res.samples):
        ends = [e.position for e in res.trace if e.event == "think_end" and e.sample == i]
        mine = [e.position for e in res.trace if e.event == "trigger" and e.sample == i]
        if not ends:
            assert "</think>" not in s.text
            continue
        assert len(ends) == 1 and all(p < ends[0] for p in mine)
        thinking, answer = s.text.split("</think>", 1)
        assert trigger not in answer and thinking.count(trigger) == len(mine)
        if any(ends[0] < p < s.tokens_generated for p in ids.boundaries):
            closed_early += 1  # a boundary passed while answering: it got no trigger
    assert closed_early >= 2


def test_trace_events_are_typed_and_serialise_as_dicts(llama):
    """Each event names its kind; `as_dict()` is {"event": name, **fields}: optional fields left out
    while None, counters spread inline; `SearchResult.as_dict()` writes the trace that way."""
    assert ForkEvent(n=2).as_dict() == {"event": "fork", "n": 2}
    assert list(ForkEvent(n=2, beam_width=3).as_dict()) == ["event", "n", "beam_width"]
    trig = TriggerEvent(sample=1, position=4, reason="boundary", trigger="W", answer_before=None)
    assert trig.event == "trigger" and trig.as_dict()["answer_before"] is None  # a required None is written
    assert list(trig.as_dict()) == ["event", "sample", "position", "reason", "trigger", "answer_before"]
    assert AnswerEvent(answer=None, stop="eos").as_dict() == {"event": "answer", "answer": None, "stop": "eos"}
    commit = CommitEvent(commit=1, searches=2, root_visits=3, children=[], chosen=0, committed_tokens=[5],
                         committed_text="x", response_tokens=1, counters={"rewinds": 1}, tokens_forwarded=4,
                         forward_calls=2)
    assert list(commit.as_dict())[-3:] == ["rewinds", "tokens_forwarded", "forward_calls"]
    model, tok = llama
    res = IDS(n=2, b0=4, max_tokens=10, stop=NO_EOS, prompt_format=PLAIN, seed=0).run(Engine(model, tok), ["Q"])[0]
    assert all(isinstance(e, Event) for e in res.trace) and res.trace[0].event == "fork"
    assert res.as_dict()["trace"] == [e.as_dict() for e in res.trace]
