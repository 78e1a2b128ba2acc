"""Engine behaviour beyond the state machine: greedy = HF generate, seeds, stops, limits, bad input."""

import pytest
import torch

from decodesearch.engine import CapacityError, Engine, Sampler, Stop


def fresh_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


def test_greedy_equals_hf_generate_smollm2(smollm2):
    model, tok = smollm2
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    engine = Engine(model, tok, max_rows=8)
    roots = engine.prefill_batch([tok(p)["input_ids"] for p in prompts])
    got = engine.decode(roots, 64)
    for p, ids in zip(prompts, got):
        inputs = tok(p, return_tensors="pt")
        ref = model.generate(**inputs, do_sample=False, max_new_tokens=64, pad_token_id=tok.eos_token_id)
        want = ref[0, inputs["input_ids"].shape[1]:].tolist()
        want = [t for t in want if t not in engine.eos_ids]
        assert ids == want[: len(ids)] and len(ids) == len(want)


@pytest.mark.parametrize("sampler", [Sampler(temperature=0.9), Sampler(top_k=7), Sampler(top_p=0.8), Sampler(min_p=0.1)],
                         ids=["temperature", "top_k", "top_p", "min_p"])
def test_same_seed_same_samples_together_or_alone(tiny, sampler):
    model, tok = tiny
    together = Engine(model, tok, seed=123)
    kids = together.fork(together.prefill([3, 4, 5]), 4)
    out_together = together.decode(kids, 20, sampler)

    alone = Engine(model, tok, seed=123)
    kids = alone.fork(alone.prefill([3, 4, 5]), 4)
    out_alone = [alone.decode([k], 20, sampler)[0] for k in reversed(kids)][::-1]
    assert out_together == out_alone
    assert len({tuple(x) for x in out_together}) > 1  # the four children draw different streams

    other = Engine(model, tok, seed=124)
    kids = other.fork(other.prefill([3, 4, 5]), 4)
    assert other.decode(kids, 20, sampler) != out_together


def test_sampler_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (Sampler(top_k=2).probs(logits)[0, 2:] == 0).all()
    p = Sampler(top_p=0.7).probs(logits)[0]
    assert p[0] > 0 and p[1] > 0 and (p[2:] == 0).all()  # 0.64 < 0.7, so the second token is kept
    p = Sampler(min_p=0.3).probs(logits)[0]
    assert (p[:2] > 0).all() and (p[2:] == 0).all()  # e^-1 = 0.37 >= 0.3 > e^-2
    for bad in [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2)]:
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            Sampler(**bad)


def test_stops_are_per_branch(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok)
    root = engine.prefill([10, 11, 12])
    greedy = engine.decode(engine.fork(root, 1), 12)[0]
    i = max(j for j in range(1, 12) if greedy[j] not in greedy[:j])
    eos_tok = greedy[i]
    a, b, c = engine.fork(root, 3)
    out = engine.decode([a, b], 12, stop=Stop(eos_ids={eos_tok}))
    assert out[0] == greedy[:i] and a.stop_reason == "eos" and a.tokens[-1] != eos_tok
    text = tok.decode(greedy[i - 1 : i + 1])
    first = min(k for k in range(1, 13) if text in tok.decode(greedy[:k]))
    out = engine.decode([c], 12, stop=Stop(strings=(text,)))[0]
    assert c.stop_reason == "stop_string" and out == greedy[:first]
    out = engine.decode([root], 5)
    assert root.stop_reason == "length" and len(out[0]) == 5
    assert torch.allclose(engine.logits([c])[0], fresh_logits(model, c.tokens), atol=1e-4)


