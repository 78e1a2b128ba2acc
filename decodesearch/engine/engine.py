"""The branching engine: prefill, fork, extend, decode, rewind, logprobs, release over one HF model.

Every token of a live branch has its KV (and final hidden state) in the store exactly once:
`fork` copies rows, `rewind` masks columns, and nothing already forwarded is forwarded again.
Next-token logits are computed on demand from the stored final hidden state of a branch's last
token, so a rewound branch has its logits without a forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from decodesearch.engine.sampling import GREEDY, Sampler, Stop
from decodesearch.engine.store import BranchKVStore, CallContext
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
    forward_calls: int = 0
    rows_copied: int = 0
    bytes_copied: int = 0
    compactions: int = 0
    peak_rows: int = 0
    peak_kv_bytes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Branch:
    """A handle on one token sequence whose KV lives in an `Engine`.

    `tokens` is the whole sequence (prompt included); `start` is the prompt length, which `rewind`
    never goes below; `text` decodes `tokens[start:]`. `token_logprobs[i]` is the model's log-prob
    (untempered) of a sampled token `tokens[i]`, None for teacher-forced ones. Do not mutate either.
    """

    def __init__(self, engine: "Engine", row: int, tokens: list[int], start: int, seed: int):
        self.engine = engine
        self.row = row
        self.tokens = tokens
        self.token_logprobs: list[float | None] = []
        self.start = start
        self.seed = seed
        self.stop_reason: str | None = None
        self.released = False
        self._cols: list[int] = []  # the store column of each token, ascending
        self._forks = 0
        self._generator: torch.Generator | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def _end(self) -> int:
        """The first store column after this branch's last token (0 when it holds none)."""
        return self._cols[-1] + 1 if self._cols else 0

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.start :]

    @property
    def text(self) -> str:
        return self.engine.tokenizer.decode(self.new_tokens, skip_special_tokens=True)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __repr__(self) -> str:
        state = "released" if self.released else f"row={self.row}"
        return f"Branch({state}, length={self.length}, start={self.start}, stop={self.stop_reason})"


