"""Verifier-guided step search: step splitting, scorers (log-prob, self-judge, both PRM conventions on
tiny models), weighted best-of-N, beam search pruning and forking, DVTS, zero re-encoding."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

from conftest import VOCAB, ByteTokenizer, tiny_model
from decodesearch.engine import Engine, Sampler
from decodesearch.engine.scheduler import run_one
from decodesearch.scoring.step_scorers import (
    LogProbScorer, PRMScorer, SelfJudgeScorer, aggregate, make_step_scorer, split_steps,
)
from decodesearch.strategies import DVTS, BeamSearch, BestOfN, PromptFormat, make_strategy
from decodesearch.strategies.base import Sample
from decodesearch.strategies.beam_search import Beam
from decodesearch.strategies.independent_samples import weighted_vote

PLAIN = PromptFormat(instruction=None, chat=False)


class LinesTokenizer(ByteTokenizer):
    """Ids 1..12 decode to a newline: a "\\n\\n" delimiter always spans two tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("\n" if 1 <= i <= 12 else chr(32 + i) for i in ids if not (skip_special_tokens and i == 0))


class LengthScorer:
    """A stand-in verifier: a step scores (len(step) % 7) / 7; counts its calls."""

    def __init__(self):
        self.calls = 0

    async def score_steps(self, engine, prompt, candidates):
        self.calls += 1
        return [[(len(s) % 7) / 7 for s in steps] for steps in candidates]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), LinesTokenizer()


def test_split_and_aggregate():
    assert split_steps("a\n\nb\n\n\n\nc\n\n") == ["a", "b", "c"]
    assert split_steps("one step") == ["one step"]
    assert aggregate([0.5, 0.2, 0.9], "last") == 0.9
    assert aggregate([0.5, 0.2, 0.9], "min") == 0.2
    assert aggregate([0.5, 0.2, 0.9], "prod") == pytest.approx(0.09)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregate="):
        aggregate([1.0], "mean")
    with pytest.raises(ValueError, match="scorer="):
        make_step_scorer("oracle")


def test_logprob_scorer():
    import asyncio

    out = asyncio.run(LogProbScorer().score_steps(None, "p", [["a", "b"]], logprobs=[[[-1.0, -3.0], [0.0]]]))
    assert out == [[pytest.approx(math.exp(-2.0)), pytest.approx(1.0)]]


def _tiny_cfg():
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=128, pad_token_id=0)


def test_prm_step_token_convention_matches_a_manual_forward():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_tiny_cfg())).eval()
    tok = ByteTokenizer()
    prm = PRMScorer(model, tok, convention="step_token", step_tag="|", good_token="+", bad_token="-")
    steps = [["x = 2", "so y = 4"], ["z"]]
    got = prm._score("Q?", steps)
    for cand, scores in zip(steps, got):
        ids, tags = prm.encode("Q?", cand)
        assert [ids[t] for t in tags] == [tok.encode("|")[0]] * len(cand)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        good, bad = tok.encode("+")[0], tok.encode("-")[0]
        want = torch.softmax(logits[tags][:, [good, bad]], -1)[:, 0]
        assert scores == pytest.approx(want.tolist(), abs=1e-5)
        assert all(0.0 <= s <= 1.0 for s in scores)


def test_prm_token_classification_convention_matches_a_manual_forward():
    torch.manual_seed(1)
    model = LlamaForTokenClassification(LlamaConfig(**_tiny_cfg(), num_labels=2)).eval()
    tok = ByteTokenizer()
    prm = PRMScorer(model, tok, convention="token_classification", step_tag="#")
    got = prm._score("Q?", [["a", "bb", "ccc"]])[0]
    ids, tags = prm.encode("Q?", ["a", "bb", "ccc"])
    with torch.no_grad():
        want = torch.softmax(model(torch.tensor([ids])).logits[0, tags], -1)[:, 1]
    assert got == pytest.approx(want.tolist(), abs=1e-5) and len(got) == 3
    with pytest.raises(ValueError, match="step_tag="):
        PRMScorer(model, tok, convention="token_classification", step_tag="##")
    with pytest.raises(ValueError, match="convention="):
        PRMScorer(model, tok, convention="value_head")


