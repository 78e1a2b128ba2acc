"""The branching engine: prefill, fork, extend, decode, rewind, logprobs, release over one HF model.

With the default backend (`DenseRows`, engine/backend.py), every token of a live branch has its
KV (and final hidden state) in the store exactly once, in
its own row, densely: token i of a branch sits in column i. A forward writes each row's new
columns at that row's own end (a scatter), so rows of very different lengths share one call
without leaving holes; `fork` copies rows, `rewind` only shortens a branch (later columns are
overwritten), and nothing already forwarded is forwarded again. Next-token logits are computed on
demand from the stored final hidden state of a branch's last token, so a rewound branch has its
logits without a forward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from decodesearch.engine.backend import Backend, DenseRows
from decodesearch.engine.prefix_cache import PrefixCache
from decodesearch.engine.sampling import GREEDY, Sampler, Stop, StopReason, filtered_probs, sample_rows
from decodesearch.kernels import score

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, index: int) -> int:
    """Deterministic child seed (splitmix64 of seed and index), in [0, 2**63)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class CapacityError(RuntimeError):
    """A request would exceed `max_rows` or `max_kv_bytes`. Nothing was changed."""


@dataclass
class EngineStats:
    """Counters since the engine was made. Bytes are KV (+ final hidden) bytes."""

    tokens_forwarded: int = 0
    # prompt tokens a prefill took from the prefix cache instead of forwarding them
    tokens_reused: int = 0
    forward_calls: int = 0
    rows_copied: int = 0
    bytes_copied: int = 0
    peak_rows: int = 0
    peak_kv_bytes: int = 0
    # KV cells read by the forwards' queries: rows x the call's column extent, summed over calls
    # (`attended_cells`), and the part of them that held the rows' own tokens (`valid_cells`).
    # Their ratio is the cost of sharing one call between rows of different lengths.
    attended_cells: int = 0
    valid_cells: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Branch:
    """A handle on one token sequence whose KV lives in an `Engine`.

    `tokens` is the whole sequence (prompt included), every token's KV at column `i` of the
    branch's row; `prompt_len` is the prompt length, which `rewind` never goes below; `text`
    decodes `tokens[prompt_len:]`. `token_logprobs[i]` is the model's log-prob (untempered) of a sampled token
    `tokens[i]`, None for teacher-forced ones. Do not mutate either.
    """

    def __init__(self, engine: "Engine", row: int, tokens: list[int], prompt_len: int, seed: int):
        self.engine = engine
        self.row = row
        self.tokens = tokens
        self.token_logprobs: list[float | None] = []
        self.prompt_len = prompt_len
        self.seed = seed
        self.stop_reason: StopReason | None = None
        self.released = False
        self._forks = 0
        self._generator: torch.Generator | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def text(self) -> str:
        return self.engine.tokenizer.decode(self.new_tokens, skip_special_tokens=True)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def reseed(self, seed: int) -> None:
        """Restart this branch's sampling generator from `seed` (its next draws depend only on it)."""
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def __repr__(self) -> str:
        state = "released" if self.released else f"row={self.row}"
        return f"Branch({state}, length={self.length}, prompt_len={self.prompt_len}, stop={self.stop_reason})"


class Decoded(list):
    """The tokens one branch added in a `decode` (EOS never included), with why it stopped
    (`stop_reason`: eos, stop_string, length or context) and `score`: with `score_under`, the
    summed natural-log probability of every pick (a final EOS included) under that sampler's
    filtered distribution, else 0.0."""

    def __init__(self, tokens: Sequence[int], stop_reason: StopReason | None, score: float = 0.0):
        super().__init__(tokens)
        self.stop_reason = stop_reason
        self.score = score


