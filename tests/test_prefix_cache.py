"""The prefix cache: prompts that share a long prefix forward it once; reuse is exact; cached rows give
way to live branches; the scheduler route reuses too."""

import pytest
import torch

from decodesearch.engine import CapacityError, Engine, Stop
from decodesearch.engine.prefix_cache import PrefixCache, common_prefix
from decodesearch.strategies import Greedy, PromptFormat

NO_EOS = Stop(eos_ids=())
SHARED = [(7 * i + 3) % 120 + 1 for i in range(48)]  # a 48-token "few-shot block"


def fresh_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


class _Entry:
    def __init__(self, tokens):
        self.tokens = tokens


def test_prefix_cache_match_insert_evict_lru():
    cache = PrefixCache(capacity=2, min_tokens=3)
    a, b, c = _Entry([1, 2, 3, 4, 5]), _Entry([1, 2, 3, 9]), _Entry([7, 7, 7, 7])
    assert cache.insert(a) == [] and cache.insert(b) == []
    assert cache.match_prefix([1, 2, 3, 4, 8]) == (a, 4)  # the longest common prefix wins
    assert cache.match_prefix([1, 2, 8]) == (None, 0)  # 2 < min_tokens
    assert cache.insert(c) == [b]  # b is least recently used (a was just matched)
    assert cache.evict(5, keep=[a]) == [c] and cache.entries == [a]
    assert cache.covering([1, 2, 3]) is a and cache.covering([1, 2, 3, 4, 5, 6]) is None
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    with pytest.raises(ValueError, match="prefix_cache_rows"):
        PrefixCache(-1, 3)


def test_shared_prefix_is_forwarded_once_and_reuse_is_exact(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok, prefix_min_tokens=16)
    plain = Engine(model, tok, prefix_cache_rows=0)
    p1, p2 = SHARED + [5, 6, 7], SHARED + [9, 10]
    r1 = engine.prefill(p1)
    assert engine.stats.tokens_forwarded == len(p1) and engine.stats.tokens_reused == 0
    r2 = engine.prefill(p2)
    assert engine.stats.tokens_reused == len(SHARED) and engine.stats.tokens_forwarded == len(p1) + 2
    assert r2.tokens == p2 and r2.prompt_len == len(p2) and engine.live_branches == [r1, r2]
    assert torch.allclose(engine.logits([r2])[0], fresh_logits(model, p2), atol=1e-4)
    out = engine.decode([r2], 12, stop=NO_EOS)[0]
    assert out == plain.decode([plain.prefill(p2)], 12, stop=NO_EOS)[0]
    assert torch.allclose(engine.logits([r2])[0], fresh_logits(model, r2.tokens), atol=1e-4)
    # The same prompt again: all of it comes from the cache, no forward; its logits are exact.
    before = engine.stats.as_dict()
    again = engine.prefill(p1)
    assert engine.stats.tokens_forwarded == before["tokens_forwarded"]
    assert engine.stats.forward_calls == before["forward_calls"]
    assert engine.stats.tokens_reused == before["tokens_reused"] + len(p1)
    assert torch.allclose(engine.logits([again])[0], fresh_logits(model, p1), atol=1e-4)


def test_cached_rows_give_way_to_live_branches(tiny_llama):
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=2, prefix_min_tokens=16)
    root = engine.prefill(SHARED)
    assert len(engine.prefix_cache) == 1 and engine.free_rows == 1  # the cache row counts as free
    [kid] = engine.fork(root, 1)  # takes the cache's row
    assert len(engine.prefix_cache) == 0 and engine.live_branches == [root, kid]
    with pytest.raises(CapacityError, match="max_rows=2"):
        engine.fork(root, 1)
    engine.release(kid)
    engine.release(root)
    again = engine.prefill(SHARED + [1])  # nothing cached any more: forwarded in full
    assert engine.stats.tokens_reused == 0 and again.tokens == SHARED + [1]


def test_scheduler_route_reuses_the_shared_prefix(tiny_llama):
    model, tok = tiny_llama
    fmt = PromptFormat(instruction=None, system="".join(chr(97 + i % 26) for i in range(60)), chat=False)
    problems = ["one", "two", "three", "four"]
    strat = Greedy(max_tokens=6, prompt_format=fmt, stop=NO_EOS)
    cached = Engine(model, tok)
    got = strat.run(cached, problems, concurrency=1)
    want = strat.run(Engine(model, tok, prefix_cache_rows=0), problems, concurrency=1)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert cached.stats.tokens_reused >= 3 * 60  # problems 2-4 reuse the instruction
    assert sum(r.tokens_forwarded for r in got) + cached.stats.tokens_reused == sum(r.tokens_forwarded for r in want)
    # All four in flight at once: the first prompt is prefilled, the others wait one step and reuse it.
    together = Engine(model, tok)
    assert [r.token_ids for r in strat.run(together, problems)] == [r.token_ids for r in want]
    assert together.stats.tokens_reused >= 3 * 60


