"""The swappable part of `Engine`: where branch states live and how new tokens get into them.

The engine owns the rows (which branch holds which row, the row and column capacity, the bounds
`max_rows` and `max_kv_bytes`) and every token list; a `Backend` holds, for each occupied row, the
state of that branch's tokens and answers next-token logits from it. Swapping the backend changes
how state is stored and computed, never which tokens are chosen: the decode loop, sampling, stop
rules, the checks and the prefix cache's bookkeeping stay in the engine.

Two backends exist: `DenseRows` (the default: dense KV rows in one preallocated store, the engine's
contract of never forwarding a token twice) and `decodesearch.engine.reencode.Reencode` (the
baseline: one private cache per branch, a fork or a rewind re-encodes). A paged store would be a
third.

Contract, for a backend bound to an engine (calls come from the engine only, rows already checked):
- `bind(engine, rows, cols)`: once, from the engine's constructor, with the initial capacity.
- `resize(rows, cols, keep)`: the capacity became `rows` x `cols`; with `keep`, the branch of old
  row `keep[i]` now sits in row i (the engine already renumbered `Branch.row`).
- `encode(branches, ids, logprobs)`: `ids[i]` are being appended to `branches[i]`, whose `tokens`
  do not hold them yet (the engine appends them after the call); afterwards `logits` must answer
  for the longer sequences. `logprobs[i][j]` is None for a teacher-forced token. Counts
  `tokens_forwarded`, `forward_calls` and the attention cells in `engine.stats` for what it forwards.
- `copy(src, dsts, n)`: each of `dsts` (new rows whose tokens are `src.tokens[:n]`) gets the state
  of `src`'s first `n` tokens. Counts `rows_copied` and `bytes_copied`.
- `truncate(branch, n)`: `branch` just lost its last `n` tokens (already removed from `tokens`).
- `logits(branches)`: next-token logits `[B, V]`, float32.
- `free(branch)`: its row no longer holds it.
`reuses_prefixes`: whether `copy` shares computed state; the engine's prefix cache is off when not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from decodesearch.engine.store import BranchKVStore, CallContext

if TYPE_CHECKING:
    from decodesearch.engine.engine import Branch, Engine


class Backend:
    """Base of the backends (see the module docstring for the contract)."""

    reuses_prefixes = True

    def bind(self, engine: "Engine", rows: int, cols: int) -> None:
        if getattr(self, "engine", None) is not None:
            raise ValueError(f"backend={self!r} is already bound to an engine; accepted: a new backend per engine")
        self.engine = engine

    def resize(self, rows: int, cols: int, keep: list[int] | None) -> None:
        raise NotImplementedError

    def encode(self, branches: list["Branch"], ids: list[list[int]], logprobs: list[list[float | None]]) -> None:
        raise NotImplementedError

    def copy(self, src: "Branch", dsts: list["Branch"], n: int) -> None:
        raise NotImplementedError

    def truncate(self, branch: "Branch", n: int) -> None:
        raise NotImplementedError

    def logits(self, branches: Sequence["Branch"]) -> torch.Tensor:
        raise NotImplementedError

    def free(self, branch: "Branch") -> None:
        raise NotImplementedError


class DenseRows(Backend):
    """Every branch densely in its own row of one `BranchKVStore` (token i at column i, KV of every
    layer) plus the final hidden state of every token (`hidden`, `[rows, cols, hidden_size]`), from
    which next-token logits come without a forward. A forward writes each row's new columns at that
    row's own end and attends with a 4-D mask over the row's own earlier columns; `copy` is one
    `kv_copy` launch; `truncate` is free (later columns are overwritten by the next forward)."""

    def bind(self, engine: "Engine", rows: int, cols: int) -> None:
        super().bind(engine, rows, cols)
        cfg = engine.model.config
        self.store = BranchKVStore(cfg.num_hidden_layers, rows, cols)
        self.hidden = torch.zeros(rows, cols, cfg.hidden_size, dtype=engine.dtype, device=engine.out_device)

    def resize(self, rows: int, cols: int, keep: list[int] | None) -> None:
        self.store.resize(rows, cols, keep)
        old = self.hidden
        hidden = old.new_zeros(rows, cols, old.shape[2])
        n = min(cols, old.shape[1])
        if keep is None:
            hidden[: old.shape[0], :n] = old[:, :n]
        else:
            hidden[: len(keep), :n] = old[torch.tensor(keep, dtype=torch.long, device=old.device), :n]
        self.hidden = hidden

    def encode(self, branches, ids, logprobs) -> None:
        eng = self.engine
        lens = [len(x) for x in ids]
        ends = [b.length for b in branches]
        q = max(lens)
        extent = max(ends) + q
        rows = [b.row for b in branches]  # ascending (the engine sorts a call by row)
        dev = eng.in_device
        contiguous = rows[-1] - rows[0] == len(rows) - 1
        sel = slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows, device=dev)
        pad = ids[0][0]
        input_ids = torch.tensor([x + [pad] * (q - len(x)) for x in ids], device=dev)
        positions = torch.tensor(ends, device=dev)[:, None] + torch.arange(q, device=dev)  # = write columns
        # Query j of a row sees the row's columns up to its own position (dense rows: all valid).
        allowed = torch.arange(extent, device=dev)[None, None, :] <= positions[:, :, None]
        mask = torch.zeros(len(branches), 1, q, extent, dtype=eng.dtype, device=dev)
        mask.masked_fill_(~allowed[:, None], torch.finfo(eng.dtype).min)
        row_idx = torch.tensor(rows, device=dev)[:, None]
        self.store.call = CallContext(sel, row_idx, positions, extent)
        try:
            out = eng.decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=self.store,
                              use_cache=True)
        finally:
            self.store.call = None
        od = eng.out_device
        self.hidden[row_idx.to(od), positions.to(od)] = out.last_hidden_state.to(od)
        stats = eng.stats
        stats.tokens_forwarded += sum(lens)
        stats.forward_calls += 1
        stats.attended_cells += len(branches) * extent
        stats.valid_cells += sum(e + n for e, n in zip(ends, lens))

    def copy(self, src, dsts, n) -> None:
        rows = [d.row for d in dsts]
        self.store.copy_rows([src.row] * len(rows), rows, n)
        self.hidden[torch.tensor(rows, device=self.hidden.device), :n] = self.hidden[src.row, :n].clone()
        self.engine.stats.rows_copied += len(rows)
        self.engine.stats.bytes_copied += len(rows) * n * self.engine.cell_bytes

    def truncate(self, branch, n) -> None:
        pass  # the row's columns past its new length are overwritten by the next forward

    def logits(self, branches) -> torch.Tensor:
        dev = self.hidden.device
        rows = torch.tensor([b.row for b in branches], device=dev)
        cols = torch.tensor([b.length - 1 for b in branches], device=dev)
        return self.engine.lm_head(self.hidden[rows, cols]).float()

    def free(self, branch) -> None:
        pass  # the row is simply reused
