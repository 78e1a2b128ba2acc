"""The branch KV store: preallocated per-layer buffers, one row per branch, plugged into HF as a `Cache`.

Layout per layer: keys and values `[row_capacity, kv_heads, col_capacity, head_dim]`; token i of a
branch sits in column i of its row. A forward call writes each row's `q` new columns at that row's
own end (a scatter by `CallContext.cols`) and attends over columns `[0, extent)`, the longest row
in the call; which of those a row may see is the engine's business (a 4-D mask). Capacity grows
by doubling (or as far as a byte bound allows); the buffers are never concatenated per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from decodesearch.kernels import kv_copy


@dataclass
class CallContext:
    """Where the current forward writes and reads. `rows`: the call's rows (a slice when contiguous,
    else an index tensor); `row_index` `[B, 1]` and `cols` `[B, q]`: the column each new token of each
    row is written to; `extent`: the columns `[0, extent)` the call attends over. Tensors are on the
    model's input device."""

    rows: slice | torch.Tensor
    row_index: torch.Tensor
    cols: torch.Tensor
    extent: int


class BranchLayer(CacheLayerMixin):
    """One layer's buffers. Allocated lazily on the device where the layer's keys arrive."""

    def __init__(self, store: "BranchKVStore"):
        super().__init__()
        self.store = store
        self._rows_on: dict[torch.device, torch.Tensor] = {}

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        r, c = self.store.row_capacity, self.store.col_capacity
        self.keys = key_states.new_zeros((r, key_states.shape[1], c, key_states.shape[3]))
        self.values = value_states.new_zeros((r, value_states.shape[1], c, value_states.shape[3]))
        self.device = key_states.device
        self.is_initialized = True

    def resize(self, rows: int, cols: int, keep: list[int] | None = None) -> None:
        if not self.is_initialized:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((rows, old.shape[1], cols, old.shape[3]))
            n = min(cols, old.shape[2])
            if keep is None:
                new[: old.shape[0], :, :n] = old[:, :, :n]
            else:
                new[: len(keep), :, :n] = old[torch.tensor(keep, dtype=torch.long, device=old.device), :, :n]
            setattr(self, name, new)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        call = self.store.call
        dev = self.keys.device  # .to() below is a no-op unless layers sit on several devices
        rows = call.rows.to(dev) if isinstance(call.rows, torch.Tensor) else call.rows
        ri, ci = call.row_index.to(dev), call.cols.to(dev)
        self.keys[ri, :, ci] = key_states.transpose(1, 2)  # [B, q, heads, head_dim] at (row, its column)
        self.values[ri, :, ci] = value_states.transpose(1, 2)
        return self.keys[rows, :, : call.extent], self.values[rows, :, : call.extent]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.store.call.extent, 0

    def get_seq_length(self) -> int:
        return self.store.call.extent - self.store.call.cols.shape[1] if self.store.call is not None else 0

    def get_max_length(self) -> int:
        return -1


class BranchKVStore(Cache):
    """A transformers `Cache` whose rows are branches. The engine sets `call` before each forward."""

    def __init__(self, num_layers: int, row_capacity: int, col_capacity: int):
        self.row_capacity = row_capacity
        self.col_capacity = col_capacity
        self.call: CallContext | None = None
        super().__init__(layers=[BranchLayer(self) for _ in range(num_layers)])

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length()

    def resize(self, rows: int, cols: int, keep: list[int] | None = None) -> None:
        """Reallocate every layer to `rows` x `cols` capacity, keeping the contents (with `keep`:
        only rows `keep[i]`, moved to row i; columns past `cols` are dropped)."""
        for layer in self.layers:
            layer.resize(rows, cols, keep)
        self.row_capacity, self.col_capacity = rows, cols

    def _by_device(self):
        groups: dict[torch.device, tuple[list, list]] = {}
        for layer in self.layers:
            if layer.is_initialized:
                ks, vs = groups.setdefault(layer.keys.device, ([], []))
                ks.append(layer.keys)
                vs.append(layer.values)
        return groups

    def copy_rows(self, src: list[int], dst: list[int], ncols: int) -> None:
        """Copy columns [0, ncols) of rows `src[i]` to rows `dst[i]` in every layer (one launch per device)."""
        for ks, vs in self._by_device().values():
            kv_copy(ks, vs, src, dst, ncols)  # host lists: the kernels validate on the host anyway