def test_stop_preceding_tokens_and_boundaries(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok)
    root = engine.prefill([10, 11, 12])
    greedy = engine.decode(engine.fork(root, 1), 12)[0]
    # A stop string that spans the last preceding token and the first new one: found only with `preceding`.
    pre = engine.decode(engine.fork(root, 1), 1)[0]
    mid = engine.fork(root, 1)[0]
    engine.extend([mid], [pre])
    text = tok.decode([pre[0], greedy[1]])
    assert text not in tok.decode(greedy[1:2]) and text not in tok.decode(pre)
    a, b = engine.fork(mid, 2)
    out_a = engine.decode([a], 1, stop=Stop(eos_ids=(), strings=(text,)))[0]
    out_b = engine.decode([b], 2, stop=Stop(eos_ids=(), strings=(text,), preceding=tuple(pre)))[0]
    assert out_a.stop_reason == "length" and list(out_a) == greedy[1:2]
    assert out_b.stop_reason == "stop_string" and list(out_b) == greedy[1:2]
    # A boundary stops the branch whose new text ends with it (trailing spaces ignored), kept.
    end = tok.decode(greedy[:3]).rstrip(" \t")[-1:]
    k = min(j for j in range(1, 13) if tok.decode(greedy[:j]).rstrip(" \t").endswith(end))
    out = engine.decode(engine.fork(root, 1), 12, stop=Stop(eos_ids=(), boundaries=(end,)))[0]
    assert out.stop_reason == "stop_string" and list(out) == greedy[:k]
    with pytest.raises(ValueError, match="boundaries"):
        Stop(boundaries=("",))


def test_decode_scores_picks_under_a_sampler(tiny_llama):
    """`score_under`: the summed log-prob of each pick under that sampler's filtered distribution,
    the same as stepping by hand with fresh logits."""
    from decodesearch.engine.sampling import filtered_probs

    model, tok = tiny_llama
    engine = Engine(model, tok, seed=5)
    a, b = engine.fork(engine.prefill([10, 11, 12]), 2)
    under = Sampler(temperature=0.7, top_k=20)
    [out_a, out_b] = engine.decode([a, b], 8, [Sampler(temperature=0.7, top_k=20), Sampler(temperature=0)],
                                   stop=Stop(eos_ids=()), score_under=[under, None])
    assert len(out_a) == 8 and out_b.score == 0.0
    want, prefix = 0.0, [10, 11, 12]
    for t in out_a:
        want += float(torch.log(filtered_probs(fresh_logits(model, prefix)[None], [under])[0, t]))
        prefix = prefix + [t]
    assert out_a.score == pytest.approx(want, abs=1e-3) and want < 0
    with pytest.raises(ValueError, match="score_under"):
        engine.decode([a], 2, score_under=[under, under])


def test_logprobs_match_log_softmax(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok)
    a, b = engine.prefill_batch([[1, 2, 3], [4, 5]])
    lp = engine.logprobs([a, b], [7, 9, 11])
    for row, br in zip(lp, [a, b]):
        want = torch.log_softmax(fresh_logits(model, br.tokens), -1)[[7, 9, 11]]
        assert torch.allclose(row, want, atol=1e-5)
    per = engine.logprobs([a, b], [[7], [9]])
    assert torch.allclose(per[:, 0], torch.stack([lp[0, 0], lp[1, 1]]))


def test_rows_of_different_lengths_stay_dense(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok, initial_cols=16)
    long = engine.prefill(list(range(1, 101)))
    short = engine.prefill([5, 6])
    # One call over both: each row is written at its own end, so `short` gets no hole.
    engine.decode([long, short], 3)
    cols = engine.col_capacity
    engine.release(long)
    for _ in range(4):
        engine.decode([short], 30)
        engine.rewind(short, 28)
    assert engine.col_capacity == cols  # short's row never grew past its own length
    assert torch.allclose(engine.logits([short])[0], fresh_logits(model, short.tokens), atol=1e-4)
    st = engine.stats
    assert st.valid_cells <= st.attended_cells < 2 * st.valid_cells + 200


def test_limits_raise_and_engine_stays_usable(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=3, initial_cols=16)
    root = engine.prefill([1, 2, 3])
    with pytest.raises(CapacityError, match="max_rows=3"):
        engine.fork(root, 3)
    kids = engine.fork(root, 2)
    assert len(engine.live_branches) == 3
    engine.decode(kids, 4)

    small = Engine(model, tok, max_kv_bytes=Engine(model, tok, initial_cols=16).kv_bytes, initial_cols=16)
    b = small.prefill([1, 2, 3])
    with pytest.raises(CapacityError, match="max_kv_bytes="):  # 8 x 16 cells: no row holds 202 tokens
        small.extend([b], [[i % 100 + 1 for i in range(199)]])
    assert b.tokens == [1, 2, 3]
    small.extend([b], [list(range(4, 60))])  # fits once the row capacity is cut to the live branch
    assert small.kv_bytes <= small.max_kv_bytes
    assert torch.allclose(small.logits([b])[0], fresh_logits(model, b.tokens), atol=1e-4)