class DecodeRow:
    """One branch inside a decode: its token budget `limit`, its `sampler` and `stop` rule, the
    EOS ids in force, the sampler its picks are scored under (`score_under`, or None) and the
    running `score`, the tokens it added so far (`out`) and, once it stopped, `stop_reason`."""

    __slots__ = ("branch", "limit", "sampler", "stop", "eos", "score_under", "score", "out", "stop_reason")

    def __init__(self, branch: Branch, limit: int, sampler: Sampler, stop: Stop, eos: frozenset[int],
                 score_under: Sampler | None = None):
        self.branch, self.limit, self.sampler, self.stop, self.eos = branch, limit, sampler, stop, eos
        self.score_under, self.score = score_under, 0.0
        self.out: list[int] = []
        self.stop_reason: StopReason | None = None if limit else StopReason.LENGTH

    def result(self) -> Decoded:
        return Decoded(self.out, self.stop_reason, self.score)


class Engine:
    """Owns the KV memory of all branches of one model.

    `max_rows` bounds live branches; `max_kv_bytes` bounds the allocated store (KV of every layer
    plus final hidden states). Capacity starts small and doubles; exceeding a bound raises
    `CapacityError` naming it and leaves the engine unchanged.

    Prompt prefixes are reused: up to `prefix_cache_rows` rows keep earlier prompts
    (`prefix_cache`), and a prefill whose prompt shares at least `prefix_min_tokens` leading tokens
    with one copies those columns and forwards only the rest (`stats.tokens_reused`). Cached rows
    give way to live branches when rows or bytes run short; `prefix_cache_rows=0` turns this off.

    `backend` holds the branches' states and computes logits (`decodesearch.engine.backend`):
    `DenseRows` by default; `Reencode` is the re-encode-on-miss baseline. The row and byte
    accounting is the engine's and counts dense rows whichever backend is used.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_rows: int = 64,
        max_kv_bytes: int | None = None,
        initial_cols: int = 256,
        seed: int = 0,
        prefix_cache_rows: int = 4,
        prefix_min_tokens: int = 32,
        backend: Backend | None = None,
    ):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows={max_rows!r} is out of range; accepted: an int >= 1")
        if max_kv_bytes is not None and (isinstance(max_kv_bytes, bool) or not isinstance(max_kv_bytes, int)
                                         or max_kv_bytes < 1):
            raise ValueError(f"max_kv_bytes={max_kv_bytes!r} is out of range; accepted: an int >= 1 (bytes), or None")
        cfg = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.max_rows = max_rows
        self.max_kv_bytes = max_kv_bytes
        self.backend = DenseRows() if backend is None else backend
        if not isinstance(self.backend, Backend):
            raise ValueError(f"backend={backend!r}; accepted: a decodesearch.engine.backend.Backend, or None")
        self.prefix_cache = PrefixCache(prefix_cache_rows if self.backend.reuses_prefixes else 0, prefix_min_tokens)
        self._pins: dict[tuple[int, ...], list[Branch]] = {}  # ids a pin was taken on -> the entries pinned
        self.max_context = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self.seed = seed
        self._roots = 0
        self.dtype = model.get_input_embeddings().weight.dtype
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.cell_bytes = (cfg.num_hidden_layers * 2 * kv_heads * head_dim + cfg.hidden_size) * itemsize
        self.in_device = model.get_input_embeddings().weight.device
        self.out_device = self.lm_head.weight.device
        self.eos_ids = _model_eos_ids(model, tokenizer)
        self.stats = EngineStats()

        rows, cols = min(8, max_rows), max(16, initial_cols)
        if max_kv_bytes is not None:  # start smaller rather than over the bound
            cols = min(cols, max(16, max_kv_bytes // (rows * self.cell_bytes)))
            rows = min(rows, max(1, max_kv_bytes // (cols * self.cell_bytes)))
        self._check_bytes(rows, cols)
        self.col_capacity = cols
        self._rows: list[Branch | None] = [None] * rows
        self.backend.bind(self, rows, cols)
        self._note_peaks()

    # ------------------------------------------------------------------ public operations

    @torch.no_grad()
    def prefill(self, ids: Sequence[int], seed: int | None = None, *, remember: bool = True) -> Branch:
        """A new root branch over `ids` (the prompt): one forward over what the prefix cache does not
        hold (none when an entry holds all of `ids`). Then a copy of the prompt goes to the prefix
        cache, unless `remember=False` (for a caller that hands the branch over itself later)."""
        return self.prefill_batch([ids], seeds=None if seed is None else [seed], remember=remember)[0]

    @torch.no_grad()
    def prefill_batch(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None = None, *,
                      remember: bool = True) -> list[Branch]:
        """New root branches, one per prompt, prefilled in one ragged forward (of what the prefix
        cache does not hold); `remember` as for `prefill`."""
        out, rest = self._new_roots(prompts, seeds)
        todo = [i for i, x in enumerate(rest) if x]
        try:
            if todo:
                self._forward([out[i] for i in todo], [rest[i] for i in todo])
        except BaseException:
            for b in out:
                self._free(b)
            raise
        if remember:
            for b in out:
                self._remember_prompt(b)
        return out

    def _new_roots(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None) -> tuple[list[Branch], list]:
        """Rows and handles for new root branches, and the ids still to forward for each: a root
        starts with the columns of the longest cached prefix of its prompt (all of it when an entry
        holds the whole prompt: the copied last column's hidden state gives its logits)."""
        prompts = [self._check_ids(ids, "ids") for ids in prompts]
        if not prompts:
            raise ValueError("prompts must contain at least one token list")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds has {len(seeds)} entries; expected one per prompt ({len(prompts)})")
        for ids in prompts:
            self._check_context(0, len(ids))
        hits = [self.prefix_cache.match_prefix(ids) for ids in prompts]
        try:
            rows = self._alloc_rows(len(prompts), keep=[src for src, _ in hits if src is not None])
        except CapacityError:
            if not any(src for src, _ in hits):
                raise
            hits = [(None, 0)] * len(prompts)  # the rows are needed more than the cached prefixes
            rows = self._alloc_rows(len(prompts))
        out, rest = [], []
        for i, (row, ids, (src, n)) in enumerate(zip(rows, prompts, hits)):
            seed = derive_seed(self.seed, self._roots) if seeds is None else int(seeds[i])
            self._roots += 1
            b = Branch(self, row, list(ids[:n]), len(ids), seed)
            b.token_logprobs = [None] * n
            self._rows[row] = b
            if n:
                self.backend.copy(src, [b], n)
                self.stats.tokens_reused += n
            out.append(b)
            rest.append(ids[n:])
        self._note_peaks()
        return out, rest

    def _remember_prompt(self, root: Branch) -> None:
        """Keep a copy of a just-prefilled prompt in the prefix cache (if worth it and a row is free
        without evicting anything but older cache entries)."""
        cache = self.prefix_cache
        if not cache.capacity or root.length < cache.min_tokens or cache.covering(root.tokens) is not None:
            return
        try:
            [row] = self._alloc_rows(1, keep=[root])
        except CapacityError:
            return
        entry = Branch(self, row, list(root.tokens), root.length, root.seed)
        self._rows[row] = entry
        self.backend.copy(root, [entry], root.length)
        for old in cache.insert(entry):
            self._free(old)
        self._note_peaks()

    @torch.no_grad()
    def fork(self, branch: Branch, n: int) -> list[Branch]:
        """`n` new branches with `branch`'s exact state (tokens, KV, logits). A row copy, no forward."""
        self._check_live([branch])
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} is out of range; accepted: an int >= 1")
        rows = self._alloc_rows(n)
        children = []
        for row in rows:
            child = Branch(self, row, list(branch.tokens), branch.prompt_len, derive_seed(branch.seed, branch._forks))
            child.token_logprobs = list(branch.token_logprobs)
            branch._forks += 1
            self._rows[row] = child
            children.append(child)
        self.backend.copy(branch, children, branch.length)
        self._note_peaks()
        return children

    @torch.no_grad()
    def extend(self, branches: Sequence[Branch], ids_per_branch: Sequence[Sequence[int]]) -> None:
        """Teacher-force `ids_per_branch[i]` onto `branches[i]` (ragged), in one forward over the new tokens."""
        branches, ids = self._check_extend(branches, ids_per_branch)
        self._forward(branches, ids)

    def _check_extend(self, branches, ids_per_branch) -> tuple[list[Branch], list[list[int]]]:
        branches = list(branches)
        self._check_live(branches)
        if len(ids_per_branch) != len(branches):
            raise ValueError(
                f"ids_per_branch has {len(ids_per_branch)} entries; expected one per branch ({len(branches)})"
            )
        ids = [self._check_ids(x, "ids_per_branch") for x in ids_per_branch]
        for b, x in zip(branches, ids):
            self._check_context(b.length, len(x))
            b.stop_reason = None
        return branches, ids

    @torch.no_grad()
    def decode(
        self,
        branches: Sequence[Branch],
        max_new_tokens: int | Sequence[int],
        sampler: Sampler | Sequence[Sampler] = GREEDY,
        stop: Stop | Sequence[Stop] | None = None,
        score_under: Sampler | Sequence[Sampler | None] | None = None,
    ) -> list[Decoded]:
        """Sample up to `max_new_tokens` per branch, all live branches in one forward per step.
        `max_new_tokens`, `sampler`, `stop` and `score_under` are each one value for all branches or
        one per branch.

        Each branch stops on its own: `eos` (the EOS id is not appended), `stop_string` (a stop
        string or boundary, kept), `length` or `context`. Returns each branch's `Decoded` (its new
        tokens, stop reason and score); also sets the branch's `stop_reason`.
        """
        rows = self.decode_rows(branches, max_new_tokens, sampler, stop, score_under)
        live = [r for r in rows if r.stop_reason is None]
        while live:
            step = self.sample_step(live)
            if step:
                self._forward([r.branch for r, _, _ in step], [[t] for _, t, _ in step], [[lp] for _, _, lp in step])
            live = [r for r in live if r.stop_reason is None]
        return [r.result() for r in rows]

    def decode_rows(self, branches, max_new_tokens, sampler=GREEDY, stop=None, score_under=None) -> list[DecodeRow]:
        """Checked `DecodeRow`s for `decode`'s arguments (a branch with a budget of 0 has stopped)."""
        branches = list(branches)
        self._check_live(branches)
        n = len(branches)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != n or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in limits):
            raise ValueError(
                f"max_new_tokens={max_new_tokens!r} is out of range; accepted: an int >= 0, or one per branch"
            )
        samplers = [sampler] * n if isinstance(sampler, Sampler) else list(sampler)
        stops = [stop] * n if stop is None or isinstance(stop, Stop) else list(stop)
        if len(samplers) != n or not all(isinstance(s, Sampler) for s in samplers):
            raise ValueError("sampler must be a Sampler or one Sampler per branch")
        if len(stops) != n or not all(s is None or isinstance(s, Stop) for s in stops):
            raise ValueError("stop must be a Stop, None, or one per branch")
        scorers = [score_under] * n if score_under is None or isinstance(score_under, Sampler) else list(score_under)
        if len(scorers) != n or not all(s is None or isinstance(s, Sampler) for s in scorers):
            raise ValueError("score_under must be a Sampler, None, or one per branch")
        rows = []
        for b, m, smp, st, sc in zip(branches, limits, samplers, stops, scorers):
            st = st or _NO_STOP
            rows.append(DecodeRow(b, m, smp, st, self.eos_ids if st.eos_ids is None else st.eos_ids, sc))
            b.stop_reason = rows[-1].stop_reason
        return rows

    @torch.no_grad()
    def sample_step(self, rows: Sequence[DecodeRow]) -> list[tuple[DecodeRow, int, float]]:
        """Pick one token for each row (all rows' logits in one pass); mark rows that stop. Returns
        (row, token, model log-prob) for every token to forward: all picks except EOS. The caller
        forwards them (with `_forward`) before the next step."""
        bs = [r.branch for r in rows]
        logits = self.backend.logits(bs)
        generators = [None if r.sampler.greedy else b.generator for r, b in zip(rows, bs)]
        picked = sample_rows(logits, [r.sampler for r in rows], generators)
        chosen_lp = score(logits, picked[:, None].to(logits.device), check_ids=False)[1][:, 0].tolist()
        scored = [i for i, r in enumerate(rows) if r.score_under is not None]
        if scored:
            idx = torch.tensor(scored, device=logits.device)
            probs = filtered_probs(logits[idx], [rows[i].score_under for i in scored])
            p = probs.gather(-1, picked[idx].unsqueeze(-1).to(probs.device)).squeeze(-1).tolist()
            for i, pi in zip(scored, p):
                rows[i].score += math.log(pi) if pi > 0 else -math.inf
        step = []
        for r, tok, lp in zip(rows, picked.tolist(), chosen_lp):
            b = r.branch
            if tok in r.eos:
                r.stop_reason = StopReason.EOS
            else:
                r.out.append(tok)
                step.append((r, tok, lp))
                if len(r.out) >= r.limit:
                    r.stop_reason = StopReason.LENGTH
                elif b.length + 1 >= self.max_context:
                    r.stop_reason = StopReason.CONTEXT
                elif r.stop.hit(self.tokenizer, r.out):
                    r.stop_reason = StopReason.STOP_STRING
            b.stop_reason = r.stop_reason
        return step

    @torch.no_grad()
    def rewind(self, branch: Branch, n: int) -> None:
        """Drop the last `n` tokens of `branch` (no forward, no copy: its row just ends earlier)."""
        self._check_live([branch])
        limit = branch.length - branch.prompt_len
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limit:
            raise ValueError(f"n={n!r} is out of range for this branch; accepted: 0..{limit} (tokens after its prompt)")
        if n == 0:
            return
        del branch.tokens[-n:]
        del branch.token_logprobs[-n:]
        branch.stop_reason = None
        self.backend.truncate(branch, n)

    @torch.no_grad()
    def logits(self, branches: Sequence[Branch]) -> torch.Tensor:
        """Next-token logits of each branch, `[B, V]` fp32 (computed from the stored last hidden state)."""
        branches = list(branches)
        self._check_live(branches)
        return self.backend.logits(branches)

    @torch.no_grad()
    def logprobs(self, branches: Sequence[Branch], candidate_ids) -> torch.Tensor:
        """Next-token log-probs of candidate ids, `[B, C]` fp32. `candidate_ids`: one list for all
        branches, or one equal-length list per branch."""
        branches = list(branches)
        logits = self.logits(branches)
        ids = torch.as_tensor(candidate_ids, dtype=torch.int64)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0).expand(len(branches), -1)
        if ids.dim() != 2 or ids.shape[0] != len(branches):
            raise ValueError("candidate_ids must be a list of ids or one equal-length list per branch")
        vocab = logits.shape[-1]
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"candidate_ids out of range; accepted: 0..{vocab - 1}")
        return score(logits, ids.to(logits.device).contiguous(), check_ids=False)[1]  # range checked above

    def release(self, branch: Branch, *, cache: bool = False, pin: bool = False) -> bool:
        """Free `branch`'s row; the handle is unusable afterwards.

        With `cache=True` the row stays as a prefix-cache entry holding `branch.tokens`, so a later
        `prefill` whose ids start with (part of) them copies those columns instead of forwarding them;
        an entry already holding all of them is kept instead (and this row freed). With `pin=True` as
        well, that entry is pinned until `unpin(branch.tokens)`; pinned entries do not count against
        `prefix_cache_rows`, so pins hold even with it 0. Not kept: unpinned with `prefix_cache_rows=0`
        or shorter than `prefix_min_tokens`, or with a backend that shares no state (`Reencode`).
        Returns whether it was kept."""
        self._check_live([branch])
        pc = self.prefix_cache
        keep = pin or (pc.capacity and branch.length >= pc.min_tokens)
        if not (cache and keep and self.backend.reuses_prefixes):
            self._free(branch)
            return False
        entry = pc.covering(branch.tokens)
        if entry is not None:
            self._free(branch)
            pc.match_prefix(branch.tokens)  # the holder becomes the most recently used
        else:  # the row itself becomes the entry; the caller's handle on it is released
            entry = branch
            branch.released = True
        evicted = pc.insert(entry, pin=pin) if entry is branch else []
        if pin:
            if entry is not branch:
                pc.pin(entry)
            self._pins.setdefault(tuple(branch.tokens), []).append(entry)
        for old in evicted:
            self._free(old)
        return True

    def unpin(self, ids: Sequence[int]) -> None:
        """Drop one pin taken by `release(branch, pin=True)` on a branch whose tokens were `ids` (from
        the entry that pin went to); ValueError if there is none."""
        held = self._pins.get(tuple(ids))
        if not held:
            raise ValueError("unpin: no pin was taken on these ids")
        entry = held.pop()
        if not held:
            del self._pins[tuple(ids)]
        for old in self.prefix_cache.unpin(entry):
            self._free(old)

    @property
    def live_branches(self) -> list[Branch]:
        """The callers' branches (prefix-cache rows not included)."""
        return [b for b in self._rows if b is not None and b not in self.prefix_cache]

    @property
    def held_rows(self) -> int:
        """Rows no allocation can take: the live branches and the pinned prefix-cache entries."""
        pc = self.prefix_cache
        return len(self.live_branches) + sum(1 for e in pc.entries if pc.pins(e))

    def _occupied(self) -> list[Branch]:
        """Every branch holding a row, prefix-cache entries included, in row order."""
        return [b for b in self._rows if b is not None]

    @property
    def free_rows(self) -> int:
        """Rows that can still be allocated under `max_rows` and under `max_kv_bytes` (with the
        columns the longest live branch needs): unpinned prefix-cache rows count as free."""
        limit = self.max_rows
        if self.max_kv_bytes is not None:
            limit = min(limit, self.max_kv_bytes // (self._min_cols() * self.cell_bytes))
        return max(0, limit - self.held_rows)

    @property
    def kv_bytes(self) -> int:
        """Bytes allocated for the store at its current capacity."""
        return len(self._rows) * self.col_capacity * self.cell_bytes

    # ------------------------------------------------------------------ internals

    @torch.no_grad()
    def _forward(self, branches: list[Branch], ids: list[list[int]], logprobs: list[list[float]] | None = None) -> None:
        """Append `ids[i]` to `branches[i]` (ragged) in one backend call, rows in ascending order;
        `logprobs[i]` are the model log-probs of sampled tokens (None: all teacher-forced)."""
        order = sorted(range(len(branches)), key=lambda i: branches[i].row)
        bs = [branches[i] for i in order]
        ids = [ids[i] for i in order]
        lps = [[None] * len(x) for x in ids] if logprobs is None else [logprobs[i] for i in order]
        self._reserve_columns(max(b.length for b in bs) + max(len(x) for x in ids))
        self.backend.encode(bs, ids, lps)
        for b, x, lp in zip(bs, ids, lps):
            b.tokens.extend(x)
            b.token_logprobs.extend(lp)

    def _reserve_columns(self, extent: int) -> None:
        """Grow the store until it holds `extent` columns: doubling, or under `max_kv_bytes` as many
        columns as fit, first at the current row capacity, else with the rows cut down to the live
        branches (moved to the front rows)."""
        cols = self.col_capacity
        if extent <= cols:
            return
        while cols < extent:
            cols *= 2
        rows = len(self._rows)
        if self.max_kv_bytes is not None and rows * cols * self.cell_bytes > self.max_kv_bytes:
            if self.max_kv_bytes // (rows * self.cell_bytes) < extent:
                rows = max(1, len(self._occupied()))
            cols = max(extent, min(cols, self.max_kv_bytes // (rows * self.cell_bytes)))
        self._resize(rows, cols)

    def _alloc_rows(self, n: int, keep: Sequence[Branch] = ()) -> list[int]:
        """`n` free rows (contiguous when possible), growing the store within the bounds; prefix-cache
        entries give way (least recently used first, never one in `keep`) when rows or bytes run short."""
        held = self.held_rows
        if held + n > self.max_rows:
            raise CapacityError(f"max_rows={self.max_rows} exceeded: {held} rows held (live branches and pinned "
                                f"prefix-cache entries) + {n} requested")
        while self.prefix_cache and not self._fits_rows(len(self._occupied()) + n):
            old = self.prefix_cache.evict(1, keep)
            if not old:
                break
            self._free(old[0])
        used = len(self._occupied())
        run = _free_run(self._rows, n)
        if run is None and len(self._rows) < self.max_rows:
            cap = len(self._rows)
            trailing = next((i for i, b in enumerate(reversed(self._rows)) if b is not None), cap)
            new_cap = cap
            while new_cap < cap + n - trailing and new_cap < self.max_rows:
                new_cap = min(self.max_rows, new_cap * 2)
            cols = self.col_capacity
            if self.max_kv_bytes is not None:  # as many rows as fit, if that is enough
                if self.max_kv_bytes // (cols * self.cell_bytes) < used + n:
                    cols = self._min_cols()  # columns past the longest branch are not needed
                new_cap = max(min(new_cap, self.max_kv_bytes // (cols * self.cell_bytes)), used + n)
            if new_cap > cap or cols != self.col_capacity:
                self._resize(new_cap, cols)
            run = _free_run(self._rows, n)
        if run is not None:
            return list(range(run, run + n))
        rows = [i for i, b in enumerate(self._rows) if b is None][:n]
        if len(rows) < n:  # only when cache entries in `keep` hold the rows
            raise CapacityError(f"max_rows={self.max_rows} exceeded: {used} rows held (prefix-cache rows "
                                f"in use included) + {n} requested")
        return rows

    def _fits_rows(self, rows: int) -> bool:
        """Whether `rows` occupied rows fit `max_rows` and, at the columns the longest branch needs,
        `max_kv_bytes`."""
        if rows > self.max_rows:
            return False
        return self.max_kv_bytes is None or rows * self._min_cols() * self.cell_bytes <= self.max_kv_bytes

    def _min_cols(self) -> int:
        """The fewest columns the store can shrink to: the longest live branch (at least 16)."""
        return max([16] + [b.length for b in self._occupied()])

    def _resize(self, rows: int, cols: int) -> None:
        """Make the capacity `rows` x `cols`, keeping every live branch's state; when `rows` is below
        the row capacity, live branches move to rows 0, 1, ..."""
        self._check_bytes(rows, cols)
        live = self._occupied()
        keep = None
        if rows < len(self._rows):
            keep = [b.row for b in live]
            for i, b in enumerate(live):
                b.row = i
            self._rows = live + [None] * (rows - len(live))
        else:
            self._rows += [None] * (rows - len(self._rows))
        self.backend.resize(rows, cols, keep)
        self.col_capacity = cols
        self._note_peaks()

    def _check_bytes(self, rows: int, cols: int) -> None:
        need = rows * cols * self.cell_bytes
        if self.max_kv_bytes is not None and need > self.max_kv_bytes:
            raise CapacityError(
                f"max_kv_bytes={self.max_kv_bytes} exceeded: the store needs {need} bytes "
                f"for {rows} rows x {cols} columns"
            )

    def _free(self, b: Branch) -> None:
        self.backend.free(b)
        self._rows[b.row] = None
        b.released = True

    def _note_peaks(self) -> None:
        live = len(self.live_branches)  # callers' branches; cache rows show in peak_kv_bytes
        self.stats.peak_rows = max(self.stats.peak_rows, live)
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.kv_bytes)

    def _check_live(self, branches: Sequence[Branch]) -> None:
        if not branches:
            raise ValueError("branches must not be empty")
        seen = set()
        for b in branches:
            if not isinstance(b, Branch) or b.engine is not self:
                raise ValueError(f"{b!r} is not a branch of this engine")
            if b.released:
                raise ValueError(f"{b!r} was released and cannot be used")
            if b.row in seen:
                raise ValueError(f"{b!r} appears twice in one call")
            seen.add(b.row)

    def _check_ids(self, ids, name: str) -> list[int]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError(f"{name}: empty token list; accepted: at least one token id")
        vocab = self.lm_head.weight.shape[0]
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"{name}: token id out of range; accepted: 0..{vocab - 1}")
        return ids

    def _check_context(self, have: int, add: int) -> None:
        if have + add > self.max_context:
            raise ValueError(
                f"sequence of {have + add} tokens exceeds the model's context "
                f"(max_position_embeddings={self.max_context})"
            )


_NO_STOP = Stop()


def _free_run(rows: list, n: int) -> int | None:
    """Start of the lowest run of `n` consecutive free rows, or None."""
    count = 0
    for i, b in enumerate(rows):
        count = count + 1 if b is None else 0
        if count == n:
            return i - n + 1
    return None


def _model_eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else eos)
    return frozenset(ids)