class Engine:
    """Owns the KV memory of all branches of one model.

    `max_rows` bounds live branches; `max_kv_bytes` bounds the allocated store (KV of every layer
    plus final hidden states). Capacity starts small and doubles; exceeding a bound raises
    `CapacityError` naming it and leaves the engine unchanged.
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
        compact_below: float = 0.5,
    ):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows={max_rows!r} is out of range; accepted: an int >= 1")
        if not 0.0 <= compact_below < 1.0:
            raise ValueError(f"compact_below={compact_below!r} is out of range; accepted: [0, 1)")
        cfg = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.max_rows = max_rows
        self.max_kv_bytes = max_kv_bytes
        self.compact_below = compact_below
        self.max_context = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self.seed = seed
        self._roots = 0
        self.dtype = model.get_input_embeddings().weight.dtype
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.cell_bytes = (cfg.num_hidden_layers * 2 * kv_heads * head_dim + cfg.hidden_size) * itemsize
        self._in_device = model.get_input_embeddings().weight.device
        self._out_device = self.lm_head.weight.device
        self.eos_ids = _model_eos_ids(model, tokenizer)
        self.stats = EngineStats()

        rows, cols = min(8, max_rows), max(16, initial_cols)
        self._check_bytes(rows, cols)
        self.store = BranchKVStore(cfg.num_hidden_layers, rows, cols)
        self.valid = torch.zeros(rows, cols, dtype=torch.bool, device=self._in_device)
        self.hidden = torch.zeros(rows, cols, cfg.hidden_size, dtype=self.dtype, device=self._out_device)
        self._rows: list[Branch | None] = [None] * rows
        self._note_peaks()

    # ------------------------------------------------------------------ public operations

    @torch.no_grad()
    def prefill(self, ids: Sequence[int], seed: int | None = None) -> Branch:
        """A new root branch over `ids` (the prompt). One forward over `ids`."""
        return self.prefill_batch([ids], seeds=None if seed is None else [seed])[0]

    @torch.no_grad()
    def prefill_batch(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None = None) -> list[Branch]:
        """New root branches, one per prompt, prefilled in one ragged forward."""
        prompts = [self._check_ids(ids, "ids") for ids in prompts]
        if not prompts:
            raise ValueError("prompts must contain at least one token list")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds has {len(seeds)} entries; expected one per prompt ({len(prompts)})")
        for ids in prompts:
            self._check_context(0, len(ids))
        rows = self._alloc_rows(len(prompts))
        out = []
        for i, (row, ids) in enumerate(zip(rows, prompts)):
            seed = derive_seed(self.seed, self._roots) if seeds is None else int(seeds[i])
            self._roots += 1
            b = Branch(self, row, [], len(ids), seed)
            self._rows[row] = b
            out.append(b)
        self._note_peaks()
        try:
            self._forward(out, prompts)
        except BaseException:
            for b in out:
                self._free(b)
            raise
        return out

    @torch.no_grad()
    def fork(self, branch: Branch, n: int) -> list[Branch]:
        """`n` new branches with `branch`'s exact state (tokens, KV, logits). A row copy, no forward."""
        self._check_live([branch])
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} is out of range; accepted: an int >= 1")
        rows = self._alloc_rows(n)
        children = []
        for row in rows:
            child = Branch(self, row, list(branch.tokens), branch.start, derive_seed(branch.seed, branch._forks))
            child.token_logprobs = list(branch.token_logprobs)
            branch._forks += 1
            self._rows[row] = child
            children.append(child)
        self._copy_state(branch, children)
        self._note_peaks()
        return children

    def _copy_state(self, branch: Branch, children: list[Branch]) -> None:
        """Give each child `branch`'s KV, final hidden states and validity (one kv_copy launch)."""
        rows, src, ncols = [c.row for c in children], branch.row, branch._end
        self.store.copy_rows([src] * len(rows), rows, ncols)
        idx = torch.tensor(rows, device=self._in_device)
        self.valid[idx] = self.valid[src].clone()
        self.hidden[idx.to(self._out_device), :ncols] = self.hidden[src, :ncols].clone()
        for child in children:
            child._cols = list(branch._cols)
        self.stats.rows_copied += len(rows)
        self.stats.bytes_copied += len(rows) * ncols * self.cell_bytes

    @torch.no_grad()
    def extend(self, branches: Sequence[Branch], ids_per_branch: Sequence[Sequence[int]]) -> None:
        """Teacher-force `ids_per_branch[i]` onto `branches[i]` (ragged), in one forward over the new tokens."""
        branches = list(branches)
        self._check_live(branches)
        if len(ids_per_branch) != len(branches):
            raise ValueError(
                f"ids_per_branch has {len(ids_per_branch)} entries; expected one per branch ({len(branches)})"
            )
        ids = [self._check_ids(x, "ids_per_branch") for x in ids_per_branch]
        for b, x in zip(branches, ids):
            self._check_context(b.length, len(x))
        self._forward(branches, ids)
        for b in branches:
            b.stop_reason = None

    @torch.no_grad()
    def decode(
        self,
        branches: Sequence[Branch],
        max_new_tokens: int | Sequence[int],
        sampler: Sampler = GREEDY,
        stop: Stop | None = None,
    ) -> list[list[int]]:
        """Sample up to `max_new_tokens` (one int, or one per branch) per branch, all live branches
        in one forward per step.

        Each branch stops on its own: `eos` (the EOS id is not appended), `stop_string` (kept),
        `length` or `context`. Returns the new tokens of each branch; sets `stop_reason`.
        """
        branches = list(branches)
        self._check_live(branches)
        limits = [max_new_tokens] * len(branches) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != len(branches) or any(not isinstance(m, int) or m < 0 for m in limits):
            raise ValueError(
                f"max_new_tokens={max_new_tokens!r} is out of range; accepted: an int >= 0, or one per branch"
            )
        stop = stop or Stop()
        eos = self.eos_ids if stop.eos_ids is None else stop.eos_ids
        window = max((len(s) for s in stop.strings), default=0) + 2
        new: list[list[int]] = [[] for _ in branches]
        for b, m in zip(branches, limits):
            b.stop_reason = None if m else "length"
        live = [i for i, m in enumerate(limits) if m]
        while live:
            bs = [branches[i] for i in live]
            logits = self._logits(bs)
            gens = [] if sampler.greedy else [b.generator for b in bs]
            picked = sampler.sample(logits, gens)
            chosen_lp = score(logits, picked[:, None].to(logits.device), check_ids=False)[1][:, 0].tolist()
            step_bs, step_ids, step_lps, still = [], [], [], []
            for i, b, tok, lp in zip(live, bs, picked.tolist(), chosen_lp):
                if tok in eos:
                    b.stop_reason = "eos"
                    continue
                new[i].append(tok)
                step_bs.append(b)
                step_ids.append([tok])
                step_lps.append([lp])
                if len(new[i]) >= limits[i]:
                    b.stop_reason = "length"
                elif b.length + 1 >= self.max_context:
                    b.stop_reason = "context"
                elif stop.strings and _has_stop(self.tokenizer, new[i][-window:], stop.strings):
                    b.stop_reason = "stop_string"
                else:
                    still.append(i)
            if step_bs:
                self._forward(step_bs, step_ids, step_lps)
            live = still
        return new

    @torch.no_grad()
    def rewind(self, branch: Branch, n: int) -> None:
        """Drop the last `n` tokens of `branch` (masks their columns; no forward, no copy)."""
        self._check_live([branch])
        limit = branch.length - branch.start
        if not isinstance(n, int) or not 0 <= n <= limit:
            raise ValueError(f"n={n!r} is out of range for this branch; accepted: 0..{limit} (tokens after its prompt)")
        if n == 0:
            return
        del branch.tokens[-n:]
        del branch.token_logprobs[-n:]
        branch.stop_reason = None
        self._drop_columns(branch, n)

    def _drop_columns(self, branch: Branch, n: int) -> None:
        """Mask the store columns of `branch`'s last `n` tokens."""
        dropped = branch._cols[-n:]
        del branch._cols[-n:]
        self.valid[branch.row, torch.tensor(dropped, device=self._in_device)] = False

    @torch.no_grad()
    def logits(self, branches: Sequence[Branch]) -> torch.Tensor:
        """Next-token logits of each branch, `[B, V]` fp32 (computed from the stored last hidden state)."""
        branches = list(branches)
        self._check_live(branches)
        return self._logits(branches)

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

    def release(self, branch: Branch) -> None:
        """Free `branch`'s row. The handle is unusable afterwards."""
        self._check_live([branch])
        self._free(branch)

    @property
    def live_branches(self) -> list[Branch]:
        return [b for b in self._rows if b is not None]

    @property
    def kv_bytes(self) -> int:
        """Bytes allocated for the store at its current capacity."""
        return self.store.row_capacity * self.store.col_capacity * self.cell_bytes

    # ------------------------------------------------------------------ internals

    def _forward(self, branches: list[Branch], ids: list[list[int]], logprobs: list[list[float]] | None = None) -> None:
        order = sorted(range(len(branches)), key=lambda i: branches[i].row)
        bs = [branches[i] for i in order]
        ids = [ids[i] for i in order]
        lps = [[None] * len(x) for x in ids] if logprobs is None else [logprobs[i] for i in order]
        lens = [len(x) for x in ids]
        q = max(lens)
        col0 = self._prepare_columns(bs, q)
        rows = [b.row for b in bs]
        contiguous = rows[-1] - rows[0] == len(rows) - 1
        sel = slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows, device=self._in_device)
        B = len(bs)
        pad = ids[0][0]
        input_ids = torch.tensor([x + [pad] * (q - len(x)) for x in ids], device=self._in_device)
        steps = torch.arange(q, device=self._in_device)
        positions = torch.tensor([len(b._cols) for b in bs], device=self._in_device)[:, None] + steps
        past = self.valid[sel, :col0]
        allowed = torch.cat(
            [past[:, None, :].expand(B, q, col0), torch.ones(q, q, dtype=torch.bool, device=self._in_device).tril().expand(B, q, q)],
            dim=-1,
        )
        mask = torch.zeros(B, 1, q, col0 + q, dtype=self.dtype, device=self._in_device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
        self.store.call = CallContext(sel, col0, q)
        try:
            out = self.decoder(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=self.store, use_cache=True
            )
        finally:
            self.store.call = None
        hsel = sel if isinstance(sel, slice) else sel.to(self._out_device)
        self.hidden[hsel, col0 : col0 + q] = out.last_hidden_state.to(self._out_device)
        self.valid[sel, col0 : col0 + q] = steps[None, :] < torch.tensor(lens, device=self._in_device)[:, None]
        for b, x, lp in zip(bs, ids, lps):
            b._cols.extend(range(col0, col0 + len(x)))
            b.tokens.extend(x)
            b.token_logprobs.extend(lp)
        self.stats.tokens_forwarded += sum(lens)
        self.stats.forward_calls += 1

    def _prepare_columns(self, bs: list[Branch], q: int) -> int:
        """The write offset for a call over `bs` adding `q` columns; compacts or grows as needed."""
        col0 = max(b._end for b in bs)
        used = sum(len(b._cols) for b in bs)
        sparse = col0 > 64 and used < self.compact_below * len(bs) * col0
        if sparse or col0 + q > self.store.col_capacity:
            holed = [b for b in bs if b._end > len(b._cols)]
            if holed:
                self._compact(holed)
                col0 = max(b._end for b in bs)
        if col0 + q > self.store.col_capacity:
            cols = self.store.col_capacity
            while cols < col0 + q:
                cols *= 2
            self._grow(self.store.row_capacity, cols)
        return col0

    def _compact(self, bs: list[Branch]) -> None:
        self.store.compact_rows([b.row for b in bs], [b._cols for b in bs])
        for b in bs:
            n = len(b._cols)
            cols = torch.tensor(b._cols, device=self._out_device)
            self.hidden[b.row, :n] = self.hidden[b.row, cols]
            self.valid[b.row] = False
            self.valid[b.row, :n] = True
            b._cols = list(range(n))
        self.stats.compactions += 1

    def _alloc_rows(self, n: int) -> list[int]:
        live = sum(b is not None for b in self._rows)
        if live + n > self.max_rows:
            raise CapacityError(f"max_rows={self.max_rows} exceeded: {live} live branches + {n} requested")
        run = _free_run(self._rows, n)
        if run is None and len(self._rows) < self.max_rows:
            cap = len(self._rows)
            trailing = next((i for i, b in enumerate(reversed(self._rows)) if b is not None), cap)
            new_cap = cap
            while new_cap < cap + n - trailing and new_cap < self.max_rows:
                new_cap = min(self.max_rows, new_cap * 2)
            try:
                self._grow(new_cap, self.store.col_capacity)
            except CapacityError:
                if n > len(self._rows) - live:
                    raise
            run = _free_run(self._rows, n)
        if run is not None:
            return list(range(run, run + n))
        return [i for i, b in enumerate(self._rows) if b is None][:n]

    def _grow(self, rows: int, cols: int) -> None:
        self._check_bytes(rows, cols)
        self.store.grow(rows, cols)
        valid = self.valid.new_zeros(rows, cols)
        valid[: self.valid.shape[0], : self.valid.shape[1]] = self.valid
        hidden = self.hidden.new_zeros(rows, cols, self.hidden.shape[2])
        hidden[: self.hidden.shape[0], : self.hidden.shape[1]] = self.hidden
        self.valid, self.hidden = valid, hidden
        self._rows += [None] * (rows - len(self._rows))
        self._note_peaks()

    def _check_bytes(self, rows: int, cols: int) -> None:
        need = rows * cols * self.cell_bytes
        if self.max_kv_bytes is not None and need > self.max_kv_bytes:
            raise CapacityError(
                f"max_kv_bytes={self.max_kv_bytes} exceeded: the store needs {need} bytes "
                f"for {rows} rows x {cols} columns"
            )

    def _free(self, b: Branch) -> None:
        self.valid[b.row] = False
        self._rows[b.row] = None
        b.released = True
        b._cols = []

    def _logits(self, bs: list[Branch]) -> torch.Tensor:
        rows = torch.tensor([b.row for b in bs], device=self._out_device)
        cols = torch.tensor([b._cols[-1] for b in bs], device=self._out_device)
        return self.lm_head(self.hidden[rows, cols]).float()

    def _note_peaks(self) -> None:
        live = sum(b is not None for b in self._rows)
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


def _free_run(rows: list, n: int) -> int | None:
    """Start of the lowest run of `n` consecutive free rows, or None."""
    count = 0
    for i, b in enumerate(rows):
        count = count + 1 if b is None else 0
        if count == n:
            return i - n + 1
    return None


def _has_stop(tokenizer, tail: list[int], strings: tuple[str, ...]) -> bool:
    text = tokenizer.decode(tail, skip_special_tokens=False)
    return any(s in text for s in strings)


def _model_eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else eos)
    return frozenset(ids)