def test_bad_input_is_a_clear_error_and_engine_still_works(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok)
    root = engine.prefill([1, 2, 3])
    child = engine.fork(root, 1)[0]
    engine.extend([child], [[4, 5]])
    with pytest.raises(ValueError, match="n=3 is out of range.*0..2"):
        engine.rewind(child, 3)
    with pytest.raises(ValueError, match="n=1 is out of range.*0..0"):
        engine.rewind(root, 1)
    with pytest.raises(ValueError, match="empty token list"):
        engine.extend([child], [[]])
    with pytest.raises(ValueError, match="empty token list"):
        engine.prefill([])
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        engine.prefill([1] * 257)
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        engine.extend([child], [[1] * 300])
    with pytest.raises(ValueError, match="out of range"):
        engine.extend([child], [[1000]])
    gone = engine.fork(root, 1)[0]
    engine.release(gone)
    for op in (lambda: engine.decode([gone], 2), lambda: engine.rewind(gone, 0), lambda: engine.fork(gone, 1)):
        with pytest.raises(ValueError, match="released"):
            op()
    with pytest.raises(ValueError, match="twice"):
        engine.decode([child, child], 2)
    # Still works: state untouched by the failed calls.
    assert child.tokens == [1, 2, 3, 4, 5]
    engine.decode([child, root], 5)
    for b in (child, root):
        assert torch.allclose(engine.logits([b])[0], fresh_logits(model, b.tokens), atol=1e-4)


def test_token_logprobs_of_sampled_tokens(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok)
    b = engine.prefill([1, 2, 3])
    new = engine.decode([b], 6, Sampler(temperature=0.7, top_k=50), stop=Stop(eos_ids=()))[0]
    assert len(new) == 6
    engine.extend([b], [[9]])
    assert b.token_logprobs[:3] == [None] * 3 and b.token_logprobs[-1] is None
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([b.tokens])).logits[0].float(), -1)
    for i in range(3, 9):
        assert abs(b.token_logprobs[i] - lsm[i - 1, b.tokens[i]].item()) < 1e-4
    engine.rewind(b, 4)
    assert len(b.token_logprobs) == len(b.tokens) == 6


def test_reencode_engine_same_tokens_more_forwarding(tiny_llama):
    from decodesearch.engine import Reencode

    model, tok = tiny_llama
    outs, stats = [], []
    for backend in (None, Reencode()):
        engine = Engine(model, tok, seed=5, backend=backend)
        root = engine.prefill(list(range(1, 30)))
        kids = engine.fork(root, 3)
        first = engine.decode(kids, 8, Sampler(temperature=1.0))
        for k in kids:
            engine.rewind(k, 4)
        engine.extend(kids, [[7, 8]] * 3)
        second = engine.decode(kids, 8, Sampler(temperature=1.0))
        outs.append((first, second, [k.tokens for k in kids]))
        stats.append(engine.stats.tokens_forwarded)
    assert outs[0] == outs[1]
    assert stats[1] > 2 * stats[0]


def test_reencode_engine_miss_on_extend_holds_through_the_scheduler(tiny_llama):
    """The re-encode baseline must pay for an `extend` on every route (the scheduler forwards through
    `_forward`, not `extend`): with miss_on_extend the next logits re-encode the whole sequence."""
    from decodesearch.engine import Reencode
    from decodesearch.engine.scheduler import run_one

    model, tok = tiny_llama

    async def prefill_extend(ctx):
        b = await ctx.prefill([1, 2, 3, 4, 5])
        ctx.logits([b])
        await ctx.extend([b], [[6, 7, 8]])
        ctx.logits([b])

    costs = []
    for miss in (False, True):
        engine = Engine(model, tok, backend=Reencode(miss_on_extend=miss))
        run_one(engine, prefill_extend)
        costs.append(engine.stats.tokens_forwarded)
    assert costs == [5 + 3, 5 + 8]


def test_backend_is_checked_and_bound_to_one_engine(tiny_llama):
    from decodesearch.engine import Reencode

    model, tok = tiny_llama
    with pytest.raises(ValueError, match="backend="):
        Engine(model, tok, backend=object())
    backend = Reencode()
    engine = Engine(model, tok, backend=backend, prefix_cache_rows=4)
    assert engine.backend is backend and engine.prefix_cache.capacity == 0  # re-encoding shares no prefixes
    with pytest.raises(ValueError, match="already bound"):
        Engine(model, tok, backend=backend)