def test_released_branch_kept_in_cache_serves_later_prefills_and_pins_hold(tiny_llama):
    """`release(cache=True)` keeps a branch's state for later prefills; a pinned entry outlives the
    capacity (an unpinned one does not) until `unpin`; a kept handle is unusable."""
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=8, prefix_cache_rows=1, prefix_min_tokens=8)
    head = engine.prefill(SHARED[:40])
    assert engine.release(head, cache=True, pin=True)  # (its prompt copy already covers it: that entry is pinned)
    with pytest.raises(ValueError, match="released"):
        engine.decode([head], 1)
    ctx = engine.prefill(SHARED[:40] + [5, 6, 7, 8, 9, 10, 11, 12])
    assert engine.stats.tokens_reused == 40
    engine.decode([ctx], 4, stop=NO_EOS)
    ctx_tokens = list(ctx.tokens)
    assert engine.release(ctx, cache=True)
    before = engine.stats.tokens_forwarded
    again = engine.prefill(ctx_tokens[:-2])  # a prefix of the kept branch: nothing to forward
    assert engine.stats.tokens_forwarded == before
    assert torch.allclose(engine.logits([again])[0], fresh_logits(model, ctx_tokens[:-2]), atol=1e-4)
    engine.release(again)
    # Capacity 1: another unpinned entry evicts the context entry, never the pinned head.
    other = engine.prefill([9] * 30)
    engine.release(other, cache=True)
    held = [e.tokens for e in engine.prefix_cache.entries]
    assert SHARED[:40] in held and ctx_tokens not in held and len(held) == 2
    assert not engine.release(engine.prefill([3] * 4), cache=True)  # shorter than prefix_min_tokens
    engine.unpin(SHARED[:40])
    with pytest.raises(ValueError, match="no pin"):
        engine.unpin(SHARED[:40])
    assert len(engine.prefix_cache) == 1  # unpinned, the head counts against capacity again
    assert engine.live_branches == []


def test_pinned_entries_hold_their_rows(tiny_llama):
    """A pinned entry is not a free row (an unpinned one is): `free_rows` and `max_rows` count it."""
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=3, prefix_cache_rows=2, prefix_min_tokens=8)
    engine.release(engine.prefill(SHARED[:20]), cache=True, pin=True)
    assert engine.live_branches == [] and engine.held_rows == 1 and engine.free_rows == 2
    kids = engine.fork(engine.prefill(SHARED[:30]), 1)
    with pytest.raises(CapacityError, match="max_rows=3"):
        engine.fork(kids[0], 1)
    engine.unpin(SHARED[:20])
    assert engine.free_rows == 1
    assert len(engine.fork(kids[0], 1)) == 1  # the unpinned entry gave its row way
    assert all(e.tokens[:20] != SHARED[:20] or len(e.tokens) != 20 for e in engine.prefix_cache.entries)


def test_an_entry_replaces_the_unpinned_entries_it_covers_and_remember_false_adds_none(tiny_llama):
    cache = PrefixCache(capacity=4, min_tokens=2)
    short, pinned, other = _Entry([1, 2, 3]), _Entry([1, 2]), _Entry([1, 9, 9])
    cache.insert(short), cache.insert(pinned, pin=True), cache.insert(other)
    longer = _Entry([1, 2, 3, 4])
    assert cache.insert(longer) == [short]  # the pinned prefix and the diverging entry stay
    assert cache.entries == [pinned, other, longer]
    model, tok = tiny_llama
    engine = Engine(model, tok, prefix_min_tokens=8)
    engine.prefill(SHARED, remember=False)
    assert len(engine.prefix_cache) == 0
    engine.prefill(SHARED)
    assert len(engine.prefix_cache) == 1


def test_unpin_drops_the_pin_taken_on_those_ids(tiny_llama):
    """A pin taken on a prefix of a pinned entry goes to that entry; unpinning the prefix drops that
    pin, never another entry's, so every unpin finds its own pin."""
    model, tok = tiny_llama
    engine = Engine(model, tok, max_rows=8, prefix_cache_rows=0)
    long = engine.prefill(SHARED)
    engine.release(long, cache=True, pin=True)
    other = engine.prefill(SHARED[:40] + [1, 1])
    engine.release(other, cache=True, pin=True)
    short = engine.prefill(SHARED[:40])  # covered by the first entry: no row of its own
    engine.release(short, cache=True, pin=True)
    pc = engine.prefix_cache
    assert len(pc) == 2 and sorted(pc.pins(e) for e in pc.entries) == [1, 2]
    engine.unpin(SHARED[:40])
    engine.unpin(SHARED[:40] + [1, 1])  # its own pin is still there to drop
    engine.unpin(SHARED)
    assert len(pc) == 0 and engine.held_rows == 0  # capacity 0: unpinned entries go at once
