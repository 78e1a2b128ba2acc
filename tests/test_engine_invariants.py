"""DESIGN §2 invariants 1 (parity) and 2 (zero recompute) as a hypothesis state machine,
on tiny random Llama and Qwen2 models in float32 and bfloat16."""

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, precondition, rule

from conftest import VOCAB, ByteTokenizer, tiny_model
from decodesearch.engine import CapacityError, Engine, Sampler

# Max |engine logit - fresh forward logit|, relative to the logits' scale (max |logit|).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
MODELS = {(a, d): tiny_model(a, d) for a in ("llama", "qwen2") for d in TOLERANCE}

token_lists = st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=12)


def make_machine(arch, dtype):
    model = MODELS[arch, dtype]

    class EngineMachine(RuleBasedStateMachine):
        branches = Bundle("branches")

        def __init__(self):
            super().__init__()
            self.engine = Engine(model, ByteTokenizer(), max_rows=8, initial_cols=16)
            self.introduced = 0
            self.live = []

        @rule(target=branches, ids=token_lists)
        def prefill(self, ids):
            try:
                b = self.engine.prefill(ids)
            except CapacityError:
                return multiple()
            self.introduced += len(ids)
            self.live.append(b)
            return b

        @rule(target=branches, b=branches, n=st.integers(1, 3))
        def fork(self, b, n):
            if b.released:
                return multiple()
            before = self.engine.stats.tokens_forwarded
            try:
                kids = self.engine.fork(b, n)
            except CapacityError:
                assert len(self.engine.live_branches) + n > 8
                return multiple()
            assert self.engine.stats.tokens_forwarded == before
            for k in kids:
                assert k.tokens == b.tokens
            self.live.extend(kids)
            return multiple(*kids)

        @rule(b=branches, ids=token_lists)
        def extend(self, b, ids):
            if b.released:
                return
            self.engine.extend([b], [ids])
            self.introduced += len(ids)

        @rule(data=st.data(), n=st.integers(1, 6), greedy=st.booleans())
        @precondition(lambda self: self.live)
        def decode(self, data, n, greedy):
            bs = data.draw(st.lists(st.sampled_from(self.live), min_size=1, max_size=4, unique_by=id))
            sampler = Sampler(temperature=0.0) if greedy else Sampler(temperature=1.0, top_k=20)
            out = self.engine.decode(bs, n, sampler)
            self.introduced += sum(len(x) for x in out)
            for b, x in zip(bs, out):
                assert len(x) <= n
                assert b.stop_reason in ("eos", "length")

        @rule(data=st.data())
        @precondition(lambda self: len(self.live) >= 2)
        def ragged_extend(self, data):
            bs = data.draw(st.lists(st.sampled_from(self.live), min_size=2, max_size=4, unique_by=id))
            ids = [data.draw(token_lists) for _ in bs]
            self.engine.extend(bs, ids)
            self.introduced += sum(map(len, ids))

        @rule(b=branches, data=st.data())
        def rewind(self, b, data):
            if b.released:
                return
            n = data.draw(st.integers(0, b.length - b.prompt_len))
            before = list(b.tokens)
            self.engine.rewind(b, n)
            assert b.tokens == before[: len(before) - n]

        @rule(b=consumes(branches))
        def release(self, b):
            if b.released:
                return
            self.engine.release(b)
            self.live.remove(b)

        @invariant()
        def parity(self):
            if not self.live:
                return
            got = self.engine.logits(self.live)
            for b, row in zip(self.live, got):
                with torch.no_grad():
                    want = model(torch.tensor([b.tokens])).logits[0, -1].float()
                scale = want.abs().max().item()
                err = (row - want).abs().max().item()
                assert err <= TOLERANCE[dtype] * scale, (b, err, scale)

        @invariant()
        def zero_recompute(self):
            assert self.engine.stats.tokens_forwarded == self.introduced

    EngineMachine.TestCase.settings = settings(
        max_examples=10, stateful_step_count=12, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    return EngineMachine


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_state_machine(arch, dtype):
    make_machine(arch, dtype).TestCase().runTest()
