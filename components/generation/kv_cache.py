"""The decoder's KV cache: HF's `DynamicCache`, with layers that keep spare room along the sequence
and along the batch, optionally in a narrower type than the model computes in.

HF's `DynamicLayer` concatenates each step's keys and values to the whole past, so every decode
step copies the entire cache of every layer (at 8 rows of 400 slots, 140 MB a step, as much memory
traffic as the bf16 weights themselves). A `SpareLayer` writes the new slots into room it reserved
(growing by half when full), and hands attention a view of the filled part and the live rows: the
past is copied only when the room runs out. A row that joins is written into a spare row; a row
that leaves is overwritten by a row from the end (`Batch` orders its rows so); compaction gathers
into a buffer that keeps its room.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_ROOM = 64  # slots reserved beyond the need at least


class SpareLayer(DynamicLayer):
    """`dtype`: what the keys and values are stored (and handed to attention) in; None: as they come."""

    def __init__(self, dtype: torch.dtype | None = None):
        self.store_dtype = dtype
        self._keys = self._values = None
        self._rows, self._filled = 0, 0
        super().__init__()

    # keys and values are views of the live rows and the filled part of their storage
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._keys is None else self._keys[: self._rows, :, : self._filled]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        # Assigned whole (HF's own code does so): the values are assigned right after, with the same shape.
        self._keys = None if value is None else value.to(self.store_dtype or value.dtype)
        self._rows, self._filled = (0, 0) if value is None or value.dim() < 2 else (value.shape[0], value.shape[-2])

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[: self._rows, :, : self._filled]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = None if value is None else value.to(self.store_dtype or value.dtype)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = self.store_dtype or key_states.dtype, key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self._filled if self.is_initialized and self._keys is not None else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.get_seq_length(), self.get_seq_length() + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2] or key_states.shape[0] > self._keys.shape[0]:
            self._reserve(key_states, end)
        self._rows = key_states.shape[0]
        self._keys[: self._rows, :, start:end] = key_states
        self._values[: self._rows, :, start:end] = value_states
        self._filled = end
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices`, in that order: rows that move are copied one by one within the
        buffer when that is safe (no row is overwritten before it is read), else one gather."""
        order = indices.tolist()
        if self.get_seq_length() > 0 and _in_place(order):
            for to, came in enumerate(order):
                if to != came:
                    self._keys[to, :, : self._filled] = self._keys[came, :, : self._filled]
                    self._values[to, :, : self._filled] = self._values[came, :, : self._filled]
        elif self.get_seq_length() > 0:
            self._keys, self._values = self._keys[indices], self._values[indices]
        self._rows = len(order)

    def add_row(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One more row at the end ([1, heads, filled, head dim]), into a spare row (made by one
        copy, with room for as many rows again, when there is none)."""
        if self._rows == self._keys.shape[0]:
            rows = max(2 * self._rows, self._rows + 1)
            self._keys, self._values = (_moved(t, self._rows, self._filled, rows, t.shape[-2]) for t in (self._keys, self._values))
        self._keys[self._rows, :, : self._filled] = keys[0]
        self._values[self._rows, :, : self._filled] = values[0]
        self._rows += 1

    def compact(self, keep: torch.Tensor) -> None:
        """Row b's slots become its old slots `keep[b]` ([rows, width]), gathered into a buffer with room."""
        width = keep.shape[1]
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty((old.shape[0], old.shape[1], max(width + MIN_ROOM, width * 3 // 2), old.shape[3]))
            index = keep[:, None, :, None].expand(-1, old.shape[1], -1, old.shape[3])
            torch.gather(old[: self._rows, :, : self._filled], 2, index, out=new[: self._rows, :, :width])
            setattr(self, name, new)
        self._filled = width

    def _reserve(self, key_states: torch.Tensor, need: int) -> None:
        rows = max(key_states.shape[0], 0 if self._keys is None else self._keys.shape[0])
        room = max(need + MIN_ROOM, need * 3 // 2)
        if self._keys is None:
            shape = (rows, key_states.shape[1], room, key_states.shape[3])
            self._keys = key_states.new_empty(shape, dtype=self.dtype)
            self._values = key_states.new_empty(shape, dtype=self.dtype)
            self._filled = 0
        else:
            self._keys, self._values = (_moved(t, self._rows, self._filled, rows, room) for t in (self._keys, self._values))


def _moved(old: torch.Tensor, rows: int, filled: int, capacity: int, room: int) -> torch.Tensor:
    """`old`'s first `rows` rows and `filled` slots in a new buffer of `capacity` rows and `room` slots."""
    new = old.new_empty((capacity, old.shape[1], room, old.shape[3]))
    new[:rows, :, :filled] = old[:rows, :, :filled]
    return new


def _in_place(order: list[int]) -> bool:
    """Can the rows move to their places in this order without one being overwritten before it moves?"""
    pending = {came for to, came in enumerate(order) if to != came}
    for to, came in enumerate(order):
        pending.discard(came)
        if to != came and to in pending:
            return False
    return True


def new_cache(dtype: torch.dtype | None = None) -> DynamicCache:
    """An empty cache whose layers (made as the first forward reaches them) are `SpareLayer`s,
    storing keys and values in `dtype` (None: as the model computes them)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = lambda: SpareLayer(dtype)
    return cache


def plain_layers(cache: DynamicCache) -> bool:
    """Every layer holds every slot (no sliding window): rows may be sliced, merged and compacted."""
    return all(type(layer) in (DynamicLayer, SpareLayer) for layer in cache.layers)


def lead_in_kv(stack, ids: list[int], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of `ids` fed alone from position 0, per layer, [1, heads, len(ids), head dim]."""
    cache = DynamicCache()
    stack(input_ids=torch.tensor([ids], device=device), position_ids=torch.arange(len(ids), device=device)[None],
          past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def add_row(cache: DynamicCache, mask: torch.Tensor, lead: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Room for one more row at the end of the batch: masked padding slots, with `lead`'s keys and
    values (per layer, [1, heads, L, head dim]) in its last L slots when given. Returns the new mask."""
    rows, width = mask.shape
    filled = 0 if lead is None else lead[0][0].shape[-2]
    if lead is not None and not cache.layers:  # nothing fed yet: layers of padding for the rows there are
        for i, (keys, values) in enumerate(lead):
            cache.update(keys.new_zeros((rows, keys.shape[1], width, keys.shape[3])),
                         values.new_zeros((rows, values.shape[1], width, values.shape[3])), i)
    if filled > width:  # the others get padding on the left, where it changes nothing
        mask = torch.cat([mask.new_zeros((rows, filled - width)), mask], dim=1)
        for layer in cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                setattr(layer, name, torch.cat([tensor.new_zeros((*tensor.shape[:2], filled - width, tensor.shape[3])), tensor], dim=2))
        width = filled
    row = mask.new_zeros((1, width))
    if filled:
        row[0, width - filled :] = 1
    for n, layer in enumerate(cache.layers):
        if not layer.is_initialized or layer.keys is None:
            continue
        new = []
        for part, tensor in enumerate((layer.keys, layer.values)):
            new.append(tensor.new_zeros((1, *tensor.shape[1:])))
            if filled:
                new[-1][:, :, width - filled :] = lead[n][part]
        if isinstance(layer, SpareLayer):  # into a buffer that keeps its room
            layer.add_row(*new)
        else:
            layer.keys, layer.values = torch.cat([layer.keys, new[0]]), torch.cat([layer.values, new[1]])
    return torch.cat([mask, row])