def test_self_judge_scorer_scores_every_prefix(llama):
    model, tok = llama
    engine = Engine(model, ByteTokenizer(), max_rows=16)
    from decodesearch.scoring.judge import SelfJudge

    # A short judge prompt (the tiny model's context is 256 tokens); the built-in one is `math_step`.
    judge = SelfJudge("Rate.\n{text}\nOk? (A) {first} (B) {second}\nAnswer: (", good="ok", bad="no",
                      context_format="P: {prompt} S: {response}")
    scorer = SelfJudgeScorer(judge)
    assert SelfJudgeScorer().judge.template.name == "math_step"
    scorer.prepare(engine)
    out = run_one(engine, lambda ctx: scorer.score_steps(ctx, "What is 1+1?", [["1+1=2", "so 2"], ["x"]]))
    assert [len(x) for x in out] == [2, 1] and all(s in (0.0, 0.5, 1.0) for x in out for s in x)
    assert scorer.judge.evaluations == 3  # "1+1=2", "1+1=2\n\nso 2", "x"
    scorer.release(engine)
    assert engine.live_branches == []


def test_beam_search_prunes_forks_and_never_reencodes(llama):
    model, tok = llama
    scorer = LengthScorer()
    bs = BeamSearch(n=6, beam_width=3, scorer=scorer, max_tokens=24, max_steps=4, prompt_format=PLAIN, seed=0,
                    sampler=Sampler(temperature=1.5))
    engine = Engine(model, tok)
    res = bs.run(engine, ["Q"])[0]
    steps = [e for e in res.trace if e.event == "step"]
    assert steps and all(e.kept <= 6 // 3 for e in steps)
    assert len(steps[0].scores) == 6  # all n beams scored in the first round
    for e in steps[1:]:
        assert len(e.scores) == 3 * steps[steps.index(e) - 1].kept  # each kept beam forked beam_width times
    assert scorer.calls == len(steps)
    # Zero re-encoding: the prompt once, then each sampled token once (EOS is never forwarded).
    assert res.tokens_forwarded == len(tok.encode("Q")) + res.tokens_generated
    assert res.samples and all(s.score is not None for s in res.samples)
    assert res.answer == res.samples[max(range(len(res.samples)), key=lambda i: (res.samples[i].score, -i))].answer
    assert engine.live_branches == []


def test_a_step_ends_at_a_delimiter_split_across_tokens(llama):
    from decodesearch.engine import Stop

    model, tok = llama
    engine = Engine(model, tok)
    kids = engine.fork(engine.prefill(tok.encode("Q"), seed=3), 8)
    outs = engine.decode(kids, 40, Sampler(temperature=1.5), Stop(strings=("\n\n",)))
    ended = [o for o, k in zip(outs, kids) if k.stop_reason == "stop_string"]
    assert ended
    for o in ended:
        text = tok.decode(o)
        assert text.endswith("\n\n") and "\n\n" not in text[:-2]  # stopped at its first delimiter


def test_dvts_keeps_one_beam_per_subtree(llama):
    dv = DVTS(n=6, beam_width=2, scorer=LengthScorer(), max_tokens=20, max_steps=3, prompt_format=PLAIN, seed=0)
    beams = [Beam(branch=None, group=g, score=s) for g, s in [(0, 0.1), (0, 0.9), (1, 0.5), (1, 0.2), (2, 0.3), (2, 0.3)]]
    assert [(b.group, b.score) for b in dv.keep(beams)] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert [b.score for b in BeamSearch(n=6, beam_width=2, scorer=LengthScorer()).keep(beams)] == [0.9, 0.5, 0.3]
    model, tok = llama
    res = dv.run(Engine(model, tok), ["Q"])[0]
    steps = [e for e in res.trace if e.event == "step"]
    assert steps[0].kept <= 3 and len(steps[0].scores) == 6
    assert res.tokens_forwarded == len(tok.encode("Q")) + res.tokens_generated


def test_weighted_best_of_n():
    samples = [Sample("", "4", 1, score=0.9), Sample("", "5", 1, score=0.5), Sample("", "5", 1, score=0.6)]
    assert weighted_vote(samples) == 2  # "5" has 1.1 > 0.9; its best-scored sample
    samples[2].score = 0.3
    assert weighted_vote(samples) == 0


def test_best_of_n_with_a_step_scorer(llama):
    model, tok = llama
    res = BestOfN(n=4, step_scorer=LengthScorer(), weighted=True, max_tokens=10, prompt_format=PLAIN,
                  seed=1).run(Engine(model, tok), ["Q"])[0]
    assert all(s.score is not None for s in res.samples)
    assert [e.event for e in res.trace].count("score") == 4
    with pytest.raises(ValueError, match="not both"):
        BestOfN(scorer=len, step_scorer="logprob")


def test_registered_and_bad_input():
    assert type(make_strategy("beam_search", scorer="logprob")).__name__ == "BeamSearch"
    assert type(make_strategy("dvts", scorer="logprob")).__name__ == "DVTS"
    with pytest.raises(ValueError, match="n=6"):
        BeamSearch(n=6, beam_width=4, scorer="logprob")
    with pytest.raises(ValueError, match="final="):
        BeamSearch(final="vote", scorer="logprob")
